"""Checkpoint folders under runs/<uid>/checkpoints: complete only with a manifest, the newest K
kept, abandoned uploads removed, a re-save of the same step incomplete until its manifest."""

from __future__ import annotations

import json

from internvl_trainer.config import OutputLayout
from internvl_trainer.storage import Manifest, Storage, sha256_file
from internvl_trainer.train import checkpoints


def local_checkpoint(tmp_path, step: int, payload: bytes = b"weights"):
    folder = tmp_path / "trainer" / f"checkpoint-{step}"
    (folder / "global_step1").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "global_step1" / "optim.pt").write_bytes(b"optimizer" * step)
    checkpoints.write_data_state(folder, 0, {"consumed": step})
    return folder


def test_publish_find_prune(tmp_path):
    storage = Storage()
    layout = OutputLayout.under(str(tmp_path / "out"), "uid-7")
    for step in (2, 4, 6):
        folder = local_checkpoint(tmp_path, step)
        manifest = checkpoints.publish(
            storage, folder, checkpoints.checkpoint_uri(layout, step), rank=0, local_rank=0, producer={"a": 1}
        )
        assert [entry.path for entry in manifest.files] == [
            "data-state-rank0.json",
            "global_step1/optim.pt",
            "model.safetensors",
        ]
        assert manifest.by_path()["model.safetensors"].sha256 == sha256_file(folder / "model.safetensors")
    # An upload that died before its manifest, older and newer than the newest complete one.
    for step in (5, 8):
        (tmp_path / f"out/runs/uid-7/checkpoints/checkpoint-{step}").mkdir()
        (tmp_path / f"out/runs/uid-7/checkpoints/checkpoint-{step}/model.safetensors").write_bytes(b"half")

    found = checkpoints.find(storage, layout)
    assert [(c.step, c.complete) for c in found] == [(2, True), (4, True), (5, False), (6, True), (8, False)]
    assert checkpoints.latest(storage, layout).step == 6

    assert checkpoints.prune(storage, layout, keep=2) == [2, 5]
    assert [(c.step, c.complete) for c in checkpoints.find(storage, layout)] == [(4, True), (6, True), (8, False)]

    local = checkpoints.download(storage, checkpoints.latest(storage, layout), tmp_path / "resume")
    assert checkpoints.read_data_states(local, 0) == {"consumed": 6}
    assert checkpoints.read_data_states(local, 3) == [{"consumed": 6}]  # another layout: every rank's state


def test_republishing_a_step_removes_its_manifest_first(tmp_path, monkeypatch):
    storage = Storage()
    layout = OutputLayout.under(str(tmp_path / "out"), "uid-7")
    uri = checkpoints.checkpoint_uri(layout, 4)
    checkpoints.publish(storage, local_checkpoint(tmp_path / "a", 4), uri, rank=0, local_rank=0)
    seen = []
    original = checkpoints.upload_file

    def spy(storage_, path, destination):
        seen.append(storage.exists(f"{uri}/manifest.json"))
        return original(storage_, path, destination)

    monkeypatch.setattr(checkpoints, "upload_file", spy)
    manifest = checkpoints.publish(storage, local_checkpoint(tmp_path / "b", 4, b"other"), uri, rank=0, local_rank=0)
    assert seen and not any(seen)
    stored = Manifest.from_json((tmp_path / "out/runs/uid-7/checkpoints/checkpoint-4/manifest.json").read_text())
    assert stored.same_files(manifest)
    assert json.loads((tmp_path / "out/runs/uid-7/checkpoints/checkpoint-4/data-state-rank0.json").read_text()) == {
        "consumed": 4
    }
