"""AdamW parameter groups with the standard no-decay set (reference: internvl-recipe.md §11 item 8).

Weight decay applies to the weight matrices of linear and convolution layers (LoRA's A and B
included; a mixture-of-experts LLM's stacked expert matrices and router too). It does not apply to
biases (GPT-OSS's stacked expert biases ``*_proj_bias`` included), to normalisation weights
(LayerNorm, RMSNorm), to embeddings (token embeddings, the vision tower's CLS token and position
embeddings), to GPT-OSS's attention sinks or to the vision layers' per-channel scales
(``lambda_1``/``lambda_2``). InternVL's DeepSpeed route decays everything; that defect is not
copied. Only parameters that require a gradient are grouped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NO_DECAY_NAMES = ("bias", "cls_token", "position_embeddings", "mask_token", "lambda_1", "lambda_2")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(module).__name__.lower()


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        exempt_module = isinstance(module, nn.Embedding) or _is_norm(module)
        for param_name, parameter in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            # ZeRO-3 partitions a parameter into a flat piece; ds_shape is its real shape.
            if (
                exempt_module
                or param_name in NO_DECAY_NAMES
                or param_name.endswith("_bias")
                or len(getattr(parameter, "ds_shape", parameter.shape)) < 2
            ):
                names.add(full)
    return names


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups of the trainable parameters: decayed, and not decayed."""
    exempt = no_decay_names(model)
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if name in exempt else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def adamw(model: nn.Module, learning_rate: float, weight_decay: float, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups``."""
    return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=learning_rate, **kwargs)
