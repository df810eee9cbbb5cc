"""Writing a trained model in either layout, with its tokenizer and processor, and publishing it.

- ``save_hf``: transformers' ``save_pretrained`` (loads with ``InternVLForConditionalGeneration``
  / ``AutoModelForImageTextToText``, no remote code).
- ``save_original``: ``InternVLChatModel``'s keys and config.json (``layouts``,
  ``original_config``), in safetensors shards. InternVL's remote-code ``.py`` files are copied from
  ``base_folder`` when given (the base model's folder); without them the folder still holds every
  weight and setting, but ``trust_remote_code`` loading needs those files copied in (reference:
  internvl-recipe.md §1.7, issue #1237).
- Both write the tokenizer (InternVL's special tokens, the ``internvl2_5`` chat template) and the
  processor (``processor_config.json``), and turn ``use_cache`` back on for inference. The base's
  vocabulary files (vocab.json and merges.txt, or tokenizer.model) are copied beside tokenizer.json,
  with the added tokens in tokenizer_config.json, so that slow tokenizers (``use_fast=False``, as
  InternVL's own scripts load them) load too.
- ``export``: merges LoRA adapters first when there are any, then writes the folder to its
  destination, local or S3, with ``manifest.json`` (files, sizes, sha256) written last.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import save_torch_state_dict
from torch import nn
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerBase

from internvl_trainer.model import original_config as oc
from internvl_trainer.model.layouts import to_original
from internvl_trainer.model.lora import merge
from internvl_trainer.model.processor import InternVLCpuProcessor, TileLimits, prepare_tokenizer, with_tile_limits

log = logging.getLogger(__name__)

ExportLayout = Literal["hf", "original"]
MAX_SHARD_SIZE = "5GB"


class ExportError(ValueError):
    """An export that cannot be written; the message says where and why."""


@contextmanager
def _inference_config(model: InternVLForConditionalGeneration) -> Iterator[None]:
    """``use_cache`` on while a model is written, in its LLM's config and its generation config
    (generate reads the latter): training turns it off, and InternVL's fine-tuning saves it off."""
    settings = [model.config.text_config]
    if model.generation_config is not None:
        settings.append(model.generation_config)
    before = [getattr(setting, "use_cache", True) for setting in settings]
    for setting in settings:
        setting.use_cache = True
    try:
        yield
    finally:
        for setting, value in zip(settings, before, strict=True):
            setting.use_cache = value


TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.model")
"""What a slow tokenizer reads besides tokenizer_config.json (Qwen2's byte-level BPE; InternLM2's and
LLaMA's sentencepiece model). transformers 5 writes only tokenizer.json, so these are copied from
the base, never regenerated."""


def _save_processing(
    folder: Path,
    tokenizer: PreTrainedTokenizerBase | None,
    processor: InternVLCpuProcessor | None,
    *,
    base_folder: str | Path | None,
    layout: ExportLayout,
) -> None:
    if processor is not None:
        tokenizer = processor.tokenizer
        prepare_tokenizer(tokenizer)
        processor.save_pretrained(str(folder))
    elif tokenizer is not None:
        prepare_tokenizer(tokenizer)
        tokenizer.save_pretrained(str(folder))
    else:
        log.warning("%s: exported without a tokenizer or processor", folder)
        return
    if base_folder is not None and _copy_tokenizer_files(Path(base_folder), folder, tokenizer):
        _write_slow_tokenizer_config(Path(base_folder), folder, tokenizer, layout)


def _copy_tokenizer_files(base: Path, folder: Path, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Copy the base's ``TOKENIZER_FILES`` into ``folder`` when they are the tokenizer's: a
    vocab.json that maps a token to another id than the tokenizer does belongs to another one."""
    present = [name for name in TOKENIZER_FILES if (base / name).is_file() and not (folder / name).exists()]
    if "vocab.json" in present and not _same_vocabulary(base / "vocab.json", tokenizer):
        log.warning("%s: its vocab.json is not the exported tokenizer's; %s gets tokenizer.json only", base, folder)
        return []
    for name in present:
        shutil.copy2(base / name, folder / name)
    return present


def _same_vocabulary(vocab_json: Path, tokenizer: PreTrainedTokenizerBase) -> bool:
    vocabulary = tokenizer.get_vocab()
    try:
        entries = json.loads(vocab_json.read_text())
        return all(vocabulary.get(token) == index for token, index in entries.items())
    except (OSError, ValueError, AttributeError):
        return False


def _write_slow_tokenizer_config(
    base: Path, folder: Path, tokenizer: PreTrainedTokenizerBase, layout: ExportLayout
) -> None:
    """Complete tokenizer_config.json for slow tokenizers, which read their added tokens (InternVL's
    and the template's) from ``added_tokens_decoder`` and their class from ``tokenizer_class``. In
    the original layout, the class and ``auto_map`` are the base's, whose code is copied beside."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["added_tokens_decoder"] = {
        str(index): {
            "content": token.content,
            "lstrip": token.lstrip,
            "normalized": token.normalized,
            "rstrip": token.rstrip,
            "single_word": token.single_word,
            "special": token.special,
        }
        for index, token in sorted(tokenizer.added_tokens_decoder.items())
    }
    if layout == "original":
        try:
            base_config = json.loads((base / "tokenizer_config.json").read_text())
        except (OSError, ValueError):
            base_config = {}
        for key in ("tokenizer_class", "auto_map"):
            if isinstance(base_config, dict) and key in base_config:
                config[key] = base_config[key]
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def _prepare_folder(folder: Path) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise ExportError(f"{folder}: the destination folder is not empty")
    folder.mkdir(parents=True, exist_ok=True)


def save_hf(
    model: InternVLForConditionalGeneration,
    folder: str | Path,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    processor: InternVLCpuProcessor | None = None,
    base_folder: str | Path | None = None,
    max_shard_size: str | int = MAX_SHARD_SIZE,
) -> Path:
    """Write the transformers-native layout into an empty (or new) folder, with the tokenizer's
    vocabulary files from ``base_folder`` when given."""
    folder = Path(folder)
    _prepare_folder(folder)
    with _inference_config(model):
        model.save_pretrained(str(folder), max_shard_size=max_shard_size)
    _save_processing(folder, tokenizer, processor, base_folder=base_folder, layout="hf")
    return folder


def original_state(model: InternVLForConditionalGeneration, llm_architecture: str) -> dict[str, Any]:
    """The model's weights under InternVLChatModel's keys (tied LM head left out)."""
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False) or getattr(
        model.config.text_config, "tie_word_embeddings", False
    ):
        state.pop("lm_head.weight", None)
    shape = oc.attention_shape(model.config.text_config)
    return {
        key: tensor.detach().cpu().contiguous()
        for key, tensor in to_original(state, oc.llm_keys(llm_architecture), shape).items()
    }


def save_original(
    model: InternVLForConditionalGeneration,
    folder: str | Path,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    processor: InternVLCpuProcessor | None = None,
    llm_architecture: str | None = None,
    base_folder: str | Path | None = None,
    max_shard_size: str | int = MAX_SHARD_SIZE,
) -> Path:
    """Write InternVLChatModel's layout into an empty (or new) folder, with InternVL's ``.py`` files
    and the tokenizer's vocabulary files from ``base_folder`` when given."""
    folder = Path(folder)
    with _inference_config(model):
        architecture = llm_architecture or oc.native_llm_architecture(model.config)
        images = processor.image_processor if processor is not None else None
        config = oc.original_config(
            model.config,
            llm_architecture=architecture,
            min_tiles=getattr(images, "min_patches", None),
            max_tiles=getattr(images, "max_patches", None),
            dtype=str(model.dtype).removeprefix("torch."),
        )
        state = original_state(model, config["llm_config"]["architectures"][0])
        _prepare_folder(folder)
        save_torch_state_dict(state, str(folder), max_shard_size=max_shard_size, metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if model.generation_config is not None:
            model.generation_config.save_pretrained(str(folder))
    copied = _copy_code(Path(base_folder), folder) if base_folder is not None else []
    if not copied:
        log.warning(
            "%s: written without InternVL's remote-code files; copy them in to load it with trust_remote_code", folder
        )
    _save_processing(folder, tokenizer, processor, base_folder=base_folder, layout="original")
    return folder


def _copy_code(source: Path, folder: Path) -> list[str]:
    copied = []
    for path in sorted(source.glob("*.py")):
        shutil.copy2(path, folder / path.name)
        copied.append(path.name)
    return copied


def save(
    model: InternVLForConditionalGeneration,
    folder: str | Path,
    layout: ExportLayout,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    processor: InternVLCpuProcessor | None = None,
    llm_architecture: str | None = None,
    base_folder: str | Path | None = None,
) -> Path:
    """Write one layout into a local folder."""
    if layout == "hf":
        return save_hf(model, folder, tokenizer=tokenizer, processor=processor, base_folder=base_folder)
    if layout == "original":
        return save_original(
            model,
            folder,
            tokenizer=tokenizer,
            processor=processor,
            llm_architecture=llm_architecture,
            base_folder=base_folder,
        )
    raise ExportError(f"layout: expected hf or original, got {layout!r}")


def _write_manifest(folder: Path, producer: dict[str, Any] | None) -> None:
    from internvl_trainer.storage.atomic import atomic_write
    from internvl_trainer.storage.manifest import MANIFEST_NAME, Manifest, entry_for
    from internvl_trainer.storage.upload import local_files

    manifest = Manifest(files=[entry_for(path, relative) for relative, path in local_files(folder)], producer=producer)
    atomic_write(folder / MANIFEST_NAME, manifest.to_json())


def export(
    model: nn.Module,
    destination: str | os.PathLike[str],
    layout: ExportLayout,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    processor: InternVLCpuProcessor | None = None,
    llm_architecture: str | None = None,
    base_folder: str | Path | None = None,
    storage: Any = None,
    producer: dict[str, Any] | None = None,
    staging_dir: str | Path | None = None,
    tile_limits: TileLimits | None = None,
) -> str:
    """Merge any LoRA adapters, write ``layout`` to ``destination`` (a local folder, which must be
    empty or new, or an S3 prefix, staged locally then uploaded) and publish ``manifest.json``
    last. ``tile_limits`` replace the processor's (a run's ``data.minTiles`` and ``data.maxTiles``).
    Returns the destination."""
    from internvl_trainer.storage import Storage, parse

    plain = merge(model)
    if not isinstance(plain, InternVLForConditionalGeneration):
        raise ExportError(f"expected an InternVLForConditionalGeneration, got {type(plain).__name__}")
    if processor is not None and tile_limits is not None:
        processor = with_tile_limits(processor, tile_limits)
    location = parse(destination)
    options: dict[str, Any] = {
        "tokenizer": tokenizer,
        "processor": processor,
        "llm_architecture": llm_architecture,
        "base_folder": base_folder,
    }
    if not location.is_s3:
        save(plain, location.path, layout, **options)
        _write_manifest(location.path, producer)
        log.info("exported the %s layout to %s", layout, location)
        return str(location)
    with tempfile.TemporaryDirectory(prefix="internvl-export-", dir=staging_dir) as staging:
        save(plain, Path(staging) / "model", layout, **options)
        (storage or Storage()).upload(Path(staging) / "model", location, producer=producer)
    log.info("exported the %s layout to %s", layout, location)
    return str(location)
