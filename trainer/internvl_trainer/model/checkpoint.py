"""Existing checkpoint folders: a LoRA adapter to merge into its base, or a full model to re-export.

What ``internvl-train merge`` and ``internvl-train export`` run:

- ``merge_checkpoint``: a PEFT adapter folder (``adapter_config.json``, with any
  ``modules_to_save`` such as a trained projector) + its base model (either layout; the base named
  in the adapter config unless given) → one plain native model, merged once, then written to every
  requested destination.
- ``export_checkpoint``: a full model folder in either layout → the requested layouts.

Sources and destinations are local folders or S3 prefixes (fetched and published through the
storage layer). The tokenizer and processor come from the checkpoint when it has a tokenizer,
else from the base.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel

from internvl_trainer.model.export import ExportLayout, export
from internvl_trainer.model.load import (
    ADAPTER_CONFIG,
    Loaded,
    ModelFolderError,
    fetch_folder,
    load,
)
from internvl_trainer.model.processor import TileLimits, has_tokenizer, load_processor, load_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destinations:
    """Where each layout goes (at least one)."""

    hf: str | None = None
    original: str | None = None

    def items(self) -> list[tuple[ExportLayout, str]]:
        return [(layout, uri) for layout, uri in (("hf", self.hf), ("original", self.original)) if uri]


class DestinationError(ValueError):
    """A destination that cannot take an export; ``option`` names which (hf or original)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def check_destinations(destinations: Destinations) -> None:
    """Refuse, before any work, a local destination that is a non-empty folder or a file."""
    from internvl_trainer.storage import parse

    if not destinations.items():
        raise DestinationError("hf", "give at least one destination")
    for layout, uri in destinations.items():
        location = parse(uri)
        if location.is_s3:
            continue
        path = location.path
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise DestinationError(layout, f"{path}: the destination folder is not empty")


def is_adapter(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def adapter_base(folder: Path) -> str | None:
    """The base model an adapter folder names (``base_model_name_or_path``), if any."""
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"{folder / ADAPTER_CONFIG}: cannot be read ({error})") from None
    return config.get("base_model_name_or_path") or None


def _processing_from(folder: Path, loaded: Loaded) -> Loaded:
    """``loaded`` with the tokenizer and processor of ``folder`` when it has a tokenizer."""
    if not has_tokenizer(folder):
        return loaded
    tokenizer = load_tokenizer(folder)
    config = loaded.model.config
    processor = load_processor(
        folder,
        tokenizer,
        image_size=int(config.vision_config.image_size[0]),
        image_seq_length=config.image_seq_length,
    )
    return Loaded(loaded.model, tokenizer, processor, loaded.layout, loaded.folder)


def _write(
    loaded: Loaded,
    destinations: Destinations,
    *,
    llm_architecture: str | None,
    storage: Any,
    producer: Mapping[str, Any] | None,
    base_folder: Path | None,
    tile_limits: TileLimits | None,
) -> list[str]:
    """Export ``loaded`` to every destination; InternVL's ``.py`` files and the tokenizer's
    vocabulary files come from ``base_folder``, the processor's tile limits from ``tile_limits``
    when given."""
    written = []
    for layout, uri in destinations.items():
        written.append(
            export(
                loaded.model,
                uri,
                layout,
                tokenizer=loaded.tokenizer,
                processor=loaded.processor,
                llm_architecture=llm_architecture,
                base_folder=base_folder,
                storage=storage,
                producer=dict(producer) if producer else None,
                tile_limits=tile_limits,
            )
        )
    return written


def merge_checkpoint(
    checkpoint: str | os.PathLike[str],
    destinations: Destinations,
    *,
    base: str | None = None,
    fallback_base: str | None = None,
    dtype: str = "auto",
    llm_architecture: str | None = None,
    storage: Any = None,
    cache_dir: str | Path | None = None,
    producer: Mapping[str, Any] | None = None,
    tile_limits: TileLimits | None = None,
) -> list[str]:
    """Merge an adapter checkpoint into its base and write every destination. Returns them. The
    base is ``base``, else the one the adapter names, else ``fallback_base``; the processor's tile
    limits are ``tile_limits`` when given."""
    check_destinations(destinations)
    folder = fetch_folder(checkpoint, storage=storage, cache_dir=cache_dir)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such folder")
    if not is_adapter(folder):
        raise ModelFolderError(f"{folder}: no {ADAPTER_CONFIG}; a full model is exported with internvl-train export")
    base = base or adapter_base(folder) or fallback_base
    if not base:
        raise ModelFolderError(f"{folder / ADAPTER_CONFIG}: names no base model; give it with --base")
    loaded = load(base, dtype=dtype, storage=storage, cache_dir=cache_dir)
    adapted = PeftModel.from_pretrained(loaded.model, str(folder))
    merged = adapted.merge_and_unload()
    log.info("merged the adapter of %s into %s", folder, loaded.folder)
    result = _processing_from(folder, Loaded(merged, loaded.tokenizer, loaded.processor, loaded.layout, loaded.folder))
    return _write(
        result,
        destinations,
        llm_architecture=llm_architecture,
        storage=storage,
        producer=producer,
        base_folder=loaded.folder,
        tile_limits=tile_limits,
    )


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    destinations: Destinations,
    *,
    dtype: str = "auto",
    llm_architecture: str | None = None,
    storage: Any = None,
    cache_dir: str | Path | None = None,
    producer: Mapping[str, Any] | None = None,
    code_from: str | None = None,
    tile_limits: TileLimits | None = None,
) -> list[str]:
    """Write a full model checkpoint (either layout) to every destination. Returns them. An
    original-layout destination gets InternVL's ``.py`` files from the checkpoint when it is in
    that layout, else from ``code_from`` (a folder or S3 prefix: the base a fine-tune started from,
    already in the cache when it was loaded from there), and so do the tokenizer's vocabulary files.
    The processor's tile limits are ``tile_limits`` when given."""
    check_destinations(destinations)
    folder = fetch_folder(checkpoint, storage=storage, cache_dir=cache_dir)
    if folder.is_dir() and is_adapter(folder):
        raise ModelFolderError(f"{folder}: holds a LoRA adapter; merge it into its base with internvl-train merge")
    loaded = load(folder, dtype=dtype)
    base_folder = loaded.folder
    if loaded.layout != "original" and code_from is not None and destinations.original:
        base_folder = fetch_folder(code_from, storage=storage, cache_dir=cache_dir)
    return _write(
        loaded,
        destinations,
        llm_architecture=llm_architecture,
        storage=storage,
        producer=producer,
        base_folder=base_folder,
        tile_limits=tile_limits,
    )
