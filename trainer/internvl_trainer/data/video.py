"""Video samples: which frames are taken, how they are decoded, and how they appear in the prompt.

InternVL trains on a few frames of each video, one 448-pixel tile per frame (reference:
internvl-recipe.md §3). This module reads them with decord directly (InternVL can only reach its
video reader through an internal storage client) from a local path, encoded bytes or an open
binary file, so a caching layer in front of S3 can hand over whatever it holds. A video given as
a list of frame images (``FrameList``) is sampled the same way at 1 frame per second, and only the
frames sampled are read and decoded.

Sampling (``VideoConfig.sampling``), over the whole video or over ``clip = [start, end]`` seconds:

- ``rand``: N drawn uniformly from minFrames..maxFrames for every read of the sample (as InternVL
  does); the video is cut into N equal segments (integer bounds from ``linspace(0, length, N+1)``)
  and one frame is drawn uniformly from each, its last frame included (InternVL never draws a
  segment's last frame, an off-by-one).
- ``middle``: N = maxFrames, the middle frame of each segment; deterministic, like the segment
  midpoints of InternVL's inference code.
- ``fpsX``: frames at times delta/2, 3·delta/2, … (delta = 1/X seconds) rounded to frame numbers,
  as InternVL does. When that gives more than maxFrames, maxFrames middle frames over the whole
  span are taken instead (InternVL keeps the first maxFrames, dropping the end of the video); when
  it gives fewer than minFrames, minFrames middle frames.

A video never yields more frames than it has: with fewer frames than asked, every frame is taken
once (InternVL repeats the last one).

In the prompt the ``<video>`` placeholder becomes one line per frame, ``{label}<image>`` joined by
newlines, where ``VideoConfig.frameLabel`` (default ``Frame{i}: ``) numbers frames from 1. The
default matches InternVL's inference code and transformers' processor; InternVL's training code
writes ``Frame-{i}: ``.
"""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image

from internvl_trainer.config import VideoConfig
from internvl_trainer.data.errors import SampleError, VideoDecodeError
from internvl_trainer.data.images import decode_image


class FrameList:
    """A video given as its frames, one image each (a frame list or a frame folder of an
    annotation), read like a decord reader: only the frames sampled are decoded. ``frames`` holds
    image sources, or callables that return one (so frames are fetched only when sampled). The
    frame rate is 1 unless given, as InternVL reads frame folders."""

    def __init__(self, frames: Sequence[object], fps: float = 1.0):
        self.frames = frames
        self.fps = fps

    def __len__(self) -> int:
        return len(self.frames)

    def get_avg_fps(self) -> float:
        return self.fps

    def get_batch(self, indices: Sequence[int]) -> _Pixels:
        """The frames ``indices``, decoded; frames of another size than the first are resized to it."""
        images = []
        for index in indices:
            frame = self.frames[index]
            images.append(decode_image(frame() if callable(frame) else frame))  # type: ignore[arg-type]
        size = images[0].size if images else (0, 0)
        resized = [image if image.size == size else image.resize(size, Image.Resampling.BICUBIC) for image in images]
        return _Pixels(np.stack([np.asarray(image) for image in resized]))


class _Pixels:
    """decord's batch interface over a numpy array."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def asnumpy(self) -> np.ndarray:
        return self.array


VideoSource = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO | FrameList
"""A local path, encoded bytes, an open binary file, or a list of frames (``FrameList``)."""

VIDEO_PLACEHOLDER = "<video>"
IMAGE_PLACEHOLDER = "<image>"

_FPS = re.compile(r"^fps([0-9]+(?:\.[0-9]+)?)$")


@dataclass(frozen=True)
class Sampling:
    """A parsed ``VideoConfig.sampling``: the method and, for fps sampling, frames per second."""

    method: str
    rate: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Sampling:
        if text in ("rand", "middle"):
            return cls(text)
        match = _FPS.match(text)
        if match is None or float(match.group(1)) <= 0:
            raise ValueError(f"unknown frame sampling {text!r}: expected rand, middle or fpsN with N > 0")
        return cls("fps", float(match.group(1)))


def segment_bounds(count: int, length: int) -> np.ndarray:
    """Integer bounds of ``count`` equal segments of ``length`` frames (count + 1 values)."""
    return np.linspace(0, length, count + 1).astype(int)


def middle_indices(count: int, length: int) -> list[int]:
    """The middle frame of each of ``min(count, length)`` equal segments."""
    bounds = segment_bounds(min(count, length), length)
    return [int((start + end - 1) // 2) for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def random_indices(count: int, length: int, rng: np.random.Generator) -> list[int]:
    """One uniformly drawn frame of each of ``min(count, length)`` equal segments."""
    bounds = segment_bounds(min(count, length), length)
    return [int(rng.integers(start, end)) for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def fps_indices(rate: float, length: int, fps: float) -> list[int]:
    """Frames at ``rate`` frames per second: times delta/2 + k·delta rounded to frame numbers."""
    if not (fps > 0 and math.isfinite(fps)):
        raise VideoDecodeError(f"fps sampling needs the video's frame rate, which is {fps}")
    delta = 1.0 / rate
    duration = length / fps
    times = np.arange(delta / 2, duration + delta / 2, delta)
    indices = np.around(times * fps).astype(int)
    return sorted({int(index) for index in indices if index < length})


def frame_count(config: VideoConfig, rng: np.random.Generator) -> int:
    """How many frames ``rand`` and ``middle`` sampling ask for (fps sampling decides by duration)."""
    if Sampling.parse(config.sampling).method == "rand":
        return int(rng.integers(config.min_frames, config.max_frames + 1))
    return config.max_frames


def frame_indices(
    config: VideoConfig, length: int, fps: float, rng: np.random.Generator, clip: Sequence[float] | None = None
) -> list[int]:
    """The frame numbers to decode from a video of ``length`` frames at ``fps``, ascending and
    distinct, optionally within ``clip`` = (start, end) seconds."""
    if length < 1:
        raise VideoDecodeError("the video has no frames")
    offset, span = 0, length
    if clip is not None:
        offset, span = clip_span(clip, length, fps)
    sampling = Sampling.parse(config.sampling)
    if sampling.method == "rand":
        indices = random_indices(frame_count(config, rng), span, rng)
    elif sampling.method == "middle":
        indices = middle_indices(config.max_frames, span)
    else:
        indices = fps_indices(sampling.rate, span, fps)
        if len(indices) > config.max_frames:
            indices = middle_indices(config.max_frames, span)
        elif len(indices) < config.min_frames:
            indices = middle_indices(config.min_frames, span)
    return [offset + index for index in indices]


def clip_span(clip: Sequence[float], length: int, fps: float) -> tuple[int, int]:
    """(first frame, number of frames) of ``clip`` = (start, end) seconds in a video of ``length``
    frames at ``fps``. Raises VideoDecodeError for a clip outside the video."""
    if len(clip) != 2:
        raise VideoDecodeError(f"a clip is [start, end] in seconds, got {list(clip)}")
    start, end = float(clip[0]), float(clip[1])
    if not (fps > 0 and math.isfinite(fps)):
        raise VideoDecodeError(f"a clip needs the video's frame rate, which is {fps}")
    if not (0 <= start < end):
        raise VideoDecodeError(f"clip [{start}, {end}] is empty or negative")
    first = int(start * fps)
    if first >= length:
        raise VideoDecodeError(f"clip starts at {start} s, after the end of the video ({length / fps:.2f} s)")
    span = max(1, min(int((end - start) * fps), length - first))
    return first, span


@dataclass
class VideoFrames:
    """Frames decoded from one video."""

    frames: np.ndarray
    """(frames, height, width, 3) uint8 RGB."""
    indices: list[int]
    """Frame numbers in the video."""
    fps: float
    """The video's average frame rate."""
    length: int
    """Frames in the whole video."""


def _reader(source: VideoSource):
    if isinstance(source, FrameList):
        return source
    import decord  # imported here: decord is only needed by samples that hold videos

    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(bytes(source))
    elif isinstance(source, os.PathLike):
        source = os.fspath(source)
    try:
        return decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1)
    except Exception as error:  # decord raises its own error types (and RuntimeError) for bad files
        raise VideoDecodeError(f"cannot open video: {error}") from error


def read_frames(
    source: VideoSource, config: VideoConfig, rng: np.random.Generator, clip: Sequence[float] | None = None
) -> VideoFrames:
    """The sampled frames of a video. Raises VideoDecodeError."""
    reader = _reader(source)
    length = len(reader)
    fps = float(reader.get_avg_fps())
    indices = frame_indices(config, length, fps, rng, clip)
    try:
        frames = reader.get_batch(indices).asnumpy()
    except SampleError:  # a frame of a frame list that is missing or does not decode
        raise
    except Exception as error:
        raise VideoDecodeError(f"cannot decode frames {indices[:4]}…: {error}") from error
    return VideoFrames(frames=frames, indices=indices, fps=fps, length=length)


def subsample(frames: VideoFrames, count: int) -> VideoFrames:
    """``count`` of the frames, spread evenly (the middle frame of each of ``count`` segments)."""
    if count >= len(frames.indices):
        return frames
    keep = middle_indices(count, len(frames.indices))
    return VideoFrames(frames.frames[keep], [frames.indices[i] for i in keep], frames.fps, frames.length)


def frame_lines(count: int, label: str = "Frame{i}: ") -> str:
    """The prompt text that stands for ``count`` frames: ``{label}<image>`` lines joined by newlines."""
    return "\n".join(label.replace("{i}", str(number)) + IMAGE_PLACEHOLDER for number in range(1, count + 1))


def expand_video_placeholder(text: str, count: int, label: str = "Frame{i}: ") -> str:
    """``text`` with its ``<video>`` placeholder replaced by the lines of ``count`` frames. A
    ``<video>\\n`` becomes the lines each ending in a newline, as in InternVL."""
    return text.replace(VIDEO_PLACEHOLDER, frame_lines(count, label), 1)
