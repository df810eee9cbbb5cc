"""The tokenizer and processor saved with every export: special tokens, chat template, tiling; a
folder's tokenizer loaded with its vocabulary as saved and none of its code run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from internvl_trainer.data.template import DEFAULT_SYSTEM_MESSAGE, INTERNVL2_5, INTERNVL3_5_GPT_OSS
from internvl_trainer.model.export import save_hf
from internvl_trainer.model.processor import (
    VIDEO_TOKEN,
    InternVLCpuProcessor,
    build_processor,
    chat_template,
    load_tokenizer,
    template_of,
)
from internvl_trainer.model.tiny import tiny_tokenizer
from tests.unit.trainer.model.conftest import make_model, original_folder

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


def test_a_gpt_oss_tokenizer_gets_the_harmony_chat_template():
    harmony = tiny_tokenizer(harmony=True)
    assert template_of(harmony) is INTERNVL3_5_GPT_OSS
    assert template_of(tiny_tokenizer()) is INTERNVL2_5
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A cat."}]
    text = harmony.apply_chat_template(messages, tokenize=False)
    assert text == INTERNVL3_5_GPT_OSS.prompt([("user", "Hi"), ("assistant", "A cat.")])
    assert text.endswith("<|start|>assistant<|channel|>final<|message|>A cat.<|return|>")
    prompt = harmony.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == INTERNVL3_5_GPT_OSS.prompt([("user", "Hi")], add_generation_prompt=True)


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
    assert reloaded.chat_template == chat_template()
    assert reloaded.image_seq_length == 4
    assert reloaded.image_processor.max_patches == 4
    assert list(reloaded.image_processor.image_mean) == [0.485, 0.456, 0.406]
    image = Image.fromarray(np.full((56, 56, 3), 128, dtype=np.uint8))
    before = processor(images=[image], text=["<IMG_CONTEXT>\nHi"], return_tensors="pt")
    after = reloaded(images=[image], text=["<IMG_CONTEXT>\nHi"], return_tensors="pt")
    assert torch.equal(before["input_ids"], after["input_ids"])
    assert torch.equal(before["pixel_values"], after["pixel_values"])
    plain = AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    assert (plain.start_image_token, plain.end_image_token, plain.context_image_token) == (
        "<img>",
        "</img>",
        "<IMG_CONTEXT>",
    )
    assert plain.get_vocab() == tokenizer.get_vocab()  # <video> is not named, so not added on loading
    assert plain.apply_chat_template(CONVERSATION, tokenize=False) == tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False
    )


# ---------------------------------------------------------------------------------------------
# loading a folder's tokenizer

ANSWER = "It shows <video> and a cat."


def test_a_vocabulary_without_video_loads_unchanged_and_video_stays_text(tmp_path, tokenizer):
    """InternVL replaces <video> by frame lines before tokenizing; its vocabularies lack it, and a
    literal <video> in an answer is plain text, as the base's own tokenizer reads it."""
    tokenizer.save_pretrained(tmp_path / "base")
    base = Tokenizer.from_file(str(tmp_path / "base" / "tokenizer.json"))
    assert VIDEO_TOKEN not in base.get_vocab()
    loaded = load_tokenizer(tmp_path / "base")
    assert len(loaded) == base.get_vocab_size() == 320
    assert loaded.get_vocab() == base.get_vocab()
    ids = loaded(ANSWER, add_special_tokens=False)["input_ids"]
    assert ids == base.encode(ANSWER, add_special_tokens=False).ids
    assert loaded.convert_ids_to_tokens(ids)[9:15] == ["<", "v", "i", "de", "o", ">"]
    processor = build_processor(loaded, image_size=56, image_seq_length=4)
    assert processor.video_token == VIDEO_TOKEN
    processor.save_pretrained(tmp_path / "export")
    assert "video_token" not in json.loads((tmp_path / "export" / "tokenizer_config.json").read_text())
    assert load_tokenizer(tmp_path / "export").get_vocab() == base.get_vocab()


def test_a_vocabulary_with_video_keeps_it_and_names_it(tmp_path):
    """The -hf releases' vocabularies hold <video>: it stays one token, named for the processor."""
    with_video = tiny_tokenizer(video_token=True)
    with_video.save_pretrained(tmp_path / "base")
    loaded = load_tokenizer(tmp_path / "base")
    assert loaded.get_vocab() == with_video.get_vocab() and len(loaded) == 320
    assert loaded.video_token == VIDEO_TOKEN
    assert loaded.convert_ids_to_tokens(loaded(ANSWER, add_special_tokens=False)["input_ids"])[9] == VIDEO_TOKEN


@pytest.mark.parametrize("tokenizer_code", [False, True], ids=["qwen2", "internlm2"])
def test_original_layout_tokenizers_load_without_running_or_asking_about_their_code(
    tmp_path, tokenizer, monkeypatch, tokenizer_code
):
    folder = original_folder(tmp_path / "original", tokenizer, tokenizer_code=tokenizer_code)
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("transformers asked whether to run remote code"))
    loaded = load_tokenizer(folder)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded(ANSWER)["input_ids"] == tokenizer(ANSWER)["input_ids"]
    assert not list(folder.glob("*.ran"))


def test_the_processor_of_an_original_layout_folder_loads_without_asking_about_its_code(
    tmp_path, tokenizer, processor, monkeypatch
):
    processor.save_pretrained(tmp_path / "original")
    folder = original_folder(tmp_path / "original", tokenizer, tokenizer_code=False)
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("transformers asked whether to run remote code"))
    loaded = InternVLCpuProcessor.from_pretrained(str(folder))
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab() and loaded.image_seq_length == 4
    assert not list(folder.glob("*.ran"))


def test_a_tokenizer_class_that_only_remote_code_has_needs_tokenizer_json(tmp_path, tokenizer):
    folder = original_folder(tmp_path / "original", tokenizer, tokenizer_code=True)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="names InternLM2Tokenizer, which exists only as the folder's own code"):
        load_tokenizer(folder)
    assert not list(folder.glob("*.ran"))
