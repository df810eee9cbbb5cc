"""The tiny models: every LLM family builds, runs, and has every parameter perturbed."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from transformers import InternVLForConditionalGeneration

from internvl_trainer.model.tiny import TinyLLM, tiny_config, tiny_model
from tests.unit.trainer.model.conftest import IMAGE_SIZE, batch, make_model

FAMILIES = get_args(TinyLLM)


@pytest.mark.parametrize("llm", FAMILIES)
def test_each_family_runs_a_forward_pass_with_a_finite_loss(tokenizer, llm):
    model = make_model(tokenizer, llm)
    assert model.config.text_config.model_type == llm
    out = model(**batch(tokenizer))
    assert out.logits.shape[-1] == len(tokenizer)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("llm", FAMILIES)
def test_every_parameter_is_perturbed_from_its_initial_value(tokenizer, llm):
    config = tiny_config(tokenizer, llm=llm, image_size=IMAGE_SIZE)
    torch.manual_seed(0)
    initial = dict(InternVLForConditionalGeneration(config).named_parameters())
    perturbed = dict(tiny_model(config).named_parameters())
    assert [n for n, p in perturbed.items() if torch.equal(p, initial[n])] == []


def test_the_families_carry_the_parts_of_internvl35_language_models(tokenizer):
    names = {llm: set(dict(make_model(tokenizer, llm).named_parameters())) for llm in FAMILIES}
    layer = "model.language_model.layers.0"
    assert {f"{layer}.self_attn.q_norm.weight", f"{layer}.self_attn.k_norm.weight"} <= names["qwen3"]
    assert {f"{layer}.mlp.gate.weight", f"{layer}.mlp.experts.gate_up_proj"} <= names["qwen3_moe"]
    assert {f"{layer}.self_attn.sinks", f"{layer}.mlp.router.bias", f"{layer}.mlp.experts.down_proj_bias"} <= names[
        "gpt_oss"
    ]
    gpt_oss = tiny_config(tokenizer, llm="gpt_oss").text_config
    assert gpt_oss.layer_types == ["sliding_attention", "full_attention"]
    assert gpt_oss.sliding_window < batch(tokenizer)["input_ids"].shape[1]


def test_an_unknown_family_is_refused_by_name(tokenizer):
    with pytest.raises(ValueError, match="llm: 'mistral'"):
        tiny_config(tokenizer, llm="mistral")
