"""Tiny offline models for the model tests: a tokenizer trained on the spot, random models of two
vision and two LLM layers (vision hidden 32, LLM hidden 64) with 56-pixel tiles (4 tokens each)."""

from __future__ import annotations

import json

import pytest
import torch

from internvl_trainer.config import LoraConfig, MethodConfig
from internvl_trainer.model.optim import adamw
from internvl_trainer.model.processor import build_processor
from internvl_trainer.model.tiny import tiny_config, tiny_model, tiny_tokenizer

IMAGE_SIZE = 56
TOKENS_PER_TILE = 4


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Tiny models run fastest on one thread, and a second thread only contends with whatever else
    the machine runs (a 10-100x slowdown on a busy two-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def processor(tokenizer):
    return build_processor(tokenizer, image_size=IMAGE_SIZE, image_seq_length=TOKENS_PER_TILE, max_tiles=4)


def make_model(tokenizer, llm="qwen2", seed=0, **options):
    return tiny_model(tiny_config(tokenizer, llm=llm, image_size=IMAGE_SIZE, **options), seed=seed)


@pytest.fixture
def model(tokenizer):
    return make_model(tokenizer)


def batch(tokenizer, tiles: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """One sequence with ``tiles`` image tiles and some text, labels on every text token."""
    generator = torch.Generator().manual_seed(seed)
    text = tokenizer("The dog runs after the ball. A cat sits on a red mat.", add_special_tokens=False)["input_ids"]
    ids = [tokenizer.convert_tokens_to_ids("<img>")]
    ids += [tokenizer.context_image_token_id] * (TOKENS_PER_TILE * tiles)
    ids += [tokenizer.convert_tokens_to_ids("</img>"), *text]
    input_ids = torch.tensor([ids])
    labels = input_ids.clone()
    labels[input_ids == tokenizer.context_image_token_id] = -100
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(tiles, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
        "labels": labels,
    }


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    model.train(was_training)
    return out


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(model, before) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}


def one_step(model, inputs, learning_rate=1e-3, weight_decay=0.05):
    optimizer = adamw(model, learning_rate, weight_decay)
    model.train()
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def lora_method(**options) -> MethodConfig:
    lora = LoraConfig(**{"rank": 4, "alpha": 8, "dropout": 0.05, **options})
    return MethodConfig(type="lora", lora=lora, freeze={"projector": False})


REMOTE_CODE = "from pathlib import Path\nPath(__file__).with_suffix('.ran').touch()\n"


def original_folder(folder, tokenizer, *, tokenizer_code: bool):
    """A tokenizer in an original-layout folder as InternVL's releases have it: config.json names
    InternVL's classes in auto_map; with ``tokenizer_code``, tokenizer_config.json names a tokenizer
    class that only the folder's code has (InternLM2's). Running any of that code leaves a file."""
    tokenizer.save_pretrained(folder)
    config = {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
        },
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_internvl_chat.py").write_text(REMOTE_CODE)
    (folder / "modeling_internvl_chat.py").write_text(REMOTE_CODE)
    if tokenizer_code:
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        settings["tokenizer_class"] = "InternLM2Tokenizer"
        settings["auto_map"] = {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}
        (folder / "tokenizer_config.json").write_text(json.dumps(settings))
        (folder / "tokenization_internlm2.py").write_text(REMOTE_CODE)
    return folder
