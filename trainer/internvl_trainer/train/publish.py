"""The end of a run: the trained model merged, exported, checked, and published under the output URI.

On the main process, after training (docs/contract.md §3):

1. ``<output.uri>/manifest.json`` is deleted, so a half-replaced model never looks complete.
2. The final folder the Trainer saved (the full model, or the LoRA adapters with any part trained in
   full) is merged into the base when LoRA (``output.mergeLora``), and written in every requested
   layout into a local staging folder, in the base model's dtype, with the run's tile limits
   (``data.minTiles``, ``data.maxTiles``) in its processor, and each file hashed into the folder's
   manifest.
3. The staged folder is loaded again, as a user would load it, and generates answers to a few
   held-out samples (training samples when nothing is held out): ``validation.jsonl`` with the
   references, exact match, token F1 and loss, uploaded to ``runs/<uid>/validation.jsonl``.
4. Each layout is uploaded (``model/``, ``model-original/``, each with its own manifest, the hashes
   taken from the staged one: a model is hashed once), and the root ``manifest.json`` is written
   last: every file of ``model*/`` with its size and sha256, the time, and the train.yaml that
   produced it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internvl_trainer.config import MODEL_FOLDERS, TrainConfig
from internvl_trainer.model.processor import TileLimits, retile_saved
from internvl_trainer.storage import MANIFEST_NAME, FileEntry, Manifest, Storage
from internvl_trainer.storage.upload import upload_tree

log = logging.getLogger(__name__)

VALIDATION_SAMPLES = 4
VALIDATION_NAME = "validation.jsonl"


@dataclass
class Published:
    model_uri: str
    manifest_uri: str
    layouts: dict[str, str]
    validation: dict[str, Any]


def base_dtype(folder: Path) -> str:
    """The dtype a model folder's config.json declares (``auto`` when it declares none)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "auto"
    for source in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        value = source.get("dtype") or source.get("torch_dtype")
        if value in ("float32", "bfloat16", "float16"):
            return value
    return "auto"


def export_layouts(
    config: TrainConfig,
    final_dir: Path,
    staging: Path,
    *,
    storage: Storage,
    cache_dir: Path,
    dtype: str,
) -> dict[str, Path]:
    """Write the requested layouts of the trained model into ``staging``; returns them by name."""
    from internvl_trainer.model.checkpoint import Destinations, export_checkpoint, is_adapter, merge_checkpoint

    if staging.exists():
        shutil.rmtree(staging)
    wanted = {layout: staging / MODEL_FOLDERS[layout] for layout in config.output.layouts}
    tile_limits = TileLimits(config.data.min_tiles, config.data.max_tiles)
    if is_adapter(final_dir) and not config.output.merge_lora:
        # Adapters published as they are: only the hf destination can hold them.
        adapters = staging / MODEL_FOLDERS["hf"]
        shutil.copytree(final_dir, adapters)
        retile_saved(adapters, tile_limits)
        return {"hf": adapters}
    destinations = Destinations(**{layout: str(path) for layout, path in wanted.items()})
    options = {
        "dtype": dtype,
        "storage": storage,
        "cache_dir": cache_dir,
        "producer": config.to_wire(),
        "tile_limits": tile_limits,
    }
    if is_adapter(final_dir):
        merge_checkpoint(final_dir, destinations, base=config.model.weights, **options)
    else:
        export_checkpoint(final_dir, destinations, code_from=config.model.weights, **options)
    return wanted


def staged_hashes(folder: Path) -> Manifest | None:
    """The hashes ``export`` wrote into a staged folder's manifest, taken out of the folder (the
    upload writes the published manifest), or None when it has none (adapters copied as saved)."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    hashed = Manifest.from_json(path.read_bytes(), source=str(path))
    path.unlink()
    return hashed


def validate(folder: Path, data: Any, *, samples: int = VALIDATION_SAMPLES, max_new_tokens: int = 32) -> list[dict]:
    """Load a staged folder and score a few held-out (else training) samples with it."""
    from internvl_trainer.model.load import load
    from internvl_trainer.train.datasets import Where
    from internvl_trainer.train.evaluate import evaluate_samples

    loaded = load(folder)
    if loaded.tokenizer is None:
        raise ValueError(f"{folder}: the exported model has no tokenizer")
    refs = data.eval_refs()[:samples]
    held_out = bool(refs)
    if not held_out:
        specs = data.specs()
        refs = [
            Where(dataset, data.line(dataset, index))
            for index in range(samples)
            for dataset, spec in enumerate(specs)
            if index < spec.size
        ][:samples]
    items = []
    for where in refs:
        sample = data.build_eval(where)
        record = data.record(where) if sample is not None else None
        items.append((f"{data.names[where.dataset]}:{where.line}", data.where(where), record, sample))
    lines, _ = evaluate_samples(loaded.model, loaded.tokenizer, items, max_new_tokens=max_new_tokens, progress=False)
    for line in lines:
        line["heldOut"] = held_out
    return lines


def publish(
    config: TrainConfig,
    final_dir: Path,
    *,
    storage: Storage,
    scratch: Path,
    cache_dir: Path,
    data: Any,
    dtype: str = "auto",
) -> Published:
    """Steps 1–4 of the module docstring. Returns where the model and its manifest are."""
    from internvl_trainer.train.evaluate import summarise, write_jsonl

    layout = config.layout
    storage.delete(layout.manifest)
    staged = export_layouts(config, final_dir, scratch / "publish", storage=storage, cache_dir=cache_dir, dtype=dtype)
    check_folder = staged.get("hf") or staged["original"]
    lines = validate(check_folder, data) if (check_folder / "config.json").is_file() else []
    validation_file = scratch / VALIDATION_NAME
    write_jsonl(validation_file, lines)
    storage.upload(validation_file, f"{layout.run}/{VALIDATION_NAME}")
    destinations = layout.models()
    entries: list[FileEntry] = []
    uploaded = {}
    for name, folder in staged.items():
        manifest = upload_tree(
            storage, folder, destinations[name], producer=config.to_wire(), hashed=staged_hashes(folder)
        )
        uploaded[name] = destinations[name]
        entries += [
            FileEntry(path=f"{MODEL_FOLDERS[name]}/{entry.path}", size=entry.size, sha256=entry.sha256)
            for entry in manifest.files
        ]
    root = Manifest(files=entries, producer=config.to_wire())
    storage.write_bytes(layout.manifest, root.to_json())
    log.info("published %s (%d files), %s written last", ", ".join(uploaded.values()), len(entries), layout.manifest)
    model_uri = uploaded.get("hf") or uploaded["original"]
    return Published(model_uri, layout.manifest, uploaded, summarise(lines))
