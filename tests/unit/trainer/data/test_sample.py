"""Whole samples: text, one image, several images and video, the over-long policies and their
counters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from internvl_trainer.config import VideoConfig
from internvl_trainer.data.errors import ImageDecodeError, OverlongError, PlaceholderError, SampleError
from internvl_trainer.data.overlong import OverlongCounters, largest_fitting
from internvl_trainer.data.sample import SampleBuilder
from internvl_trainer.data.template import IGNORE_INDEX, ConversationEncoder
from internvl_trainer.data.tiling import Tiler, TilingConfig
from tests.unit.trainer.data.conftest import encode, frame_numbers, photo, write_video

QA = [{"from": "human", "value": "Describe the image."}, {"from": "gpt", "value": "A cat sits on a red mat!"}]


@pytest.fixture(scope="module")
def images():
    return {
        "640x480": encode(photo(640, 480, seed=1), "JPEG", quality=90),
        "1920x1080": encode(photo(1920, 1080, seed=2), "PNG"),
        "448x448": encode(photo(448, 448, seed=3), "PNG"),
    }


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames=40)


def builder(tokenizer, max_length=16384, overlong="skip", **options) -> SampleBuilder:
    video = options.pop("video", None)
    tiling = TilingConfig(resampler="pil", **options)
    return SampleBuilder(
        ConversationEncoder(tokenizer), max_length=max_length, tiling=tiling, video=video, overlong=overlong
    )


def shown_frames(pixel_values: torch.Tensor) -> list[int]:
    """Which frames of a ``write_video`` file normalised frame tiles are."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return frame_numbers((pixel_values * std + mean).mul(255).permute(0, 2, 3, 1).numpy())


def context_tokens(tokenizer, sample) -> int:
    return int((sample.input_ids == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")).sum())


def test_text_only(tokenizer):
    sample = builder(tokenizer).build(QA)
    assert sample.kind == "text" and sample.tiles_per_image == []
    assert sample.pixel_values.shape == (0, 3, 448, 448)
    assert len(sample) == 171 and sample.attention_mask.sum() == 171


def test_one_image_gets_its_placeholder_and_the_whole_budget(tokenizer, images):
    sample = builder(tokenizer).build(QA, images=[images["640x480"]])
    assert sample.kind == "image" and sample.tiles_per_image == [13]
    assert "<|im_start|>user\n<img><IMG_CONTEXT>" in tokenizer.decode(sample.input_ids.tolist())
    assert context_tokens(tokenizer, sample) == 13 * 256 and len(sample) == 3502
    expected = Tiler(TilingConfig(resampler="pil"))(images["640x480"]).pixel_values
    assert torch.equal(sample.pixel_values, expected)
    assert builder(tokenizer).build(QA, images=[images["640x480"]], max_tiles=6).tiles_per_image == [7]


def test_several_images_split_the_budget(tokenizer, images):
    conversation = [
        {"from": "human", "value": "<image>\n<image>\nCompare both images."},
        {"from": "gpt", "value": "The first one."},
    ]
    sample = builder(tokenizer).build(conversation, images=[images["1920x1080"], images["448x448"]])
    assert sample.kind == "multi-image" and sample.tiles_per_image == [3, 1]  # budget 6 each: 2x1 + thumbnail, 1
    assert sample.pixel_values.shape == (4, 3, 448, 448) and context_tokens(tokenizer, sample) == 4 * 256
    with pytest.raises(PlaceholderError):  # no placeholder is inserted for several images
        builder(tokenizer).build(QA, images=[images["448x448"], images["448x448"]])


def test_augmentation_is_seeded_and_per_tile(tokenizer, images):
    build = builder(tokenizer).build
    first = build(QA, images=[images["640x480"]], augment=True, rng=np.random.default_rng(1))
    again = build(QA, images=[images["640x480"]], augment=True, rng=np.random.default_rng(1))
    plain = build(QA, images=[images["640x480"]])
    assert torch.equal(first.pixel_values, again.pixel_values)
    assert not torch.equal(first.pixel_values, plain.pixel_values)
    assert torch.equal(first.input_ids, plain.input_ids)


def test_video_frames_as_lines_of_one_tile_each(tokenizer, video):
    config = VideoConfig(sampling="middle", min_frames=2, max_frames=4)
    conversation = [{"from": "human", "value": "What happens?"}, {"from": "gpt", "value": "Nothing."}]
    sample = builder(tokenizer, video=config).build(conversation, video=video)
    assert sample.kind == "video" and sample.tiles_per_image == [1, 1, 1, 1]
    assert sample.pixel_values.shape == (4, 3, 448, 448) and context_tokens(tokenizer, sample) == 4 * 256
    text = tokenizer.decode(sample.input_ids.tolist()).replace("<IMG_CONTEXT>" * 256, "…")
    assert "<|im_start|>user\nFrame1: <img>…</img>\nFrame2: <img>…</img>\nFrame3: <img>…</img>\n" in text
    assert "Frame4: <img>…</img>\nWhat happens?<|im_end|>" in text
    # The tiles are the sampled frames (flat greys 5·n for frame n).
    assert shown_frames(sample.pixel_values) == [4, 14, 24, 34]
    labelled = VideoConfig(sampling="middle", min_frames=1, max_frames=2, frame_label="Frame-{i}: ")
    relabelled = builder(tokenizer, video=labelled).build(conversation, video=video.read_bytes())
    assert "Frame-2: <img>" in tokenizer.decode(relabelled.input_ids.tolist())
    with pytest.raises(SampleError):
        builder(tokenizer).build(QA, images=[b"x"], video=video)


def test_overlong_skip_raises_and_counts(tokenizer, images):
    skipping = builder(tokenizer, max_length=3000)
    with pytest.raises(OverlongError, match="^3,502 tokens with 13 tiles; the maximum is 3,000$"):
        skipping.build(QA, images=[images["640x480"]])
    assert skipping.build(QA) is not None
    assert skipping.counters == OverlongCounters(samples=2, overlong=1, skipped=1)


def test_overlong_truncate_cuts_text_after_the_last_image(tokenizer, images):
    long_answer = [QA[0], {"from": "gpt", "value": "A cat sits on a red mat! " * 40}]
    truncating = builder(tokenizer, max_length=3500, overlong="truncate")
    sample = truncating.build(long_answer, images=[images["640x480"]])
    assert len(sample) == 3500 and sample.tiles_per_image == [13]
    assert (sample.labels != IGNORE_INDEX).sum() == 17 and sample.labels[-1] != IGNORE_INDEX
    assert truncating.build(QA, images=[images["640x480"]], max_tiles=6) is not None
    tight = builder(tokenizer, max_length=3000, overlong="truncate")
    with pytest.raises(OverlongError, match="; a cut would go through an image or leave no answer$"):
        tight.build(QA, images=[images["640x480"]])  # the image block alone is too long
    assert truncating.counters == OverlongCounters(samples=2, overlong=1, truncated=1, tokens_cut=705)
    assert tight.counters == OverlongCounters(samples=1, overlong=1, skipped=1)


def test_overlong_reduce_tiles_uses_the_largest_budget_that_fits(tokenizer, images):
    reducing = builder(tokenizer, max_length=2500, overlong="reduce-tiles")
    sample = reducing.build(QA, images=[images["640x480"]])
    # 4:3 is a 4x3 grid with 12 tiles, 3x2 with 6 to 11: budget 11 fits.
    assert sample.tiles_per_image == [7] and len(sample) <= 2500
    assert sample.pixel_values.shape[0] == 7
    assert reducing.counters == OverlongCounters(samples=1, overlong=1, reduced=1, tiles_removed=6)
    hopeless = builder(tokenizer, max_length=200, overlong="reduce-tiles")
    with pytest.raises(OverlongError, match="^3,502 tokens with 13 tiles; the maximum is 200; too long even with one"):
        hopeless.build(QA, images=[images["640x480"]])
    assert hopeless.counters.skipped == 1


def test_overlong_reduce_tiles_drops_frames_down_to_min_frames(tokenizer, video):
    conversation = [{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "Nothing."}]
    config = VideoConfig(sampling="middle", min_frames=2, max_frames=8)
    reducing = builder(tokenizer, max_length=1500, overlong="reduce-tiles", video=config)
    sample = reducing.build(conversation, video=video)
    assert sample.tiles_per_image == [1] * 5 and len(sample) <= 1500
    assert shown_frames(sample.pixel_values) == [2, 7, 17, 22, 32]
    assert reducing.counters == OverlongCounters(samples=1, overlong=1, reduced=1, tiles_removed=3)
    too_short = builder(tokenizer, max_length=500, overlong="reduce-tiles", video=config)
    with pytest.raises(
        OverlongError, match=r" with 8 tiles; the maximum is 500; too long even with 2 frames \(minFrames\)$"
    ):
        too_short.build(conversation, video=video)
    assert too_short.counters.skipped == 1


def test_largest_fitting_and_counter_sums():
    assert largest_fitting(lambda n: 100 * n, 12, 1, 750) == 7
    assert largest_fitting(lambda n: 100 * n, 12, 1, 50) is None
    assert largest_fitting(lambda n: 100 * n, 3, 1, 5000) == 3
    total = OverlongCounters(samples=3, skipped=1).merge(OverlongCounters(samples=2, truncated=1, tokens_cut=9))
    assert total.as_dict() == {
        "samples": 5,
        "overlong": 0,
        "skipped": 1,
        "truncated": 1,
        "reduced": 0,
        "tokens_cut": 9,
        "tiles_removed": 0,
    }


def test_bad_images_raise_sample_errors(tokenizer):
    with pytest.raises(ImageDecodeError):
        builder(tokenizer).build(QA, images=[b"not an image"])
