"""The GPU training benchmark (``benchmarks/gpu``): its smoke run on CPU end to end, and the parts a
GPU run relies on. Nothing here asserts a timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from benchmarks.gpu import estimate, mix, models, summary
from benchmarks.gpu.environment import probe
from benchmarks.gpu.flops import ModelSize, mfu, peak_tflops
from benchmarks.gpu.layouts import BASELINE, PACKED, length_grouped, packs
from benchmarks.gpu.measure import MODES, boundaries
from benchmarks.gpu.report import HEADLINE_COLUMNS
from benchmarks.gpu.samples import Sample, synthetic
from internvl_operator.catalog import CATALOG
from internvl_trainer.model.original_config import native_config
from tests.conftest import REPO


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[str, dict]:
    """``python -m benchmarks.gpu --smoke`` as ``make bench-gpu`` runs the full mode: its report and record."""
    output = tmp_path_factory.mktemp("bench") / "report.md"
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--smoke", "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stdout + process.stderr
    return output.read_text(), json.loads(output.with_suffix(".json").read_text())


def test_smoke_report_names_machine_attention_and_every_table(smoke):
    report, record = smoke
    assert "- Date: 20" in report and "- CPU: " in report and "- Python 3." in report
    assert "- Attention: `sdpa` (CPU)" in report and record["attention"] == "sdpa"
    assert "- Optimizer: ZeRO-1 layout without DeepSpeed (DeepSpeed is not used on CPU)" in report
    for title in ("Headline", "Throughput and MFU", "Peak memory against the planner's estimate", "Loss on the same"):
        assert f"## {title}" in report
    assert "MFU = model FLOPs / (time x the GPU's dense bf16 peak)" in report
    assert (
        "- Models: tiny (a tiny InternViT with a tiny Qwen2); tiny-moe (a tiny InternViT with a tiny Qwen3-MoE);"
        in report
    )


def test_smoke_packed_and_unpacked_losses_agree_on_the_same_batch(smoke):
    _, record = smoke
    assert [check["model"] for check in record["checks"]] == [models.SMOKE, models.SMOKE_MOE]
    for check in record["checks"]:
        assert check["samples"] == 4
        assert check["agree"] and check["relative"] < 1e-4
        assert check["internvl"] == pytest.approx(check["packed"], rel=1e-4)


@pytest.mark.parametrize("model", [models.SMOKE, models.SMOKE_MOE])
def test_smoke_trains_the_same_samples_in_both_layouts(smoke, model):
    _, record = smoke
    runs = {result["layout"]: result for result in record["results"] if result["model"] == model}
    baseline, packed = runs[BASELINE], runs[PACKED]
    for key in ("samples", "tokens", "tiles", "flops", "optimizer_steps"):
        assert baseline[key] == packed[key], key
    assert packed["positions"] == packed["tokens"] < baseline["positions"]
    assert baseline["largest"][0] == 4 and packed["largest"][0] == 1
    assert baseline["estimate_gib"] > 0 and not baseline["error"] and not packed["error"]
    assert record["headline"]["columns"] == HEADLINE_COLUMNS
    assert [row[0] for row in record["headline"]["rows"]] == [models.SMOKE, models.SMOKE_MOE]


def test_gpu_section_of_benchmarks_md_is_current_with_the_record():
    """docs/benchmarks.md holds the GPU section as ``make bench`` writes it from the recorded GPU run
    (or, with none recorded, how to record one)."""
    (table,) = summary.run()
    assert table.markdown() in (REPO / "docs/benchmarks.md").read_text()


def test_section_without_a_record_says_none_is_recorded_and_how_to_record_one(tmp_path):
    (table,) = summary.run(tmp_path / "none.json")
    assert table.method.startswith("No GPU result is recorded yet.")
    assert "`make bench-gpu`" in table.method and "benchmarks-gpu.md" in table.method


def test_section_with_a_record_gives_its_headline_machine_and_date(tmp_path, smoke):
    _, record = smoke
    path = tmp_path / "benchmarks-gpu.json"
    path.write_text(json.dumps(record))
    (table,) = summary.run(path)
    assert table.rows == record["headline"]["rows"] and table.columns == HEADLINE_COLUMNS
    assert "Date: 20" in table.method and "CPU: " in table.method and "attention `sdpa`" in table.method


def test_probe_names_each_missing_package_and_what_replaces_it():
    env = probe(device="cpu", find=lambda name: None)
    assert [missing.package for missing in env.missing] == ["flash_attn", "deepspeed", "pydantic"]
    assert not env.deepspeed and not env.estimate and env.attention == "sdpa"
    (line,) = [line for line in env.lines() if line.startswith("- Not installed")]
    assert "flash_attn (for varlen attention kernels): sdpa" in line
    assert "deepspeed (for DeepSpeed's ZeRO-1 optimizer): the same memory layout without DeepSpeed" in line
    assert "pydantic (for the operator's memory model (planner estimate)): no estimate" in line
    assert "DeepSpeed is not installed" in env.lines()[2]


def test_probe_takes_a_chosen_attention_and_refuses_a_gpu_run_without_cuda():
    assert probe(device="cpu", attention="eager").attention_reason == "chosen with --attention"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA device"):
            probe(device="cuda")


def test_flops_formula_on_a_hand_computed_case():
    size = ModelSize(
        llm_params=10,
        llm_layers=2,
        llm_width=4,
        projector_params=3,
        vision_params=5,
        vision_layers=1,
        vision_width=2,
        vision_tokens_per_tile=3,
        llm_tokens_per_tile=2,
    )
    # samples of 3 and 2 tokens, one tile in all
    llm = 6 * 10 * 5
    attention = 12 * 2 * 4 * (3 * 4 // 2 + 2 * 3 // 2)
    projector = 6 * 3 * 2 * 1
    vision = 2 * 5 * 3 * 1 + 4 * 1 * 2 * 3 * 3 * 1
    assert size.flops([3, 2], tiles=1) == llm + attention + projector + vision == 1302


@pytest.mark.parametrize("name", [models.SMOKE, models.SMOKE_MOE])
def test_model_size_counts_parameters_as_the_catalog_does(name):
    """Of a mixture of experts, the LLM's active parameters: those of the routed experts only."""
    model = models.build(name, attention="sdpa", dtype=torch.float32, device="cpu")
    size = ModelSize.of(model)
    spec = estimate.model_spec(name, models.MODELS[name])
    assert size.llm_params == spec.llm.active_params - spec.llm.embedding_params
    assert size.projector_params == spec.projector_params
    patch = 3 * 14 * 14 * spec.vision.hidden_size + spec.vision.hidden_size
    assert size.vision_params == spec.vision.layers * spec.vision.layer_params + patch
    assert (size.llm_width, size.vision_width, size.vision_tokens_per_tile, size.llm_tokens_per_tile) == (64, 32, 17, 4)
    trained = {
        name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad and name.startswith("model.")
    }
    assert trained == {"language_model", "multi_modal_projector"} and not model.model.vision_tower.training


def test_gpu_peaks_and_mfu():
    assert (
        peak_tflops("NVIDIA H200") == peak_tflops("NVIDIA H100 80GB HBM3") == peak_tflops("NVIDIA GH200 480GB") == 989
    )
    assert peak_tflops("NVIDIA H100 PCIe") == 756 and peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert peak_tflops("NVIDIA L40S") == 362 and peak_tflops("NVIDIA L4") == 121
    assert peak_tflops("Tesla T4") is None and peak_tflops("none") is None
    assert mfu(989e12, 2.0, 989) == 0.5 and mfu(1.0, 1.0, None) is None


@pytest.mark.parametrize("name", ["InternVL3-1B", "InternVL3-2B", "InternVL3_5-2B"])
def test_benchmarked_models_have_the_catalog_sizes(name):
    spec, catalog = estimate.model_spec(name, models.MODELS[name]), CATALOG[name]
    fields = {"name", "card_params"}
    assert spec.vision.model_dump(exclude=fields) == catalog.vision.model_dump(exclude=fields)
    assert spec.llm.model_dump(exclude={"name"}) == catalog.llm.model_dump(exclude={"name"})
    assert spec.total_params == catalog.total_params
    config = native_config(models.MODELS[name])
    assert config.image_seq_length == 256 and config.text_config.vocab_size == catalog.llm.vocab_size


def test_moe_model_has_qwen3_30b_a3b_layers_cut_to_one_gpu_by_hand_count():
    """12 layers of 32 experts (8 routed) in Qwen3-30B-A3B's shape, InternViT-300M and its projector."""
    h, heads, kv_heads, head_dim, expert_width, vocab = 2048, 32, 4, 128, 768, 151936
    attention = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h + 2 * head_dim  # q/k norms
    expert, router, norms = 3 * h * expert_width, 32 * h, 2 * h
    embedding = vocab * h
    llm = 2 * embedding + 12 * (attention + 32 * expert + router + norms) + h
    active_llm = 2 * embedding + 12 * (attention + 8 * expert + router + norms) + h
    shuffled = 4 * 1024  # InternViT-300M's width after the 0.5 pixel shuffle
    projector = 2 * shuffled + shuffled * h + h + h * h + h  # LayerNorm, two linear layers
    assert (llm, active_llm, projector) == (2_661_602_304, 1_302_647_808, 12_595_200)
    spec, released = estimate.model_spec(models.MOE, models.MODELS[models.MOE]), CATALOG["InternVL3_5-30B-A3B"]
    assert (spec.llm.params, spec.llm.active_params, spec.projector_params) == (llm, active_llm, projector)
    assert (spec.total_params, spec.active_params) == (2_978_209_792, 1_619_255_296)
    fields = {"name", "card_params"}
    assert spec.vision.model_dump(exclude=fields) == released.vision.model_dump(exclude=fields)
    cut = {"name", "layers", "experts"}
    assert spec.llm.model_dump(exclude=cut) == released.llm.model_dump(exclude=cut)
    assert (spec.llm.layers, spec.llm.experts, spec.llm.experts_per_token) == (12, 32, 8)
    model = models.build(models.MOE, attention="sdpa", dtype=torch.bfloat16, device="meta")
    assert ModelSize.of(model).llm_params == active_llm - embedding


def test_gpu_modes_run_the_internvl3_5_rows_and_the_smoke_mode_a_moe():
    for mode in ("full", "quick"):
        assert MODES[mode].models == ("InternVL3-1B", "InternVL3-2B", "InternVL3_5-2B", models.MOE)
    assert MODES["smoke"].models == (models.SMOKE, models.SMOKE_MOE)
    every = [name for mode in MODES.values() for name in mode.models]
    assert set(every) <= models.MODELS.keys() and set(every) <= models.DESCRIPTIONS.keys()
    assert native_config(models.MODELS[models.SMOKE_MOE]).text_config.model_type == "qwen3_moe"
    assert native_config(models.MODELS["InternVL3_5-2B"]).text_config.model_type == "qwen3"


def test_mix_file_is_the_packing_benchmarks_mix():
    """Stale when benchmarks/packing.py's mix changes: rewrite it with ``python -m benchmarks.gpu.mix``."""
    assert mix.PATH.read_text() == mix.render(mix.generate())


def _samples(lengths: list[int], tiles: int = 0) -> list[Sample]:
    return [
        Sample(
            torch.zeros(length, dtype=torch.long), torch.zeros(length, dtype=torch.long), torch.zeros(tiles, 3, 1, 1)
        )
        for length in lengths
    ]


def test_length_grouping_sorts_each_megabatch_longest_first():
    samples = _samples([1, 5, 3, 2, 9, 4, 8])
    groups = length_grouped(samples, per_device=2, megabatch=4)
    assert [[sample.tokens for sample in group] for group in groups] == [[5, 3], [2, 1], [9, 8], [4]]


def test_packs_hold_every_sample_once_within_the_budget():
    samples = _samples([300, 700, 200, 500, 1000, 100, 400])
    packed = packs(samples, max_tokens=1000, open_packs=2)
    assert sorted(id(sample) for pack in packed for sample in pack) == sorted(id(sample) for sample in samples)
    assert all(sum(sample.tokens for sample in pack) <= 1000 for pack in packed)
    assert len(packed) == 4


def test_packs_close_a_pack_that_is_not_the_first_open_one():
    """The packer removes the fullest pack by equality: samples must not compare their tensors."""
    samples = _samples([300, 800])
    packed = packs(samples, max_tokens=1000, open_packs=1)
    assert [[sample.tokens for sample in pack] for pack in packed] == [[800], [300]]


def test_optimizer_steps_follow_the_global_batch_and_the_last_micro_batch():
    groups = [_samples([1] * size) for size in (4, 4, 4, 1)]
    assert boundaries(groups, global_batch=8) == [False, True, False, True]


def test_synthetic_samples_supervise_half_the_text_and_skip_overlong_ones():
    config = native_config(models.MODELS[models.SMOKE])
    (first, second) = synthetic([(40, 2), (5000, 0), (10, 0)], config, count=2, max_tokens=100)
    assert (first.tokens, first.tile_count, second.tokens, second.tile_count) == (48, 2, 10, 0)
    assert int((first.input_ids == config.image_token_id).sum()) == 2 * config.image_seq_length
    assert int((first.labels != -100).sum()) == 12  # (40 text - 16 prompt) / 2
    with pytest.raises(ValueError, match="not 3"):
        synthetic([(40, 2)], config, count=3, max_tokens=100)
