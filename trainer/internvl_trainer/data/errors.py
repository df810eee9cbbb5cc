"""What can be wrong with one training sample: every kind of bad sample, declared here only.

A bad sample never ends a run: the data pipeline catches ``SampleError``, skips the sample and
counts it under its ``kind`` (strict mode stops instead, with ``StrictDataError``). Each subclass
names one kind, in the order a sample meets them: the record's text (``json``, ``record``,
``conversation``, ``placeholder``), its media (``path``, ``missing``, ``unreadable``, ``image``,
``video``), its length (``overlong``).
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
    """The conversation has an unknown role, a misplaced system turn, a malformed thinking answer,
    or nothing to learn from."""

    kind = "conversation"


class OverlongError(SampleError):
    """Longer than the maximum sequence length with its image tokens, and not made to fit by the
    over-long policy (the validator reports every sample over the limit)."""

    kind = "overlong"


class RecordJsonError(SampleError):
    """The text is not a JSON object (or not UTF-8)."""

    kind = "json"


class RecordFieldError(SampleError):
    """A field has the wrong type or value (``image``, ``video``, ``clip``, a turn)."""

    kind = "record"


class MediaPathError(SampleError):
    """A media path escapes its dataset's root (``..``, an absolute path, a URL)."""

    kind = "path"


class MissingMediaError(SampleError):
    """A media file does not exist."""

    kind = "missing"


class UnreadableMediaError(SampleError):
    """A media file exists but storage failed to read it."""

    kind = "unreadable"


class StrictDataError(SampleError):
    """A bad sample in strict mode: ``where`` (``file:line``) and ``reason``; the message is
    ``file:line: reason``."""

    kind = "strict"

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Crosses from a data-loader worker to the training loop as itself.
        return type(self), (self.where, self.reason)
