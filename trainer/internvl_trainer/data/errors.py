"""What can be wrong with one training sample.

A bad sample never ends a run: the data pipeline catches ``SampleError``, skips the sample and
counts it under its ``kind`` (strict mode stops instead). Each subclass names one kind.
"""

from __future__ import annotations


class SampleError(ValueError):
    """A sample that cannot become a training sequence."""

    kind = "sample"


class ImageDecodeError(SampleError):
    """An image could not be read: unknown format, truncated file, unsupported pixel mode, or more
    pixels than the limit (a decompression bomb)."""

    kind = "image"


class VideoDecodeError(SampleError):
    """A video could not be opened or its frames could not be decoded."""

    kind = "video"


class PlaceholderError(SampleError):
    """The ``<image>`` / ``<video>`` placeholders do not match the sample's media, or the text holds
    a token reserved for image features."""

    kind = "placeholder"


class ConversationError(SampleError):
    """The conversation has an unknown role, a misplaced system turn, or nothing to learn from."""

    kind = "conversation"


class OverlongError(SampleError):
    """Longer than the maximum sequence length with its image tokens, and not made to fit by the
    over-long policy (the validator reports every sample over the limit)."""

    kind = "overlong"
