"""Loss reductions with a global normaliser: exact weights, and for each reduction the gradient of k
accumulated micro-batches (and of two simulated ranks) equals the gradient of the whole batch."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from internvl_trainer.data.collate import collate_packed, collate_padded, model_inputs
from internvl_trainer.data.sample import BuiltSample
from internvl_trainer.loss import (
    IGNORE_INDEX,
    head_loss,
    loss_normaliser,
    model_loss,
    sample_losses,
    sample_token_weight,
    token_weights,
)

X = IGNORE_INDEX


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sample_token_weight():
    assert [sample_token_weight(4, reduction) for reduction in ("token", "sample", "square")] == [1.0, 0.25, 0.5]
    assert sample_token_weight(0, "square") == 0.0
    with pytest.raises(ValueError, match="unknown loss reduction 'mean'"):
        sample_token_weight(3, "mean")


def test_token_weights_per_sample():
    labels = torch.tensor([[X, 5, 6, 7, 8, X, 9, X, X], [X, X, 1, X, 2, 3, 4, 5, X]])
    segments = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0, 0, 0, -1]])
    assert token_weights(labels, segments, "token").tolist() == [
        [0, 1, 1, 1, 1, 0, 1, 0, 0],
        [0, 0, 1, 0, 1, 1, 1, 1, 0],
    ]
    expected = torch.tensor([[0, 0.25, 0.25, 0.25, 0.25, 0, 1, 0, 0], [0, 0, 0.2, 0, 0.2, 0.2, 0.2, 0.2, 0]])
    torch.testing.assert_close(token_weights(labels, segments, "sample"), expected, rtol=0, atol=0)
    square = token_weights(labels, segments, "square")
    assert square[0].tolist() == [0, 0.5, 0.5, 0.5, 0.5, 0, 1, 0, 0]
    assert square[1, 2].item() == pytest.approx(1 / math.sqrt(5))
    # a sample's total weight: n (token), 1 (sample), sqrt(n) (square)
    assert square[1].sum().item() == pytest.approx(math.sqrt(5))


def test_head_loss_is_the_weighted_mean_of_next_token_losses():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 7)
    labels = torch.tensor([[X, 3, X, 1, 6]])
    weights = torch.tensor([[0.0, 2.0, 0.0, 0.5, 1.0]])
    identity = torch.nn.Identity()  # the "hidden states" are the logits themselves
    log_probs = logits.log_softmax(-1)
    expected = -(2.0 * log_probs[0, 0, 3] + 0.5 * log_probs[0, 2, 1] + 1.0 * log_probs[0, 3, 6]) / 3.5
    torch.testing.assert_close(head_loss(logits, identity, labels, weights, 3.5), expected)
    # this micro-batch's share of a global normaliser twice as large
    torch.testing.assert_close(
        head_loss(logits, identity, labels, weights, torch.tensor(7.0, dtype=torch.float64)), expected / 2
    )
    # nothing supervised anywhere: zero, not NaN, and still differentiable
    logits.requires_grad_(True)
    zero = head_loss(logits, identity, torch.full_like(labels, X), torch.zeros_like(weights), 0.0)
    zero.backward()
    assert zero.item() == 0.0 and logits.grad is not None and not logits.grad.any()


class RecordingHead(torch.nn.Linear):
    """An LM head that records how many positions each of its calls computed logits for."""

    def __init__(self, hidden: int, vocab: int):
        super().__init__(hidden, vocab, bias=False)
        self.rows: list[int] = []

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.rows.append(hidden.shape[0])
        return super().forward(hidden)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant (ZeRO-3)"])
@pytest.mark.parametrize("chunk_tokens", [1, 3, 4, 1024])
def test_head_loss_in_chunks_equals_the_loss_of_all_logits_at_once(chunk_tokens, reentrant):
    """The head runs on supervised positions only, at most ``chunk_tokens`` at a time (again in the
    backward pass), and the loss and every gradient equal those of the full logits, whichever way
    the chunks are recomputed."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 8, requires_grad=True)
    head = RecordingHead(8, 11)
    labels = torch.tensor([[X, 3, X, 1, 6, 2], [X, X, 4, 5, X, 7]])
    weights = torch.tensor([[0.0, 1.0, 0.0, 0.5, 0.5, 2.0], [0.0, 0.0, 1.0, 1.0, 0.0, 0.25]])

    logits = head(hidden)
    keep = weights[:, 1:] != 0
    log_probs = logits[:, :-1].log_softmax(-1)[keep]
    targets = labels[:, 1:][keep]
    expected = -(weights[:, 1:][keep] * log_probs[torch.arange(len(targets)), targets]).sum() / 5.25
    expected_grads = torch.autograd.grad(expected, [hidden, head.weight])

    head.rows.clear()
    loss = head_loss(hidden, head, labels, weights, 5.25, chunk_tokens=chunk_tokens, reentrant=reentrant)
    loss.backward()  # reentrant recomputation supports backward() only
    grads = (hidden.grad, head.weight.grad)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)
    forward_calls = -(-7 // chunk_tokens)  # 7 supervised positions
    assert max(head.rows) == min(chunk_tokens, 7) and sum(head.rows) == 2 * 7  # forward, then recomputed
    assert len(head.rows) == 2 * forward_calls


def text_sample(ids: list[int], supervised: int) -> BuiltSample:
    labels = [X] * (len(ids) - supervised) + ids[len(ids) - supervised :]
    return BuiltSample(
        input_ids=torch.tensor(ids),
        labels=torch.tensor(labels),
        attention_mask=torch.ones(len(ids), dtype=torch.long),
        tiles=[],
        normalization="imagenet",
        tiles_per_image=[],
        kind="text",
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=50,
        max_position_embeddings=256,
        pad_token_id=49,
    )
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def samples():
    """Eight samples of 5 to 24 tokens with 1 to 17 supervised tokens."""
    generator = torch.Generator().manual_seed(1)
    lengths = [5, 24, 9, 13, 7, 20, 11, 16]
    supervised = [2, 17, 1, 6, 4, 12, 3, 9]
    return [
        text_sample(torch.randint(0, 49, (length,), generator=generator).tolist(), count)
        for length, count in zip(lengths, supervised, strict=True)
    ]


def gradient(model, batches, normaliser, scale: float = 1.0) -> torch.Tensor:
    """The gradient after backward of every micro-batch's loss share (summed, like accumulation)."""
    model.zero_grad()
    for batch in batches:
        head = model.get_output_embeddings()
        loss = model_loss(model, head, model_inputs(batch), batch["labels"], batch["loss_weight"], normaliser)
        (loss * scale).backward()
    return torch.cat([parameter.grad.flatten() for parameter in model.parameters()])


@pytest.mark.parametrize("reduction", ["token", "sample", "square"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_accumulation_gives_the_full_batch_gradient(model, samples, reduction, packed):
    def collate(group):
        if packed:  # two samples per packed row
            return collate_packed([group[i : i + 2] for i in range(0, len(group), 2)], pad_id=49, reduction=reduction)
        return collate_padded(group, pad_id=49, reduction=reduction)

    full = [collate(samples)]
    reference = gradient(model, full, loss_normaliser(full))
    micro = [collate(samples[start:stop]) for start, stop in ((0, 1), (1, 4), (4, 6), (6, 8))]  # accumulation 4
    torch.testing.assert_close(gradient(model, micro, loss_normaliser(micro)), reference, rtol=1e-4, atol=1e-7)
    # two ranks, two micro-batches each: each rank sums its own, the normaliser is global, and
    # averaging gradients over ranks (DDP) is undone by scaling each rank's loss by the world size
    ranks = [micro[:2], micro[2:]]
    normaliser = sum(loss_normaliser(batches) for batches in ranks)  # what the all-reduce computes
    averaged = sum(gradient(model, batches, normaliser, scale=2.0) for batches in ranks) / 2
    torch.testing.assert_close(averaged, reference, rtol=1e-4, atol=1e-7)
    # the control: normalising each micro-batch by its own weights (then averaging) is another gradient
    naive = sum(gradient(model, [batch], loss_normaliser([batch])) for batch in micro) / 4
    assert not torch.allclose(naive, reference, rtol=1e-3, atol=1e-6)


def test_normaliser_per_reduction(samples):
    batches = [collate_padded(samples[:3], pad_id=49, reduction=r) for r in ("token", "sample", "square")]
    token, sample, square = (loss_normaliser([batch]).item() for batch in batches)
    assert token == 20.0 and sample == pytest.approx(3.0)
    assert square == pytest.approx(math.sqrt(2) + math.sqrt(17) + 1)


def test_sample_losses_follow_segments():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 5)
    labels = torch.tensor([[X, 1, 2, X, 4, X]])
    segments = torch.tensor([[0, 0, 0, 1, 1, 2]])
    first, second = sample_losses(logits, labels, segments)
    log_probs = logits.log_softmax(-1)
    torch.testing.assert_close(first, -(log_probs[0, 0, 1] + log_probs[0, 1, 2]) / 2)
    torch.testing.assert_close(second, -log_probs[0, 3, 4])


def test_normaliser_is_all_reduced(tmp_path, samples, monkeypatch):
    """Under torch.distributed the normaliser is summed over ranks (one gloo rank here)."""
    import torch.distributed as dist

    reduced = []
    all_reduce = dist.all_reduce
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op: reduced.append(op) or all_reduce(tensor, op=op))
    batch = collate_padded(samples[:2], pad_id=49, reduction="token")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert loss_normaliser([batch]).item() == 19.0 and reduced == [dist.ReduceOp.SUM]
        assert loss_normaliser([batch], all_reduce=False).item() == 19.0 and len(reduced) == 1
    finally:
        dist.destroy_process_group()
