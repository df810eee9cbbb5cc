"""Collators: samples (or packs of samples) → one micro-batch the model and the loss take.

Both collators pad ``input_ids`` with the tokenizer's real pad id and ``labels`` with IGNORE_INDEX,
normalise every sample's uint8 tiles straight into ``pixel_values`` in token order (left out when
the batch has none; each tile becomes float32 once, where the batch holds it) and attach
``loss_weight`` (loss.py) for the configured reduction. The first label of each sample is set to
IGNORE_INDEX: no position of the sample predicts it, and in a packed row the previous sample's last
position would. InternVL pads with id 0 and rebuilds the attention mask as ``input_ids != 0``,
which hides every real token 0 ("!" in Qwen2's vocabulary; reference: internvl-recipe.md §6,
§11.1); here masks and segments come from the true lengths only.

- ``collate_padded``: one sample per row; ``attention_mask`` marks the true lengths.
- ``collate_packed``: several samples per row, with no attention mask. ``position_ids`` restart at 0
  for every sample (and for the padding at the end of a row, its own segment), which is what keeps
  attention within a sample: transformers' sdpa and eager attention build the block-diagonal causal
  mask from them (``use_cache`` is false so that they do), and flash attention gets
  ``cu_seq_lens_q/k`` and ``max_length_q/k`` over the flattened batch, which its varlen kernel takes
  directly, for any number of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.utils.data import get_worker_info

from internvl_trainer.data.tiling import Normalization, normalize
from internvl_trainer.loss import IGNORE_INDEX, Reduction, token_weights


class Collatable(Protocol):
    """What a collator needs of a sample (``BuiltSample`` has it)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    tiles: Sequence[torch.Tensor]
    """(size, size, 3) uint8 tiles."""
    normalization: Normalization


def _padded_length(longest: int, multiple: int, length: int | None) -> int:
    if length is not None:
        if length < longest:
            raise ValueError(f"a row of {longest} tokens does not fit the fixed length {length}")
        return length
    return -(-longest // multiple) * multiple


def _pixels(samples: Sequence[Collatable]) -> torch.Tensor | None:
    """Every sample's tiles, in order, normalised into one float32 tensor. In a data-loader worker
    it lives in shared memory: it then crosses to the training process without another copy (a
    sequence's tiles are up to a few hundred MB of float32)."""
    with_tiles = [sample for sample in samples if len(sample.tiles)]
    if not with_tiles:
        return None
    size = with_tiles[0].tiles[0].shape[0]
    out = torch.empty((sum(len(sample.tiles) for sample in with_tiles), 3, size, size), dtype=torch.float32)
    if get_worker_info() is not None:
        out.share_memory_()
    start = 0
    for sample in with_tiles:
        stop = start + len(sample.tiles)
        normalize(sample.tiles, sample.normalization, out[start:stop])
        start = stop
    return out


def _sample_labels(sample: Collatable) -> torch.Tensor:
    labels = sample.labels.clone()
    labels[:1] = IGNORE_INDEX
    return labels


def collate_padded(
    samples: Sequence[Collatable],
    *,
    pad_id: int,
    reduction: Reduction = "token",
    pad_to_multiple_of: int = 1,
    length: int | None = None,
) -> dict[str, Any]:
    """One sample per row, right-padded to the longest (rounded up to ``pad_to_multiple_of``) or to
    a fixed ``length``."""
    if not samples:
        raise ValueError("nothing to collate")
    lengths = [int(sample.input_ids.shape[0]) for sample in samples]
    width = _padded_length(max(lengths), pad_to_multiple_of, length)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, (sample, size) in enumerate(zip(samples, lengths, strict=True)):
        input_ids[row, :size] = sample.input_ids
        labels[row, :size] = _sample_labels(sample)
        attention_mask[row, :size] = 1
    segments = torch.where(attention_mask.bool(), 0, -1)
    batch: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "loss_weight": token_weights(labels, segments, reduction),
    }
    pixels = _pixels(samples)
    if pixels is not None:
        batch["pixel_values"] = pixels
    return batch


def collate_packed(
    packs: Sequence[Sequence[Collatable]],
    *,
    pad_id: int,
    reduction: Reduction = "token",
    pad_to_multiple_of: int = 1,
    length: int | None = None,
) -> dict[str, Any]:
    """One pack per row, the samples one after the other, right-padded like ``collate_padded``."""
    if not packs or not all(packs):
        raise ValueError("nothing to collate (or an empty pack)")
    rows = [[int(sample.input_ids.shape[0]) for sample in pack] for pack in packs]
    width = _padded_length(max(sum(lengths) for lengths in rows), pad_to_multiple_of, length)
    shape = (len(packs), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    boundaries = [0]
    for row, (pack, lengths) in enumerate(zip(packs, rows, strict=True)):
        start = 0
        for index, (sample, size) in enumerate(zip(pack, lengths, strict=True)):
            stop = start + size
            input_ids[row, start:stop] = sample.input_ids
            labels[row, start:stop] = _sample_labels(sample)
            position_ids[row, start:stop] = torch.arange(size)
            segments[row, start:stop] = index
            boundaries.append(row * width + stop)
            start = stop
        if start < width:  # the padding: a segment of its own
            position_ids[row, start:] = torch.arange(width - start)
            boundaries.append((row + 1) * width)
    cu_seq_lens = torch.tensor(boundaries, dtype=torch.int32)
    longest = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    batch: dict[str, Any] = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "labels": labels,
        "loss_weight": token_weights(labels, segments, reduction),
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": longest,
        "max_length_k": longest,
        "use_cache": False,
    }
    pixels = _pixels([sample for pack in packs for sample in pack])
    if pixels is not None:
        batch["pixel_values"] = pixels
    return batch


LOSS_KEYS = ("labels", "loss_weight")
"""Keys of a collated batch that the loss takes; every other key is a model input."""


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the model's forward: the batch without the loss's keys."""
    return {key: value for key, value in batch.items() if key not in LOSS_KEYS}


def batch_segments(batch: dict[str, Any]) -> torch.Tensor:
    """Which sample of its row each token of a collated batch belongs to: 0, 1, … (a packed row's
    padding counts as one more segment, without labels), -1 for a padded row's padding."""
    if "attention_mask" in batch:
        return torch.where(batch["attention_mask"].bool(), 0, -1)
    return (batch["position_ids"] == 0).long().cumsum(-1) - 1


@dataclass(frozen=True)
class Collator:
    """The collator of a run: packed or padded, with its pad id and loss reduction."""

    pad_id: int
    reduction: Reduction = "token"
    packed: bool = True
    pad_to_multiple_of: int = 1
    length: int | None = None
    """Pad every row to this many tokens (static shapes); None pads to the longest row."""

    def __call__(self, rows: Sequence[Any]) -> dict[str, Any]:
        options = dict(
            pad_id=self.pad_id, reduction=self.reduction, pad_to_multiple_of=self.pad_to_multiple_of, length=self.length
        )
        if self.packed:
            return collate_packed(rows, **options)
        return collate_padded(rows, **options)
