"""The model catalog: every API model name, parameter counts that match the model pages, layer by layer."""

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
    assert len(CATALOG) == 14


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_computed_total_matches_the_model_page_within_half_a_percent(name):
    spec = model_spec(name)
    assert abs(spec.total_params / parse_size(spec.card_total) - 1) < 0.005


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
    ],
)
def test_family_bos_and_vocabulary(name, family, bos, vocab):
    llm = model_spec(name).llm
    assert (llm.family, llm.bos_token, llm.vocab_size) == (family, bos, vocab)


def test_largest_tensor_is_the_lm_head_for_big_vocabularies():
    assert model_spec("InternVL2_5-78B").largest_tensor == 151_674 * 8192
    assert model_spec("InternVL2_5-26B").largest_tensor == 92_553 * 6144


def test_tile_tokens():
    assert VISION_TOKENS_PER_TILE == 1025
    assert LLM_TOKENS_PER_TILE == 256


def test_parse_size():
    assert parse_size("938M") == 938e6
    assert parse_size("25.5B") == 25.5e9
