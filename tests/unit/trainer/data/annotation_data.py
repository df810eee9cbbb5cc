"""A small dataset in InternVL's formats, written offline: images, a video, a frame folder, a JSON
lines annotation file with one good sample of each kind and one bad sample of each problem, a
JSON-array annotation in the InternVL3 guide's spelling, and their meta file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.unit.trainer.data.conftest import encode, photo, write_video


def qa(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


FRAMES = 12

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("image", {"image": "images/a.jpg", "conversations": qa("Describe the image.", "A cat sits on a red mat!")}),
    ("text", {"conversations": qa("What is shown in the picture?", "The dog runs after the ball.")}),
    (
        "multi-image",
        {
            "image": ["images/a.jpg", "images/b.png"],
            "conversations": qa("<image>\n<image>\nCompare both images.", "The first one."),
        },
    ),
    ("video", {"video": "clip.mp4", "conversations": qa("What happens in the video?", "The dog runs.")}),
    ("frames", {"video": "frames/clip/", "conversations": qa("What happens in the video?", "The dog runs.")}),
    (
        "frames",
        {
            "video": [f"frames/clip/frame_{i}.png" for i in range(4)],
            "conversations": qa("<video>\nWhat happens?", "The dog runs."),
        },
    ),
]
"""(kind, record) of the good samples, lines 1 to 6."""

BAD: list[tuple[str, Any]] = [
    ("json", '{"image": "images/a.jpg", "conversations": ['),
    ("missing", {"image": "images/missing.jpg", "conversations": qa("Describe.", "A cat.")}),
    ("image", {"image": "images/broken.jpg", "conversations": qa("Describe.", "A cat.")}),
    ("path", {"image": "../outside.jpg", "conversations": qa("Describe.", "A cat.")}),
    (
        "placeholder",
        {"image": ["images/a.jpg", "images/b.png"], "conversations": qa("<image>\nCompare.", "The first.")},
    ),
    ("conversation", {"conversations": [{"from": "gpt", "value": "Hi."}, {"from": "human", "value": "Hello?"}]}),
    ("conversation", {"image": "images/a.jpg", "conversations": []}),
]
"""(kind, record or raw line) of the bad samples, lines 8 to 14 (line 7 is blank)."""

BAD_MESSAGES = {
    8: "json: invalid JSON: Expecting value (column 45)",
    9: "missing: images/missing.jpg: no such file under {root}",
    10: "image: cannot open image: cannot identify image file",
    11: "path: key '../outside.jpg' escapes the dataset root: a '..' segment (root {root})",
    12: "placeholder: 1 <image> placeholders in the user turns but 2 images",
    13: "conversation: roles out of order: turn 0 is from the assistant, expected the user",
    14: "conversation: empty conversation: no conversations",
}
"""Line → the start of ``kind: message`` reported for it."""

GUIDE = [
    {
        "image": "images/b.png",
        "conversations": [
            {"from": "system", "value": "You are helpful."},
            {"from": "user", "value": "Describe the image."},
            {"from": "assistant", "value": "A cat."},
        ],
    },
    {
        "conversations": [
            {"from": "user", "value": "What is shown in the picture?"},
            {"from": "assistant", "value": "Nothing."},
            {"from": "user", "value": "Compare both images."},
            {"from": "assistant", "value": "The first one."},
        ]
    },
]


def write_media(root: Path) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "images/a.jpg").write_bytes(encode(photo(640, 480, seed=1), "JPEG", quality=90))
    (root / "images/b.png").write_bytes(encode(photo(448, 448, seed=2)))
    (root / "images/broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    (root / "frames/clip").mkdir(parents=True, exist_ok=True)
    for number in range(FRAMES):
        (root / f"frames/clip/frame_{number}.png").write_bytes(encode(photo(64, 48, seed=number)))
    write_video(root / "clip.mp4", frames=40)


def annotation_lines() -> list[str]:
    lines = [json.dumps(record) for _, record in GOOD] + [""]
    lines += [record if isinstance(record, str) else json.dumps(record) for _, record in BAD]
    return lines


def write_dataset(root: Path) -> Path:
    """The media, ``mixed.jsonl`` (good and bad samples), ``guide.json`` (a JSON array) and
    ``meta.json`` naming both with relative paths. Returns the meta file."""
    write_media(root)
    (root / "mixed.jsonl").write_text("\n".join(annotation_lines()) + "\n")
    (root / "guide.json").write_text(json.dumps(GUIDE, indent=2))
    meta = {
        "mixed": {"root": ".", "annotation": "mixed.jsonl", "repeat_time": 0.5},
        "guide": {"image_folder": ".", "train": "guide.json", "repeat_time": 1.5, "max_dynamic_patch": 4},
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2))
    return root / "meta.json"
