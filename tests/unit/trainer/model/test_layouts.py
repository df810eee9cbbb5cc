"""The key table between the original and native layouts, pinned as literals from the reference
(internvl-recipe.md §7.2 and §7.3), and the fused projections checked on labelled blocks."""

from __future__ import annotations

import pytest
import torch

from internvl_trainer.model.layouts import (
    AttentionShape,
    LayoutError,
    fold_original_lora,
    fuse_vision_qkv,
    fuse_wqkv,
    has_original_lora,
    native_key,
    original_key,
    split_vision_qkv,
    split_wqkv,
    stack_experts,
    to_native,
    to_original,
    unstack_experts,
)
from internvl_trainer.model.original_config import attention_shape
from tests.unit.trainer.model.conftest import make_model

# (original InternVLChatModel key, native InternVLForConditionalGeneration key), §7.2 and §7.3
SHARED_TABLE = [
    ("mlp1.0.weight", "model.multi_modal_projector.layer_norm.weight"),
    ("mlp1.0.bias", "model.multi_modal_projector.layer_norm.bias"),
    ("mlp1.1.weight", "model.multi_modal_projector.linear_1.weight"),
    ("mlp1.1.bias", "model.multi_modal_projector.linear_1.bias"),
    ("mlp1.3.weight", "model.multi_modal_projector.linear_2.weight"),
    ("mlp1.3.bias", "model.multi_modal_projector.linear_2.bias"),
    ("vision_model.embeddings.class_embedding", "model.vision_tower.embeddings.cls_token"),
    (
        "vision_model.embeddings.patch_embedding.weight",
        "model.vision_tower.embeddings.patch_embeddings.projection.weight",
    ),
    ("vision_model.embeddings.patch_embedding.bias", "model.vision_tower.embeddings.patch_embeddings.projection.bias"),
    ("vision_model.embeddings.position_embedding", "model.vision_tower.embeddings.position_embeddings"),
    (
        "vision_model.encoder.layers.7.attn.proj.weight",
        "model.vision_tower.encoder.layer.7.attention.projection_layer.weight",
    ),
    (
        "vision_model.encoder.layers.7.attn.proj.bias",
        "model.vision_tower.encoder.layer.7.attention.projection_layer.bias",
    ),
    ("vision_model.encoder.layers.7.attn.q_norm.weight", "model.vision_tower.encoder.layer.7.attention.q_norm.weight"),
    ("vision_model.encoder.layers.7.attn.k_norm.weight", "model.vision_tower.encoder.layer.7.attention.k_norm.weight"),
    ("vision_model.encoder.layers.7.norm1.weight", "model.vision_tower.encoder.layer.7.layernorm_before.weight"),
    ("vision_model.encoder.layers.7.norm1.bias", "model.vision_tower.encoder.layer.7.layernorm_before.bias"),
    ("vision_model.encoder.layers.7.norm2.weight", "model.vision_tower.encoder.layer.7.layernorm_after.weight"),
    ("vision_model.encoder.layers.7.norm2.bias", "model.vision_tower.encoder.layer.7.layernorm_after.bias"),
    ("vision_model.encoder.layers.7.ls1", "model.vision_tower.encoder.layer.7.lambda_1"),
    ("vision_model.encoder.layers.7.ls2", "model.vision_tower.encoder.layer.7.lambda_2"),
    ("vision_model.encoder.layers.7.mlp.fc1.weight", "model.vision_tower.encoder.layer.7.mlp.fc1.weight"),
    ("vision_model.encoder.layers.7.mlp.fc2.bias", "model.vision_tower.encoder.layer.7.mlp.fc2.bias"),
    ("vision_model.encoder.layers.23.mlp.fc1.bias", "model.vision_tower.encoder.layer.23.mlp.fc1.bias"),
]

HF_LLM_TABLE = [
    ("language_model.model.embed_tokens.weight", "model.language_model.embed_tokens.weight"),
    ("language_model.model.layers.3.self_attn.q_proj.weight", "model.language_model.layers.3.self_attn.q_proj.weight"),
    ("language_model.model.layers.3.self_attn.k_proj.bias", "model.language_model.layers.3.self_attn.k_proj.bias"),
    ("language_model.model.layers.3.mlp.gate_proj.weight", "model.language_model.layers.3.mlp.gate_proj.weight"),
    ("language_model.model.layers.3.input_layernorm.weight", "model.language_model.layers.3.input_layernorm.weight"),
    ("language_model.model.norm.weight", "model.language_model.norm.weight"),
    ("language_model.lm_head.weight", "lm_head.weight"),
]

INTERNLM2_TABLE = [
    ("language_model.model.tok_embeddings.weight", "model.language_model.embed_tokens.weight"),
    ("language_model.model.layers.11.attention.wo.weight", "model.language_model.layers.11.self_attn.o_proj.weight"),
    ("language_model.model.layers.11.feed_forward.w1.weight", "model.language_model.layers.11.mlp.gate_proj.weight"),
    ("language_model.model.layers.11.feed_forward.w2.weight", "model.language_model.layers.11.mlp.down_proj.weight"),
    ("language_model.model.layers.11.feed_forward.w3.weight", "model.language_model.layers.11.mlp.up_proj.weight"),
    ("language_model.model.layers.11.attention_norm.weight", "model.language_model.layers.11.input_layernorm.weight"),
    (
        "language_model.model.layers.11.ffn_norm.weight",
        "model.language_model.layers.11.post_attention_layernorm.weight",
    ),
    ("language_model.model.norm.weight", "model.language_model.norm.weight"),
    ("language_model.output.weight", "lm_head.weight"),
]


@pytest.mark.parametrize(("original", "native"), SHARED_TABLE + HF_LLM_TABLE)
def test_hf_llm_key_table(original, native):
    assert native_key(original, "hf") == native
    assert original_key(native, "hf") == original


@pytest.mark.parametrize(("original", "native"), SHARED_TABLE + INTERNLM2_TABLE)
def test_internlm2_key_table(original, native):
    assert native_key(original, "internlm2") == native
    assert original_key(native, "internlm2") == original


def test_keys_outside_the_table_are_refused():
    with pytest.raises(LayoutError, match="vision_model.encoder.layers.0.attn.qkv.weight: no native name"):
        native_key("vision_model.encoder.layers.0.attn.qkv.weight", "hf")
    with pytest.raises(LayoutError, match="^1 keys that are not InternVLChatModel weights: mlp2.0.weight$"):
        to_native({"mlp1.0.weight": torch.zeros(1), "mlp2.0.weight": torch.zeros(1)}, "hf")
    with pytest.raises(
        LayoutError, match="1 keys that InternVLChatModel has no place for: model.vision_tower.layernorm.weight"
    ):
        to_original({"model.vision_tower.layernorm.weight": torch.zeros(1)}, "hf")


def labelled(rows: list[float], width: int) -> torch.Tensor:
    """A block whose row i holds rows[i] + column / 100 in every column."""
    return torch.tensor(rows)[:, None] + torch.arange(width)[None, :] / 100


def test_vision_qkv_is_three_row_blocks_in_q_k_v_order():
    c = 4
    q, k, v = labelled([100, 101, 102, 103], c), labelled([200, 201, 202, 203], c), labelled([300, 301, 302, 303], c)
    fused = torch.cat([q, k, v])  # InternViT: qkv(x) = [q; k; v], split as [:C], [C:2C], [-C:]
    split = split_vision_qkv(fused)
    assert [block[:, 0].tolist() for block in split] == [
        [100, 101, 102, 103],
        [200, 201, 202, 203],
        [300, 301, 302, 303],
    ]
    assert torch.equal(fuse_vision_qkv(q, k, v), fused)
    bias = torch.tensor([1.0, 2, 3, 4, 5, 6])
    assert [b.tolist() for b in split_vision_qkv(bias)] == [[1, 2], [3, 4], [5, 6]]


def test_internlm2_wqkv_is_interleaved_per_kv_head():
    shape = AttentionShape(num_heads=4, num_kv_heads=2, head_dim=2)
    hidden = 3
    q_heads = [labelled([1000 + 10 * h, 1000 + 10 * h + 1], hidden) for h in range(4)]
    k_heads = [labelled([2000 + 10 * h, 2000 + 10 * h + 1], hidden) for h in range(2)]
    v_heads = [labelled([3000 + 10 * h, 3000 + 10 * h + 1], hidden) for h in range(2)]
    # InternLM2: rows are (kv head, [its 2 query heads, its key, its value], head_dim)
    wqkv = torch.cat([q_heads[0], q_heads[1], k_heads[0], v_heads[0], q_heads[2], q_heads[3], k_heads[1], v_heads[1]])
    q, k, v = split_wqkv(wqkv, shape)
    assert q[:, 0].tolist() == [1000, 1001, 1010, 1011, 1020, 1021, 1030, 1031]
    assert k[:, 0].tolist() == [2000, 2001, 2010, 2011]
    assert v[:, 0].tolist() == [3000, 3001, 3010, 3011]
    assert torch.equal(q[:, 2], q[:, 0] + 0.02)  # columns travel with their rows
    assert torch.equal(fuse_wqkv(q, k, v, shape), wqkv)
    with pytest.raises(LayoutError, match=r"^wqkv has 16 rows; 2 kv heads x \(1 query heads \+ 2\) x head_dim 4 = 24$"):
        split_wqkv(wqkv, AttentionShape(num_heads=2, num_kv_heads=2, head_dim=4))


def test_internlm2_wqkv_gives_the_same_attention_inputs(tokenizer):
    """InternLM2's forward (rearrange to (kv, groups + 2, head_dim), q = the first groups, k = -2,
    v = -1) and the split projections agree on a real input."""
    shape = AttentionShape(num_heads=8, num_kv_heads=2, head_dim=4)
    generator = torch.Generator().manual_seed(1)
    wqkv = torch.randn((8 + 4) * 4, 32, generator=generator)
    x = torch.randn(5, 32, generator=generator)
    fused = (x @ wqkv.T).reshape(5, 2, 6, 4)
    q, k, v = split_wqkv(wqkv, shape)
    assert torch.allclose((x @ q.T).reshape(5, 8, 4), fused[:, :, :4].reshape(5, 8, 4))
    assert torch.allclose((x @ k.T).reshape(5, 2, 4), fused[:, :, -2])
    assert torch.allclose((x @ v.T).reshape(5, 2, 4), fused[:, :, -1])


TINY_VISION_LAYER_KEYS = [
    "vision_model.encoder.layers.0.attn.proj.bias",
    "vision_model.encoder.layers.0.attn.proj.weight",
    "vision_model.encoder.layers.0.attn.qkv.bias",
    "vision_model.encoder.layers.0.attn.qkv.weight",
    "vision_model.encoder.layers.0.ls1",
    "vision_model.encoder.layers.0.ls2",
    "vision_model.encoder.layers.0.mlp.fc1.bias",
    "vision_model.encoder.layers.0.mlp.fc1.weight",
    "vision_model.encoder.layers.0.mlp.fc2.bias",
    "vision_model.encoder.layers.0.mlp.fc2.weight",
    "vision_model.encoder.layers.0.norm1.bias",
    "vision_model.encoder.layers.0.norm1.weight",
    "vision_model.encoder.layers.0.norm2.bias",
    "vision_model.encoder.layers.0.norm2.weight",
]
TINY_INTERNLM2_LAYER_KEYS = [
    "language_model.model.layers.0.attention.wo.weight",
    "language_model.model.layers.0.attention.wqkv.weight",
    "language_model.model.layers.0.attention_norm.weight",
    "language_model.model.layers.0.feed_forward.w1.weight",
    "language_model.model.layers.0.feed_forward.w2.weight",
    "language_model.model.layers.0.feed_forward.w3.weight",
    "language_model.model.layers.0.ffn_norm.weight",
]
TINY_OTHER_KEYS = [
    "language_model.model.norm.weight",
    "language_model.model.tok_embeddings.weight",
    "language_model.output.weight",
    "mlp1.0.bias",
    "mlp1.0.weight",
    "mlp1.1.bias",
    "mlp1.1.weight",
    "mlp1.3.bias",
    "mlp1.3.weight",
    "vision_model.embeddings.class_embedding",
    "vision_model.embeddings.patch_embedding.bias",
    "vision_model.embeddings.patch_embedding.weight",
    "vision_model.embeddings.position_embedding",
]


def test_a_whole_internlm2_model_has_exactly_the_original_keys(tokenizer):
    model = make_model(tokenizer, llm="llama")
    shape = attention_shape(model.config.text_config)
    original = to_original(model.state_dict(), "internlm2", shape)
    layer1 = [key.replace("layers.0.", "layers.1.") for key in TINY_VISION_LAYER_KEYS + TINY_INTERNLM2_LAYER_KEYS]
    assert sorted(original) == sorted(TINY_VISION_LAYER_KEYS + TINY_INTERNLM2_LAYER_KEYS + layer1 + TINY_OTHER_KEYS)
    assert original["language_model.model.layers.0.attention.wqkv.weight"].shape == ((4 + 2 * 2) * 16, 64)
    assert original["vision_model.encoder.layers.1.attn.qkv.bias"].shape == (96,)


@pytest.mark.parametrize(
    ("llm", "keys"),
    [
        ("qwen2", "hf"),
        ("llama", "internlm2"),
        ("llama", "hf"),
        ("qwen3", "hf"),
        ("qwen3_moe", "hf_expert_list"),
        ("gpt_oss", "hf"),
    ],
)
def test_native_to_original_to_native_is_identical(tokenizer, llm, keys):
    model = make_model(tokenizer, llm=llm, qk_norm=True, norm_type="rms_norm")
    state = model.state_dict()
    shape = attention_shape(model.config.text_config)
    back = to_native(to_original(state, keys, shape), keys, shape)
    assert sorted(back) == sorted(state)
    assert all(torch.equal(back[key], state[key]) for key in state)


def test_original_lora_checkpoints_are_folded():
    generator = torch.Generator().manual_seed(0)
    base, a, b = (torch.randn(6, 4, generator=generator) for _ in range(3))
    a, b = a[:2], b[:, :2]
    prefix = "language_model.base_model.model.model.layers.0.self_attn.q_proj"
    state = {
        f"{prefix}.base_layer.weight": base,
        f"{prefix}.base_layer.bias": torch.ones(6),
        f"{prefix}.lora_A.default.weight": a,
        f"{prefix}.lora_B.default.weight": b,
        "language_model.base_model.model.model.norm.weight": torch.ones(4),
        "vision_model.base_model.model.encoder.layers.0.attn.qkv.base_layer.weight": base,
        "mlp1.0.weight": torch.ones(4),
    }
    assert has_original_lora(state)
    folded = fold_original_lora(state, llm_scaling=2.0, vision_scaling=2.0)
    assert sorted(folded) == [
        "language_model.model.layers.0.self_attn.q_proj.bias",
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "language_model.model.norm.weight",
        "mlp1.0.weight",
        "vision_model.encoder.layers.0.attn.qkv.weight",
    ]
    assert torch.allclose(folded["language_model.model.layers.0.self_attn.q_proj.weight"], base + 2.0 * b @ a)
    assert not has_original_lora(folded)


# InternVL3.5's LLMs in the original layout: transformers 4.55's names (its InternVLChatModel wraps
# AutoModelForCausalLM), a Qwen3-MoE expert per MLP, GPT-OSS's experts fused as in transformers 5.
QWEN3_MOE_LAYER_KEYS = {
    "language_model.model.layers.0.self_attn.q_norm.weight": (16,),
    "language_model.model.layers.0.self_attn.k_norm.weight": (16,),
    "language_model.model.layers.0.mlp.gate.weight": (4, 64),
    **{
        f"language_model.model.layers.0.mlp.experts.{expert}.{proj}.weight": shape
        for expert in range(4)
        for proj, shape in (("gate_proj", (24, 64)), ("up_proj", (24, 64)), ("down_proj", (64, 24)))
    },
}
GPT_OSS_LAYER_KEYS = {
    "language_model.model.layers.0.self_attn.sinks": (4,),
    "language_model.model.layers.0.self_attn.q_proj.bias": (64,),
    "language_model.model.layers.0.mlp.router.weight": (4, 64),
    "language_model.model.layers.0.mlp.router.bias": (4,),
    "language_model.model.layers.0.mlp.experts.gate_up_proj": (4, 64, 48),
    "language_model.model.layers.0.mlp.experts.gate_up_proj_bias": (4, 48),
    "language_model.model.layers.0.mlp.experts.down_proj": (4, 24, 64),
    "language_model.model.layers.0.mlp.experts.down_proj_bias": (4, 64),
}


@pytest.mark.parametrize(
    ("llm", "keys", "expected"),
    [("qwen3_moe", "hf_expert_list", QWEN3_MOE_LAYER_KEYS), ("gpt_oss", "hf", GPT_OSS_LAYER_KEYS)],
)
def test_internvl35_moe_layers_have_the_original_keys_and_shapes(tokenizer, llm, keys, expected):
    model = make_model(tokenizer, llm=llm)
    original = to_original(model.state_dict(), keys, attention_shape(model.config.text_config))
    assert {key: tuple(original[key].shape) for key in expected} == expected
    mlp = {key for key in original if key.startswith("language_model.model.layers.0.mlp.")}
    assert mlp == {key for key in expected if ".mlp." in key}


def test_qwen3_moe_experts_are_gate_rows_then_up_rows_of_one_tensor():
    experts = {
        index: {
            "gate_proj": labelled([10 * index, 10 * index + 1], 3),
            "up_proj": labelled([10 * index + 5, 10 * index + 6], 3),
            "down_proj": labelled([index + 0.5] * 3, 2),
        }
        for index in (1, 0)
    }
    stacked = stack_experts(experts, "7")
    assert stacked["gate_up_proj"][:, :, 0].tolist() == [[0, 1, 5, 6], [10, 11, 15, 16]]
    assert stacked["down_proj"].shape == (2, 3, 2) and stacked["down_proj"][1, 0, 0] == 1.5
    back = unstack_experts(stacked["gate_up_proj"], stacked["down_proj"])
    assert all(torch.equal(back[i][proj], experts[i][proj]) for i in (0, 1) for proj in experts[i])


def test_qwen3_moe_experts_with_a_gap_or_a_missing_projection_are_refused():
    weight = torch.zeros(2, 3)
    full = {"gate_proj": weight, "up_proj": weight, "down_proj": weight.T}
    with pytest.raises(LayoutError, match=r"^layer 3: experts \[0, 2\] are not numbered 0 to 1$"):
        stack_experts({0: full, 2: full}, "3")
    with pytest.raises(LayoutError, match=r"^layer 3 expert 0: only \['gate_proj', 'up_proj'\] of"):
        stack_experts({0: {"gate_proj": weight, "up_proj": weight}}, "3")
    with pytest.raises(LayoutError, match=r"^layer 5: only \['gate_up_proj'\] of the experts'"):
        to_original({"model.language_model.layers.5.mlp.experts.gate_up_proj": torch.zeros(2, 4, 3)}, "hf_expert_list")


def test_quantized_experts_are_refused_by_key():
    state = {
        "language_model.model.layers.0.mlp.experts.gate_up_proj_blocks": torch.zeros(1, dtype=torch.uint8),
        "language_model.model.layers.0.mlp.experts.gate_up_proj_scales": torch.zeros(1, dtype=torch.uint8),
    }
    with pytest.raises(LayoutError, match=r"^2 quantized expert weights \(train from a bf16 release of the model\): "):
        to_native(state, "hf")
