"""Bad samples: counted by kind with the first examples as file:line, strict mode stops at the first,
and the processes of a run add up into one summary."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from internvl_trainer.data.errors import ImageDecodeError, MissingMediaError, RecordJsonError, StrictDataError
from internvl_trainer.data.report import BadSamples, write_report
from internvl_trainer.storage import Storage


def test_bad_samples_are_counted_by_kind_with_examples():
    bad = BadSamples(examples=2)
    for line in range(1, 5):
        bad.skip(RecordJsonError("invalid JSON"), f"train.jsonl:{line}")
    bad.skip(MissingMediaError("a.jpg: no such file"), "train.jsonl:9")
    bad.skip(MissingMediaError("a.jpg: no such file"), "train.jsonl:9")  # the same sample again
    assert bad.total == 5
    assert bad.summary() == {
        "skipped": 5,
        "byKind": {"json": 4, "missing": 1},
        "examples": {
            "json": ["train.jsonl:1: invalid JSON", "train.jsonl:2: invalid JSON"],
            "missing": ["train.jsonl:9: a.jpg: no such file"],
        },
    }


def test_strict_mode_stops_at_the_first_with_its_place():
    bad = BadSamples(strict=True)
    with pytest.raises(StrictDataError) as caught:
        bad.skip(ImageDecodeError("cannot open image"), "s3://data/train.jsonl:12")
    assert str(caught.value) == "s3://data/train.jsonl:12: cannot open image"
    assert bad.total == 0


def _worker(folder: str, lines: list[int]) -> None:
    from pathlib import Path

    bad = BadSamples(folder=Path(folder))
    for line in lines:
        bad.skip(RecordJsonError("invalid JSON"), f"train.jsonl:{line}")


def test_the_processes_of_a_run_add_up(tmp_path):
    folder = tmp_path / "bad-samples"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_worker, args=(str(folder), lines)) for lines in ([1, 2], [2, 3], [4])]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(list(folder.glob("bad-*.jsonl"))) == 3
    summary = BadSamples(folder=folder, examples=10).summary()
    assert summary["skipped"] == 4 and summary["byKind"] == {"json": 4}  # line 2, seen twice, counts once
    assert sorted(summary["examples"]["json"]) == [f"train.jsonl:{line}: invalid JSON" for line in (1, 2, 3, 4)]


def test_the_report_is_a_json_file(tmp_path):
    write_report({"badSamples": BadSamples().summary()}, str(tmp_path / "runs/uid/data-report.json"), Storage())
    assert json.loads((tmp_path / "runs/uid/data-report.json").read_text()) == {
        "badSamples": {"skipped": 0, "byKind": {}, "examples": {}}
    }
