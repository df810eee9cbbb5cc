"""The end of a run on the tiny model: the published layouts tile as the run did, and every file
of a model is hashed once."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from internvl_trainer.config import MethodConfig
from internvl_trainer.model.load import load
from internvl_trainer.model.prepare import prepare_for_training
from internvl_trainer.model.processor import InternVLCpuProcessor
from internvl_trainer.storage import Manifest, Storage, manifest
from internvl_trainer.train.datasets import open_run_data
from internvl_trainer.train.evaluate import evaluation_train_config
from internvl_trainer.train.publish import publish
from tests.unit.trainer.train.runs import train_config

BASE_MAX_TILES = 2  # what the tiny base's processor_config.json says (runs.write_model)


def publish_final(tmp_path: Path, final: Path, base: Path, meta: Path, method: str = "full", **sections: Any):
    """Publish ``final`` as the final folder of a run from ``base``, in both layouts."""
    output = {"layouts": ["hf", "original"], **sections.pop("output", {})}
    config = train_config(str(base), str(meta), str(tmp_path / "out"), method=method, output=output, **sections)
    loaded = load(base)
    storage = Storage()
    run_data = open_run_data(
        config, loaded.tokenizer, loaded.model.config, storage=storage, cache_dir=tmp_path / "data"
    )
    return publish(
        config, final, storage=storage, scratch=tmp_path / "scratch", cache_dir=tmp_path / "cache", data=run_data
    )


def publish_base(tmp_path: Path, model: Path, meta: Path, **data: Any):
    """Publish the base folder itself as a run's final folder."""
    return publish_final(tmp_path, model, model, meta, data=data)


def test_the_published_processor_tiles_as_the_run_did(tmp_path, tiny_model_dir, pictures):
    publish_base(tmp_path, tiny_model_dir, pictures, maxTiles=1)
    output = tmp_path / "out"

    images = load(output / "model").processor.image_processor
    assert (images.min_patches, images.max_patches) == (1, 1)  # the base's folder says 1 and 2
    original = json.loads((output / "model-original/config.json").read_text())
    assert (original["min_dynamic_patch"], original["max_dynamic_patch"]) == (1, 1)
    # evaluate, given the published model without a train.yaml, tiles as the run did.
    evaluation = evaluation_train_config(load(output / "model"), str(output / "model"), str(pictures), None)
    assert evaluation.data.max_tiles == 1


def test_unmerged_adapters_are_published_with_the_runs_tile_limits(tmp_path, tiny_model_dir, pictures):
    loaded = load(tiny_model_dir)
    adapted = prepare_for_training(loaded.model, MethodConfig(type="lora"), gradient_checkpointing=False).model
    adapted.save_pretrained(tmp_path / "final")
    loaded.processor.save_pretrained(tmp_path / "final")

    published = publish_final(
        tmp_path, tmp_path / "final", tiny_model_dir, pictures, method="lora", output={"mergeLora": False}
    )

    assert published.layouts == {"hf": str(tmp_path / "out/model")}
    assert (tmp_path / "out/model/adapter_model.safetensors").is_file()
    images = InternVLCpuProcessor.from_pretrained(str(tmp_path / "out/model")).image_processor
    assert (images.min_patches, images.max_patches) == (1, 1)


def test_every_published_file_is_hashed_once(tmp_path, tiny_model_dir, pictures, monkeypatch, caplog):
    hashed: Counter[str] = Counter()
    sha256_file = manifest.sha256_file

    def counting(path):
        hashed[Path(path).relative_to(tmp_path / "scratch").as_posix()] += 1
        return sha256_file(path)

    monkeypatch.setattr(manifest, "sha256_file", counting)
    with caplog.at_level(logging.WARNING):
        published = publish_base(tmp_path, tiny_model_dir, pictures)
    monkeypatch.undo()

    root = Manifest.from_json((tmp_path / "out/manifest.json").read_text())
    assert sorted(hashed) == sorted([*(f"publish/{entry.path}" for entry in root.files), "validation.jsonl"])
    assert set(hashed.values()) == {1}
    assert "not uploaded" not in caplog.text
    for entry in root.files:
        assert hashlib.sha256((tmp_path / "out" / entry.path).read_bytes()).hexdigest() == entry.sha256
    for layout in published.layouts.values():
        layout_manifest = Manifest.from_json((Path(layout) / "manifest.json").read_text())
        assert layout_manifest.files and layout_manifest.producer == root.producer
