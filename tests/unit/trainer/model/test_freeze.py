"""Freeze flags, unfrozen last vision layers, eval-mode frozen pieces, drop path, checkpointing,
and the no-decay parameter groups: one optimizer step changes exactly the expected tensors."""

from __future__ import annotations

import pytest
import torch

from internvl_trainer.config import FreezeConfig, MethodConfig
from internvl_trainer.model.drop_path import drop_path, layer_rates, set_drop_path
from internvl_trainer.model.freeze import apply_freeze, plan
from internvl_trainer.model.optim import no_decay_names, parameter_groups
from internvl_trainer.model.prepare import prepare_for_training
from tests.unit.trainer.model.conftest import batch, changed, make_model, one_step, snapshot

PROJECTOR = "model.multi_modal_projector."
LLM = ("model.language_model.", "lm_head.")


def test_full_method_trains_projector_llm_and_the_last_vision_layer_only(tokenizer):
    model = make_model(tokenizer)
    method = MethodConfig(type="full", unfreeze_vision_layers=1, drop_path_rate=0.1)
    prepared = prepare_for_training(model, method, gradient_checkpointing=True)
    assert prepared.model is model
    assert prepared.drop_path_rates == pytest.approx([0.0, 0.1])
    assert model.is_activation_checkpointing
    assert model.config.text_config.use_cache is False
    before = snapshot(model)
    one_step(model, batch(tokenizer))
    expected = {
        name
        for name in before
        if name.startswith((PROJECTOR, *LLM)) or name.startswith("model.vision_tower.encoder.layer.1.")
    }
    assert changed(model, before) == expected
    assert len(expected) == 51  # projector 6, LLM 27, vision layer 1: 18
    assert not any(name.startswith("model.vision_tower.embeddings") for name in changed(model, before))


@pytest.mark.parametrize(
    ("flags", "unfrozen", "prefixes"),
    [
        ({"vision": False, "projector": True, "llm": True}, 0, ("model.vision_tower.",)),
        ({"vision": True, "projector": False, "llm": True}, 0, (PROJECTOR,)),
        ({"vision": True, "projector": True, "llm": False}, 0, LLM),
        ({"vision": True, "projector": True, "llm": True}, 2, ("model.vision_tower.encoder.",)),
    ],
)
def test_each_freeze_flag_alone(tokenizer, flags, unfrozen, prefixes):
    model = make_model(tokenizer)
    apply_freeze(model, FreezeConfig(**flags), unfrozen)
    before = snapshot(model)
    one_step(model, batch(tokenizer))
    assert changed(model, before) == {name for name in before if name.startswith(prefixes)}


def test_frozen_vision_pieces_stay_in_eval_mode(tokenizer):
    model = make_model(tokenizer)
    apply_freeze(model, FreezeConfig(vision=True, projector=False, llm=False), unfreeze_vision_layers=1)
    model.train()
    tower = model.model.vision_tower
    assert [tower.embeddings.training, tower.encoder.layer[0].training, tower.encoder.layer[1].training] == [
        False,
        False,
        True,
    ]
    assert tower.encoder.layer[0].attention.training is False
    assert model.model.multi_modal_projector.training and model.model.language_model.training
    model.eval()
    assert not tower.encoder.layer[1].training


def test_drop_path_acts_only_on_trained_vision_layers(tokenizer):
    model = make_model(tokenizer)
    set_drop_path(model, 0.5)
    pixels = batch(tokenizer, tiles=8)["pixel_values"]

    def features():
        return model.model.get_image_features(pixel_values=pixels).pooler_output

    model.eval()
    reference = features()
    model.train()
    torch.manual_seed(0)
    assert not torch.allclose(features(), reference)  # the whole tower trains: drop path is on
    apply_freeze(model, FreezeConfig(vision=True, projector=False, llm=False))
    model.train()
    assert torch.equal(features(), reference)  # frozen tower: eval mode, no noise


def test_drop_path_schedule_and_scaling():
    assert layer_rates(0.1, 3) == pytest.approx([0.0, 0.05, 0.1])
    torch.manual_seed(0)
    out = drop_path(torch.ones(4000, 2, 3), 0.25)
    kept = out[:, 0, 0]
    assert kept.unique().tolist() == pytest.approx([0.0, 4 / 3])
    assert torch.equal(out, kept[:, None, None].expand_as(out))  # whole samples at once
    assert abs((kept == 0).float().mean().item() - 0.25) < 0.03


def test_drop_path_draws_the_same_masks_when_checkpointing_recomputes(tokenizer):
    inputs = batch(tokenizer, tiles=4)
    gradients = []
    for checkpointing in (False, True):
        model = make_model(tokenizer)
        method = MethodConfig(type="full", freeze={"vision": False}, drop_path_rate=0.5)
        prepare_for_training(model, method, gradient_checkpointing=checkpointing)
        model.train()
        torch.manual_seed(0)
        model(**inputs).loss.backward()
        gradients.append(model.model.vision_tower.encoder.layer[0].mlp.fc1.weight.grad)
    assert gradients[0].abs().max() > 0
    assert torch.equal(gradients[0], gradients[1])


def test_freeze_plan_refuses_more_layers_than_the_tower_has():
    with pytest.raises(ValueError, match="method.unfreezeVisionLayers: 3 exceeds the vision tower's 2 layers"):
        plan(FreezeConfig(vision=True, projector=True, llm=True), 3, 2)


def test_no_decay_for_norms_biases_embeddings_and_layer_scales(tokenizer):
    model = make_model(tokenizer)
    exempt = no_decay_names(model)
    layer = "model.vision_tower.encoder.layer.0."
    for name in [
        "model.vision_tower.embeddings.cls_token",
        "model.vision_tower.embeddings.position_embeddings",
        "model.vision_tower.embeddings.patch_embeddings.projection.bias",
        f"{layer}lambda_1",
        f"{layer}layernorm_before.weight",
        f"{layer}attention.q_proj.bias",
        "model.multi_modal_projector.layer_norm.weight",
        "model.language_model.embed_tokens.weight",
        "model.language_model.layers.0.input_layernorm.weight",
        "model.language_model.layers.0.self_attn.q_proj.bias",
        "model.language_model.norm.weight",
    ]:
        assert name in exempt, name
    decayed = {name for name, _ in model.named_parameters()} - exempt
    assert decayed == {
        name
        for name, p in model.named_parameters()
        if name.endswith("weight") and p.ndim == 2 and "embed_tokens" not in name
    } | {"model.vision_tower.embeddings.patch_embeddings.projection.weight"}
    assert len(decayed) == 30  # vision 1 + 2 x 6, projector 2, LLM 2 x 7, lm_head
    groups = parameter_groups(model, 0.05)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_no_decay_for_gpt_oss_sinks_router_and_expert_biases(tokenizer):
    model = make_model(tokenizer, "gpt_oss")
    layer = "model.language_model.layers.0."
    decayed = {name for name, _ in model.named_parameters() if name.startswith(layer)} - no_decay_names(model)
    projections = {f"{layer}self_attn.{p}_proj.weight" for p in "qkvo"}
    experts = {f"{layer}mlp.experts.gate_up_proj", f"{layer}mlp.experts.down_proj"}
    assert decayed == projections | experts | {f"{layer}mlp.router.weight"}
