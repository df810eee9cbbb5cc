"""Writing a trained model in either layout, with its tokenizer and processor, and publishing it.

- ``save_hf``: transformers' ``save_pretrained`` (loads with ``InternVLForConditionalGeneration``
  / ``AutoModelForImageTextToText``, no remote code).
- ``save_original``: ``InternVLChatModel``'s keys and config.json (``layouts``,
  ``original_config``), in safetensors shards. InternVL's remote-code ``.py`` files are copied from
  ``code_from`` when given (the folder an original checkpoint was loaded from); without them the
  folder still holds every weight and setting, but ``trust_remote_code`` loading needs those files
  copied in (reference: internvl-recipe.md §1.7, issue #1237).
- Both write the tokenizer (InternVL's special tokens, the ``internvl2_5`` chat template) and the
  processor (``processor_config.json``), and restore ``use_cache`` for inference.
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
from internvl_trainer.model.processor import InternVLCpuProcessor, prepare_tokenizer

log = logging.getLogger(__name__)

ExportLayout = Literal["hf", "original"]
MAX_SHARD_SIZE = "5GB"


class ExportError(ValueError):
    """An export that cannot be written; the message says where and why."""


@contextmanager
def _inference_config(model: InternVLForConditionalGeneration) -> Iterator[None]:
    text = model.config.text_config
    before = getattr(text, "use_cache", True)
    text.use_cache = True
    try:
        yield
    finally:
        text.use_cache = before


def _save_processing(
    folder: Path, tokenizer: PreTrainedTokenizerBase | None, processor: InternVLCpuProcessor | None
) -> None:
    if processor is not None:
        prepare_tokenizer(processor.tokenizer)
        processor.save_pretrained(str(folder))
    elif tokenizer is not None:
        prepare_tokenizer(tokenizer)
        tokenizer.save_pretrained(str(folder))
    else:
        log.warning("%s: exported without a tokenizer or processor", folder)


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
    max_shard_size: str | int = MAX_SHARD_SIZE,
) -> Path:
    """Write the transformers-native layout into an empty (or new) folder."""
    folder = Path(folder)
    _prepare_folder(folder)
    with _inference_config(model):
        model.save_pretrained(str(folder), max_shard_size=max_shard_size)
    _save_processing(folder, tokenizer, processor)
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
    code_from: str | Path | None = None,
    max_shard_size: str | int = MAX_SHARD_SIZE,
) -> Path:
    """Write InternVLChatModel's layout into an empty (or new) folder."""
    folder = Path(folder)
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
    copied = _copy_code(Path(code_from), folder) if code_from is not None else []
    if not copied:
        log.warning(
            "%s: written without InternVL's remote-code files; copy them in to load it with trust_remote_code", folder
        )
    _save_processing(folder, tokenizer, processor)
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
    code_from: str | Path | None = None,
) -> Path:
    """Write one layout into a local folder."""
    if layout == "hf":
        return save_hf(model, folder, tokenizer=tokenizer, processor=processor)
    if layout == "original":
        return save_original(
            model,
            folder,
            tokenizer=tokenizer,
            processor=processor,
            llm_architecture=llm_architecture,
            code_from=code_from,
        )
    raise ExportError(f"layout: expected hf or original, got {layout!r}")


def _write_manifest(folder: Path, producer: dict[str, Any] | None) -> None:
    from internvl_trainer.storage.manifest import MANIFEST_NAME, Manifest, entry_for
    from internvl_trainer.storage.store import atomic_write
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
    code_from: str | Path | None = None,
    storage: Any = None,
    producer: dict[str, Any] | None = None,
    staging_dir: str | Path | None = None,
) -> str:
    """Merge any LoRA adapters, write ``layout`` to ``destination`` (a local folder, which must be
    empty or new, or an S3 prefix, staged locally then uploaded) and publish ``manifest.json``
    last. Returns the destination."""
    from internvl_trainer.storage import Storage, parse

    plain = merge(model)
    if not isinstance(plain, InternVLForConditionalGeneration):
        raise ExportError(f"expected an InternVLForConditionalGeneration, got {type(plain).__name__}")
    location = parse(destination)
    options: dict[str, Any] = {
        "tokenizer": tokenizer,
        "processor": processor,
        "llm_architecture": llm_architecture,
        "code_from": code_from,
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
