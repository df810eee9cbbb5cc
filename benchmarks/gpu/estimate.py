"""The planner's memory estimate for a benchmarked micro-batch: the operator's memory model
(``internvl_operator.memory``, which needs pydantic) for the model's sizes, the recipe's trained
parts (LLM and projector), ZeRO-1 on one GPU with the operator's ``zero_stage1_config``, gradient
checkpointing, and the micro-batch's rows, padded length and tiles per row.

What PyTorch's allocator can be compared with is the estimate less its ``framework`` part (CUDA
context, NCCL and library workspaces, outside ``max_memory_allocated``), and less DeepSpeed's
communication buckets when the run did not use DeepSpeed.
"""

from __future__ import annotations

import math
from typing import Any

OUTSIDE_ALLOCATOR = "framework"
BUCKETS = "communication buckets"


def model_spec(name: str, original: dict[str, Any]):
    """The memory model's description (a catalog ``ModelSpec``) of an original-layout config.json
    with an InternViT and a Qwen2, Qwen3 or Qwen3-MoE LLM."""
    from internvl_operator.catalog import LanguageModel, ModelSpec, MoELanguageModel, VisionTower
    from internvl_trainer.model.original_config import LLM_ARCHITECTURES, llm_architecture

    vision, llm = original["vision_config"], original["llm_config"]
    family = LLM_ARCHITECTURES[llm_architecture(original)][0]
    language_model = dict(
        name=f"{name} LLM",
        family=family,
        hidden_size=llm["hidden_size"],
        layers=llm["num_hidden_layers"],
        heads=llm["num_attention_heads"],
        kv_heads=llm["num_key_value_heads"],
        vocab_size=llm["vocab_size"],
        qkv_bias=family == "qwen2" or llm.get("attention_bias", False),  # Qwen2's q/k/v always have a bias
        bos_token=None,
        head_size=llm.get("head_dim"),
        qk_norm=family in ("qwen3", "qwen3_moe"),
    )
    return ModelSpec(
        name=name,
        generation="3" if family == "qwen2" else "3.5",
        vision=VisionTower(
            name=f"{name} vision",
            hidden_size=vision["hidden_size"],
            layers=vision["num_hidden_layers"],
            heads=vision["num_attention_heads"],
            intermediate_size=vision["intermediate_size"],
            qkv_bias=vision["qkv_bias"],
            qk_norm=vision["qk_normalization"],
            norm=vision["norm_type"],
            card_params="-",
        ),
        llm=MoELanguageModel(
            **language_model,
            intermediate_size=llm["moe_intermediate_size"],
            experts=llm["num_experts"],
            experts_per_token=llm["num_experts_per_tok"],
        )
        if "num_experts" in llm
        else LanguageModel(**language_model, intermediate_size=llm["intermediate_size"]),
        card_total="-",
    )


def allocator_gib(
    name: str, original: dict[str, Any], *, rows: int, length: int, tiles: int, deepspeed: bool, full_logits: bool
) -> float:
    """The estimate for a micro-batch of ``rows`` x ``length`` tokens and ``tiles`` tiles in all,
    with the logits of every token (InternVL's loss) or of one chunk (the trainer's), less what
    the allocator does not see (see the module docstring)."""
    from internvl_operator.deepspeed import deepspeed_config
    from internvl_operator.memory import LOSS_CHUNK_TOKENS, Trainable, estimate

    result = estimate(
        model_spec(name, original),
        Trainable(projector=True, llm=True),
        gpus=1,
        deepspeed=deepspeed_config("zero_stage1_config"),
        per_device_batch_size=rows,
        max_seq_length=length,
        tiles_per_sequence=math.ceil(tiles / rows),
        gradient_checkpointing=True,
        loss_chunk_tokens=None if full_logits else LOSS_CHUNK_TOKENS,
    )
    unseen = result.gib(OUTSIDE_ALLOCATOR) + (0.0 if deepspeed else result.gib(BUCKETS))
    return result.total_gib - unseen
