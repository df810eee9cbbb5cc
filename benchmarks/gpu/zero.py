"""The optimizer step of the recipe's ZeRO-1, with DeepSpeed or without it.

On one GPU ZeRO-1 shards the optimizer state over one rank, which is no sharding: what remains is
DeepSpeed's bf16 mixed precision, bf16 weights and gradients with fp32 master weights and AdamW
moments (12 bytes per trained parameter), the fp32 gradients the step reads, and DeepSpeed's
communication buckets. ``DeepSpeedZero1`` runs DeepSpeed itself with the operator's
``zero_stage1_config``; ``MasterWeights`` keeps the same layout, buckets aside, in plain torch for
machines without DeepSpeed. Both use AdamW over the trainer's parameter groups (no decay for norms,
biases and embeddings) and clip the gradient norm at the recipe's 1.0.

``update(loss, boundary)`` runs the backward pass of a micro-batch and, at a step boundary,
the optimizer step.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Protocol

import torch

from benchmarks.gpu.layouts import Recipe
from internvl_trainer.model.optim import parameter_groups


class Zero1(Protocol):
    forward: Any
    """What the micro-batch goes through (the model, or DeepSpeed's engine around it)."""

    def update(self, loss: torch.Tensor, boundary: bool) -> None: ...


class MasterWeights:
    """ZeRO-1's memory layout on one rank in plain torch: AdamW steps fp32 master copies of the
    trained parameters, which are then copied back into the model."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe):
        self.forward = model
        self.max_grad_norm = recipe.max_grad_norm
        self.pairs: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        groups = []
        for group in parameter_groups(model, recipe.weight_decay):
            masters = [parameter.detach().float().clone() for parameter in group["params"]]
            self.pairs += zip(group["params"], masters, strict=True)
            groups.append({**group, "params": masters})
        device = self.pairs[0][1].device
        self.optimizer = torch.optim.AdamW(groups, lr=recipe.learning_rate, fused=device.type == "cuda")

    def update(self, loss: torch.Tensor, boundary: bool) -> None:
        loss.backward()
        if not boundary:
            return
        for parameter, master in self.pairs:
            # each bf16 gradient is freed as its fp32 copy is made, as the memory model assumes
            master.grad = None if parameter.grad is None else parameter.grad.float()
            parameter.grad = None
        torch.nn.utils.clip_grad_norm_([master for _, master in self.pairs], self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for parameter, master in self.pairs:
                parameter.copy_(master)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DeepSpeedZero1:
    """DeepSpeed's engine with the operator's ZeRO-1 config, its ``auto`` values filled for one
    process and one micro-batch per engine step; step boundaries are set by the caller."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe):
        import deepspeed

        from internvl_operator.deepspeed import deepspeed_config

        for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(name, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        config = deepspeed_config("zero_stage1_config")
        config.update(
            bf16={"enabled": True},
            fp16={"enabled": False},
            train_batch_size=1,
            train_micro_batch_size_per_gpu=1,
            gradient_accumulation_steps=1,
            gradient_clipping=recipe.max_grad_norm,
        )
        optimizer = torch.optim.AdamW(parameter_groups(model, recipe.weight_decay), lr=recipe.learning_rate)
        self.forward, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

    def update(self, loss: torch.Tensor, boundary: bool) -> None:
        self.forward.set_gradient_accumulation_boundary(boundary)
        self.forward.backward(loss)
        self.forward.step()


def zero1(model: torch.nn.Module, recipe: Recipe, *, deepspeed: bool) -> Zero1:
    return DeepSpeedZero1(model, recipe) if deepspeed else MasterWeights(model, recipe)
