"""The model catalog: every API model name, parameter counts that match the model pages, layer by layer,
and the total and active parameters of the mixture-of-experts models."""

import pytest

from internvl_operator.catalog import (
    CATALOG,
    LLM_TOKENS_PER_TILE,
    VISION_TOKENS_PER_TILE,
    model_spec,
    parse_size,
)
from internvl_trainer.config import MODEL_NAMES


def test_catalog_lists_exactly_the_api_models_in_order():
    assert tuple(CATALOG) == MODEL_NAMES
    assert len(CATALOG) == 23


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_computed_total_matches_the_model_page_within_half_a_percent(name):
    spec = model_spec(name)
    assert abs(spec.total_params / parse_size(spec.card_total) - 1) < 0.005


def test_qwen3_0_6b_count_by_hand():
    llm = model_spec("InternVL3_5-1B").llm
    # head_dim 128 with 16 query and 8 KV heads: q 1024x2048, k and v 1024x1024, o 2048x1024, no
    # biases; q_norm and k_norm of 128 each; gate/up/down 3 x 1024x3072; two norms
    layer = 1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 2 * 128 + 3 * 1024 * 3072 + 2 * 1024
    assert llm.layer_params == layer == 15_730_944
    assert llm.params == 2 * 151_936 * 1024 + 28 * layer + 1024 == 751_632_384
    assert llm.active_params == llm.params


def test_qwen3_moe_30b_a3b_total_and_active():
    llm = model_spec("InternVL3_5-30B-A3B").llm
    attention = 2048 * 4096 + 2 * 2048 * 512 + 4096 * 2048 + 2 * 128
    expert = 3 * 2048 * 768
    router = 128 * 2048
    assert llm.layer_params == attention + 128 * expert + router + 2 * 2048
    assert llm.params == 2 * 151_936 * 2048 + 48 * llm.layer_params + 2048 == 30_532_122_624
    assert llm.params - llm.active_params == 48 * 120 * expert == 27_179_089_920
    assert round(model_spec("InternVL3_5-30B-A3B").active_params / 1e9, 2) == 3.67  # the A3B of the name


def test_gpt_oss_20b_counts_sinks_biases_and_experts():
    llm = model_spec("InternVL3_5-GPT-OSS-20B-A4B-Preview").llm
    q, kv = 64 * 64, 8 * 64
    attention = 2880 * q + q + 2 * (2880 * kv + kv) + q * 2880 + 2880 + 64  # biases on q, k, v, o; 64 sinks
    expert = 2880 * 2 * 2880 + 2 * 2880 + 2880 * 2880 + 2880  # gate_up and down with their biases
    router = 32 * 2880 + 32
    assert llm.layer_params == attention + 32 * expert + router + 2 * 2880
    assert llm.params == 20_914_757_184
    # OpenAI's 3.6 B active leaves the input embedding out
    assert round((llm.active_params - llm.embedding_params) / 1e9, 1) == 3.6


@pytest.mark.parametrize(
    ("name", "total", "active"),
    [("InternVL3_5-30B-A3B", 30.8, 3.7), ("InternVL3_5-241B-A28B", 240.7, 27.8), ("InternVL3_5-8B", 8.5, 8.5)],
)
def test_total_and_active_parameters(name, total, active):
    spec = model_spec(name)
    assert (round(spec.total_params / 1e9, 1), round(spec.active_params / 1e9, 1)) == (total, active)
    assert spec.is_moe == (total != active)


def test_zero3_gathers_a_whole_moe_block_and_the_largest_dense_tensor():
    moe = model_spec("InternVL3_5-30B-A3B")
    assert moe.largest_gathered == 128 * 3 * 2048 * 768 + 128 * 2048
    assert model_spec("InternVL3_5-8B").largest_gathered == 151_936 * 4096


def test_lora_on_moe_targets_the_attention_only():
    llm = model_spec("InternVL3_5-30B-A3B").llm
    assert llm.lora_layer_params(16) == 16 * ((2048 + 4096) + 2 * (2048 + 512) + (4096 + 2048))


def test_qwen_0_5b_count_by_hand():
    llm = model_spec("InternVL2_5-1B").llm
    # q 896x896 + bias, k and v 896x128 + biases, o 896x896, gate/up/down 3 x 896x4864, two norms
    layer = 896 * 896 + 896 + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896
    assert llm.layer_params == layer == 14_912_384
    # untied embedding and LM head, 24 layers, final norm
    assert llm.params == 2 * 151_674 * 896 + 24 * layer + 896 == 629_697_920


def test_exact_counts_of_the_8b_parts():
    spec = model_spec("InternVL2_5-8B")
    assert spec.vision.params == 304_012_288
    assert spec.projector_params == 2 * 4096 + 4096 * 4096 + 4096 + 4096 * 4096 + 4096 == 33_570_816
    assert spec.llm.params == 7_737_782_272
    assert spec.total_params == 8_075_365_376


def test_intern_vit_6b_count():
    vision = model_spec("InternVL2_5-78B").vision
    assert (vision.hidden_size, vision.layers, vision.intermediate_size, vision.norm) == (3200, 45, 12800, "rms_norm")
    assert vision.params == 5_536_496_000


def test_lora_rank_16_on_the_seven_llm_projections():
    llm = model_spec("InternVL2_5-8B").llm
    # q (4096->4096), k and v (4096->1024), o (4096->4096), gate and up (4096->14336), down (14336->4096)
    per_layer = 16 * ((4096 + 4096) + 2 * (4096 + 1024) + (4096 + 4096) + 2 * (4096 + 14336) + (14336 + 4096))
    assert llm.lora_layer_params(16) == per_layer == 1_310_720
    assert 32 * per_layer == 41_943_040


@pytest.mark.parametrize(
    ("name", "family", "bos", "vocab"),
    [
        ("InternVL2_5-1B", "qwen2", None, 151_674),
        ("InternVL2_5-2B", "internlm2", "<s>", 92_553),
        ("InternVL2_5-26B", "internlm2", "<s>", 92_553),
        ("InternVL3-9B", "internlm3", "<s>", 128_512),
        ("InternVL3-78B", "qwen2", None, 151_674),
        ("InternVL3_5-8B", "qwen3", None, 151_936),
        ("InternVL3_5-241B-A28B", "qwen3_moe", None, 151_936),
        ("InternVL3_5-GPT-OSS-20B-A4B-Preview", "gpt_oss", None, 201_088),
    ],
)
def test_family_bos_and_vocabulary(name, family, bos, vocab):
    llm = model_spec(name).llm
    assert (llm.family, llm.bos_token, llm.vocab_size) == (family, bos, vocab)


def test_largest_tensor_is_the_lm_head_for_big_vocabularies():
    assert model_spec("InternVL2_5-78B").largest_gathered == 151_674 * 8192
    assert model_spec("InternVL2_5-26B").largest_gathered == 92_553 * 6144


def test_tile_tokens():
    assert VISION_TOKENS_PER_TILE == 1025
    assert LLM_TOKENS_PER_TILE == 256


def test_parse_size():
    assert parse_size("938M") == 938e6
    assert parse_size("25.5B") == 25.5e9
