"""Activation (gradient) checkpointing of a transformers model, non-reentrant so that it works with
frozen inputs and LoRA. It needs nothing but torch and transformers (the GPU benchmark uses it on
machines without the trainer's other dependencies)."""

from __future__ import annotations

from torch import nn


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute activations in the backward pass instead of keeping them."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers releases before the rename
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
