"""Turning a loaded native model into the model that trains, from ``MethodConfig``.

Order (InternVL's, reference: internvl-recipe.md §1.7): drop path on the vision tower, freeze
flags and unfrozen last vision layers, activation checkpointing, then LoRA (which keeps the
trained parts as ``modules_to_save``). ``use_cache`` is off while training; export turns it back
on. Under ZeRO-3 the MoE blocks of a mixture-of-experts LLM become leaf modules (``moe``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from internvl_trainer.config import MethodConfig
from internvl_trainer.model.activation_checkpointing import enable_checkpointing
from internvl_trainer.model.drop_path import set_drop_path
from internvl_trainer.model.freeze import TrainablePlan, apply_freeze
from internvl_trainer.model.lora import add_lora
from internvl_trainer.model.moe import set_zero3_leaves


@dataclass
class Prepared:
    """The model to train (a PEFT model with LoRA) and what trains in full."""

    model: nn.Module
    trainable: TrainablePlan
    drop_path_rates: list[float]


def prepare_for_training(model: nn.Module, method: MethodConfig, *, gradient_checkpointing: bool = True) -> Prepared:
    """Apply ``method`` to an ``InternVLForConditionalGeneration`` (in place) and return the model
    to hand to the trainer."""
    model.config.text_config.use_cache = False
    rate = method.drop_path_rate
    if rate is None:
        rate = float(getattr(model.config.vision_config, "drop_path_rate", 0.0) or 0.0)
    rates = set_drop_path(model, rate)
    trainable = apply_freeze(model, method.resolved_freeze(), method.unfreeze_vision_layers)
    if gradient_checkpointing:
        enable_checkpointing(model)
    if is_deepspeed_zero3_enabled():
        set_zero3_leaves(model)
    lora = method.resolved_lora()
    if lora is not None:
        model = add_lora(model, lora, trainable)
    return Prepared(model=model, trainable=trainable, drop_path_rates=rates)
