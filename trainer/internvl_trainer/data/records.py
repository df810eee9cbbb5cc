"""Annotation records: one line (or array element) of an annotation file → a checked sample
description.

A record is InternVL's (reference: internvl-recipe.md §1.3, §1.4)::

    {"image": "a.jpg" | ["a.jpg", "b.jpg"], "video": "clip.mp4", "clip": [start_s, end_s],
     "conversations": [{"from": "human", "value": "<image>\\nWhat is it?"}, {"from": "gpt", ...}],
     "length": 1234}

with what the InternVL3 fine-tuning guide's data adds: roles ``user``/``assistant`` besides
``human``/``gpt`` (and ``role``/``content`` keys besides ``from``/``value``), and a leading
``system`` turn, and InternVL3.5's thinking answers (``<think>…</think>`` then the answer,
checked by ``template.check_thinking``). The kinds of sample, routed as InternVL routes them:

- ``text``: no ``image`` (missing, empty string or empty list) and no ``video``.
- ``image``: one image; ``<image>\\n`` is put before the first user turn when no user turn holds
  the placeholder (as InternVL does), and a second placeholder is an error.
- ``multi-image``: a list of images; the user turns must hold exactly one ``<image>`` per image,
  none is inserted.
- ``video``: a video file; ``<video>\\n`` is inserted like ``<image>``, exactly one is allowed.
- ``frames``: a video given as a list of frame images, or as a folder of them (a ``video`` path
  ending in ``/``, as InternVL's frame folders; frames in the order of the numbers in their names).

``parse_record`` checks what the text alone can tell and raises one ``SampleError`` subclass
(``errors``) per kind of problem, so that bad samples are counted by kind: ``json``, ``record``,
``conversation``, ``placeholder``. What needs the media is ``dataset_source``'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from internvl_trainer.data.errors import ConversationError, PlaceholderError, RecordFieldError, RecordJsonError
from internvl_trainer.data.template import (
    IMAGE_PLACEHOLDER,
    IMAGE_TOKENS,
    INTERNVL2_5,
    Turn,
    check_thinking,
    conversation_turns,
    count_placeholders,
    insert_placeholder,
)
from internvl_trainer.data.video import VIDEO_PLACEHOLDER

RecordKind = Literal["text", "image", "multi-image", "video", "frames"]
RECORD_KINDS: tuple[RecordKind, ...] = ("text", "image", "multi-image", "video", "frames")

INTERNVL_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
"""Role names as InternVL's own scripts expect them in ``from``."""

_BOM = b"\xef\xbb\xbf"
_RESERVED = (*IMAGE_TOKENS, *INTERNVL2_5.control_tokens)


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
    check_thinking(turns)
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
