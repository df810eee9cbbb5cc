"""The benchmarked models, with random weights, trained the way InternVL's 2nd-finetune scripts train
them (reference: internvl-recipe.md §8.2): the LLM and the projector, with the vision tower frozen,
and gradient checkpointing; every model with the same recipe (``layouts.Recipe``), so rows compare.

- InternVL3-1B and -2B sized: InternViT-300M with a Qwen2.5 LLM.
- InternVL3_5-2B sized: InternViT-300M with Qwen3-1.7B (head_dim 128, q/k norms).
- ``MOE`` (InternVL3_5-MoE-small), not a released model: InternVL3.5-30B-A3B does not train in
  full on one GPU (30.8B parameters), so this is its architecture cut to what does: InternViT-300M
  with a Qwen3-MoE whose layers have Qwen3-30B-A3B's shape (width 2048, 32 query and 4 KV heads of
  128, experts of width 768, 8 routed per token, probabilities renormalised) but 12 layers of 32
  experts instead of 48 of 128: 2.98B parameters, 1.62B of them active per token. As in
  Qwen3-30B-A3B's config.json, ``output_router_logits`` is false, so InternVL's recipe adds no
  load-balancing loss.

Each model is described as the sizes of its original config.json on Hugging Face (the catalog's
source; a test holds the released ones equal to ``operator/internvl_operator/catalog.py``) and
built by the trainer's own conversion to transformers' config (``original_config.native_config``).
``SMOKE`` and ``SMOKE_MOE`` are the smoke run's models: the dense and the MoE architecture with a
few layers of width 32 to 64 and 56-pixel tiles.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import InternVLForConditionalGeneration

from internvl_trainer.model.activation_checkpointing import enable_checkpointing
from internvl_trainer.model.original_config import IMAGE_CONTEXT_IDS, native_config

SMOKE = "tiny"
SMOKE_MOE = "tiny-moe"
MOE = "InternVL3_5-MoE-small"


def original(vision: dict[str, int], llm: dict[str, Any], *, image_size: int, image_token_id: int) -> dict[str, Any]:
    """An original-layout config.json: an InternViT with the LLM whose config.json (with its
    ``architectures``) ``llm`` gives."""
    return {
        "architectures": ["InternVLChatModel"],
        "vision_config": {
            "image_size": image_size,
            "patch_size": 14,
            "norm_type": "layer_norm",
            "qkv_bias": True,
            "qk_normalization": False,
            "layer_norm_eps": 1e-6,
            "drop_path_rate": 0.0,
            **vision,
        },
        "llm_config": {
            "hidden_act": "silu",
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
            **llm,
        },
        "downsample_ratio": 0.5,
        "select_layer": -1,
        "force_image_size": image_size,
        "ps_version": "v2",
        "img_context_token_id": image_token_id,
    }


def _attention(hidden: int, layers: int, heads: int, kv_heads: int) -> dict[str, int]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
    }


def _qwen2(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        **_attention(hidden, layers, heads, kv_heads),
        "intermediate_size": intermediate,
    }


def _qwen3(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        **_attention(hidden, layers, heads, kv_heads),
        "head_dim": 128,
        "intermediate_size": intermediate,
    }


def _qwen3_moe(
    hidden: int, layers: int, heads: int, kv_heads: int, expert: int, experts: int, routed: int, head_dim: int = 128
) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3MoeForCausalLM"],
        **_attention(hidden, layers, heads, kv_heads),
        "head_dim": head_dim,
        "moe_intermediate_size": expert,
        "num_experts": experts,
        "num_experts_per_tok": routed,
        "norm_topk_prob": True,
        "output_router_logits": False,
    }


VIT_300M = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}
_TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _internvl(llm: dict[str, Any], vocab: int, image_token_id: int) -> dict[str, Any]:
    return original(VIT_300M, {"vocab_size": vocab, **llm}, image_size=448, image_token_id=image_token_id)


def _tiny(llm: dict[str, Any]) -> dict[str, Any]:
    return original(_TINY_VIT, {"vocab_size": 512, **llm}, image_size=56, image_token_id=511)


_INTERNVL3 = {"vocab": 151674, "image_token_id": IMAGE_CONTEXT_IDS["qwen2"]}
_INTERNVL3_5 = {"vocab": 151936, "image_token_id": IMAGE_CONTEXT_IDS["qwen3"]}

MODELS: dict[str, dict[str, Any]] = {
    "InternVL3-1B": _internvl(_qwen2(896, 24, 14, 2, 4864), **_INTERNVL3),
    "InternVL3-2B": _internvl(_qwen2(1536, 28, 12, 2, 8960), **_INTERNVL3),
    "InternVL3_5-2B": _internvl(_qwen3(2048, 28, 16, 8, 6144), **_INTERNVL3_5),
    MOE: _internvl(_qwen3_moe(2048, 12, 32, 4, 768, experts=32, routed=8), **_INTERNVL3_5),
    SMOKE: _tiny(_qwen2(64, 2, 4, 2, 128)),
    SMOKE_MOE: _tiny(_qwen3_moe(64, 2, 4, 2, 24, experts=4, routed=2, head_dim=16)),
}

DESCRIPTIONS = {
    "InternVL3-1B": "InternViT-300M with Qwen2.5-0.5B",
    "InternVL3-2B": "InternViT-300M with Qwen2.5-1.5B",
    "InternVL3_5-2B": "InternViT-300M with Qwen3-1.7B",
    MOE: "not a released model: InternViT-300M with a Qwen3-MoE of Qwen3-30B-A3B's layer shape, 12 layers of 32"
    " experts with 8 routed per token; 2.98B parameters, 1.62B active",
    SMOKE: "a tiny InternViT with a tiny Qwen2",
    SMOKE_MOE: "a tiny InternViT with a tiny Qwen3-MoE",
}
"""What each model is, for the report."""


def build(
    name: str, *, attention: str, dtype: torch.dtype, device: str, seed: int = 0
) -> InternVLForConditionalGeneration:
    """``name`` with random weights (seeded) on ``device``, ready to train as the recipe does."""
    torch.manual_seed(seed)
    with torch.device(device):  # initialised where it trains: a 2B model initialises in seconds on a GPU
        model = InternVLForConditionalGeneration._from_config(
            native_config(MODELS[name]), dtype=dtype, attn_implementation=attention
        )
    model.config.text_config.use_cache = False
    enable_checkpointing(model)
    model.train()
    # freeze_backbone, as every InternVL3 full recipe: no gradient, and no dropout noise either
    model.model.vision_tower.requires_grad_(False).eval()
    return model
