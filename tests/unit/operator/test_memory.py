"""The memory model: each part by its formula, and how parts move with ZeRO stage, GPUs and batch shape."""

import pytest

from internvl_operator import memory
from internvl_operator.catalog import CATALOG, model_spec
from internvl_operator.deepspeed import OFFLOAD_VARIANT, deepspeed_config
from internvl_operator.memory import (
    GIB,
    Trainable,
    budget_gib,
    estimate,
    llm_layer_saved,
    lora_layer_saved_bytes,
    offload_host_gib,
)

FULL = Trainable(projector=True, llm=True)
LORA = Trainable(lora_rank=16, lora_llm=True)


def run(name="InternVL2_5-8B", trainable=FULL, gpus=8, variant="zero_stage1_config", batch=2, seq=8192, tiles=7,
        checkpointing=True, chunk=None):  # fmt: skip
    """The estimate; by default with the logits of every token (InternVL's loss), where each formula shows."""
    return estimate(
        model_spec(name),
        trainable,
        gpus=gpus,
        deepspeed=deepspeed_config(variant),
        per_device_batch_size=batch,
        max_seq_length=seq,
        tiles_per_sequence=tiles,
        gradient_checkpointing=checkpointing,
        loss_chunk_tokens=chunk,
    )


def test_8b_full_zero1_part_by_part():
    result = run()
    trained = 33_570_816 + 7_737_782_272  # projector + LLM
    assert result.gib("weights") == round(2 * 8_075_365_376 / GIB, 2) == 15.04
    assert result.gib("gradients") == round(2 * trained / GIB, 2) == 14.48
    assert result.gib("optimizer states") == round(12 * trained / 8 / GIB, 2) == 10.86
    assert result.gib("communication buckets") == round(2 * 2 * 1e9 / GIB, 2) == 3.73
    assert result.gib("framework") == 2.0
    assert result.gib("layer checkpoints") == round(32 * 4096 * 2 * 16384 / GIB, 2) == 4.0
    assert result.gib("logits") == round(12 * 92_553 * 16384 / GIB, 2) == 16.95
    assert result.total_gib == 67.05
    assert result.peak == "backward"
    assert [part.name for part in result.parts] == [
        "weights",
        "gradients",
        "optimizer states",
        "communication buckets",
        "framework",
        "layer checkpoints",
        "logits",
    ]


def test_zero2_shards_gradients_and_zero3_shards_weights():
    one, two, three = (run(variant=v) for v in ("zero_stage1_config", "zero_stage2_config", "zero_stage3_config"))
    assert one.gib("gradients") == 14.48
    assert two.gib("gradients") == round(14.48 / 8, 2) == 1.81
    assert two.gib("weights") == 15.04
    assert three.gib("weights") == round(15.04 / 8, 2) == 1.88
    assert three.gib("gathered weights (ZeRO-3)") == round(2 * 1e9 / GIB, 2) == 1.86
    assert two.gib("communication buckets") == round(2 * 2 * 1e8 / GIB, 2) == 0.37
    assert three.gib("communication buckets") == 1.86


def test_zero3_shards_the_frozen_base_of_lora():
    two = run("InternVL2_5-26B", LORA, gpus=2, variant="zero_stage3_config")
    eight = run("InternVL2_5-26B", LORA, gpus=8, variant="zero_stage3_config")
    assert two.gib("weights") == 23.84
    assert eight.gib("weights") == 5.96
    assert round(two.total_gib - eight.total_gib, 2) == 18.27


def test_lora_under_zero1_barely_depends_on_gpu_count():
    assert run(trainable=LORA, gpus=2).total_gib == 42.1
    assert run(trainable=LORA, gpus=8).total_gib == 41.93


def test_offload_leaves_only_the_gathered_weights_on_the_gpu():
    result = run("InternVL2_5-78B", gpus=8, variant=OFFLOAD_VARIANT, batch=1)
    assert result.gib("weights") == result.gib("gradients") == result.gib("optimizer states") == 0.0
    # the LM head (151674 x 8192) is the largest tensor and is gathered whole
    assert result.gib("gathered weights (ZeRO-3)") == round(2 * 151_674 * 8192 / GIB, 2) == 2.31
    assert result.gib("communication buckets") == round(2 * 1e7 / GIB, 2) == 0.02
    assert result.total_gib == 28.22


def test_logits_scale_with_tokens_and_vocabulary():
    assert run(batch=1).gib("logits") == round(12 * 92_553 * 8192 / GIB, 2) == 8.47
    assert run("InternVL2_5-4B", batch=1).gib("logits") == round(12 * 151_674 * 8192 / GIB, 2) == 13.89


def test_the_trainers_loss_holds_the_logits_of_one_chunk():
    chunked = run(chunk=memory.LOSS_CHUNK_TOKENS)
    assert memory.LOSS_CHUNK_TOKENS == 1024
    # 1,024 tokens' logits are smaller than a recomputed decoder layer of 16,384 tokens
    assert chunked.gib("logits") == 0.0 and chunked.gib("layer recompute") == 2.56
    assert chunked.total_gib == 52.66 < run().total_gib == 67.05
    short = run(batch=1, seq=512, chunk=memory.LOSS_CHUNK_TOKENS)
    assert short == run(batch=1, seq=512)  # fewer tokens than a chunk: the same logits
    assert estimate.__kwdefaults__["loss_chunk_tokens"] == memory.LOSS_CHUNK_TOKENS  # what plans use


def test_without_checkpointing_every_layer_keeps_its_activations():
    result = run(checkpointing=False)
    # (6 h + 2 kv_heads head_dim + 4 i) bf16 elements per token and layer, 32 layers, 16384 tokens
    per_layer = (6 * 4096 + 2 * 8 * 128 + 4 * 14336) * 2 * 16384
    assert result.gib("layer activations") == round(32 * per_layer / GIB, 2) == 82.0
    assert result.gib("logits") == 16.95
    assert result.total_gib == 145.05  # the parts are rounded, the total is not


def test_logits_outweigh_a_recomputed_layer_for_every_catalog_model():
    # per token: 12 bytes per vocabulary entry against 2 bytes per saved element of one layer
    for spec in CATALOG.values():
        assert 12 * spec.llm.vocab_size > 2 * llm_layer_saved(spec) + lora_layer_saved_bytes(spec)
    assert llm_layer_saved(model_spec("InternVL2_5-8B")) == 6 * 4096 + 2 * 8 * 128 + 4 * 14336 == 83_968
    assert lora_layer_saved_bytes(model_spec("InternVL2_5-8B")) == (6 * 4096 + 14336) * 3


def test_optimizer_step_peak_when_activations_are_small():
    result = run("InternVL2_5-8B", gpus=1, batch=1, seq=128)
    assert result.peak == "optimizer step"
    assert result.gib("optimizer step (fp32 gradients)") == round(4 * 7_771_353_088 / GIB, 2) == 28.95
    assert result.gib("logits") == 0.0


def test_training_the_vision_tower_keeps_its_activations():
    frozen = run()
    trained = run(trainable=Trainable(vision_layers=24, projector=True, llm=True))
    vision_tokens = 2 * 7 * 1025
    kept = 24 * 1024 * 2 * vision_tokens + (8 * 1024 + 2 * 4096) * 2 * vision_tokens
    assert trained.gib("vision activations") == round(kept / GIB, 2) == 1.09
    assert frozen.gib("vision activations") == 0.0
    assert trained.gib("weights") == frozen.gib("weights")
    assert trained.gib("gradients") == round(2 * 8_075_365_376 / GIB, 2)


def test_last_vision_layers_only():
    vision = model_spec("InternVL2_5-8B").vision
    assert Trainable(vision_layers=4).params(model_spec("InternVL2_5-8B")) == 4 * vision.layer_params
    assert Trainable(vision_layers=4).vision_backward_layers(model_spec("InternVL2_5-8B")) == 4
    assert Trainable(lora_rank=8, lora_vision=True).vision_backward_layers(model_spec("InternVL2_5-8B")) == 24


def test_lora_parameters_count_towards_weights_and_training():
    spec = model_spec("InternVL2_5-8B")
    assert LORA.params(spec) == 41_943_040
    both = Trainable(lora_rank=16, lora_llm=True, lora_vision=True)
    assert both.params(spec) == 41_943_040 + 24 * 16 * (4 * 1024 + 2 * 1024 + 2 * (1024 + 4096))


def test_budget_and_host_memory():
    assert budget_gib(80) == 72.0
    # 2 bytes per weight plus 16 per trained parameter (12 optimizer + 4 fp32 gradient)
    expected = (2 * 78_408_318_336 + 16 * (172_008_448 + 72_699_813_888)) / GIB
    assert offload_host_gib(model_spec("InternVL2_5-78B"), FULL) == pytest.approx(expected)
    assert round(expected) == 1232


def test_estimates_do_not_depend_on_the_model_name():
    # InternVL2_5-38B and InternVL3-38B share every dimension, so they share every estimate.
    assert run("InternVL2_5-38B", gpus=16, variant="zero_stage3_config_34b") == run(
        "InternVL3-38B", gpus=16, variant="zero_stage3_config_34b"
    )


def test_the_planned_loss_chunk_is_the_trainers():
    from internvl_trainer.loss import LOSS_CHUNK_TOKENS

    assert memory.LOSS_CHUNK_TOKENS == LOSS_CHUNK_TOKENS


# --- mixture of experts ----------------------------------------------------------------------

MOE = "InternVL3_5-30B-A3B"


def test_an_moe_layer_saves_the_activations_of_the_routed_experts():
    # 6 h + 2 kv_heads head_dim, 4 i for each of the 8 routed experts, 2 h per route, 2 x 128 router outputs
    assert llm_layer_saved(model_spec(MOE)) == 6 * 2048 + 2 * 4 * 128 + 4 * 8 * 768 + 2 * 8 * 2048 + 2 * 128 == 70_912
    # a dense model has no routes: the formula it always had
    assert llm_layer_saved(model_spec("InternVL3_5-8B")) == 6 * 4096 + 2 * 8 * 128 + 4 * 12288


def test_lora_on_moe_copies_the_attention_inputs_only():
    assert lora_layer_saved_bytes(model_spec(MOE)) == 4 * 2048 * 3
    assert lora_layer_saved_bytes(model_spec("InternVL3_5-8B")) == (6 * 4096 + 12288) * 3


def test_moe_states_are_of_all_experts_and_activations_of_the_routed_ones():
    spec = model_spec(MOE)
    result = run(MOE, gpus=8, variant="zero_stage3_config", batch=1, seq=32768, tiles=128, chunk=1024)
    trained = spec.projector_params + spec.llm.params  # every expert
    assert result.gib("weights") == round(2 * spec.total_params / 8 / GIB, 2) == 7.18
    assert result.gib("gradients") == round(2 * trained / 8 / GIB, 2) == 7.11
    assert result.gib("optimizer states") == round(12 * trained / 8 / GIB, 2) == 42.67
    assert result.gib("gathered weights (ZeRO-3)") == round(2 * 1e9 / GIB, 2)  # the live-parameter cap
    assert result.gib("layer recompute") == round(70_912 * 2 * 32768 / GIB, 2) == 4.33
    assert result.total_gib == 73.02


def test_zero3_gathers_a_whole_moe_block_beyond_the_live_parameter_cap():
    spec = model_spec("InternVL3_5-241B-A28B")
    block = 128 * 3 * 4096 * 1536 + 128 * 4096  # one layer's experts and router: a ZeRO-3 leaf module
    assert spec.largest_gathered == block > 1e9
    result = run("InternVL3_5-241B-A28B", gpus=128, variant="zero_stage3_config_100b", batch=1, seq=32768)
    assert result.gib("gathered weights (ZeRO-3)") == round(2 * block / GIB, 2) == 4.5


def test_expert_placement_under_each_zero_stage():
    spec, full = model_spec(MOE), Trainable(projector=True, llm=True)
    lead = (
        "mixture of experts: the weights, gradients and optimizer states of all 128 experts of each of the 48 "
        "layers are planned for (30.8 B parameters), the activations of the 8 each token is routed to (3.7 B active); "
    )
    assert memory.expert_placement(spec, full, gpus=8, stage=3, offload=False) == lead + (
        "ZeRO-3 shards every expert tensor over the 8 GPUs: GPU r holds experts 16r to 16r+15 of every layer "
        "and gathers a layer's 128 experts to run it"
    )
    assert memory.expert_placement(spec, full, gpus=6, stage=3, offload=False) == lead + (
        "ZeRO-3 shards every expert tensor over the 6 GPUs: each holds 21.3 experts' worth of every layer "
        "(128 experts do not split evenly over 6, so shards cross experts)"
    )
    assert memory.expert_placement(spec, full, gpus=8, stage=1, offload=False) == lead + (
        "ZeRO-1: every GPU holds the bf16 weights and gradients of all experts; the optimizer states are one flat "
        "buffer split in 8 in model order, so each GPU holds those of all experts of about 6 consecutive layers, "
        "not a share of every expert"
    )
    assert "ZeRO-2: every GPU holds the bf16 weights of all experts; the gradients and optimizer states" in (
        memory.expert_placement(spec, full, gpus=16, stage=2, offload=False)
    )
    assert memory.expert_placement(spec, full, gpus=8, stage=3, offload=True).endswith(
        "ZeRO-3 + CPU offload keeps them in host memory; a GPU gathers one layer's experts at a time"
    )
    frozen = memory.expert_placement(spec, LORA, gpus=2, stage=1, offload=False)
    assert frozen.startswith("mixture of experts: the frozen weights of all 128 experts")
    assert frozen.endswith("ZeRO-1: every GPU holds all of them")
    adapted = Trainable(lora_rank=16, lora_llm=True, lora_experts=True, lora_dropout=False)
    assert memory.expert_placement(spec, adapted, gpus=2, stage=3, offload=False).startswith(
        "mixture of experts: the frozen weights (and LoRA pairs) of all 128 experts"
    )
    assert memory.expert_placement(model_spec("InternVL3_5-8B"), full, gpus=8, stage=3, offload=False) is None


def test_lora_on_the_experts_adds_a_pair_per_expert_and_no_dropout_copies():
    spec = model_spec(MOE)
    experts = Trainable(lora_rank=16, lora_llm=True, lora_experts=True, lora_dropout=False)
    per_layer = 128 * 16 * ((2048 + 2 * 768) + (768 + 2048))  # gate_up h -> 2i, down i -> h, per expert
    assert experts.lora_params(spec) - LORA.lora_params(spec) == 48 * per_layer == 629_145_600
    # the experts target needs dropout 0, so no adapted input is copied: only the adapters' states grow
    with_experts = run(MOE, experts, gpus=2, batch=1, seq=32768, chunk=1024)
    attention_only = run(MOE, Trainable(lora_rank=16, lora_llm=True, lora_dropout=False), gpus=2, batch=1, seq=32768,
                         chunk=1024)  # fmt: skip
    assert with_experts.gib("layer recompute") == attention_only.gib("layer recompute")
    assert run(MOE, LORA, gpus=2, batch=1, seq=32768, chunk=1024).gib("layer recompute") == round(
        (70_912 * 2 + 4 * 2048 * 3) * 32768 / GIB, 2
    )
    # a dense model has no experts to adapt
    assert Trainable(lora_rank=16, lora_experts=True).lora_params(model_spec("InternVL3_5-8B")) == 0
