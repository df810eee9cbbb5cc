"""Annotation records: one line (or array element) of an annotation file → a checked sample
description, and the media it names read from its dataset's root.

A record is InternVL's (reference: internvl-recipe.md §1.3, §1.4)::

    {"image": "a.jpg" | ["a.jpg", "b.jpg"], "video": "clip.mp4", "clip": [start_s, end_s],
     "conversations": [{"from": "human", "value": "<image>\\nWhat is it?"}, {"from": "gpt", ...}],
     "length": 1234}

with what the InternVL3 fine-tuning guide's data adds: roles ``user``/``assistant`` besides
``human``/``gpt`` (and ``role``/``content`` keys besides ``from``/``value``), and a leading
``system`` turn. The kinds of sample, routed as InternVL routes them:

- ``text``: no ``image`` (missing, empty string or empty list) and no ``video``.
- ``image``: one image; ``<image>\\n`` is put before the first user turn when no user turn holds
  the placeholder (as InternVL does), and a second placeholder is an error.
- ``multi-image``: a list of images; the user turns must hold exactly one ``<image>`` per image,
  none is inserted.
- ``video``: a video file; ``<video>\\n`` is inserted like ``<image>``, exactly one is allowed.
- ``frames``: a video given as a list of frame images, or as a folder of them (a ``video`` path
  ending in ``/``, as InternVL's frame folders; frames in the order of the numbers in their names).

``parse_record`` checks what the text alone can tell and raises one ``SampleError`` subclass per
kind of problem, so that bad samples are counted by kind: ``json`` (not JSON, not UTF-8, not an
object), ``record`` (a field of the wrong type), ``conversation`` (empty, unknown role, roles out of
order, nothing to learn from), ``placeholder`` (placeholders and media disagree, reserved tokens in
the text). ``DatasetSource`` adds what needs the media: ``path`` (a media path that escapes the
dataset's root), ``missing`` (no such file), ``unreadable`` (storage errors), and the decoders'
``image`` and ``video``; ``overlong`` is the sample builder's (``errors.OverlongError``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from internvl_trainer.data.annotations import AnnotationFile, open_annotations
from internvl_trainer.data.errors import ConversationError, PlaceholderError, SampleError
from internvl_trainer.data.meta import DatasetMeta, MetaFile
from internvl_trainer.data.report import BadSamples
from internvl_trainer.data.template import (
    IMAGE_PLACEHOLDER,
    IMAGE_TOKENS,
    INTERNVL2_5,
    Turn,
    conversation_turns,
    count_placeholders,
    insert_placeholder,
)
from internvl_trainer.data.video import VIDEO_PLACEHOLDER, FrameList
from internvl_trainer.storage import Cache, DatasetRoot, Location, ObjectNotFound, Storage, StorageError, UnsafeKeyError

RecordKind = Literal["text", "image", "multi-image", "video", "frames"]
RECORD_KINDS: tuple[RecordKind, ...] = ("text", "image", "multi-image", "video", "frames")

INTERNVL_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
"""Role names as InternVL's own scripts expect them in ``from``."""

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
"""Files of a frame folder that are frames."""

_BOM = b"\xef\xbb\xbf"
_RESERVED = (*IMAGE_TOKENS, *INTERNVL2_5.control_tokens)


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


@dataclass
class Record:
    """One checked annotation record."""

    conversations: list[dict[str, str]]
    """``{"from": "system"|"human"|"gpt", "value": text}`` turns, InternVL's spelling, with the
    ``<image>``/``<video>`` placeholder inserted where InternVL inserts it."""
    kind: RecordKind
    images: list[str] = field(default_factory=list)
    """Image paths, relative to the dataset's root."""
    video: str | None = None
    """A video file, or a frame folder (ending in ``/``)."""
    frames: list[str] = field(default_factory=list)
    """Frame paths of a frame list."""
    clip: tuple[float, float] | None = None
    """``[start, end]`` seconds of the video to sample from."""
    length: int | None = None
    """The record's own ``length`` (token count), when it states one."""
    data: dict[str, Any] = field(default_factory=dict)
    """The record as parsed, every key included."""

    @property
    def turns(self) -> list[Turn]:
        return conversation_turns(self.conversations)

    @property
    def media_count(self) -> int:
        return len(self.images) or len(self.frames) or (1 if self.video else 0)

    def to_internvl(self) -> dict[str, Any]:
        """The record as InternVL's scripts read it: every key kept, turns spelled ``from``/``value``
        with human/gpt/system roles (placeholders as written, none inserted)."""
        data = dict(self.data)
        data["conversations"] = [
            {"from": INTERNVL_ROLES[role], "value": text} for role, text in conversation_turns(data["conversations"])
        ]
        return data


# ---------------------------------------------------------------------------------------------
# parsing


def parse_record(raw: bytes | str) -> Record:
    """The record in ``raw`` (one JSON object). Raises a SampleError subclass naming the problem."""
    if isinstance(raw, bytes):
        try:
            raw = raw.removeprefix(_BOM).decode("utf-8")
        except UnicodeDecodeError as error:
            raise RecordJsonError(f"not UTF-8 text: {error}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        raise RecordJsonError(f"invalid JSON: {error.msg} (column {error.colno})") from None
    except (RecursionError, ValueError) as error:  # nested too deeply; a number too long to read
        raise RecordJsonError(f"invalid JSON: {error}") from None
    if not isinstance(data, dict):
        raise RecordJsonError(f"a sample must be a JSON object, not {_json_type(data)}")
    return record_from(data)


def record_from(data: Mapping[str, Any]) -> Record:
    """The record of a parsed JSON object. Raises a SampleError subclass naming the problem."""
    conversations = data.get("conversations")
    if conversations is None or conversations == []:
        raise ConversationError("empty conversation: no conversations")
    if not isinstance(conversations, list):
        raise RecordFieldError(f"conversations must be a list of turns, not {_json_type(conversations)}")
    for index, message in enumerate(conversations):
        if not isinstance(message, dict):
            raise RecordFieldError(f"turn {index} must be an object with from and value, not {_json_type(message)}")
    turns = conversation_turns(conversations)
    check_order(turns)
    for role, text in turns:
        for token in _RESERVED:
            if token in text:
                article = "an" if role == "assistant" else "a"
                raise PlaceholderError(f"{article} {role} turn holds the reserved token {token}")

    images = _paths(data.get("image"), "image")
    video_field = data.get("video")
    video: str | None = None
    frames: list[str] = []
    if isinstance(video_field, list):
        frames = _paths(video_field, "video")
    elif video_field not in (None, ""):
        if not isinstance(video_field, str):
            raise RecordFieldError(f"video must be a path or a list of frame paths, not {_json_type(video_field)}")
        video = video_field
    if images and (video or frames):
        raise RecordFieldError("a sample holds either images or a video, not both")
    clip = _clip(data.get("clip"))
    length = data.get("length")
    length = length if isinstance(length, int) and not isinstance(length, bool) and length >= 0 else None

    kind: RecordKind
    videos = count_placeholders(turns, VIDEO_PLACEHOLDER)
    if video or frames:
        kind = "video" if video and not video.endswith("/") else "frames"
        turns = insert_placeholder(turns, VIDEO_PLACEHOLDER)
        if count_placeholders(turns, VIDEO_PLACEHOLDER) != 1:
            raise PlaceholderError(f"{videos} {VIDEO_PLACEHOLDER} placeholders in the user turns but one video")
        if count_placeholders(turns):
            raise PlaceholderError(f"{IMAGE_PLACEHOLDER} in a video sample (its frames take that place)")
    else:
        if videos:
            raise PlaceholderError(f"{videos} {VIDEO_PLACEHOLDER} placeholders in the user turns but no video")
        if len(images) == 1:
            turns = insert_placeholder(turns, IMAGE_PLACEHOLDER)
        found = count_placeholders(turns)
        if found != len(images):
            noun = "image" if len(images) == 1 else "images"
            raise PlaceholderError(
                f"{found} {IMAGE_PLACEHOLDER} placeholders in the user turns but {len(images)} {noun}"
            )
        kind = "text" if not images else "image" if len(images) == 1 else "multi-image"
    return Record(
        conversations=[{"from": INTERNVL_ROLES[role], "value": text} for role, text in turns],
        kind=kind,
        images=images,
        video=video,
        frames=frames,
        clip=clip,
        length=length,
        data=dict(data),
    )


def check_order(turns: list[Turn]) -> None:
    """Raise ConversationError unless the turns are an optional system turn, then user and
    assistant turns in alternation, starting with the user and ending with the assistant."""
    offset = 1 if turns and turns[0][0] == "system" else 0
    body = turns[offset:]
    if not body:
        raise ConversationError("empty conversation: no user or assistant turn")
    for number, (role, _) in enumerate(body):
        expected = "user" if number % 2 == 0 else "assistant"
        if role != expected:
            raise ConversationError(
                f"roles out of order: turn {number + offset} is from the {role}, expected the {expected}"
            )
    if body[-1][0] != "assistant":
        raise ConversationError(
            f"roles out of order: the last turn ({len(turns) - 1}) is from the user, with no answer"
        )


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _paths(value: Any, name: str) -> list[str]:
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) and item for item in value):
        return list(value)
    raise RecordFieldError(f"{name} must be a path or a list of non-empty paths, got {json.dumps(value)[:80]}")


def _clip(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(item, int | float) and not isinstance(item, bool) for item in value)
        and 0 <= value[0] < value[1]
    ):
        return float(value[0]), float(value[1])
    raise RecordFieldError(f"clip must be [start, end] seconds with 0 <= start < end, got {json.dumps(value)[:80]}")


# ---------------------------------------------------------------------------------------------
# a dataset: annotations + media


_NUMBER = re.compile(r"(\d+)")


def frame_order(name: str) -> tuple:
    """Sort key of frame file names: by the numbers in them (``frame_2`` before ``frame_10``)."""
    return tuple(int(part) if part.isdigit() else part for part in _NUMBER.split(name))


class DatasetSource:
    """One dataset of a meta file: its indexed annotations, its root, and the media under it.

    Media are read through ``cache`` when given (a node's shared object cache: one download per
    object), otherwise straight from storage."""

    def __init__(
        self,
        name: str,
        dataset: DatasetMeta,
        annotations: AnnotationFile,
        storage: Storage,
        cache: Cache | None = None,
    ):
        self.name = name
        self.dataset = dataset
        self.annotations = annotations
        self.storage = storage
        self.cache = cache
        self.root = DatasetRoot(dataset.root)

    def __len__(self) -> int:
        return len(self.annotations)

    def where(self, number: int) -> str:
        """``file:line`` of sample ``number``."""
        return self.annotations.where(number)

    def record(self, number: int) -> Record:
        """The checked record of sample ``number``. Raises SampleError."""
        return parse_record(self.annotations.read(number))

    # -- media -----------------------------------------------------------------------------

    def locate(self, key: str) -> Location:
        """Where a media path of the annotations is. Raises MediaPathError."""
        try:
            return self.root.resolve(key)
        except UnsafeKeyError as error:
            raise MediaPathError(str(error)) from None

    def read_media(self, key: str) -> bytes:
        """The bytes of a media file. Raises MediaPathError, MissingMediaError, UnreadableMediaError."""
        location = self.locate(key)
        try:
            if self.cache is not None:
                return self.cache.read_bytes(self.storage, location)
            return self.storage.read_bytes(location)
        except (ObjectNotFound, FileNotFoundError, IsADirectoryError):
            raise MissingMediaError(f"{key}: no such file under {self.dataset.root}") from None
        except (StorageError, OSError) as error:
            raise UnreadableMediaError(f"cannot read {key}: {error}") from None

    def exists(self, key: str) -> bool:
        """Whether a media file exists (MediaPathError for a path outside the root)."""
        location = self.locate(key)
        try:
            return self.storage.exists(location)
        except StorageError as error:
            raise UnreadableMediaError(f"cannot look up {key}: {error}") from None

    def frame_keys(self, record: Record) -> list[str]:
        """The frame paths of a ``frames`` record: its list, or its folder's images in order."""
        if record.frames:
            return list(record.frames)
        assert record.video is not None
        folder = record.video.rstrip("/")
        location = self.locate(folder)
        try:
            names = [info.key for info in self.storage.list(location) if "/" not in info.key]
        except StorageError as error:
            raise UnreadableMediaError(f"cannot list {record.video}: {error}") from None
        names = sorted((name for name in names if name.lower().endswith(FRAME_SUFFIXES)), key=frame_order)
        if not names:
            raise MissingMediaError(f"{record.video}: no frame images in this folder under {self.dataset.root}")
        return [f"{folder}/{name}" for name in names]

    def frames(self, record: Record) -> FrameList:
        """The frames of a ``frames`` record, each read only when sampled."""
        keys = self.frame_keys(record)
        return FrameList([_Fetch(self, key) for key in keys])

    # -- samples ---------------------------------------------------------------------------

    def build_inputs(self, record: Record) -> dict[str, Any]:
        """The keyword arguments of ``SampleBuilder.build`` for ``record`` (media read)."""
        options: dict[str, Any] = {"augment": self.dataset.data_augment}
        if record.kind in ("video", "frames"):
            assert record.video is not None or record.frames
            options["video"] = self.frames(record) if record.kind == "frames" else self.read_media(record.video)  # type: ignore[arg-type]
            options["clip"] = record.clip
        elif record.images:
            options["images"] = [self.read_media(key) for key in record.images]
            options["max_tiles"] = self.dataset.max_dynamic_patch
        return options

    def build(self, number: int, builder: Any, rng: np.random.Generator) -> Any:
        """``builder.build`` on sample ``number`` (a BuiltSample). Raises SampleError, OverlongError
        when the over-long policy drops it."""
        record = self.record(number)
        return builder.build(record.conversations, rng=rng, **self.build_inputs(record))

    def build_or_skip(self, number: int, builder: Any, rng: np.random.Generator, bad: BadSamples) -> Any:
        """``build``, with a bad sample skipped and counted in ``bad`` (None returned), or, in
        strict mode, StrictDataError raised with the sample's ``file:line``."""
        try:
            return self.build(number, builder, rng)
        except SampleError as error:
            bad.skip(error, self.where(number))
            return None


def open_sources(meta: MetaFile, storage: Storage, cache: Cache, *, media_cache: bool = True) -> list[DatasetSource]:
    """Every dataset of ``meta``, its annotations indexed (and, when remote, fetched into ``cache``);
    media read through ``cache`` too when ``media_cache``. Raises BadInput naming each dataset whose
    annotation file cannot be used."""
    files = open_annotations(meta, storage, cache)
    return [
        DatasetSource(name, dataset, file, storage, cache if media_cache else None)
        for (name, dataset), file in zip(meta.root.items(), files, strict=True)
    ]


class _Fetch:
    """A frame read when called (picklable, unlike a lambda)."""

    def __init__(self, source: DatasetSource, key: str):
        self.source = source
        self.key = key

    def __call__(self) -> bytes:
        return self.source.read_media(self.key)
