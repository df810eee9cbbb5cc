"""Loading an InternVL model folder, in either layout, into the native class.

``load(source)`` takes a local folder or an S3 prefix (fetched first through the storage layer's
verified folder download into a local cache, see ``fetch_folder``), tells the layout from
``config.json`` and returns an ``InternVLForConditionalGeneration`` plus the tokenizer and
processor the folder holds:

- ``hf`` (``model_type: internvl``): transformers' own ``from_pretrained``.
- ``original`` (``InternVLChatModel``): the config is converted (``original_config``), the
  safetensors (or ``.bin``) shards are read, renamed and split (``layouts``), and the model is
  built from the converted state dict. Checkpoints InternVL saved with LoRA wrapped in are folded
  into plain weights first.

No code of the folder is run, nor asked about: every transformers load has
``trust_remote_code=False``.

Both paths are strict: a missing or unexpected weight is an error, never a random initialisation.
The attention is flash-attention 2 when it can be used (package installed, CUDA present), sdpa
otherwise; GPT-OSS's LLM runs eager attention, the one path of transformers that applies its
attention sinks without a hub kernel (flash-attention 2 has no sinks, sdpa is refused for it).
Its packed rows get their masks from ``position_ids`` (``packed_masks``). Quantized weights
(GPT-OSS's MXFP4 release) are refused: nothing here trains them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerBase
from transformers.utils import is_flash_attn_2_available

from internvl_trainer.config import DEFAULT_MAX_TILES
from internvl_trainer.model import original_config as oc
from internvl_trainer.model.layouts import LayoutError, fold_original_lora, has_original_lora, to_native
from internvl_trainer.model.packed_masks import derive_packed_masks
from internvl_trainer.model.processor import InternVLCpuProcessor, has_tokenizer, load_processor, load_tokenizer

log = logging.getLogger(__name__)

Layout = Literal["hf", "original"]
CACHE_ENV = "INTERNVL_MODEL_CACHE"
ADAPTER_CONFIG = "adapter_config.json"


class ModelFolderError(ValueError):
    """A folder that is not a loadable InternVL model; the message names the folder and why."""


@dataclass
class Loaded:
    """A loaded model with what came with it."""

    model: InternVLForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase | None
    processor: InternVLCpuProcessor | None
    layout: Layout
    folder: Path


SINK_ATTENTION_MODEL_TYPES = ("gpt_oss",)
"""Text model types with attention sinks, which only eager attention (or a hub kernel) applies."""


def attention_implementation(requested: str | None = None, text_model_type: str | None = None) -> str | dict[str, str]:
    """``requested``, else flash_attention_2 when usable, else sdpa; for an LLM with attention
    sinks, eager for the LLM and that choice for the vision tower."""
    if requested:
        return requested
    default = "flash_attention_2" if is_flash_attn_2_available() else "sdpa"
    if text_model_type in SINK_ATTENTION_MODEL_TYPES:
        return {"text_config": "eager", "vision_config": default}
    return default


# ---------------------------------------------------------------------------------------------
# where the folder is


def default_cache_dir() -> Path:
    """Local cache of model folders fetched from S3 (``$INTERNVL_MODEL_CACHE``, else
    ``~/.cache/internvl/models``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "internvl" / "models")


def fetch_folder(source: str | os.PathLike[str], *, storage: Any = None, cache_dir: str | Path | None = None) -> Path:
    """A local folder holding ``source``: the folder itself when local, otherwise a verified copy of
    the S3 prefix (sizes, and sha256 when it has a manifest.json) under the cache; a copy that is
    already there is checked and reused, an interrupted one resumed."""
    from internvl_trainer.storage import Storage, parse

    location = parse(source)
    if not location.is_s3:
        return location.path
    storage = storage or Storage()
    digest = hashlib.sha256(str(location).rstrip("/").encode()).hexdigest()[:16]
    destination = Path(cache_dir or default_cache_dir()) / f"{location.name or location.bucket}-{digest}"
    log.info("fetching %s into %s", location, destination)
    storage.download(location, destination)
    return destination


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such folder")
    if (folder / ADAPTER_CONFIG).is_file() and not path.is_file():
        raise ModelFolderError(f"{folder}: holds a LoRA adapter, not a model; merge it with its base first")
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{folder}: no config.json") from None
    except json.JSONDecodeError as error:
        raise ModelFolderError(f"{path}: invalid JSON ({error})") from None
    sections = {"": config, "text_config.": config.get("text_config"), "llm_config.": config.get("llm_config")}
    for prefix, section in sections.items():
        if isinstance(section, dict) and "quantization_config" in section:
            method = (section["quantization_config"] or {}).get("quant_method", "unnamed")
            raise ModelFolderError(
                f"{path}: {prefix}quantization_config: {method} quantized weights cannot be trained; use a bf16 release"
            )
    return config


def detect_layout(config: dict[str, Any], folder: Path) -> Layout:
    """The layout a config.json describes."""
    if oc.is_original(config):
        return "original"
    if config.get("model_type") == "internvl":
        return "hf"
    raise ModelFolderError(
        f"{folder}: config.json describes neither InternVLChatModel nor InternVLForConditionalGeneration"
        f" (model_type {config.get('model_type')!r})"
    )


# ---------------------------------------------------------------------------------------------
# weights


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's safetensors (or PyTorch ``.bin``) shards, by key."""
    for index_name, loader in (("model.safetensors.index.json", _safetensors), ("pytorch_model.bin.index.json", _bin)):
        index = folder / index_name
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for name in files:
                state.update(loader(folder / name))
            return state
    if (folder / "model.safetensors").is_file():
        return _safetensors(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return _bin(folder / "pytorch_model.bin")
    raise ModelFolderError(f"{folder}: no model.safetensors, pytorch_model.bin or shard index")


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _bin(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _floating_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    return next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)


def _resolve_dtype(dtype: torch.dtype | str | None, fallback: torch.dtype) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return fallback
    if isinstance(dtype, str):
        return getattr(torch, dtype)
    return dtype


def _check_loading(info: dict[str, Any], folder: Path) -> None:
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    problems = []
    if missing:
        problems.append(f"missing weights: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"unexpected weights: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
    if mismatched:
        problems.append(f"weights of the wrong shape: {', '.join(str(m[0]) for m in mismatched[:8])}")
    if problems:
        raise ModelFolderError(f"{folder}: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# the model


def load_hf_model(
    folder: Path,
    config: dict[str, Any],
    *,
    dtype: torch.dtype | str | None = "auto",
    attn_implementation: str | None = None,
) -> InternVLForConditionalGeneration:
    text_model_type = (config.get("text_config") or {}).get("model_type")
    model, info = InternVLForConditionalGeneration.from_pretrained(
        str(folder),
        dtype=dtype if dtype is not None else "auto",
        attn_implementation=attention_implementation(attn_implementation, text_model_type),
        output_loading_info=True,
        trust_remote_code=False,
    )
    _check_loading(info, folder)
    return model


def converted_state(config: dict[str, Any], native: Any, folder: Path) -> dict[str, torch.Tensor]:
    """The native state dict of an original folder's weights."""
    state = read_weights(folder)
    if has_original_lora(state):
        log.info("%s: folding the LoRA adapters InternVL saved into the weights", folder)
        state = fold_original_lora(state, llm_scaling=2.0, vision_scaling=2.0)
    architecture = oc.llm_architecture(config)
    return to_native(state, oc.llm_keys(architecture), oc.attention_shape(native.text_config))


def load_original_model(
    folder: Path,
    config: dict[str, Any],
    *,
    image_token_id: int | None,
    dtype: torch.dtype | str | None = "auto",
    attn_implementation: str | None = None,
) -> InternVLForConditionalGeneration:
    native = oc.native_config(config, image_token_id=image_token_id)
    state = converted_state(config, native, folder)
    resolved = _resolve_dtype(dtype, _floating_dtype(state))
    model, info = InternVLForConditionalGeneration.from_pretrained(
        None,
        config=native,
        state_dict=state,
        dtype=resolved,
        attn_implementation=attention_implementation(attn_implementation, native.text_config.model_type),
        output_loading_info=True,
        trust_remote_code=False,
    )
    _check_loading(info, folder)
    # transformers records the key conversions a load applied, and save_pretrained reverts them. A
    # state dict in native names needs none, and an empty record would have save_pretrained write
    # the names the model holds in memory (Qwen3-MoE's experts stacked) instead of those of
    # transformers' own checkpoints (one tensor per expert); without it, as for a model built from
    # its config, save_pretrained writes the architecture's checkpoint names.
    vars(model).pop("_weight_conversions", None)
    return model


@torch.no_grad()
def fit_embeddings(model: InternVLForConditionalGeneration, tokenizer: PreTrainedTokenizerBase) -> int:
    """Grow the token embeddings and the LM head to the tokenizer's length when tokens were added
    (InternVL's rule: new rows are the mean of the old ones). Returns the rows added."""
    rows = model.get_input_embeddings().num_embeddings  # not weight.shape: a ZeRO-3 partition is empty
    added = len(tokenizer) - rows
    if added <= 0:
        return 0
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
        weight = embedding.weight
        weight[rows:] = weight[:rows].mean(dim=0, keepdim=True)
    log.info("grew the token embeddings by %d rows for added special tokens", added)
    return added


def load(
    source: str | os.PathLike[str],
    *,
    layout: Literal["auto", "hf", "original"] = "auto",
    dtype: torch.dtype | str | None = "auto",
    attn_implementation: str | None = None,
    storage: Any = None,
    cache_dir: str | Path | None = None,
    name: str | None = None,
) -> Loaded:
    """Load an InternVL folder (local path or S3 prefix) in either layout as a native model, with
    its tokenizer and processor when the folder has a tokenizer. ``name`` is what the model goes
    by (PEFT records it as the base of adapters): by default the S3 URI, or the folder. Raises
    ModelFolderError or LayoutError naming what is wrong."""
    folder = fetch_folder(source, storage=storage, cache_dir=cache_dir)
    config = read_config(folder)
    found = detect_layout(config, folder)
    if layout != "auto" and layout != found:
        raise ModelFolderError(f"{folder}: expected the {layout} layout, config.json describes the {found} layout")
    tokenizer = load_tokenizer(folder, original_layout=found == "original") if has_tokenizer(folder) else None
    if found == "original":
        image_token_id = tokenizer.context_image_token_id if tokenizer is not None else None
        model = load_original_model(
            folder, config, image_token_id=image_token_id, dtype=dtype, attn_implementation=attn_implementation
        )
    else:
        model = load_hf_model(folder, config, dtype=dtype, attn_implementation=attn_implementation)
    derive_packed_masks(model)
    location = str(source)
    model.name_or_path = name or (location if location.startswith("s3://") else str(folder))
    model.config._name_or_path = model.name_or_path
    if tokenizer is not None:
        fit_embeddings(model, tokenizer)
    if tokenizer is not None and tokenizer.context_image_token_id != model.config.image_token_id:
        raise LayoutError(
            f"{folder}: the tokenizer's <IMG_CONTEXT> is id {tokenizer.context_image_token_id},"
            f" the model's image_token_id is {model.config.image_token_id}"
        )
    processor = None
    if tokenizer is not None:
        tiles = config if found == "original" else {}
        processor = load_processor(
            folder,
            tokenizer,
            image_size=int(model.config.vision_config.image_size[0]),
            image_seq_length=model.config.image_seq_length,
            min_tiles=tiles.get("min_dynamic_patch", 1),
            max_tiles=tiles.get("max_dynamic_patch", DEFAULT_MAX_TILES),
        )
    log.info("loaded %s (%s layout, %s)", folder, found, model.dtype)
    return Loaded(model=model, tokenizer=tokenizer, processor=processor, layout=found, folder=folder)
