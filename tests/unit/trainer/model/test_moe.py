"""The MoE blocks become ZeRO-3 leaves when preparing under ZeRO-3, and the routers' load-balancing
loss is InternVL's: on for GPT-OSS, for other MoE LLMs as the checkpoint says, computed from the
logits every router gave in the forward pass."""

from __future__ import annotations

import pytest
from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config
from transformers.models.gpt_oss.modeling_gpt_oss import load_balancing_loss_func

from internvl_trainer.config import MethodConfig
from internvl_trainer.model.moe import MOE_BLOCKS, router_balance
from internvl_trainer.model.prepare import prepare_for_training

from .conftest import batch, make_model

MOE = ["qwen3_moe", "gpt_oss"]


def leaves(model) -> list[bool]:
    return [getattr(module, "_z3_leaf", False) for module in model.modules() if isinstance(module, MOE_BLOCKS)]


@pytest.mark.parametrize("llm", MOE)
def test_under_zero3_every_moe_block_is_a_leaf(tokenizer, llm):
    model = make_model(tokenizer, llm)  # built whole: ZeRO-3 would partition it as it is built
    # transformers holds the config by a weak reference: kept alive while preparing
    _zero3 = HfDeepSpeedConfig({"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}})
    try:
        prepared = prepare_for_training(model, MethodConfig(type="full"))
    finally:
        unset_hf_deepspeed_config()
    assert leaves(prepared.model) == [True, True]  # one block per layer


def test_without_zero3_no_block_is_a_leaf(tokenizer):
    prepared = prepare_for_training(make_model(tokenizer, "qwen3_moe"), MethodConfig(type="full"))
    assert leaves(prepared.model) == [False, False]


def with_router_logits(model, on: bool):
    model.config.text_config.output_router_logits = on
    return model


@pytest.mark.parametrize(
    ("llm", "output_router_logits", "coefficient"),
    [("qwen2", True, None), ("qwen3_moe", False, None), ("qwen3_moe", True, 0.01), ("gpt_oss", False, 0.01)],
)
def test_the_loss_is_on_as_internvl_turns_it_on(tokenizer, llm, output_router_logits, coefficient):
    balance = router_balance(with_router_logits(make_model(tokenizer, llm), output_router_logits))
    assert (balance.coefficient if balance is not None else None) == coefficient


@pytest.mark.parametrize("llm", MOE)
def test_the_loss_is_transformers_over_every_layers_router_logits(tokenizer, llm):
    """The LLM's own router logits (``output_router_logits``) give the same loss; padding is left out."""
    model = with_router_logits(make_model(tokenizer, llm), True)
    balance = router_balance(model)
    inputs = {key: value for key, value in batch(tokenizer).items() if key != "labels"}
    inputs["attention_mask"][:, -3:] = 0
    seen = {}
    language_model = model.model.language_model
    hook = language_model.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    with balance.record():
        model(**inputs)
    hook.remove()
    loss = balance.loss(inputs["attention_mask"]).item()
    own = language_model(
        inputs_embeds=seen["inputs_embeds"], attention_mask=inputs["attention_mask"], output_router_logits=True
    )
    expected = load_balancing_loss_func(own.router_logits, 4, 2, inputs["attention_mask"])
    assert len(own.router_logits) == 2
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert loss != pytest.approx(load_balancing_loss_func(own.router_logits, 4, 2, None).item(), rel=1e-6)


def test_a_loss_without_a_recorded_forward_pass_is_an_error(tokenizer):
    balance = router_balance(make_model(tokenizer, "gpt_oss"))
    with pytest.raises(RuntimeError, match="no router logits were recorded"):
        balance.loss(None)


@pytest.mark.parametrize("llm", MOE)
def test_the_loss_trains_the_routers_under_activation_checkpointing(tokenizer, llm):
    """Router logits recorded inside checkpointed layers keep their graph to the routers."""
    model = with_router_logits(make_model(tokenizer, llm), True).train()
    prepared = prepare_for_training(model, MethodConfig(type="full", dropPathRate=0.0), gradient_checkpointing=True)
    balance = router_balance(prepared.model)
    inputs = {key: value for key, value in batch(tokenizer).items() if key != "labels"}
    with balance.record():
        prepared.model(**inputs)
    balance.loss(None).backward()
    assert all(router.weight.grad is not None and router.weight.grad.abs().sum() > 0 for router in balance.routers)
