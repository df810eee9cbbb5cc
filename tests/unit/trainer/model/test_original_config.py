"""The original config.json ↔ native InternVLConfig (internvl-recipe.md §7.3, config part)."""

from __future__ import annotations

import pytest

from internvl_trainer.model.layouts import LayoutError
from internvl_trainer.model.original_config import STASH, is_original, native_config, original_config

VISION = {
    "architectures": ["InternVisionModel"],
    "model_type": "intern_vit_6b",
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "image_size": 448,
    "patch_size": 14,
    "num_channels": 3,
    "hidden_act": "gelu",
    "norm_type": "layer_norm",
    "layer_norm_eps": 1e-6,
    "qkv_bias": True,
    "qk_normalization": False,
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "drop_path_rate": 0.1,
    "initializer_factor": 0.1,
    "initializer_range": 1e-10,
    "use_flash_attn": True,
}

QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "attn_implementation": "flash_attention_2",
    "vocab_size": 151674,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
}

INTERNLM2 = {
    "architectures": ["InternLM2ForCausalLM"],
    "model_type": "internlm2",
    "vocab_size": 92553,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "bias": False,
    "rope_theta": 1000000,
    "rope_scaling": {"type": "dynamic", "factor": 2.0},
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}

# InternVL3.5's LLMs as transformers 4.55 writes them (test inputs, sizes of the 30B-A3B and
# GPT-OSS-20B releases' language models).
QWEN3_MOE = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "moe_intermediate_size": 768,
    "num_hidden_layers": 48,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "router_aux_loss_coef": 0.001,
    "output_router_logits": False,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "rope_scaling": None,
    "tie_word_embeddings": False,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
}

GPT_OSS = {
    "architectures": ["GptOssForCausalLM"],
    "model_type": "gpt_oss",
    "vocab_size": 201088,
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "num_hidden_layers": 4,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "num_local_experts": 32,
    "num_experts_per_tok": 4,
    "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    "attention_bias": True,
    "swiglu_limit": 7.0,
    "router_aux_loss_coef": 0.9,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 150000,
    "rope_scaling": {
        "rope_type": "yarn",
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 4096,
    },
    "tie_word_embeddings": False,
    "pad_token_id": 199999,
    "eos_token_id": 200002,
}


def chat_config(llm: dict) -> dict:
    """An InternVLChatConfig-shaped config.json (a test input, sizes of a 1B/8B-class model)."""
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "vision_config": VISION,
        "llm_config": llm,
        "downsample_ratio": 0.5,
        "select_layer": -1,
        "force_image_size": 448,
        "ps_version": "v2",
        "template": "internvl2_5",
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
    }


def test_qwen2_based_config_converts_field_by_field():
    original = chat_config(QWEN2)
    assert is_original(original)
    native = native_config(original, image_token_id=151667)
    vision, text = native.vision_config, native.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size) == (
        1024,
        24,
        16,
        4096,
    )
    assert vision.attention_bias is True and vision.use_qk_norm is False
    assert vision.use_mean_pooling is True and vision.norm_type == "layer_norm"
    assert vision.drop_path_rate == 0.1 and vision.layer_scale_init_value == 0.1
    assert list(vision.image_size) == [448, 448] and list(vision.patch_size) == [14, 14]
    assert type(text).__name__ == "Qwen2Config"
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (
        896,
        14,
        2,
        151674,
    )
    assert text.rope_parameters["rope_theta"] == 1000000.0
    assert native.image_token_id == 151667
    assert native.image_seq_length == 256
    assert native.vision_feature_layer == -1 and native.downsample_ratio == 0.5
    assert native.tie_word_embeddings is False
    assert getattr(native, STASH) == original


def test_internlm2_based_config_becomes_llama():
    native = native_config(chat_config(INTERNLM2))
    text = native.text_config
    assert type(text).__name__ == "LlamaConfig"
    assert (text.num_attention_heads, text.num_key_value_heads, text.attention_bias) == (32, 8, False)
    assert text.rope_parameters["rope_type"] == "dynamic" and text.rope_parameters["factor"] == 2.0
    assert native.image_token_id == 92546  # released InternLM2-based checkpoints' <IMG_CONTEXT>


@pytest.mark.parametrize(
    ("llm", "image_token_id"), [(QWEN2, None), (INTERNLM2, None), (QWEN3_MOE, None), (GPT_OSS, 200020)]
)
def test_original_to_native_to_original_keeps_every_field(llm, image_token_id):
    original = chat_config(llm)
    back = original_config(native_config(original, image_token_id=image_token_id))
    for key, value in original.items():
        if key not in ("vision_config", "llm_config"):
            assert back[key] == value, key
    for key, value in VISION.items():
        assert back["vision_config"][key] == value, key
    for key, value in llm.items():
        assert back["llm_config"][key] == value, key


def test_internvl35_language_models_keep_their_transformers_config():
    moe = native_config(chat_config(QWEN3_MOE)).text_config
    assert type(moe).__name__ == "Qwen3MoeConfig"
    assert (moe.num_experts, moe.num_experts_per_tok, moe.moe_intermediate_size, moe.head_dim) == (128, 8, 768, 128)
    assert native_config(chat_config(QWEN3_MOE)).image_token_id == 151671  # after Qwen3's <think>, </think>
    gpt_oss = native_config(chat_config(GPT_OSS), image_token_id=200020).text_config
    assert type(gpt_oss).__name__ == "GptOssConfig"
    assert gpt_oss.layer_types == GPT_OSS["layer_types"] and gpt_oss.sliding_window == 128
    assert gpt_oss.rope_parameters == {**GPT_OSS["rope_scaling"], "rope_theta": 150000}
    with pytest.raises(LayoutError, match="^img_context_token_id: missing, and the folder has no tokenizer"):
        native_config(chat_config(GPT_OSS))


def test_what_has_no_native_counterpart_is_refused():
    with pytest.raises(LayoutError, match="^ps_version: v1 pixel shuffle has no native counterpart"):
        native_config({**chat_config(QWEN2), "ps_version": "v1"})
    phi3 = {**QWEN2, "architectures": ["Phi3ForCausalLM"]}
    with pytest.raises(LayoutError, match="^llm_config.architectures: Phi3ForCausalLM is not supported"):
        native_config(chat_config(phi3))
    with pytest.raises(LayoutError, match="^vision_config: missing hidden_size"):
        native_config({**chat_config(QWEN2), "vision_config": {"num_hidden_layers": 1}})


def test_a_native_model_with_a_final_vision_norm_cannot_be_written_original(tokenizer):
    from internvl_trainer.model.tiny import tiny_config

    config = tiny_config(tokenizer, image_size=56)
    config.vision_config.use_mean_pooling = False
    with pytest.raises(LayoutError, match="use_mean_pooling: false adds a final LayerNorm"):
        original_config(config)
