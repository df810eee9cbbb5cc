"""The training loss: per-token weights for the token, sample and square reductions, and a weighted
cross-entropy normalised by a global sum of weights (reference: internvl-recipe.md §5.3, §11.7).

A sample with n supervised tokens gives each of them the weight

- ``token``: 1 (every supervised token weighs the same; the sample weighs n);
- ``sample``: 1/n (every sample weighs 1);
- ``square``: 1/√n (the sample weighs √n: InternVL's "square averaging").

The loss of a global batch (every micro-batch of one optimizer step on every rank) is
``Σ w·CE / Σ w``. Each micro-batch contributes ``Σ_micro w·CE / W`` where ``W`` is the global sum
of weights (``loss_normaliser``: summed over the step's micro-batches, all-reduced over ranks), so
the contributions add up to the global loss whatever the split: accumulating k micro-batches gives
the gradient of the whole batch. InternVL divides by a per-rank sum (or its mean over ranks) and
its non-packed path ignores the reduction; neither is copied.

Weights depend only on the sample they belong to, so they are computed once, by the collator
(``token_weights``), and travel in the batch as ``loss_weight``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
LOSS_CHUNK_TOKENS = 1024
"""Supervised tokens whose logits ``head_loss`` computes at once (the operator's memory model
plans with the same number)."""

Reduction = Literal["token", "sample", "square"]
REDUCTIONS: tuple[Reduction, ...] = ("token", "sample", "square")


def sample_token_weight(supervised: int, reduction: Reduction) -> float:
    """The weight of each supervised token of a sample that has ``supervised`` of them."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; known: {', '.join(REDUCTIONS)}")
    if supervised <= 0:
        return 0.0
    if reduction == "token":
        return 1.0
    if reduction == "sample":
        return 1.0 / supervised
    return supervised**-0.5


def token_weights(labels: torch.Tensor, segments: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Float32 weights shaped like ``labels`` (batch, length): ``weights[b, t]`` weighs the loss of
    predicting ``labels[b, t]`` (from position t - 1). ``segments[b, t]`` is the index of the sample
    token t belongs to within its row (-1 for padding); a sample's supervised tokens are its labels
    other than IGNORE_INDEX. The first label of each sample must already be IGNORE_INDEX (nothing in
    the sample predicts it; the collators see to it), so no weight crosses a sample boundary."""
    supervised = (labels != IGNORE_INDEX) & (segments >= 0)
    weights = torch.zeros(labels.shape, dtype=torch.float32)
    for row in range(labels.shape[0]):
        ids = segments[row][supervised[row]]
        if ids.numel() == 0:
            continue
        counts = torch.bincount(ids)
        per_sample = torch.tensor(
            [sample_token_weight(int(count), reduction) for count in counts.tolist()], dtype=torch.float64
        )
        weights[row, supervised[row]] = per_sample[ids].to(torch.float32)
    return weights


def loss_normaliser(
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    all_reduce: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The global normaliser ``W``: the sum of ``loss_weight`` over ``batches`` (the micro-batches of
    one optimizer step on this rank), summed over every rank when torch.distributed is initialised
    and ``all_reduce`` is true. A float64 scalar on ``device`` (default: the batches' device; NCCL
    needs the GPU)."""
    parts = [batch["loss_weight"].sum(dtype=torch.float64) for batch in batches]
    if device is None:
        device = parts[0].device if parts else "cpu"
    total = torch.zeros((), dtype=torch.float64, device=device)
    for part in parts:
        total = total + part.to(device)
    if all_reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total


def model_loss(
    model: Callable[..., Any],
    head: torch.nn.Module,
    inputs: Mapping[str, Any],
    labels: torch.Tensor,
    weights: torch.Tensor,
    normaliser: torch.Tensor | float,
    *,
    chunk_tokens: int = LOSS_CHUNK_TOKENS,
    reentrant: bool = False,
) -> torch.Tensor:
    """This micro-batch's share of the global loss from one forward pass of ``model`` (a causal LM
    or InternVL, possibly wrapped by PEFT or DeepSpeed) on ``inputs``; ``head`` is its output
    embeddings (the LM head). The model computes the logits of its last position only and hands
    back its final hidden states, to which ``head_loss`` applies the head."""
    outputs = model(**inputs, output_hidden_states=True, logits_to_keep=1)
    hidden = outputs.hidden_states[-1]
    return head_loss(hidden, head, labels, weights, normaliser, chunk_tokens=chunk_tokens, reentrant=reentrant)


def head_loss(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    weights: torch.Tensor,
    normaliser: torch.Tensor | float,
    *,
    chunk_tokens: int = LOSS_CHUNK_TOKENS,
    reentrant: bool = False,
) -> torch.Tensor:
    """``Σ w·CE / normaliser`` over the next-token predictions of ``hidden`` (batch, length,
    hidden size: the final hidden states). ``labels`` and ``weights`` (batch, length) unshifted, as
    the collators make them; ``normaliser`` from ``loss_normaliser``.

    The head runs on the weighted positions only, ``chunk_tokens`` of them at a time, and each
    chunk's logits are recomputed in the backward pass instead of kept: the float32 logits of a
    long micro-batch (16k tokens x a 150k vocabulary is 9 GiB each in the loss) never exist at
    once, only one chunk's. With gradients averaged over ranks (DDP, DeepSpeed), multiply the
    result by the world size; never divide it by the accumulation steps.

    Under ZeRO-3 the recomputation must be ``reentrant`` (a forward pass of its own in the backward
    pass, as DeepSpeed's activation checkpointing does): ZeRO-3 gathers the head's partitioned
    weight as the head runs and frees it after, and a non-reentrant recomputation of a frozen head
    (LoRA) finds it freed. Reentrant recomputation does not support ``torch.autograd.grad``."""
    shifted_labels = labels[:, 1:].to(hidden.device)
    shifted_weights = weights[:, 1:].to(hidden.device)
    keep = (shifted_weights != 0) & (shifted_labels != IGNORE_INDEX)
    selected = hidden[:, :-1][keep]
    targets, kept_weights = shifted_labels[keep], shifted_weights[keep].float()
    total = None
    # One chunk even when nothing is supervised: the zero result keeps its graph through the head.
    for start in range(0, max(len(targets), 1), chunk_tokens):
        part = slice(start, start + chunk_tokens)
        chunk = checkpoint(
            _chunk_loss, head, selected[part], targets[part], kept_weights[part], use_reentrant=reentrant
        )
        total = chunk if total is None else total + chunk
    # A zero normaliser means nothing is supervised anywhere: the result is a zero with a graph.
    normaliser = torch.as_tensor(normaliser, device=total.device).to(total.dtype).clamp_min(1e-12)
    return total / normaliser


def _chunk_loss(head: Callable, hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    losses = F.cross_entropy(head(hidden).float(), targets, reduction="none")
    return (losses * weights).sum()


def sample_losses(logits: torch.Tensor, labels: torch.Tensor, segments: torch.Tensor) -> list[torch.Tensor]:
    """Each sample's own mean cross-entropy over its supervised tokens, row by row and in order
    (for evaluation and reports; samples without a supervised token are left out). ``segments`` as
    in ``token_weights``."""
    losses = []
    for row in range(labels.shape[0]):
        row_segments = segments[row]
        for index in range(int(row_segments.max()) + 1 if row_segments.numel() else 0):
            positions = (row_segments == index).nonzero().flatten()
            start, stop = int(positions[0]), int(positions[-1]) + 1
            targets = labels[row, start + 1 : stop].to(logits.device)
            keep = targets != IGNORE_INDEX
            if not bool(keep.any()):
                continue
            predicted = logits[row, start : stop - 1][keep].float()
            losses.append(F.cross_entropy(predicted, targets[keep]))
    return losses
