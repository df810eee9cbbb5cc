"""``internvl-train run`` on tiny InternVL3.5 models of each language-model family (dense Qwen3,
Qwen3-MoE, GPT-OSS): a full run from a base in the transformers layout and LoRA runs (on the
attention and MLP projections; on the MoE models also on the experts) from a base in the original
layout, each publishing both layouts. The runs train, the two published layouts load to the same
logits, and LoRA's published (merged) model equals its base with the run's final adapters applied."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open

from internvl_trainer.config import TrainConfig
from internvl_trainer.model.export import save_original
from internvl_trainer.model.load import load
from internvl_trainer.train.run import run
from tests.unit.trainer.model.conftest import batch, logits
from tests.unit.trainer.train.runs import train_config, write_data, write_model

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_thread")]

MODEL_NAMES = {
    "qwen3": "InternVL3_5-8B",
    "qwen3_moe": "InternVL3_5-30B-A3B",
    "gpt_oss": "InternVL3_5-GPT-OSS-20B-A4B-Preview",
}
STEPS = 8


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("pictures"))


EXPERT_LORA = {"rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["llm", "experts"]}
RUNS = [(llm, method) for llm in MODEL_NAMES for method in ("full", "lora")]
RUNS += [("qwen3_moe", "lora-experts"), ("gpt_oss", "lora-experts")]


@pytest.mark.parametrize(("llm", "method"), RUNS)
def test_a_run_trains_and_publishes_both_layouts(tmp_path, pictures, llm, method):
    base = write_model(tmp_path / "base-hf", llm=llm)
    lora = method.startswith("lora")
    if lora:
        converted = load(base)
        base = save_original(converted.model, tmp_path / "base-original", processor=converted.processor)
    output = tmp_path / "out"
    config = train_config(
        str(base),
        str(pictures),
        str(output),
        method="lora" if lora else "full",
        learning_rate=5e-3 if lora else 2e-3,
        steps=STEPS,
        model={"name": MODEL_NAMES[llm]},
        output={"layouts": ["hf", "original"]},
    )
    if method == "lora-experts":
        document = config.to_wire()
        document["method"]["lora"] = EXPERT_LORA
        config = TrainConfig.model_validate(document)
    result = run(config, environ={}, scratch=tmp_path / "scratch")

    assert result.steps == STEPS
    metrics = (output / "runs/uid-1/metrics.jsonl").read_text().splitlines()
    losses = [json.loads(line)["loss"] for line in metrics]
    # measured (8 steps, from 10.3 to 10.7): full -> 1.0 (qwen3), 2.0 (qwen3_moe), 2.8 (gpt_oss);
    # LoRA -> 2.0, 4.9, 5.8; LoRA with the experts -> 3.6 (qwen3_moe), 4.2 (gpt_oss)
    assert losses[-1] < 0.6 * losses[0], losses

    hf, original = load(output / "model"), load(output / "model-original")
    assert (hf.layout, original.layout) == ("hf", "original")
    assert type(hf.model.config.text_config) is type(original.model.config.text_config)
    assert hf.model.config.text_config.model_type == llm
    inputs = batch(hf.tokenizer)
    published = logits(hf.model, inputs)
    assert torch.equal(logits(original.model, inputs), published)

    if lora:
        adapters = output / f"runs/uid-1/checkpoints/checkpoint-{STEPS}"
        with safe_open(adapters / "adapter_model.safetensors", "pt") as saved:
            expert_keys = [key for key in saved.keys() if ".mlp.experts." in key]
        assert bool(expert_keys) == (method == "lora-experts")
        adapted = PeftModel.from_pretrained(load(base).model, str(adapters))
        torch.testing.assert_close(logits(adapted, inputs), published, rtol=0, atol=1e-5)
        with adapted.disable_adapter():
            assert (logits(adapted, inputs) - published).abs().max() > 1e-1
