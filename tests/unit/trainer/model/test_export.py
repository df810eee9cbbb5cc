"""Exports that load as InternVL's own scripts load them: the base's vocabulary files beside
tokenizer.json (slow tokenizers), and ``use_cache`` on for generation in both layouts."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tokenizers import Tokenizer
from transformers import Qwen2Tokenizer

from internvl_trainer.model.export import save_hf, save_original
from internvl_trainer.model.load import load
from internvl_trainer.model.processor import INTERNVL_TOKENS, build_processor, load_tokenizer
from internvl_trainer.model.tiny import CONTROL_TOKENS
from tests.unit.trainer.model.conftest import IMAGE_SIZE, TOKENS_PER_TILE, batch, make_model, original_folder

CHAT = "<|im_start|>user\n<img><IMG_CONTEXT></img>\nWhat is shown?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>"


def qwen2_base(folder, tokenizer):
    """``tokenizer``'s vocabulary as a Qwen2-based release ships it: tokenizer.json beside the
    vocab.json and merges.txt slow tokenizers read, tokenizer_config.json naming Qwen2Tokenizer."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    qwen2 = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=[tuple(pair) for pair in model["merges"]],
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
    )
    qwen2.add_tokens([*CONTROL_TOKENS, *INTERNVL_TOKENS, "<pad>"], special_tokens=True)
    qwen2.save_pretrained(folder)
    qwen2.backend_tokenizer.model.save(str(folder))
    return folder


def internlm2_base(folder, tokenizer):
    """An original-layout release whose tokenizer class exists only as its own code (InternLM2's),
    with its sentencepiece model (stand-in bytes: building a real one needs sentencepiece)."""
    original_folder(folder, tokenizer, tokenizer_code=True)
    (folder / "tokenizer.model").write_bytes(b"\x0a\x0bsentencepiece model")
    return folder


@pytest.mark.parametrize("layout", ["original", "hf"])
def test_exports_carry_the_bases_bpe_files_and_load_as_slow_tokenizers(tmp_path, tokenizer, layout):
    base = qwen2_base(tmp_path / "base", tokenizer)
    loaded = load_tokenizer(base)
    processor = build_processor(loaded, image_size=IMAGE_SIZE, image_seq_length=TOKENS_PER_TILE)
    save = save_original if layout == "original" else save_hf
    export = save(make_model(loaded), tmp_path / "export", processor=processor, base_folder=base)
    for name in ("vocab.json", "merges.txt"):
        assert (export / name).read_bytes() == (base / name).read_bytes()
    settings = json.loads((export / "tokenizer_config.json").read_text())
    assert settings["tokenizer_class"] == "Qwen2Tokenizer"
    assert settings["added_tokens_decoder"]["5"] == {
        "content": "<IMG_CONTEXT>",
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }
    # The slow path: vocab.json, merges.txt and tokenizer_config.json alone, no tokenizer.json.
    slow = tmp_path / "slow"
    shutil.copytree(export, slow, ignore=shutil.ignore_patterns("tokenizer.json"))
    from_files = Qwen2Tokenizer.from_pretrained(str(slow))
    fast = Tokenizer.from_file(str(export / "tokenizer.json"))
    assert from_files(CHAT)["input_ids"] == fast.encode(CHAT).ids == loaded(CHAT)["input_ids"]
    assert len(from_files) == len(loaded) == 320


def test_an_internlm2_base_gives_its_sentencepiece_model_class_and_code(tmp_path, tokenizer):
    base = internlm2_base(tmp_path / "base", tokenizer)
    loaded = load_tokenizer(base)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    export = save_original(make_model(loaded), tmp_path / "export", tokenizer=loaded, base_folder=base)
    assert (export / "tokenizer.model").read_bytes() == (base / "tokenizer.model").read_bytes()
    assert (export / "tokenization_internlm2.py").read_text() == (base / "tokenization_internlm2.py").read_text()
    settings = json.loads((export / "tokenizer_config.json").read_text())
    assert settings["tokenizer_class"] == "InternLM2Tokenizer"
    assert settings["auto_map"] == {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}
    assert load_tokenizer(export).get_vocab() == tokenizer.get_vocab()
    assert not list(base.glob("*.ran")) and not list(export.glob("*.ran"))


def test_a_vocab_json_of_another_tokenizer_is_not_copied(tmp_path, tokenizer):
    base = qwen2_base(tmp_path / "base", tokenizer)
    vocabulary = json.loads((base / "vocab.json").read_text())
    vocabulary["<img>"], vocabulary["</img>"] = vocabulary["</img>"], vocabulary["<img>"]
    (base / "vocab.json").write_text(json.dumps(vocabulary))
    export = save_hf(make_model(tokenizer), tmp_path / "export", tokenizer=tokenizer, base_folder=base)
    assert not (export / "vocab.json").exists() and not (export / "merges.txt").exists()


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_exports_generate_with_a_kv_cache_when_training_turned_it_off(tmp_path, tokenizer, processor, layout):
    """InternVL's fine-tuning saves use_cache false; generate reads the generation config."""
    model = make_model(tokenizer)
    model.config.text_config.use_cache = False
    model.generation_config.use_cache = False
    save = save_original if layout == "original" else save_hf
    folder = save(model, tmp_path / layout, processor=processor)
    assert (model.config.text_config.use_cache, model.generation_config.use_cache) == (False, False)
    config = json.loads((folder / "config.json").read_text())
    llm = config["llm_config"] if layout == "original" else config["text_config"]
    assert llm["use_cache"] is True
    assert json.loads((folder / "generation_config.json").read_text())["use_cache"] is True
    reloaded = load(folder).model
    inputs = {k: v for k, v in batch(tokenizer).items() if k != "labels"}
    with torch.no_grad():
        out = reloaded.generate(**inputs, max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
    assert out.past_key_values is not None and out.past_key_values.get_seq_length() > 0
