"""LoRA: targets limited to the LLM by module path, the projector trained in full next to the
adapters, and merge: the adapter matters, merged equals adapted, the export reloads to the same."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from safetensors import safe_open

from internvl_trainer.config import MethodConfig
from internvl_trainer.model.export import export
from internvl_trainer.model.load import load
from internvl_trainer.model.lora import adapted_modules, merge, save_adapter, target_pattern
from internvl_trainer.model.prepare import prepare_for_training
from tests.unit.trainer.model.conftest import batch, changed, logits, lora_method, make_model, one_step, snapshot

LLM_MODULES = [
    f"model.language_model.layers.{layer}.{name}"
    for layer in (0, 1)
    for name in (
        "mlp.down_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "self_attn.k_proj",
        "self_attn.o_proj",
        "self_attn.q_proj",
        "self_attn.v_proj",
    )
]
VISION_MODULES = [
    f"model.vision_tower.encoder.layer.{layer}.{name}"
    for layer in (0, 1)
    for name in (
        "attention.k_proj",
        "attention.projection_layer",
        "attention.q_proj",
        "attention.v_proj",
        "mlp.fc1",
        "mlp.fc2",
    )
]


def test_adapters_go_to_the_llm_only_by_default(tokenizer):
    prepared = prepare_for_training(make_model(tokenizer), lora_method(), gradient_checkpointing=False)
    wrapped = [name.removeprefix("base_model.model.") for name in adapted_modules(prepared.model)]
    assert wrapped == sorted(LLM_MODULES)


def test_vision_adapters_on_request(tokenizer):
    prepared = prepare_for_training(make_model(tokenizer), lora_method(targets=["llm", "vision"]))
    wrapped = [name.removeprefix("base_model.model.") for name in adapted_modules(prepared.model)]
    assert wrapped == sorted(LLM_MODULES + VISION_MODULES)


def test_target_pattern_is_a_full_module_path():
    pattern = target_pattern(["llm"])
    assert re.fullmatch(pattern, "model.language_model.layers.12.self_attn.q_proj")
    assert not re.fullmatch(pattern, "model.vision_tower.encoder.layer.0.attention.q_proj")
    assert not re.fullmatch(pattern, "model.language_model.layers.12.self_attn.q_proj.lora_A")
    assert target_pattern(["llm", "experts"]) == target_pattern(["llm"])
    assert target_pattern(["experts"]) is None  # the experts are parameters, not modules
    with pytest.raises(ValueError, match="method.lora.targets: expected llm, vision and/or experts"):
        target_pattern(["audio"])


def test_only_adapters_and_the_projector_change(tokenizer):
    prepared = prepare_for_training(make_model(tokenizer), lora_method())
    model = prepared.model
    before = snapshot(model)
    inputs = batch(tokenizer)
    one_step(model, inputs)
    one_step(model, inputs)  # lora_A gets a gradient only once lora_B is no longer zero
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed(model, before) == trainable
    assert len([n for n in trainable if ".lora_A." in n]) == len([n for n in trainable if ".lora_B." in n]) == 14
    projector = {n for n in trainable if "multi_modal_projector" in n}
    assert len(projector) == 6 and all(".modules_to_save.default." in n for n in projector)
    assert len(trainable) == 14 * 2 + 6


def test_merge_equals_adapted_and_the_export_reloads_the_same(tokenizer, processor, tmp_path):
    prepared = prepare_for_training(make_model(tokenizer, seed=3), lora_method(), gradient_checkpointing=True)
    model = prepared.model
    inputs = batch(tokenizer, seed=1)
    with model.disable_adapter():
        base = logits(model, inputs)
    losses = [one_step(model, inputs, learning_rate=1e-2, weight_decay=0.0) for _ in range(4)]
    assert losses[-1] < losses[0]
    adapted = logits(model, inputs)
    adapter_effect = (adapted - base).abs().max().item()
    assert adapter_effect > 1e-2

    merged = merge(model)
    assert type(merged).__name__ == "InternVLForConditionalGeneration"
    assert not adapted_modules(merged)
    merged_logits = logits(merged, inputs)
    assert (merged_logits - adapted).abs().max().item() < 1e-4

    for layout in ("hf", "original"):
        export(merged, tmp_path / layout, layout, processor=processor)
        assert (tmp_path / layout / "manifest.json").is_file()
        reloaded = load(tmp_path / layout)
        assert (logits(reloaded.model, inputs) - merged_logits).abs().max().item() < 1e-4


@pytest.mark.parametrize("llm", ["qwen3_moe", "gpt_oss"])
def test_llm_adapters_on_moe_models_are_on_the_attention_only(tokenizer, llm):
    prepared = prepare_for_training(make_model(tokenizer, llm), lora_method())
    attention = [m for m in LLM_MODULES if ".self_attn." in m]
    assert adapted_modules(prepared.model) == sorted(f"base_model.model.{m}" for m in attention)
    assert not [n for n, p in prepared.model.named_parameters() if p.requires_grad and ".mlp." in n]


@pytest.mark.parametrize("llm", ["qwen3_moe", "gpt_oss"])
def test_expert_adapters_train_merge_back_exactly_and_export(tokenizer, processor, tmp_path, llm):
    model = prepare_for_training(
        make_model(tokenizer, llm, seed=3), lora_method(targets=["llm", "experts"], dropout=0.0)
    ).model
    experts = [f"base_model.model.model.language_model.layers.{layer}.mlp.experts" for layer in (0, 1)]
    assert set(experts) <= set(adapted_modules(model))
    inputs = batch(tokenizer, seed=1)
    with model.disable_adapter():
        base = logits(model, inputs)
    before = snapshot(model)
    for _ in range(3):
        one_step(model, inputs, learning_rate=1e-2, weight_decay=0.0)
    trained = changed(model, before)
    assert {n for n in trained if ".mlp.experts." in n and ".lora_" in n} and trained == {
        n for n, p in model.named_parameters() if p.requires_grad
    }
    adapted = logits(model, inputs)
    assert (adapted - base).abs().max().item() > 1e-2

    merged = merge(model)
    assert not adapted_modules(merged)
    merged_logits = logits(merged, inputs)
    assert (merged_logits - adapted).abs().max().item() < 1e-4
    for layout in ("hf", "original"):
        export(merged, tmp_path / layout, layout, processor=processor)
        assert torch.equal(logits(load(tmp_path / layout).model, inputs), merged_logits)


def test_expert_adapters_need_a_moe_model(tokenizer):
    with pytest.raises(ValueError, match="experts, but the language model has no mixture-of-experts layers"):
        prepare_for_training(make_model(tokenizer, "qwen3"), lora_method(targets=["experts"], dropout=0.0))


@pytest.mark.parametrize(
    ("method", "embeddings_saved"),
    [
        (lora_method(), False),
        (MethodConfig(type="lora", lora={"rank": 4, "targets": ["vision"]}, freeze={"llm": False}), True),
    ],
    ids=["llm-adapters", "llm-trained-in-full"],
)
def test_an_adapter_holds_the_embeddings_only_when_they_train(tokenizer, tmp_path, method, embeddings_saved):
    base = make_model(tokenizer)
    base.name_or_path = "s3://models/tiny"  # as load names a base fetched from S3
    model = prepare_for_training(base, method, gradient_checkpointing=False).model
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PEFT would warn that it cannot look the base up
        save_adapter(model, str(tmp_path))
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == "s3://models/tiny"
    with safe_open(tmp_path / "adapter_model.safetensors", "pt") as adapter:
        keys = list(adapter.keys())
    assert any("lora_A" in key for key in keys)
    assert any("embed_tokens" in key for key in keys) == embeddings_saved
