"""The mixture-of-experts language models of InternVL3.5 (Qwen3-MoE, GPT-OSS) as training sees
them: their MoE blocks, which are ZeRO-3 leaf modules, and their routers' load-balancing loss.

ZeRO-3 gathers a module's partitioned weights in a collective as the module runs. Inside an MoE
block only the experts some token is routed to run, and which experts those are differs from rank
to rank: where each expert is a module of its own (transformers 4, which InternVL's scripts use),
ranks gathering different experts stop matching and the run hangs, which DeepSpeed's leaf modules
exist for (deepspeedai/DeepSpeed#4966; InternVL's scripts set none, and its users report
InternVL3.5-30B-A3B hanging under ZeRO-3: OpenGVLab/InternVL#1193).
transformers 5 keeps a layer's experts in one module that every rank runs, so that cannot happen
here today; as a leaf, the block (router and experts) is still gathered in one fetch and its
gradients reduced together, whatever an experts kernel or adapter does inside it.

The load-balancing term is InternVL's (``internvl_chat_gpt_oss/internvl/model/internvl_chat/
modeling_internvl_chat.py``, ``internvl/train/internvl_chat_finetune.py``): Switch Transformer's
loss over every layer's router logits of a micro-batch (padding left out), weighted by the LLM
config's ``router_aux_loss_coef`` and added to the language-model loss. InternVL always turns it
on for GPT-OSS and otherwise follows the checkpoint's ``output_router_logits``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP, GptOssTopKRouter, load_balancing_loss_func
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock, Qwen3MoeTopKRouter

MOE_BLOCKS: tuple[type[nn.Module], ...] = (Qwen3MoeSparseMoeBlock, GptOssMLP)
"""The MoE block of each MoE family: its router and experts."""
ROUTERS: tuple[type[nn.Module], ...] = (Qwen3MoeTopKRouter, GptOssTopKRouter)
"""Their routers, whose first output is the logits over every expert."""
ALWAYS_BALANCED = ("gpt_oss",)
"""LLM families whose load-balancing loss InternVL's fine-tuning adds whatever the checkpoint says."""


def set_zero3_leaves(model: nn.Module) -> None:
    """Make every MoE block of ``model`` a ZeRO-3 leaf module (before DeepSpeed wraps it)."""
    blocks = [module for module in model.modules() if isinstance(module, MOE_BLOCKS)]
    if blocks:
        from deepspeed.utils import set_z3_leaf_modules  # imported only under ZeRO-3

        set_z3_leaf_modules(model, list({type(block) for block in blocks}))


@dataclass
class RouterBalance:
    """The load-balancing loss of one model's routers: ``record`` collects the router logits of
    the forward passes run inside it, ``loss`` turns them into the unweighted loss."""

    coefficient: float
    routers: list[nn.Module]
    num_experts: int
    top_k: int
    _logits: list[torch.Tensor] = field(default_factory=list)

    @contextmanager
    def record(self) -> Iterator[RouterBalance]:
        """Router logits of the forward passes inside; none from a backward pass recomputing
        checkpointed layers after it."""
        self._logits = []
        handles = [router.register_forward_hook(self._keep) for router in self.routers]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _keep(self, module: nn.Module, args: object, output: tuple[torch.Tensor, ...]) -> None:
        self._logits.append(output[0])

    def loss(self, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The unweighted load-balancing loss of the last recorded forward pass (tokens where
        ``attention_mask`` is 0 left out; every token without one, as in a packed batch)."""
        if not self._logits:
            raise RuntimeError("no router logits were recorded: run the forward pass inside record()")
        logits, self._logits = tuple(self._logits), []
        return load_balancing_loss_func(logits, self.num_experts, self.top_k, attention_mask)


def router_balance(model: nn.Module) -> RouterBalance | None:
    """The load-balancing loss InternVL's fine-tuning adds for ``model`` (InternVL, or its LLM
    alone), or None: a dense LLM, or a MoE checkpoint that turns it off."""
    routers = [module for module in model.modules() if isinstance(module, ROUTERS)]
    if not routers:
        return None
    text_config = getattr(model.config, "text_config", model.config)
    if text_config.model_type not in ALWAYS_BALANCED and not text_config.output_router_logits:
        return None
    first = routers[0]
    return RouterBalance(
        coefficient=float(text_config.router_aux_loss_coef),
        routers=routers,
        num_experts=int(first.num_experts),
        top_k=int(first.top_k),
    )
