"""Scoring answers: normalisation, exact match, token F1, the prompt of the last turn; and
``internvl-train evaluate`` on a local model and meta file."""

from __future__ import annotations

import json

import pytest
import torch

from internvl_trainer.cli import main
from internvl_trainer.loss import IGNORE_INDEX
from internvl_trainer.train.evaluate import exact_match, normalise, prompt_length, summarise, token_f1


def test_normalise_and_exact_match():
    assert normalise("  The Cat, sat!\n") == "the cat sat"
    assert exact_match("the cat sat", "The cat sat.") == 1.0
    assert exact_match("the cat", "The cat sat.") == 0.0


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("a cat sits on a mat", "A cat sits on a red mat.", 2 * (6 / 6) * (6 / 7) / (6 / 6 + 6 / 7)),
        ("dog", "a cat", 0.0),
        ("", "", 1.0),
        ("", "cat", 0.0),
        ("猫在垫子上", "猫坐在垫子上", 2 * 1 * (5 / 6) / (1 + 5 / 6)),  # CJK: one character, one token
    ],
)
def test_token_f1(prediction, reference, expected):
    assert token_f1(prediction, reference) == pytest.approx(expected)


def test_the_prompt_ends_where_the_last_answer_starts():
    labels = torch.tensor([IGNORE_INDEX] * 3 + [5, 6] + [IGNORE_INDEX] * 2 + [7, 8, 9])
    assert prompt_length(labels) == 7
    assert prompt_length(torch.full((4,), IGNORE_INDEX)) is None


def test_summary_weighs_the_loss_by_tokens():
    lines = [
        {"exactMatch": 1.0, "tokenF1": 1.0, "loss": 1.0, "tokens": 10},
        {"exactMatch": 0.0, "tokenF1": 0.5, "loss": 4.0, "tokens": 30},
    ]
    assert summarise(lines, skipped=1) == {
        "samples": 2,
        "skipped": 1,
        "exactMatch": 0.5,
        "tokenF1": 0.75,
        "loss": 3.25,
        "tokens": 40,
    }


def test_evaluate_command(tmp_path, tiny_model_dir, pictures, capsys):
    output = tmp_path / "predictions.jsonl"
    code = main(
        [
            "evaluate",
            "--model",
            str(tiny_model_dir),
            "--data",
            str(pictures),
            "--output",
            str(output),
            "--model-name",
            "InternVL3-1B",
            "--max-new-tokens",
            "4",
            "--limit",
            "3",
            "--format",
            "json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert summary["samples"] == 3 == len(lines) and summary["model"] == str(tiny_model_dir)
    assert [line["id"] for line in lines] == ["pictures:0", "pictures:1", "pictures:2"]
    assert lines[0]["where"] == f"{pictures.parent / 'train.jsonl'}:1"
    assert lines[0]["reference"] == "A cat sits on a red mat."
    assert all(isinstance(line["prediction"], str) and line["tokens"] > 0 and line["loss"] > 0 for line in lines)
    assert summary["loss"] == pytest.approx(
        sum(line["loss"] * line["tokens"] for line in lines) / sum(line["tokens"] for line in lines)
    )
    assert json.loads((tmp_path / "predictions.jsonl.summary.json").read_text()) == summary


def test_evaluate_refuses_a_folder_that_is_no_model(tmp_path, pictures, capsys):
    assert main(["evaluate", "--model", str(tmp_path), "--data", str(pictures)]) == 2
    assert "--model:" in capsys.readouterr().err
