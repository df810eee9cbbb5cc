"""Tiny runs for the training tests: a random InternVL (vision hidden 32, LLM hidden 64, 56-pixel
tiles of 4 tokens) with a tokenizer trained on the spot, saved as a model folder; 8 image-text
samples (a distinct picture and answer each) with a meta file; a train.yaml around them; and a
run of ``internvl-train run`` on two CPU ranks under torchrun."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from internvl_trainer.config import TrainConfig, dump_train_config
from internvl_trainer.model.export import save_hf
from internvl_trainer.model.processor import build_processor
from internvl_trainer.model.tiny import TinyLLM, tiny_config, tiny_model, tiny_tokenizer
from tests.conftest import REPO

IMAGE_SIZE = 56
HEAD_SCALE = 8.0
ANSWERS = [
    "A cat sits on a red mat.",
    "The dog runs after the ball.",
    "A red ball in the park.",
    "Two cats and a dog.",
    "The picture shows a mat.",
    "A dog sits in the park.",
    "The cat runs after the dog.",
    "Count the objects: two.",
]
COLOURS = [
    (220, 30, 30),
    (30, 200, 40),
    (30, 40, 220),
    (230, 220, 20),
    (20, 220, 220),
    (210, 20, 210),
    (0, 0, 0),
    (250, 250, 250),
]


def write_model(
    folder: Path,
    *,
    seed: int = 0,
    llm: TinyLLM = "qwen2",
    text: Mapping[str, Any] = {},  # noqa: B006 (read only)
    adjust: Callable[[Any, Any], None] | None = None,
) -> Path:
    """A tiny model folder in the transformers layout, with its tokenizer and processor. The LM
    head is scaled up so that its logits span a range like a real model's (a random head of hidden
    size 64 caps them near ±3, which a frozen head under LoRA could never sharpen). ``text`` sets
    fields of the LLM's config, ``adjust(model, tokenizer)`` edits the weights before they are saved."""
    tokenizer = tiny_tokenizer(harmony=llm == "gpt_oss")
    config = tiny_config(tokenizer, llm=llm, image_size=IMAGE_SIZE, vision_layers=1, text_layers=2)
    for name, value in text.items():
        setattr(config.text_config, name, value)
    model = tiny_model(config, seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(HEAD_SCALE)
        if adjust is not None:
            adjust(model, tokenizer)
    processor = build_processor(tokenizer, image_size=IMAGE_SIZE, image_seq_length=4, max_tiles=2)
    save_hf(model, folder, processor=processor)
    return folder


def png(colour: tuple[int, int, int], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour, dtype=np.int16) + rng.integers(-10, 10, (IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def records(count: int = 8, answers: Sequence[str] = ANSWERS) -> list[dict[str, Any]]:
    return [
        {
            "id": number,
            "image": f"images/{number}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."},
                {"from": "gpt", "value": answers[number % len(answers)]},
            ],
        }
        for number in range(count)
    ]


def write_data(folder: Path, *, count: int = 8, bad_lines: int = 0, answers: Sequence[str] = ANSWERS) -> Path:
    """Images, an annotation JSONL and a meta.json in ``folder``; returns the meta file. Sample n
    answers ``answers[n % len(answers)]``; ``bad_lines`` broken records are added after the good
    ones."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for number in range(count):
        (folder / "images" / f"{number}.png").write_bytes(png(COLOURS[number % len(COLOURS)], number))
    lines = [json.dumps(record) for record in records(count, answers)]
    lines += ['{"id": "broken", "conversations": [' for _ in range(bad_lines)]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    meta = {"pictures": {"root": str(folder), "annotation": str(folder / "train.jsonl"), "repeat_time": 1}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder / "meta.json"


def train_config(
    weights: str,
    meta: str,
    output_uri: str,
    *,
    method: str = "full",
    steps: int = 40,
    learning_rate: float = 2e-3,
    per_device: int = 4,
    accumulation: int = 2,
    save_steps: int = 1000,
    **sections: Any,
) -> TrainConfig:
    document: dict[str, Any] = {
        "run": {"name": "tiny", "uid": "uid-1"},
        "model": {"name": "InternVL3-1B", "weights": weights},
        "method": {"type": method, "dropPathRate": 0.0},
        "data": {"meta": meta, "maxSeqLength": 512, "maxTiles": 1, "packing": False, "workers": 0},
        "training": {
            "maxSteps": steps,
            "globalBatchSize": per_device * accumulation,
            "learningRate": learning_rate,
            "weightDecay": 0.0,
            "warmupRatio": 0.0,
            "scheduler": "constant",
            "saveSteps": save_steps,
            "gradientCheckpointing": False,
            "seed": 7,
        },
        "batch": {"perDeviceBatchSize": per_device, "gradientAccumulationSteps": accumulation},
        "output": {"uri": output_uri},
    }
    if method == "lora":
        document["method"]["lora"] = {"rank": 8, "alpha": 16, "dropout": 0.05}
        document["method"]["freeze"] = {"projector": False}
    for section, values in sections.items():
        document.setdefault(section, {}).update(values)
    return TrainConfig.model_validate(document)


def run_two_ranks(config: TrainConfig, folder: Path, name: str) -> subprocess.CompletedProcess[str]:
    """``internvl-train run`` of ``config`` on two CPU ranks under torchrun, as a pod with two GPUs
    runs it; its train.yaml and scratch folder (a new pod's) named ``name`` in ``folder``."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    environment.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache/torch_extensions"))
    environment["INTERNVL_SCRATCH"] = str(folder / f"scratch-{name}")
    path = folder / f"train-{name}.yaml"
    path.write_text(dump_train_config(config))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*launcher, "-m", "internvl_trainer.cli", "run", "--config", str(path)]
    return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=600)
