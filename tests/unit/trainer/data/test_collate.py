"""Collators: the real pad id, masks from true lengths (token 0 and the pad id itself are real
tokens), per-sample position ids and cumulative lengths, tiles in token order, loss weights."""

from __future__ import annotations

import pytest
import torch

from internvl_trainer.data.collate import Collator, batch_segments, collate_packed, collate_padded
from internvl_trainer.data.sample import BuiltSample
from internvl_trainer.loss import IGNORE_INDEX

X = IGNORE_INDEX
PAD = 7


def built(ids: list[int], labels: list[int], tiles: int = 0, fill: int = 0) -> BuiltSample:
    return BuiltSample(
        input_ids=torch.tensor(ids),
        labels=torch.tensor(labels),
        attention_mask=torch.ones(len(ids), dtype=torch.long),
        tiles=[torch.full((4, 4, 3), fill, dtype=torch.uint8)] * tiles,
        normalization="siglip",  # (x / 255 - 0.5) / 0.5: 255 → 1.0, 0 → -1.0
        tiles_per_image=[tiles] if tiles else [],
        kind="image" if tiles else "text",
    )


# "!" is id 0 in Qwen2's vocabulary; a real token may even equal the pad id.
A = built([1, 0, 0, 5], [X, X, 0, 5], tiles=2, fill=255)
B = built([1, 7, 6], [X, 7, 6])
C = built([3, 0, 9, 9, 2], [3, X, 9, 9, 2], tiles=1, fill=0)  # a supervised first label


def test_padded_batch():
    batch = collate_padded([A, B, C], pad_id=PAD, reduction="sample")
    assert batch["input_ids"].tolist() == [[1, 0, 0, 5, 7], [1, 7, 6, 7, 7], [3, 0, 9, 9, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    # the first label of a sample is never predicted: masked, so it weighs nothing
    assert batch["labels"].tolist() == [[X, X, 0, 5, X], [X, 7, 6, X, X], [X, X, 9, 9, 2]]
    torch.testing.assert_close(
        batch["loss_weight"],
        torch.tensor([[0, 0, 0.5, 0.5, 0], [0, 0.5, 0.5, 0, 0], [0, 0, 1 / 3, 1 / 3, 1 / 3]]),
    )
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 1.0, -1.0]
    assert set(batch) == {"input_ids", "attention_mask", "labels", "loss_weight", "pixel_values"}
    assert batch_segments(batch).tolist() == [[0, 0, 0, 0, -1], [0, 0, 0, -1, -1], [0, 0, 0, 0, 0]]


def test_padded_lengths():
    assert collate_padded([A, B], pad_id=PAD, pad_to_multiple_of=8)["input_ids"].shape == (2, 8)
    assert collate_padded([A, B], pad_id=PAD, length=6)["input_ids"].shape == (2, 6)
    with pytest.raises(ValueError, match="a row of 4 tokens does not fit the fixed length 3"):
        collate_padded([A, B], pad_id=PAD, length=3)
    assert "pixel_values" not in collate_padded([B], pad_id=PAD)


def test_packed_batch():
    batch = collate_packed([[A, B], [C]], pad_id=PAD, reduction="square")
    assert batch["input_ids"].tolist() == [[1, 0, 0, 5, 1, 7, 6], [3, 0, 9, 9, 2, 7, 7]]
    assert batch["labels"].tolist() == [[X, X, 0, 5, X, 7, 6], [X, X, 9, 9, 2, X, X]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 3, 4, 0, 1]]
    # over the flattened batch; the padding of row 1 is a segment of its own
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 7, 12, 14]
    assert batch["cu_seq_lens_q"].dtype == torch.int32 and batch["cu_seq_lens_k"] is batch["cu_seq_lens_q"]
    assert batch["max_length_q"] == batch["max_length_k"] == 5
    assert batch["use_cache"] is False and "attention_mask" not in batch
    root = 2**-0.5
    torch.testing.assert_close(
        batch["loss_weight"],
        torch.tensor([[0, 0, root, root, 0, root, root], [0, 0, 3**-0.5, 3**-0.5, 3**-0.5, 0, 0]]),
    )
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 1.0, -1.0]
    assert batch_segments(batch).tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]]


def test_packed_rows_without_padding_and_fixed_length():
    batch = collate_packed([[A, B]], pad_id=PAD)
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 7] and batch["max_length_q"] == 4
    fixed = collate_packed([[A], [B]], pad_id=PAD, length=8)
    assert fixed["cu_seq_lens_q"].tolist() == [0, 4, 8, 11, 16]
    assert fixed["position_ids"][1].tolist() == [0, 1, 2, 0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="empty pack"):
        collate_packed([[A], []], pad_id=PAD)


def test_collator_dispatches():
    assert "cu_seq_lens_q" in Collator(pad_id=PAD)([[A, B]])
    padded = Collator(pad_id=PAD, packed=False, reduction="token")([A, B])
    assert padded["attention_mask"].sum().item() == 7 and padded["loss_weight"].sum().item() == 4
