"""Packed micro-batches on a tiny InternVL: every sample's logits and loss equal those of the sample
run alone, with sdpa, eager, and transformers' flash-attention varlen path (its kernel replaced by a
per-segment reference so that the path runs on CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers.modeling_flash_attention_utils as flash_utils
from transformers import (
    AttentionInterface,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    Qwen2Config,
)
from transformers.integrations.flash_attention import flash_attention_forward
from transformers.masking_utils import create_causal_mask

from internvl_trainer.data.collate import batch_segments, collate_packed, collate_padded, model_inputs
from internvl_trainer.data.sample import BuiltSample
from internvl_trainer.loss import IGNORE_INDEX, loss_normaliser, model_loss, sample_losses

VOCAB, PAD, IMG_START, IMG_END, CONTEXT = 64, 63, 3, 4, 5
TILE, TOKENS_PER_TILE = 56, 4
REFERENCE_VARLEN = "reference_varlen"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_internvl(implementation: str = "sdpa") -> InternVLForConditionalGeneration:
    vision = InternVLVisionConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=TILE,
        patch_size=14,
        use_mean_pooling=True,
    )
    text = Qwen2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=PAD,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=CONTEXT,
        image_seq_length=TOKENS_PER_TILE,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).eval()
    model.set_attn_implementation({"text_config": implementation, "vision_config": "sdpa"})
    return model


def sample(text: list[int], answer: list[int], tiles: int = 0, seed: int = 0) -> BuiltSample:
    """user text (with one image of ``tiles`` tiles), then a supervised answer."""
    image = [IMG_START] + [CONTEXT] * (tiles * TOKENS_PER_TILE) + [IMG_END] if tiles else []
    ids = [1] + image + text + [2] + answer
    labels = [IGNORE_INDEX] * (len(ids) - len(answer)) + answer
    generator = torch.Generator().manual_seed(seed)
    return BuiltSample(
        input_ids=torch.tensor(ids),
        labels=torch.tensor(labels),
        attention_mask=torch.ones(len(ids), dtype=torch.long),
        tiles=list(torch.randint(0, 256, (tiles, TILE, TILE, 3), dtype=torch.uint8, generator=generator)),
        normalization="imagenet",
        tiles_per_image=[tiles] if tiles else [],
        kind="image" if tiles else "text",
    )


SAMPLES = [
    sample([10, 0, 11, 12], [20, 21, 0, 22], tiles=2, seed=1),
    sample([13, 14], [23, 24, 25], seed=2),
    sample([15, 0, 0, 16, 17, 18], [26, 27], tiles=1, seed=3),
    sample([19], [28, 29, 30, 31, 32], seed=4),
    sample([33, 34, 35], [36, 37], tiles=3, seed=5),
]
PACKS = [[SAMPLES[0], SAMPLES[1], SAMPLES[2]], [SAMPLES[3], SAMPLES[4]]]  # rows of 43 and 29 tokens


def alone(model, built: BuiltSample) -> torch.Tensor:
    inputs = {"input_ids": built.input_ids[None]}
    if built.pixel_values.shape[0]:
        inputs["pixel_values"] = built.pixel_values
    with torch.no_grad():
        return model(**inputs).logits[0]


@pytest.fixture
def reference_varlen(monkeypatch):
    """transformers' flash-attention path with the kernels swapped for a per-segment sdpa reference
    (the dense kernel only serves single samples); records the varlen kernel's segments."""
    calls = []

    def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None, causal=False):
        calls.append((cu_seqlens_q.tolist(), int(max_seqlen_q)))
        assert torch.equal(cu_seqlens_q, cu_seqlens_k) and causal
        out = torch.empty_like(q)
        repeat = q.shape[1] // k.shape[1]
        for start, stop in zip(cu_seqlens_q[:-1].tolist(), cu_seqlens_q[1:].tolist(), strict=True):
            query = q[start:stop].transpose(0, 1)
            key = k[start:stop].transpose(0, 1).repeat_interleave(repeat, 0)
            value = v[start:stop].transpose(0, 1).repeat_interleave(repeat, 0)
            attended = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=softmax_scale)
            out[start:stop] = attended.transpose(0, 1)
        return out

    def dense(q, k, v, softmax_scale=None, causal=False):  # one sample alone: plain causal
        assert q.shape[0] == 1 and causal
        length = q.shape[1]
        cu_seqlens = torch.tensor([0, length], dtype=torch.int32)
        return varlen(q[0], k[0], v[0], cu_seqlens, cu_seqlens, length, length, softmax_scale, causal)[None]

    monkeypatch.setattr(flash_utils, "_loaded_implementation", REFERENCE_VARLEN)
    monkeypatch.setattr(flash_utils, "_flash_fn", dense)
    monkeypatch.setattr(flash_utils, "_flash_varlen_fn", varlen)
    monkeypatch.setattr(flash_utils, "_flash_with_kvcache_fn", None)
    monkeypatch.setattr(flash_utils, "_pad_fn", flash_utils._pad_input)
    monkeypatch.setattr(flash_utils, "_unpad_fn", flash_utils._unpad_input)
    monkeypatch.setattr(flash_utils, "_process_flash_kwargs_fn", flash_utils._lazy_define_process_function(varlen))
    monkeypatch.setattr(flash_utils, "_process_with_kvcache_kwargs_fn", dict)
    monkeypatch.setitem(AttentionInterface._global_mapping, REFERENCE_VARLEN, flash_attention_forward)
    return calls


@pytest.mark.parametrize("implementation", ["sdpa", "eager", REFERENCE_VARLEN])
def test_packed_logits_and_losses_equal_samples_alone(implementation, request):
    calls = request.getfixturevalue("reference_varlen") if implementation == REFERENCE_VARLEN else None
    model = tiny_internvl(implementation)
    batch = collate_packed(PACKS, pad_id=PAD, pad_to_multiple_of=8)
    assert batch["input_ids"].shape == (2, 48) and batch["pixel_values"].shape == (6, 3, TILE, TILE)
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
    singles = []
    for row, pack in enumerate(PACKS):
        start = 0
        for built in pack:
            stop = start + len(built)
            single = alone(model, built)
            torch.testing.assert_close(logits[row, start:stop], single, rtol=1e-5, atol=1e-5)
            singles.append(F.cross_entropy(single[:-1], built.labels[1:]))
            start = stop
    packed = sample_losses(logits, batch["labels"], batch_segments(batch))
    torch.testing.assert_close(torch.stack(packed), torch.stack(singles), rtol=1e-5, atol=1e-6)
    if calls is not None:  # the packed batch: one varlen call per layer over the flattened rows,
        # each row's padding a segment of its own; then one dense call per layer and sample alone
        assert calls[:2] == [([0, 20, 27, 43, 48, 56, 77, 96], 21)] * 2
        assert [segments for segments, _ in calls[2:]] == [[0, len(built)] for built in SAMPLES for _ in range(2)]


def test_packed_loss_equals_padded_loss():
    """The same samples, packed or one per row, give the same weighted loss for every reduction."""
    model = tiny_internvl()
    for reduction in ("token", "sample", "square"):
        losses = []
        for batch in (
            collate_packed(PACKS, pad_id=PAD, reduction=reduction),
            collate_padded(SAMPLES, pad_id=PAD, reduction=reduction),
        ):
            with torch.no_grad():
                head = model.get_output_embeddings()
                inputs, normaliser = model_inputs(batch), loss_normaliser([batch])
                losses.append(model_loss(model, head, inputs, batch["labels"], batch["loss_weight"], normaliser))
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)


def test_transformers_builds_the_block_diagonal_mask_from_position_ids():
    """What sdpa and eager rely on: no attention mask, per-sample position ids, no cache."""
    model = tiny_internvl()
    batch = collate_packed(PACKS, pad_id=PAD)
    embeddings = torch.zeros((*batch["input_ids"].shape, 32))
    mask = create_causal_mask(
        config=model.config.text_config,
        inputs_embeds=embeddings,
        attention_mask=None,
        past_key_values=None,
        position_ids=batch["position_ids"],
    )
    segments = batch_segments(batch)
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    expected = (segments[:, :, None] == segments[:, None, :]) & causal
    assert torch.equal(mask[:, 0], expected)
