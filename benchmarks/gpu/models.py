"""The benchmarked models: InternVL3-1B and InternVL3-2B sized, with random weights, trained the way
InternVL's 2nd-finetune scripts train them (reference: internvl-recipe.md §8.2): the LLM and the
projector, with the vision tower frozen, and gradient checkpointing.

Each model is described as the sizes of its original config.json on Hugging Face (the catalog's
source; a test holds them equal to ``operator/internvl_operator/catalog.py``) and built by the
trainer's own conversion to transformers' config (``original_config.native_config``). ``tiny`` is
the smoke run's model: the same architecture, a few layers of width 32 to 64 and 56-pixel tiles.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import InternVLForConditionalGeneration

from internvl_trainer.model.activation_checkpointing import enable_checkpointing
from internvl_trainer.model.original_config import IMAGE_CONTEXT_IDS, native_config

SMOKE = "tiny"


def original(vision: dict[str, int], llm: dict[str, int], *, image_size: int, image_token_id: int) -> dict[str, Any]:
    """An original-layout config.json: an InternViT with a Qwen2 LLM, as in every InternVL3 up to 14B."""
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
            "architectures": ["Qwen2ForCausalLM"],
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


def _internvl3(llm: dict[str, int]) -> dict[str, Any]:
    vit_300m = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096}
    return original(vit_300m, {"vocab_size": 151674, **llm}, image_size=448, image_token_id=IMAGE_CONTEXT_IDS["qwen2"])


def _qwen(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> dict[str, int]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
    }


MODELS: dict[str, dict[str, Any]] = {
    "InternVL3-1B": _internvl3(_qwen(896, 24, 14, 2, 4864)),
    "InternVL3-2B": _internvl3(_qwen(1536, 28, 12, 2, 8960)),
    SMOKE: original(
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
        {"vocab_size": 512, **_qwen(64, 2, 4, 2, 128)},
        image_size=56,
        image_token_id=511,
    ),
}


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
