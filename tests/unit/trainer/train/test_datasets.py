"""The run's datasets: the held-out split is seeded, disjoint from training and covers every line;
samples are built from their lines with their own randomness."""

from __future__ import annotations

import pytest
import torch
from transformers import InternVLConfig

from internvl_trainer.data.sampling import SampleRef
from internvl_trainer.model.processor import load_tokenizer
from internvl_trainer.storage import Storage
from internvl_trainer.train.datasets import Where, open_run_data
from tests.unit.trainer.train.runs import train_config, write_data


@pytest.fixture
def opened(tmp_path, tiny_model_dir):
    def make(seed: int = 7, eval_split: float = 0.25, count: int = 12):
        meta = write_data(tmp_path / f"data-{count}", count=count)
        config = train_config(
            str(tiny_model_dir),
            str(meta),
            str(tmp_path / "out"),
            data={"evalSplit": eval_split},
            training={"seed": seed},
        )
        return open_run_data(
            config,
            load_tokenizer(tiny_model_dir),
            InternVLConfig.from_pretrained(tiny_model_dir),
            storage=Storage(),
            cache_dir=tmp_path / "cache",
        )

    return make


def test_held_out_split(opened):
    data = opened()
    (spec,) = data.specs()
    assert (spec.name, spec.size) == ("pictures", 9)
    held = [where.line for where in data.eval_refs()]
    trained = [data.line(0, index) for index in range(spec.size)]
    assert len(held) == 3 and sorted(held + trained) == list(range(12))
    assert held == [where.line for where in opened().eval_refs()]  # the same with the same seed
    assert held != [where.line for where in opened(seed=8).eval_refs()]


def test_a_drawn_sample_is_its_line(opened):
    data = opened(eval_split=0.0, count=8)
    sample = data.build(SampleRef(dataset=0, index=3, epoch=0, position=0))
    record = data.record(Where(0, data.line(0, 3)))
    answer = record["conversations"][1]["value"]
    text = data.builder.encoder.tokenizer.decode(sample.input_ids[sample.labels != -100])
    assert text.startswith(answer)
    assert sample.pixel_values.shape == (1, 3, 56, 56) and sample.kind == "image"
    again = data.build(SampleRef(dataset=0, index=3, epoch=0, position=0))
    assert torch.equal(again.input_ids, sample.input_ids) and torch.equal(again.pixel_values, sample.pixel_values)
    assert data.where(Where(0, 2)).endswith("train.jsonl:3")
