"""The run's datasets behind data-loader workers: every skipped sample, whichever process built
it, reaches the data report with its kind and file:line; the over-long policy's counters add up
over every process; strict mode stops with the same one-line error with and without workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from internvl_trainer.cli import main
from internvl_trainer.config import dump_train_config
from internvl_trainer.data.collate import Collator
from internvl_trainer.data.errors import StrictDataError
from internvl_trainer.data.loader import PackedStream, ResumableLoader
from internvl_trainer.data.sampling import MixtureSampler
from internvl_trainer.train.datasets import RunData
from tests.unit.trainer.data.conftest import bomb_png
from tests.unit.trainer.train.runs import train_config, write_data
from tests.unit.trainer.train.test_datasets import open_data

GOOD = 6
LONG_ANSWER = "The cat runs after the dog. " * 60
"""An answer that takes the sample past the 512 tokens of train_config."""


def write_bad_data(folder: Path, *, clean: bool = False) -> tuple[Path, Path]:
    """Six good samples, then (unless ``clean``) an over-long one (line 7) and a decompression bomb
    (line 8), then a broken line (9, or 7 when ``clean``). Returns (meta file, annotation file)."""
    meta = write_data(folder, count=GOOD)
    annotations = folder / "train.jsonl"
    lines = annotations.read_text().splitlines()
    if not clean:
        (folder / "images/bomb.png").write_bytes(bomb_png(20000, 20000))
        question = {"from": "human", "value": "<image>\nDescribe the image."}
        lines.append(
            json.dumps({"image": "images/0.png", "conversations": [question, {"from": "gpt", "value": LONG_ANSWER}]})
        )
        lines.append(
            json.dumps({"image": "images/bomb.png", "conversations": [question, {"from": "gpt", "value": "Black."}]})
        )
    lines.append('{"id": "broken", "conversations": [')
    annotations.write_text("\n".join(lines) + "\n")
    return meta, annotations


def read_all(data: RunData, workers: int) -> int:
    """Draws one epoch through a loader with ``workers`` processes; returns the samples handed out."""
    sampler = MixtureSampler(data.specs(), seed=7, epochs=1)
    pad_id = data.builder.encoder.tokenizer.pad_token_id
    stream = PackedStream(sampler, data.build, Collator(pad_id=pad_id, packed=False))
    loader = ResumableLoader(stream, num_workers=workers)
    return sum(int(batch["input_ids"].shape[0]) for batch in loader)


@pytest.mark.parametrize("workers", [0, 2])
def test_every_skipped_sample_is_reported_with_its_place_from_any_worker(tmp_path, tiny_model_dir, workers):
    meta, annotations = write_bad_data(tmp_path / "data")
    data = open_data(tiny_model_dir, meta, tmp_path, bad_dir=tmp_path / "bad")

    assert read_all(data, workers) == GOOD
    report = data.report()
    bad = report["badSamples"]
    assert bad["byKind"] == {"image": 1, "json": 1, "overlong": 1}
    assert bad["examples"] == {
        "image": [
            f"{annotations}:8: cannot open image: Image size (400000000 pixels) exceeds limit of 178956970 pixels, "
            "could be decompression bomb DOS attack."
        ],
        "json": [f"{annotations}:9: invalid JSON: Expecting value (column 36)"],
        "overlong": [f"{annotations}:7: 1,232 tokens with 1 tiles; the maximum is 512"],
    }
    assert report["overlong"] == {
        "samples": GOOD + 1,
        "overlong": 1,
        "skipped": 1,
        "truncated": 0,
        "reduced": 0,
        "tokens_cut": 0,
        "tiles_removed": 0,
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_the_over_long_counters_add_up_over_every_worker(tmp_path, tiny_model_dir, workers):
    meta, _ = write_bad_data(tmp_path / "data")
    data = open_data(tiny_model_dir, meta, tmp_path, bad_dir=tmp_path / "bad", data={"overlong": "truncate"})

    assert read_all(data, workers) == GOOD + 1
    report = data.report()
    assert report["badSamples"]["byKind"] == {"image": 1, "json": 1}
    assert report["overlong"] == {
        "samples": GOOD + 1,
        "overlong": 1,
        "skipped": 0,
        "truncated": 1,
        "reduced": 0,
        "tokens_cut": 1232 - 512,
        "tiles_removed": 0,
    }


def test_strict_mode_raises_the_same_one_line_error_with_and_without_workers(tmp_path, tiny_model_dir):
    meta, annotations = write_bad_data(tmp_path / "data", clean=True)
    messages = []
    for workers in (0, 2):
        data = open_data(tiny_model_dir, meta, tmp_path, data={"strict": True})
        with pytest.raises(StrictDataError) as error:
            read_all(data, workers)
        messages.append(str(error.value))
    assert messages == [f"{annotations}:7: invalid JSON: Expecting value (column 36)"] * 2


def test_a_strict_run_exits_2_with_one_line_whatever_its_workers(tmp_path, tiny_model_dir, capsys, monkeypatch):
    meta, annotations = write_bad_data(tmp_path / "data", clean=True)
    monkeypatch.setenv("INTERNVL_SCRATCH", str(tmp_path / "scratch"))
    errors = []
    for workers in (0, 2):
        config = train_config(
            str(tiny_model_dir),
            str(meta),
            str(tmp_path / f"out-{workers}"),
            steps=GOOD + 1,  # the broken line is met within the first epoch
            per_device=1,
            accumulation=1,
            data={"strict": True, "workers": workers},
        )
        path = tmp_path / f"train-{workers}.yaml"
        path.write_text(dump_train_config(config))
        assert main(["run", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        errors.append(err[err.index(str(annotations)) :])  # after the progress bars
    assert errors == [f"{annotations}:7: invalid JSON: Expecting value (column 36)\n"] * 2


def test_a_bad_held_out_sample_in_strict_mode_exits_2_from_the_final_evaluation(
    tmp_path, tiny_model_dir, capsys, monkeypatch
):
    meta = write_data(tmp_path / "data", count=GOOD + 2)
    split = {"strict": True, "evalSplit": 0.125}  # one of the eight samples held out
    [held_out] = open_data(tiny_model_dir, meta, tmp_path, data=split).eval_refs()
    annotations = tmp_path / "data" / "train.jsonl"
    lines = annotations.read_text().splitlines()
    lines[held_out.line] = '{"id": "broken", "conversations": ['  # never trained on, met by the evaluation
    annotations.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("INTERNVL_SCRATCH", str(tmp_path / "scratch"))
    config = train_config(
        str(tiny_model_dir), str(meta), str(tmp_path / "out"), steps=2, per_device=1, accumulation=1, data=split
    )
    path = tmp_path / "train.yaml"
    path.write_text(dump_train_config(config))
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = held_out.line + 1
    assert err[err.index(str(annotations)) :] == f"{annotations}:{line}: invalid JSON: Expecting value (column 36)\n"
