"""The demo's dataset: small images of drawn shapes with their names written on them, a
multi-image comparison, a short video, and text-only turns, in InternVL's format (meta.json +
JSONL). Answers follow from the pictures, so a model can learn them in a few steps.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
SIZE = 224


def _draw(shape: str, colour: str, size: int = SIZE) -> Image.Image:
    image = Image.new("RGB", (size, size), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    box = (size // 5, size // 5, size * 4 // 5, size * 4 // 5)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(size // 2, size // 5), (size // 5, size * 4 // 5), (size * 4 // 5, size * 4 // 5)], fill=fill)
    draw.text((6, 6), f"{colour} {shape}", fill=(0, 0, 0))
    return image


def _video(path: Path, colour: str, frames: int = 12, size: int = 112) -> None:
    """A square moving left to right, 4 frames per second."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            pixels = np.full((size, size, 3), 245, dtype=np.uint8)
            left = index * (size - 24) // (frames - 1)
            pixels[44:68, left : left + 24] = COLOURS[colour]
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _turns(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def write_dataset(folder: Path, root: str, seed: int = 0) -> dict[str, int]:
    """Write the dataset under ``folder`` (meta.json, shapes.jsonl, images/, videos/), its meta
    naming ``root`` (where the folder will be uploaded) as the dataset's root. Returns the number
    of samples of each kind."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for colour in COLOURS:
        for shape in SHAPES:
            name = f"images/{colour}-{shape}.png"
            _draw(shape, colour).save(folder / name)
            lines.append({"image": name, "conversations": _turns("<image>\nWhat is drawn?", f"A {colour} {shape}.")})
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    for first, second in rng.sample(pairs, 3):
        images = [f"images/red-{first}.png", f"images/blue-{second}.png"]
        question = "Image-1: <image>\nImage-2: <image>\nWhich shapes are shown?"
        lines.append({"image": images, "conversations": _turns(question, f"A red {first} and a blue {second}.")})
    _video(folder / "videos" / "green-square.mp4", "green")
    lines.append(
        {
            "video": "videos/green-square.mp4",
            "conversations": _turns("<video>\nWhat moves?", "A green square moves right."),
        }
    )
    lines.append({"conversations": _turns("How many sides has a triangle?", "Three.")})
    with (folder / "shapes.jsonl").open("w") as annotations:
        for line in lines:
            annotations.write(json.dumps(line) + "\n")
    dataset = {"root": root, "annotation": f"{root}/shapes.jsonl", "data_augment": False, "repeat_time": 1}
    meta = {"shapes": {**dataset, "length": len(lines)}}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {"image": len(COLOURS) * len(SHAPES), "multi-image": 3, "video": 1, "text": 1}
