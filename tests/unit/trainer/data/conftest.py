"""Offline fixtures of the data tests: a tiny tokenizer trained on the spot, images and videos
generated in the test."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>", "<pad>", "<s>"]
CORPUS = [
    "Describe the image in detail. What is shown in the picture?",
    "A cat sits on a red mat! Wow! The dog runs after the ball.",
    "Frame1: Frame2: what happens in the video? Compare both images.",
    "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。",
    "system user assistant answer question",
    "assistant\n\n\nList:\n\n- one\n- two",
]


# Qwen2's pre-tokenizer pattern: runs of newlines (with the spaces before them) stay together.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def train_tokenizer(special_tokens: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer with Qwen2's pre-tokenizer (vocabulary 300 + the special tokens
    and ``special_tokens``) in which, as in Qwen's vocabulary, the real text token "!" has id 0."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    tokenizer.add_special_tokens([*SPECIAL_TOKENS, *special_tokens])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<pad>", bos_token="<s>"
    )


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer()


@pytest.fixture(scope="session")
def harmony_tokenizer():
    """The tokenizer with GPT-OSS's harmony tokens too (the internvl3_5_gpt_oss template's)."""
    from internvl_trainer.data.template import INTERNVL3_5_GPT_OSS

    return train_tokenizer(INTERNVL3_5_GPT_OSS.control_tokens)


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like (height, width, 3) uint8 image: smooth gradients, edges and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            127 + 100 * np.sin(x / 17.0 + y / 29.0),
            255 * x / max(1, width - 1),
            255 * ((x // 37 + y // 23) % 2),
        ],
        axis=-1,
    )
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A valid black 1-bit PNG of ``width`` x ``height``: a decompression bomb (20000 x 20000 is
    48 KB on disk, 400 million pixels decoded), written row by row with zlib in a fraction of a
    second."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = bytes(1 + (width + 7) // 8)  # the filter byte, then the row's bits
    deflate = zlib.compressobj(9)
    pixels = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def write_video(path: Path, frames: int, width: int = 64, height: int = 48, fps: int = 10) -> Path:
    """An mp4 (H.264, lossless-ish) whose frame n is a flat grey of level 5 * n, so a decoded
    frame tells which frame it is."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        for number in range(frames):
            image = np.full((height, width, 3), 5 * number, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_numbers(frames: np.ndarray) -> list[int]:
    """Which frames of a ``write_video`` file these decoded frames are."""
    return [int(round(float(frame.mean()) / 5)) for frame in frames]
