"""Video: frame sampling (rand, middle, fpsN, limits, clips), decoding with decord from paths,
bytes and files, and the frame lines of the prompt."""

from __future__ import annotations

import io

import numpy as np
import pytest

from internvl_trainer.config import VideoConfig
from internvl_trainer.data.errors import VideoDecodeError
from internvl_trainer.data.video import (
    Sampling,
    clip_span,
    expand_video_placeholder,
    fps_indices,
    frame_count,
    frame_indices,
    frame_lines,
    middle_indices,
    random_indices,
    read_frames,
    segment_bounds,
    subsample,
)
from tests.unit.trainer.data.conftest import frame_numbers, write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """50 frames at 10 fps (5 s); frame n is a flat grey of level 5n."""
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames=50)


def test_sampling_names():
    assert Sampling.parse("rand") == Sampling("rand")
    assert Sampling.parse("middle") == Sampling("middle")
    assert Sampling.parse("fps0.5") == Sampling("fps", 0.5)
    with pytest.raises(ValueError):
        Sampling.parse("fps0")


def test_segments_and_their_middle_frames():
    assert segment_bounds(4, 10).tolist() == [0, 2, 5, 7, 10]
    assert middle_indices(4, 10) == [0, 3, 5, 8]
    assert middle_indices(8, 5) == [0, 1, 2, 3, 4]  # never more frames than the video has


def test_rand_draws_one_frame_per_segment_last_frame_included():
    assert random_indices(4, 10, np.random.default_rng(0)) == [1, 3, 6, 7]
    rng = np.random.default_rng(1)
    draws = {frame for _ in range(200) for frame in random_indices(4, 10, rng)}
    assert draws == set(range(10))  # InternVL never draws 1, 4, 6 or 9 (each segment's last frame)


def test_fps_sampling_follows_internvls_times():
    assert fps_indices(1.0, 50, 10.0) == [5, 15, 25, 35, 45]
    assert fps_indices(0.5, 50, 10.0) == [10, 30]
    assert fps_indices(20.0, 5, 10.0) == [0, 1, 2, 3, 4]  # duplicates removed
    with pytest.raises(VideoDecodeError):
        fps_indices(1.0, 50, 0.0)


def test_frame_counts_and_limits():
    rng = np.random.default_rng(3)
    config = VideoConfig(sampling="rand", min_frames=4, max_frames=6)
    counts = [frame_count(config, rng) for _ in range(300)]
    assert set(counts) == {4, 5, 6}
    assert frame_count(VideoConfig(sampling="middle", min_frames=4, max_frames=6), rng) == 6
    # fps sampling clamped: too many frames are spread over the whole video, too few raised to min.
    many = VideoConfig(sampling="fps5", min_frames=2, max_frames=4)
    assert frame_indices(many, 50, 10.0, rng) == middle_indices(4, 50) == [5, 18, 30, 43]
    few = VideoConfig(sampling="fps0.5", min_frames=3, max_frames=8)
    assert frame_indices(few, 50, 10.0, rng) == [7, 24, 41]
    assert frame_indices(VideoConfig(sampling="middle"), 5, 10.0, rng) == [0, 1, 2, 3, 4]


def test_clips_restrict_the_frames():
    assert clip_span((1.0, 3.0), 50, 10.0) == (10, 20)
    assert clip_span((4.0, 9.0), 50, 10.0) == (40, 10)
    assert frame_indices(
        VideoConfig(sampling="middle", min_frames=1, max_frames=4), 50, 10.0, np.random.default_rng(), (1, 3)
    ) == [12, 17, 22, 27]
    for clip in ((3.0, 1.0), (6.0, 7.0), (1.0,)):
        with pytest.raises(VideoDecodeError):
            clip_span(clip, 50, 10.0)


def test_decoded_frames_are_the_sampled_ones(video):
    config = VideoConfig(sampling="middle", max_frames=8)
    for source in (video, str(video), video.read_bytes(), io.BytesIO(video.read_bytes()), video.open("rb")):
        frames = read_frames(source, config, np.random.default_rng(0))
        assert frames.length == 50 and frames.fps == 10.0
        assert frames.indices == [2, 8, 14, 21, 27, 33, 39, 46]
        assert frames.frames.shape == (8, 48, 64, 3) and frames.frames.dtype == np.uint8
        assert frame_numbers(frames.frames) == frames.indices
    rand = read_frames(video, VideoConfig(sampling="rand", min_frames=3, max_frames=3), np.random.default_rng(0))
    assert frame_numbers(rand.frames) == rand.indices == [13, 26, 41]
    clipped = read_frames(video, VideoConfig(sampling="fps2", min_frames=1), np.random.default_rng(0), clip=(1.0, 3.0))
    assert frame_numbers(clipped.frames) == clipped.indices == [12, 18, 22, 28]
    fewer = subsample(clipped, 2)
    assert fewer.indices == [12, 22] and frame_numbers(fewer.frames) == [12, 22]


def test_unreadable_videos_raise_a_sample_error(tmp_path):
    with pytest.raises(VideoDecodeError) as error:
        read_frames(b"not a video at all", VideoConfig(), np.random.default_rng())
    assert error.value.kind == "video"
    with pytest.raises(VideoDecodeError):
        read_frames(tmp_path / "missing.mp4", VideoConfig(), np.random.default_rng())


def test_frame_lines_in_the_prompt():
    assert frame_lines(3) == "Frame1: <image>\nFrame2: <image>\nFrame3: <image>"
    assert frame_lines(2, "Frame-{i}: ") == "Frame-1: <image>\nFrame-2: <image>"
    # As InternVL: "<video>\n" becomes the lines, each ending in a newline.
    assert expand_video_placeholder("<video>\nWhat happens?", 2) == "Frame1: <image>\nFrame2: <image>\nWhat happens?"
    assert expand_video_placeholder("Look: <video>", 1, "[{i}] ") == "Look: [1] <image>"
