"""``internvl-train merge`` and ``internvl-train export`` on checkpoint folders: exit codes,
messages, and folders that reload to the logits of the in-memory model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from tokenizers import Tokenizer

from internvl_trainer.cli import main
from internvl_trainer.model.checkpoint import Destinations, export_checkpoint
from internvl_trainer.model.export import save_hf, save_original
from internvl_trainer.model.load import load
from internvl_trainer.model.lora import merge
from internvl_trainer.model.prepare import prepare_for_training
from tests.conftest import load_example
from tests.unit.trainer.model.conftest import batch, logits, lora_method, make_model, one_step


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer, processor):
    """A base model folder (original layout, with the vocab.json and merges.txt of a release), a
    LoRA checkpoint trained on it, and the logits of the adapted model."""
    root = tmp_path_factory.mktemp("commands")
    save_original(make_model(tokenizer, seed=5), root / "base", processor=processor)
    Tokenizer.from_file(str(root / "base" / "tokenizer.json")).model.save(str(root / "base"))
    base = load(root / "base")
    model = prepare_for_training(base.model, lora_method()).model
    inputs = batch(tokenizer, seed=2)
    for _ in range(3):
        one_step(model, inputs, learning_rate=1e-2, weight_decay=0.0)
    model.save_pretrained(str(root / "checkpoint"))
    return root, logits(model, inputs), inputs


def test_merge_writes_both_layouts_that_reload_to_the_adapted_logits(trained, capsys):
    root, adapted, inputs = trained
    out = root / "merged"
    code = main(
        [
            "merge",
            "--checkpoint",
            str(root / "checkpoint"),
            "--hf",
            str(out / "hf"),
            "--original",
            str(out / "original"),
        ]
    )
    assert code == 0
    # the last lines: importing PEFT may make DeepSpeed log its accelerator choice to stdout first
    assert capsys.readouterr().out.splitlines()[-2:] == [str(out / "hf"), str(out / "original")]
    for layout in ("hf", "original"):
        reloaded = load(out / layout)
        assert reloaded.layout == layout
        assert (logits(reloaded.model, inputs) - adapted).abs().max().item() < 1e-4
        manifest = json.loads((out / layout / "manifest.json").read_text())
        assert {"tokenizer.json", "vocab.json", "merges.txt"} <= {entry["path"] for entry in manifest["files"]}
        assert (out / layout / "vocab.json").read_bytes() == (root / "base" / "vocab.json").read_bytes()


def test_export_converts_a_full_checkpoint_between_layouts(trained, tokenizer, tmp_path, capsys):
    root, _, inputs = trained
    model = make_model(tokenizer, llm="llama", seed=7)
    save_hf(model, tmp_path / "full")
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(tmp_path / "full"),
                "--original",
                str(tmp_path / "original"),
                "--original-llm",
                "InternLM2ForCausalLM",
            ]
        )
        == 0
    )
    config = json.loads((tmp_path / "original" / "config.json").read_text())
    assert config["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    assert main(["export", "--checkpoint", str(tmp_path / "original"), "--hf", str(tmp_path / "hf")]) == 0
    reloaded = load(tmp_path / "hf")
    assert torch.equal(logits(reloaded.model, inputs), logits(model, inputs))


def test_merge_takes_base_and_destinations_from_train_yaml(trained, tmp_path, capsys):
    root, adapted, inputs = trained
    config = load_example("train.yaml")
    config["model"]["weights"] = str(root / "base")
    config["output"] = {"uri": str(tmp_path / "out"), "layouts": ["original"]}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    adapter = json.loads((root / "checkpoint" / "adapter_config.json").read_text())
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    for name in ("adapter_model.safetensors",):
        (checkpoint / name).write_bytes((root / "checkpoint" / name).read_bytes())
    (checkpoint / "adapter_config.json").write_text(json.dumps({**adapter, "base_model_name_or_path": None}))
    assert main(["merge", "--checkpoint", str(checkpoint), "--config", str(tmp_path / "train.yaml")]) == 0
    assert capsys.readouterr().out.splitlines()[-1:] == [str(tmp_path / "out" / "model-original")]
    reloaded = load(tmp_path / "out" / "model-original")
    assert (logits(reloaded.model, inputs) - adapted).abs().max().item() < 1e-4


def test_bad_input_exits_2_with_a_reason(trained, tmp_path, capsys):
    root, _, _ = trained
    assert main(["merge", "--checkpoint", str(tmp_path / "none"), "--hf", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'none'}: no such folder\n"
    assert main(["merge", "--checkpoint", str(root / "base"), "--hf", str(tmp_path / "x")]) == 2
    assert "no adapter_config.json; a full model is exported with internvl-train export" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(root / "checkpoint"), "--hf", str(tmp_path / "x")]) == 2
    assert "holds a LoRA adapter; merge it into its base with internvl-train merge" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(root / "base")]) == 2
    assert capsys.readouterr().err == (
        "--hf/--original: give at least one destination (or --config with output.layouts)\n"
    )


def test_a_busy_destination_is_refused_before_any_work(trained, tmp_path, capsys):
    root, _, _ = trained
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert main(["export", "--checkpoint", str(root / "base"), "--hf", str(tmp_path / "busy")]) == 2
    assert capsys.readouterr().err == f"--hf: {tmp_path / 'busy'}: the destination folder is not empty\n"


def test_a_failed_export_exits_1(tokenizer, tmp_path, capsys):
    model = make_model(tokenizer, use_mean_pooling=False)
    save_hf(model, tmp_path / "full")
    assert main(["export", "--checkpoint", str(tmp_path / "full"), "--original", str(tmp_path / "original")]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "export failed: not expressible in the original layout: vision_config.use_mean_pooling: false adds a"
        " final LayerNorm that InternViT does not have"
    )


def test_the_cli_offers_every_original_llm_architecture():
    from internvl_trainer.cli import ORIGINAL_LLMS
    from internvl_trainer.model.original_config import LLM_ARCHITECTURES

    assert set(ORIGINAL_LLMS) == set(LLM_ARCHITECTURES)


def test_merge_of_an_unmerged_model_is_the_same_model(tokenizer):
    model = make_model(tokenizer)
    assert merge(model) is model


def test_a_full_model_exported_to_the_original_layout_takes_the_code_of_its_base(trained, tmp_path, processor):
    """A full fine-tune ends in the hf layout; its original-layout copy gets InternVL's .py files
    from the original-layout base it started from, so it loads with trust_remote_code."""
    root, _, _ = trained
    base = tmp_path / "base"
    shutil.copytree(root / "base", base)
    (base / "modeling_internvl_chat.py").write_text("# InternVL's remote code\n")
    final = tmp_path / "final"
    save_hf(load(base).model, final, processor=processor)
    export_checkpoint(final, Destinations(original=str(tmp_path / "with")), code_from=str(base))
    assert (tmp_path / "with/modeling_internvl_chat.py").read_text() == "# InternVL's remote code\n"
    assert (tmp_path / "with/merges.txt").read_bytes() == (base / "merges.txt").read_bytes()
    manifest = json.loads((tmp_path / "with/manifest.json").read_text())
    assert "modeling_internvl_chat.py" in [entry["path"] for entry in manifest["files"]]
    export_checkpoint(final, Destinations(original=str(tmp_path / "without")))
    assert not list((tmp_path / "without").glob("*.py"))
