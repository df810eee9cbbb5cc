"""Loading folders of both layouts (and S3 prefixes through the storage layer) as native models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from internvl_trainer.model.export import save_hf, save_original
from internvl_trainer.model.layouts import LayoutError
from internvl_trainer.model.load import (
    ModelFolderError,
    attention_implementation,
    fetch_folder,
    fit_embeddings,
    load,
    read_weights,
)
from internvl_trainer.model.processor import INTERNVL_TOKENS, prepare_tokenizer
from tests.unit.trainer.model.conftest import batch, logits, make_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer, processor):
    """A Qwen2-based model in the native layout, and an InternLM2-based one in the original layout."""
    root = tmp_path_factory.mktemp("models")
    qwen2 = make_model(tokenizer, seed=1)
    internlm2 = make_model(tokenizer, llm="llama", seed=2)
    save_hf(qwen2, root / "qwen2-hf", processor=processor)
    save_original(qwen2, root / "qwen2-original", processor=processor)
    save_original(internlm2, root / "internlm2-original", processor=processor, llm_architecture="InternLM2ForCausalLM")
    return root, {"qwen2": qwen2, "internlm2": internlm2}


@pytest.mark.parametrize(
    ("name", "which", "layout", "text_class"),
    [
        ("qwen2-hf", "qwen2", "hf", "Qwen2Config"),
        ("qwen2-original", "qwen2", "original", "Qwen2Config"),
        ("internlm2-original", "internlm2", "original", "LlamaConfig"),
    ],
)
def test_both_layouts_load_to_the_same_logits(folders, tokenizer, name, which, layout, text_class):
    root, models = folders
    inputs = batch(tokenizer)
    loaded = load(root / name)
    assert loaded.layout == layout
    assert type(loaded.model.config.text_config).__name__ == text_class
    assert loaded.model.config.image_token_id == tokenizer.context_image_token_id
    assert loaded.model.config._attn_implementation == "sdpa"
    assert torch.equal(logits(loaded.model, inputs), logits(models[which], inputs))
    assert loaded.tokenizer.context_image_token == "<IMG_CONTEXT>"
    assert loaded.processor.image_seq_length == 4
    # The vocabulary (no <video>, as InternVL's) is the model's, row for row: nothing grew.
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab() and "<video>" not in tokenizer.get_vocab()
    for embedding in ("get_input_embeddings", "get_output_embeddings"):
        weight = getattr(loaded.model, embedding)().weight
        assert torch.equal(weight, getattr(models[which], embedding)().weight) and weight.shape[0] == 320


def test_original_folder_files_and_config(folders):
    root, _ = folders
    folder = root / "internlm2-original"
    assert sorted(p.name for p in folder.iterdir()) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"]
    assert config["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    assert config["llm_config"]["model_type"] == "internlm2"
    assert config["vision_config"]["model_type"] == "intern_vit_6b"
    assert (config["force_image_size"], config["max_dynamic_patch"], config["template"]) == (56, 4, "internvl2_5")
    weights = load_file(folder / "model.safetensors")
    assert "language_model.model.layers.1.attention.wqkv.weight" in weights
    assert "mlp1.3.bias" in weights


def test_a_missing_weight_is_an_error_not_a_random_init(folders, tmp_path):
    root, _ = folders
    broken = tmp_path / "broken"
    shutil.copytree(root / "qwen2-original", broken)
    weights = load_file(broken / "model.safetensors")
    del weights["vision_model.encoder.layers.1.ls2"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelFolderError, match=r"missing weights: model\.vision_tower\.encoder\.layer\.1\.lambda_2"):
        load(broken)


def test_original_checkpoints_saved_with_lora_are_folded_on_load(folders, tokenizer, tmp_path):
    root, models = folders
    wrapped = tmp_path / "wrapped"
    shutil.copytree(root / "qwen2-original", wrapped)
    weights = load_file(wrapped / "model.safetensors")
    key = "language_model.model.layers.0.self_attn.q_proj"
    peft = "language_model.base_model.model.model.layers.0.self_attn.q_proj"
    renamed = {k.replace("language_model.", "language_model.base_model.model.", 1): v for k, v in weights.items()}
    renamed[f"{peft}.base_layer.weight"] = renamed.pop(f"{peft}.weight")
    renamed[f"{peft}.base_layer.bias"] = renamed.pop(f"{peft}.bias")
    a, b = torch.full((2, 64), 0.01), torch.full((64, 2), 0.02)
    renamed[f"{peft}.lora_A.default.weight"], renamed[f"{peft}.lora_B.default.weight"] = a, b
    save_file(renamed, wrapped / "model.safetensors", metadata={"format": "pt"})
    loaded = load(wrapped)
    expected = weights[f"{key}.weight"] + 2.0 * b @ a
    assert torch.allclose(loaded.model.model.language_model.layers[0].self_attn.q_proj.weight, expected)


def test_wrong_folders_say_why(folders, tmp_path):
    root, _ = folders
    with pytest.raises(ModelFolderError, match="expected the hf layout, config.json describes the original layout"):
        load(root / "qwen2-original", layout="hf")
    with pytest.raises(ModelFolderError, match="no such folder"):
        load(tmp_path / "nothing")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelFolderError, match="holds a LoRA adapter, not a model"):
        load(tmp_path / "adapter")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "llava"}')
    with pytest.raises(ModelFolderError, match="model_type 'llava'"):
        load(tmp_path / "other")


def test_a_tokenizer_that_disagrees_with_the_model_is_refused(folders, tmp_path, tokenizer):
    root, _ = folders
    folder = tmp_path / "mismatch"
    shutil.copytree(root / "qwen2-hf", folder)
    config = json.loads((folder / "config.json").read_text())
    config["image_token_id"] = 0
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LayoutError, match="the tokenizer's <IMG_CONTEXT> is id 5, the model's image_token_id is 0"):
        load(folder)


class FolderStorage:
    """A stand-in for internvl_trainer.storage.Storage whose S3 is a local folder."""

    def __init__(self, bucket_root: Path):
        self.bucket_root = bucket_root
        self.downloads: list[str] = []

    def download(self, source, destination):
        self.downloads.append(str(source))
        shutil.copytree(self.bucket_root / source.key, destination, dirs_exist_ok=True)


def test_s3_prefixes_are_fetched_through_the_storage_layer(folders, tokenizer, tmp_path):
    root, models = folders
    storage = FolderStorage(root)
    cache = tmp_path / "cache"
    loaded = load("s3://models/qwen2-original", storage=storage, cache_dir=cache)
    assert storage.downloads == ["s3://models/qwen2-original"]
    assert loaded.folder.parent == cache and loaded.folder.name.startswith("qwen2-original-")
    assert torch.equal(logits(loaded.model, batch(tokenizer)), logits(models["qwen2"], batch(tokenizer)))
    assert fetch_folder(tmp_path) == tmp_path


def test_attention_is_sdpa_without_flash_attention():
    assert attention_implementation() == "sdpa"
    assert attention_implementation("eager") == "eager"


def test_missing_special_tokens_are_added(tokenizer):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator(["a cat"], trainers.BpeTrainer(vocab_size=270, special_tokens=["<|im_end|>"]))
    plain = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>")
    before = len(plain)
    assert prepare_tokenizer(plain) == list(INTERNVL_TOKENS)
    assert len(plain) == before + 9
    assert plain.context_image_token_id == plain.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert getattr(plain, "video_token", None) is None and "<video>" not in plain.get_vocab()
    assert prepare_tokenizer(plain) == []


def test_the_embeddings_grow_to_the_tokenizer_with_mean_rows(tokenizer):
    model = make_model(tokenizer)
    rows = len(tokenizer) - 3
    model.resize_token_embeddings(rows, mean_resizing=False)
    assert fit_embeddings(model, tokenizer) == 3
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == len(tokenizer) == model.lm_head.weight.shape[0]
    assert torch.allclose(embeddings[-1], embeddings[:rows].mean(dim=0))
    assert torch.allclose(model.lm_head.weight[-2], model.lm_head.weight[:rows].mean(dim=0))
    assert fit_embeddings(model, tokenizer) == 0


@pytest.mark.parametrize(
    ("llm", "architecture"),
    [("qwen3", "Qwen3ForCausalLM"), ("qwen3_moe", "Qwen3MoeForCausalLM"), ("gpt_oss", "GptOssForCausalLM")],
)
def test_internvl35_language_models_convert_exactly_both_ways(tmp_path, tokenizer, processor, llm, architecture):
    model = make_model(tokenizer, llm, seed=5)
    inputs = batch(tokenizer)
    expected = logits(model, inputs)
    save_original(model, tmp_path / "original", processor=processor)
    original = load(tmp_path / "original")
    save_hf(original.model, tmp_path / "hf", processor=original.processor)
    hf = load(tmp_path / "hf")
    save_original(hf.model, tmp_path / "back", processor=hf.processor)
    for loaded in (original, hf, load(tmp_path / "back")):
        assert type(loaded.model.config.text_config).__name__ == type(model.config.text_config).__name__
        assert torch.equal(logits(loaded.model, inputs), expected)
    config = json.loads((tmp_path / "original" / "config.json").read_text())
    assert config["llm_config"]["architectures"] == [architecture]
    assert config == json.loads((tmp_path / "back" / "config.json").read_text())
    first, back = read_weights(tmp_path / "original"), read_weights(tmp_path / "back")
    assert sorted(first) == sorted(back) and all(torch.equal(first[key], back[key]) for key in first)
    # Both layouts hold the LLM under the same keys (transformers writes Qwen3-MoE's experts one by
    # one, as InternVL's transformers 4.55 does), so the LLM part of either folder is the other's.
    hf_llm = {key: tensor for key, tensor in read_weights(tmp_path / "hf").items() if key.startswith("language_model.")}
    assert sorted(hf_llm) == sorted(key for key in first if key.startswith("language_model."))
    assert all(torch.equal(tensor, first[key]) for key, tensor in hf_llm.items())


@pytest.mark.parametrize("flash", [False, True])
def test_gpt_oss_runs_eager_attention_in_its_llm_only(monkeypatch, flash):
    monkeypatch.setattr("internvl_trainer.model.load.is_flash_attn_2_available", lambda: flash)
    default = "flash_attention_2" if flash else "sdpa"
    assert attention_implementation(None, "gpt_oss") == {"text_config": "eager", "vision_config": default}
    assert attention_implementation("flash_attention_2", "gpt_oss") == "flash_attention_2"
    assert attention_implementation(None, "qwen3_moe") == default


def test_a_quantized_release_is_refused_naming_the_field(folders, tmp_path):
    root, _ = folders
    folder = tmp_path / "quantized"
    shutil.copytree(root / "qwen2-hf", folder)
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["quantization_config"] = {"quant_method": "mxfp4"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match=r"config.json: text_config.quantization_config: mxfp4 quantized"):
        load(folder)
