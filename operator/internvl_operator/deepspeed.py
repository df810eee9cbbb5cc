"""DeepSpeed configs: InternVL's ZeRO 1, 2, 3 and 3 + CPU-offload files, as the trainer receives them.

Each variant carries the ``zero_optimization`` block of the InternVL file of the same name
(``internvl_chat/zero_stage*_config*.json``, reference/internvl-recipe.md §8.4): the bucket sizes,
the ZeRO-3 persistence threshold that the 34B and 100B variants lower, and the offload of the
100B offload variant. Everything the HF Trainer fills from its own arguments is ``"auto"``
(micro-batch, accumulation, global batch, clipping, fp16/bf16), so one config serves any batch
layout and the trainer's ``TrainingArguments`` stay the single source of those numbers.

Two deliberate differences from InternVL's files:

- No ``optimizer`` block by default. With one, the HF Trainer hands DeepSpeed all trainable
  tensors as one group and weight decay hits norms, biases and embeddings
  (reference/internvl-recipe.md §11 item 8); without one, the Trainer's own optimizer keeps the
  no-decay groups the contract promises. Under CPU offload DeepSpeed accepts only its CPU Adam as
  a client optimizer: accelerate turns the trainer's AdamW into ``DeepSpeedCPUAdam`` (AdamW mode)
  over the same groups.
  ``optimizer=True`` restores InternVL's AdamW block for parity runs.
- ``wall_clock_breakdown`` is off: it synchronises the GPU around every phase to time it.

The memory model reads its bucket and ZeRO-3 sizes from these configs (``ZeroSettings``), so a
change here changes the estimates too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

_COMMON: dict[str, Any] = {
    "fp16": {
        "enabled": "auto",
        "auto_cast": True,
        "loss_scale": 0,
        "initial_scale_power": 32,
        "loss_scale_window": 1000,
        "hysteresis": 2,
        "min_loss_scale": 1,
    },
    "bf16": {"enabled": "auto"},
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "steps_per_print": 2000,
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "wall_clock_breakdown": False,
}

_ADAMW: dict[str, Any] = {
    "type": "AdamW",
    "params": {"lr": "auto", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": "auto"},
}


def _stage3(*, bucket: float, persistence: float, live: float, overlap: bool = True) -> dict[str, Any]:
    return {
        "stage": 3,
        "overlap_comm": overlap,
        "contiguous_gradients": True,
        "sub_group_size": bucket,
        "reduce_bucket_size": bucket,
        "stage3_prefetch_bucket_size": bucket,
        "stage3_param_persistence_threshold": persistence,
        "stage3_max_live_parameters": live,
        "stage3_max_reuse_distance": live,
        "stage3_gather_16bit_weights_on_model_save": True,
    }


_OFFLOAD = {"device": "cpu", "pin_memory": True}

ZERO_VARIANTS: dict[str, dict[str, Any]] = {
    "zero_stage1_config": {
        "stage": 1,
        "allgather_partitions": True,
        "allgather_bucket_size": 1e9,
        "overlap_comm": True,
        "reduce_scatter": True,
        "reduce_bucket_size": 1e9,
        "contiguous_gradients": True,
    },
    "zero_stage2_config": {
        "stage": 2,
        "allgather_partitions": True,
        "allgather_bucket_size": 1e8,
        "overlap_comm": True,
        "reduce_scatter": True,
        "reduce_bucket_size": 1e8,
        "contiguous_gradients": True,
    },
    "zero_stage3_config": _stage3(bucket=1e9, persistence=1e7, live=1e9),
    "zero_stage3_config_34b": _stage3(bucket=1e9, persistence=1e5, live=1e9),
    "zero_stage3_config_100b": _stage3(bucket=1e9, persistence=1e4, live=1e9),
    "zero_stage3_config_100b_1e7_offload": {
        **_stage3(bucket=1e7, persistence=1e4, live=1e8, overlap=False),
        "offload_param": dict(_OFFLOAD),
        "offload_optimizer": dict(_OFFLOAD),
    },
}
"""The ``zero_optimization`` block of each InternVL config file, by file name."""

OFFLOAD_VARIANT = "zero_stage3_config_100b_1e7_offload"

# InternVL's scripts pick the ZeRO-3 file by size: 26B the plain one, 38B the 34B one, 78B the
# 100B one. The planner applies the same split to any model it puts on ZeRO-3.
_STAGE3_BY_SIZE = ((30e9, "zero_stage3_config"), (70e9, "zero_stage3_config_34b"))


@dataclass(frozen=True)
class ZeroVariant:
    """One of InternVL's DeepSpeed config files: its name, and the ZeRO stage and CPU offload its
    ``zero_optimization`` block sets."""

    name: str
    stage: int
    offload: bool

    @classmethod
    def named(cls, name: str) -> ZeroVariant:
        """The variant of a config file in ``ZERO_VARIANTS``, read from its block."""
        zero = ZERO_VARIANTS[name]
        return cls(name=name, stage=zero["stage"], offload=zero.get("offload_optimizer", {}).get("device") == "cpu")

    def config(self, *, optimizer: bool = False) -> dict[str, Any]:
        """The DeepSpeed JSON (as a dict) of this variant (see ``deepspeed_config``)."""
        return deepspeed_config(self.name, optimizer=optimizer)


def variant_for(stage: int, offload: bool, total_params: int) -> ZeroVariant:
    """The config file for a ZeRO stage, offload choice and model size."""
    if offload:
        if stage != 3:
            raise ValueError("CPU offload needs ZeRO stage 3")
        return ZeroVariant.named(OFFLOAD_VARIANT)
    if stage in (1, 2):
        return ZeroVariant.named(f"zero_stage{stage}_config")
    for limit, name in _STAGE3_BY_SIZE:
        if total_params < limit:
            return ZeroVariant.named(name)
    return ZeroVariant.named("zero_stage3_config_100b")


def deepspeed_config(variant: str, *, optimizer: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON (as a dict) of a variant; ``optimizer`` adds InternVL's AdamW block."""
    config: dict[str, Any] = {"zero_optimization": copy.deepcopy(ZERO_VARIANTS[variant])}
    if optimizer:
        config["optimizer"] = copy.deepcopy(_ADAMW)
    config.update(copy.deepcopy(_COMMON))
    return config


class ZeroSettings(BaseModel):
    """What the memory model needs from a DeepSpeed config."""

    model_config = ConfigDict(frozen=True)

    stage: int
    offload_params: bool
    offload_optimizer: bool
    reduce_bucket_size: int
    overlap_comm: bool
    prefetch_bucket_size: int
    max_live_parameters: int
    sub_group_size: int

    @classmethod
    def of(cls, config: dict[str, Any]) -> ZeroSettings:
        zero = config.get("zero_optimization", {})

        def size(key: str, default: float) -> int:
            value = zero.get(key, default)
            return int(default if value == "auto" else value)

        # Defaults as DeepSpeed 0.19 has them when a key is absent.
        return cls(
            stage=int(zero.get("stage", 0)),
            offload_params=zero.get("offload_param", {}).get("device", "none") == "cpu",
            offload_optimizer=zero.get("offload_optimizer", {}).get("device", "none") == "cpu",
            reduce_bucket_size=size("reduce_bucket_size", 5e8),
            overlap_comm=bool(zero.get("overlap_comm", zero.get("stage", 0) == 3)),
            prefetch_bucket_size=size("stage3_prefetch_bucket_size", 5e7),
            max_live_parameters=size("stage3_max_live_parameters", 1e9),
            sub_group_size=size("sub_group_size", 1e9),
        )
