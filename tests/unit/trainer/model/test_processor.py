"""The tokenizer and processor saved with every export: special tokens, chat template, tiling."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer

from internvl_trainer.data.template import DEFAULT_SYSTEM_MESSAGE, INTERNVL2_5
from internvl_trainer.model.export import save_hf
from internvl_trainer.model.processor import CHAT_TEMPLATE, InternVLCpuProcessor
from tests.unit.trainer.model.conftest import make_model

CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]},
    {"role": "assistant", "content": "A cat."},
]


def test_chat_template_is_internvl2_5_with_the_default_system_message(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=False)
    assert text == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM_MESSAGE}<|im_end|>\n"
        "<|im_start|>user\n<IMG_CONTEXT>\nWhat is shown?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
    )
    turns = [("user", "<IMG_CONTEXT>\nWhat is shown?"), ("assistant", "A cat.")]
    assert text == INTERNVL2_5.prompt(turns)


def test_chat_template_keeps_a_given_system_message_and_adds_the_generation_prompt(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_processor_expands_images_to_tiles_of_context_tokens(processor, tokenizer):
    image = Image.fromarray(np.zeros((60, 130, 3), dtype=np.uint8))  # 130 x 60: a 2 x 1 grid + thumbnail
    out = processor(images=[image], text=["<IMG_CONTEXT>\nWhat is shown?"], return_tensors="pt")
    assert tuple(out["pixel_values"].shape) == (3, 3, 56, 56)
    ids = out["input_ids"][0].tolist()
    assert ids.count(tokenizer.context_image_token_id) == 3 * 4
    assert ids[0] == tokenizer.convert_tokens_to_ids("<img>")
    assert ids[13] == tokenizer.convert_tokens_to_ids("</img>")


def test_every_export_carries_tokenizer_processor_and_template(tmp_path, tokenizer, processor):
    save_hf(make_model(tokenizer), tmp_path / "model", processor=processor)
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    reloaded = InternVLCpuProcessor.from_pretrained(str(tmp_path / "model"))
    assert reloaded.chat_template == CHAT_TEMPLATE
    assert reloaded.image_seq_length == 4
    assert reloaded.image_processor.max_patches == 4
    assert list(reloaded.image_processor.image_mean) == [0.485, 0.456, 0.406]
    image = Image.fromarray(np.full((56, 56, 3), 128, dtype=np.uint8))
    before = processor(images=[image], text=["<IMG_CONTEXT>\nHi"], return_tensors="pt")
    after = reloaded(images=[image], text=["<IMG_CONTEXT>\nHi"], return_tensors="pt")
    assert torch.equal(before["input_ids"], after["input_ids"])
    assert torch.equal(before["pixel_values"], after["pixel_values"])
    plain = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    assert (plain.start_image_token, plain.end_image_token, plain.context_image_token, plain.video_token) == (
        "<img>",
        "</img>",
        "<IMG_CONTEXT>",
        "<video>",
    )
    assert plain.apply_chat_template(CONVERSATION, tokenize=False) == tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False
    )
