"""Stochastic depth (drop path) in the native vision tower.

InternViT drops each layer's attention and MLP residual branches per sample, with rates rising
linearly from 0 at the first layer to ``drop_path_rate`` at the last (InternVL's
``torch.linspace(0, rate, depth)``); a kept branch is scaled by ``1 / (1 - rate)``.
transformers' ``InternVLVisionLayer`` has no drop path, so it is added here as forward hooks on
each layer's ``attention`` and ``mlp``: dropping ``lambda · branch`` per sample is the same as
dropping ``branch``, because the layer scale ``lambda`` is a per-channel constant.

The hooks act only while the module is in training mode, so a frozen (eval-mode) tower or layer
never sees drop-path noise, and inference is unchanged. Under activation checkpointing the
recomputed forward draws the same masks, since torch restores the RNG state for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

HANDLES = "_internvl_drop_path_handles"


def layer_rates(rate: float, layers: int) -> list[float]:
    """Drop-path rate of each layer: InternVL's linear schedule from 0 to ``rate``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}")
    return [float(x) for x in torch.linspace(0, rate, layers)]


def drop_path(tensor: torch.Tensor, rate: float) -> torch.Tensor:
    """Zero whole samples (first dimension) with probability ``rate``; scale the kept ones."""
    if rate == 0.0:
        return tensor
    keep = 1.0 - rate
    mask = tensor.new_empty((tensor.shape[0],) + (1,) * (tensor.dim() - 1)).bernoulli_(keep)
    return tensor * mask / keep


def _hook(rate: float):
    def apply(module: nn.Module, args: Any, output: Any) -> Any:
        if not module.training or rate == 0.0:
            return output
        if isinstance(output, tuple):
            return (drop_path(output[0], rate), *output[1:])
        return drop_path(output, rate)

    return apply


def vision_layers(model: nn.Module) -> nn.ModuleList:
    """The native vision tower's layers (``model.vision_tower.encoder.layer``)."""
    return model.get_submodule("model.vision_tower.encoder.layer")


def set_drop_path(model: nn.Module, rate: float) -> list[float]:
    """Install drop path in the vision tower of an ``InternVLForConditionalGeneration`` (replacing
    any installed before) and record ``rate`` in its vision config. Returns the per-layer rates."""
    layers = vision_layers(model)
    for handle in getattr(model, HANDLES, []):
        handle.remove()
    rates = layer_rates(rate, len(layers))
    handles = []
    for layer, layer_rate in zip(layers, rates, strict=True):
        if layer_rate > 0.0:
            handles.append(layer.attention.register_forward_hook(_hook(layer_rate)))
            handles.append(layer.mlp.register_forward_hook(_hook(layer_rate)))
    setattr(model, HANDLES, handles)
    model.config.vision_config.drop_path_rate = rate
    return rates
