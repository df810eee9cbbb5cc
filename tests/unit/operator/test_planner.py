"""The planner: InternVL's recipes reproduced exactly, policy minimal's order, the spec's own choices
winning, and "nothing fits" explained with numbers."""

import copy

import pytest
from hypothesis import HealthCheck, given, settings

from internvl_operator.api import InternVLFinetune, InternVLFinetuneSpec, PlanStatus
from internvl_operator.catalog import model_spec
from internvl_operator.deepspeed import deepspeed_config
from internvl_operator.launchers import LAUNCHERS, chosen
from internvl_operator.memory import GIB
from internvl_operator.planner import (
    MAX_ACCUMULATION,
    MAX_PER_DEVICE_BATCH,
    host_memory_gib,
    plan,
    tiles_per_sequence,
    trainable_of,
)
from internvl_operator.render import render
from internvl_operator.resolve import render_context
from internvl_operator.settings import OperatorSettings
from internvl_trainer.config import MODEL_NAMES, BatchLayout, DataConfig, MethodConfig, TrainConfig
from internvl_trainer.problems import BadInput
from tests.unit.operator.render.conftest import on_every_launcher
from tests.unit.operator.strategies import VALID_SPECS

Z1, Z3 = "zero_stage1_config", "zero_stage3_config"
Z3_34B, Z3_100B = "zero_stage3_config_34b", "zero_stage3_config_100b"

# reference/internvl-recipe.md §8.2 and §8.3, typed from the tables:
# model, method, GPUs, global batch, per device, accumulation, LR, weight decay, tokens, tiles, config, drop path
PUBLISHED_RECIPES = [
    ("InternVL3-1B", "full", 8, 128, 4, 4, 1e-5, 0.05, 16384, 12, Z1, 0.0),
    ("InternVL3-2B", "full", 8, 128, 4, 4, 2e-5, 0.05, 16384, 12, Z1, 0.0),
    ("InternVL3-8B", "full", 8, 128, 4, 4, 2e-5, 0.05, 16384, 12, Z1, 0.0),
    ("InternVL3-9B", "full", 8, 128, 4, 4, 2e-5, 0.05, 16384, 12, Z1, 0.0),
    ("InternVL3-14B", "full", 8, 128, 4, 4, 2e-5, 0.05, 16384, 12, Z1, 0.1),
    ("InternVL3-38B", "full", 16, 128, 2, 4, 2e-5, 0.05, 16384, 12, Z3_34B, 0.2),
    ("InternVL3-78B", "full", 32, 128, 2, 2, 2e-5, 0.05, 16384, 12, Z3_100B, 0.4),
    ("InternVL2_5-1B", "full", 8, 128, 4, 4, 4e-5, 0.01, 8192, 6, Z1, 0.1),
    ("InternVL2_5-1B", "lora", 2, 16, 4, 2, 4e-5, 0.01, 8192, 6, Z1, 0.0),
    ("InternVL2_5-2B", "full", 8, 128, 4, 4, 4e-5, 0.01, 8192, 6, Z1, 0.1),
    ("InternVL2_5-2B", "lora", 2, 16, 4, 2, 4e-5, 0.01, 8192, 6, Z1, 0.0),
    ("InternVL2_5-4B", "full", 8, 128, 4, 4, 4e-5, 0.01, 8192, 6, Z1, 0.1),
    ("InternVL2_5-4B", "lora", 2, 16, 4, 2, 4e-5, 0.01, 8192, 6, Z1, 0.0),
    ("InternVL2_5-8B", "full", 8, 128, 4, 4, 4e-5, 0.05, 8192, 6, Z1, 0.1),
    ("InternVL2_5-8B", "lora", 2, 16, 4, 2, 4e-5, 0.05, 8192, 6, Z1, 0.0),
    ("InternVL2_5-26B", "full", 8, 128, 2, 8, 2e-5, 0.05, 8192, 6, Z3, 0.4),
    ("InternVL2_5-26B", "lora", 2, 16, 2, 4, 2e-5, 0.05, 8192, 6, Z3, 0.0),
    ("InternVL2_5-38B", "full", 16, 128, 2, 4, 2e-5, 0.05, 8192, 6, Z3_34B, 0.4),
    ("InternVL2_5-38B", "lora", 2, 16, 2, 4, 2e-5, 0.05, 8192, 6, Z3_34B, 0.0),
    ("InternVL2_5-78B", "full", 32, 128, 1, 4, 2e-5, 0.05, 8192, 6, Z3_100B, 0.4),
    ("InternVL2_5-78B", "lora", 8, 16, 1, 2, 2e-5, 0.05, 8192, 6, Z3_100B, 0.0),
]

# InternVL3 LoRA: no script; the nearest InternVL 2.5 LoRA script's layout, InternVL3's limits.
DERIVED_RECIPES = [
    ("InternVL3-1B", "InternVL2_5-1B", 2, 16, 4, 2, 4e-5, 0.01, 16384, 12, Z1, 0.0),
    ("InternVL3-2B", "InternVL2_5-2B", 2, 16, 4, 2, 4e-5, 0.01, 16384, 12, Z1, 0.0),
    ("InternVL3-8B", "InternVL2_5-8B", 2, 16, 4, 2, 4e-5, 0.05, 16384, 12, Z1, 0.0),
    ("InternVL3-9B", "InternVL2_5-8B", 2, 16, 4, 2, 4e-5, 0.05, 16384, 12, Z1, 0.0),
    ("InternVL3-14B", "InternVL2_5-26B", 2, 16, 2, 4, 2e-5, 0.05, 16384, 12, Z3, 0.0),
    ("InternVL3-38B", "InternVL2_5-38B", 2, 16, 2, 4, 2e-5, 0.05, 16384, 12, Z3_34B, 0.0),
    ("InternVL3-78B", "InternVL2_5-78B", 8, 16, 1, 2, 2e-5, 0.05, 16384, 12, Z3_100B, 0.0),
]

# InternVL3.5's SFT scripts (internvl_chat_gpt_oss/shell/), typed from the scripts: one node of 8,
# 512 samples at 1 per device, ZeRO-3, 32768 tokens, 12 tiles; the learning rate and drop path per size.
# model, script, GPUs, global batch, per device, accumulation, LR, weight decay, tokens, tiles, config, drop path
INTERNVL3_5_RECIPES = [
    ("InternVL3_5-1B", "internvl3_5_qwen3/internvl3_5_1b_sft.sh", 8, 512, 1, 64, 8e-5, 0.05, 32768, 12, Z3, 0.0),
    ("InternVL3_5-2B", "internvl3_5_qwen3/internvl3_5_2b_sft.sh", 8, 512, 1, 64, 8e-5, 0.05, 32768, 12, Z3, 0.0),
    ("InternVL3_5-4B", "internvl3_5_qwen3/internvl3_5_4b_sft.sh", 8, 512, 1, 64, 8e-5, 0.05, 32768, 12, Z3, 0.0),
    ("InternVL3_5-8B", "internvl3_5_qwen3/internvl3_5_8b_sft.sh", 8, 512, 1, 64, 8e-5, 0.05, 32768, 12, Z3, 0.1),
    ("InternVL3_5-14B", "internvl3_5_qwen3/internvl3_5_14b_sft.sh", 8, 512, 1, 64, 8e-5, 0.05, 32768, 12, Z3, 0.1),
    ("InternVL3_5-38B", "internvl3_5_qwen3/internvl3_5_38b_sft.sh", 8, 512, 1, 64, 8e-5, 0.05, 32768, 12, Z3, 0.4),
    ("InternVL3_5-30B-A3B", "internvl3_5_qwen3/internvl3_5_30b_sft.sh", 8, 512, 1, 64, 8e-5, 0.05, 32768, 12, Z3, 0.1),
    ("InternVL3_5-241B-A28B", "internvl3_5_qwen3/internvl3_5_241b_sft.sh", 8, 512, 1, 64, 2e-5, 0.05, 32768, 12, Z3,
     0.4),
    ("InternVL3_5-GPT-OSS-20B-A4B-Preview", "internvl3_5_gpt_oss/internvl3_5_gpt_oss_20b_stage2_sft.sh", 8, 512, 1, 64,
     8e-5, 0.05, 32768, 12, Z3, 0.1),
]  # fmt: skip

# Every InternVL3.5 plan of the smallest spec on 80 GiB GPUs: model, method, policy ->
# verdict, nodes, GPUs per node, DeepSpeed config, per device, accumulation, GiB per GPU
INTERNVL3_5_PLANS = [
    ("InternVL3_5-1B", "full", "recipe", ("fits", 1, 8, "zero_stage3_config", 1, 64, 11.21)),
    ("InternVL3_5-1B", "full", "minimal", ("fits", 1, 1, "zero_stage1_config", 8, 64, 49.6)),
    ("InternVL3_5-1B", "lora", "recipe", ("fits", 1, 2, "zero_stage1_config", 4, 2, 23.81)),
    ("InternVL3_5-1B", "lora", "minimal", ("fits", 1, 1, "zero_stage1_config", 16, 1, 71.91)),
    ("InternVL3_5-2B", "full", "recipe", ("fits", 1, 8, "zero_stage3_config", 1, 64, 15.48)),
    ("InternVL3_5-2B", "full", "minimal", ("fits", 1, 1, "zero_stage1_config", 4, 128, 60.25)),
    ("InternVL3_5-2B", "lora", "recipe", ("fits", 1, 2, "zero_stage1_config", 4, 2, 40.51)),
    ("InternVL3_5-2B", "lora", "minimal", ("fits", 1, 1, "zero_stage1_config", 8, 2, 70.86)),
    ("InternVL3_5-4B", "full", "recipe", ("fits", 1, 8, "zero_stage3_config", 1, 64, 23.11)),
    ("InternVL3_5-4B", "full", "minimal", ("fits", 1, 2, "zero_stage1_config", 2, 128, 65.66)),
    ("InternVL3_5-4B", "lora", "recipe", ("fits", 1, 2, "zero_stage1_config", 4, 2, 60.29)),
    ("InternVL3_5-4B", "lora", "minimal", ("fits", 1, 1, "zero_stage1_config", 4, 4, 60.47)),
    ("InternVL3_5-8B", "full", "recipe", ("fits", 1, 8, "zero_stage3_config", 1, 64, 34.74)),
    ("InternVL3_5-8B", "full", "minimal", ("fits", 1, 4, "zero_stage2_config", 1, 128, 58.69)),
    ("InternVL3_5-8B", "lora", "recipe", ("exceeds", 1, 2, "zero_stage1_config", 4, 2, 90.02)),
    ("InternVL3_5-8B", "lora", "minimal", ("fits", 1, 1, "zero_stage1_config", 2, 8, 56.26)),
    ("InternVL3_5-14B", "full", "recipe", ("fits", 1, 8, "zero_stage3_config", 1, 64, 52.14)),
    ("InternVL3_5-14B", "full", "minimal", ("fits", 1, 8, "zero_stage3_config", 2, 32, 70.89)),
    ("InternVL3_5-14B", "lora", "recipe", ("fits", 1, 2, "zero_stage3_config", 2, 4, 66.6)),
    ("InternVL3_5-14B", "lora", "minimal", ("fits", 1, 1, "zero_stage1_config", 1, 16, 58.0)),
    ("InternVL3_5-38B", "full", "recipe", ("exceeds", 1, 8, "zero_stage3_config", 1, 64, 96.46)),
    ("InternVL3_5-38B", "full", "minimal", ("fits", 2, 8, "zero_stage3_config_34b", 1, 32, 65.22)),
    ("InternVL3_5-38B", "lora", "recipe", ("exceeds", 1, 2, "zero_stage3_config_34b", 2, 4, 109.29)),
    ("InternVL3_5-38B", "lora", "minimal", ("fits", 1, 4, "zero_stage3_config_34b", 1, 4, 57.51)),
    ("InternVL3_5-30B-A3B", "full", "recipe", ("exceeds", 1, 8, "zero_stage3_config", 1, 64, 73.02)),
    ("InternVL3_5-30B-A3B", "full", "minimal", ("fits", 2, 8, "zero_stage3_config_34b", 2, 16, 54.86)),
    ("InternVL3_5-30B-A3B", "lora", "recipe", ("fits", 1, 2, "zero_stage3_config", 2, 4, 56.71)),
    ("InternVL3_5-30B-A3B", "lora", "minimal", ("fits", 1, 1, "zero_stage2_config", 1, 16, 71.11)),
    ("InternVL3_5-241B-A28B", "full", "recipe", ("exceeds", 1, 8, "zero_stage3_config", 1, 64, 479.76)),
    ("InternVL3_5-241B-A28B", "full", "minimal", ("fits", 16, 8, "zero_stage3_config_100b", 1, 4, 67.9)),
    ("InternVL3_5-241B-A28B", "lora", "recipe", ("exceeds", 1, 8, "zero_stage3_config_100b", 1, 2, 98.08)),
    ("InternVL3_5-241B-A28B", "lora", "minimal", ("fits", 2, 8, "zero_stage3_config_100b", 1, 1, 70.01)),
    ("InternVL3_5-GPT-OSS-20B-A4B-Preview", "full", "recipe", ("fits", 1, 8, "zero_stage3_config", 1, 64, 54.35)),
    ("InternVL3_5-GPT-OSS-20B-A4B-Preview", "full", "minimal", ("fits", 1, 8, "zero_stage3_config", 2, 32, 63.91)),
    ("InternVL3_5-GPT-OSS-20B-A4B-Preview", "lora", "recipe", ("fits", 1, 2, "zero_stage3_config", 2, 4, 46.79)),
    ("InternVL3_5-GPT-OSS-20B-A4B-Preview", "lora", "minimal", ("fits", 1, 1, "zero_stage1_config", 2, 8, 66.63)),
]  # fmt: skip


def spec_of(name="InternVL2_5-8B", kind="full", policy="recipe", memory=80, **sections) -> InternVLFinetuneSpec:
    """A spec of a model and method kind; keyword sections are merged into the document."""
    document = {
        "model": {"name": name, "weights": "s3://models/base"},
        "method": {"type": kind},
        "data": {"meta": "s3://data/meta.json"},
        "output": {"uri": "s3://models/out"},
        "resources": {"policy": policy, "gpuMemoryGiB": memory},
    }
    for section, values in sections.items():
        document[section] = {**document.get(section, {}), **values}
    return InternVLFinetuneSpec.model_validate(document)


def layout(result):
    return (
        result.gpus,
        result.global_batch_size,
        result.per_device_batch_size,
        result.gradient_accumulation_steps,
        result.learning_rate,
        result.weight_decay,
        result.max_seq_length,
        result.max_tiles,
        result.deepspeed_variant,
        result.drop_path_rate,
    )


def fitted(result):
    """Where and how a plan runs, and its estimate per GPU."""
    return (
        result.nodes,
        result.gpus_per_node,
        result.deepspeed_variant,
        result.per_device_batch_size,
        result.gradient_accumulation_steps,
        result.memory.total_gib,
    )


@pytest.mark.parametrize("row", PUBLISHED_RECIPES, ids=lambda row: f"{row[0]}-{row[1]}")
def test_policy_recipe_reproduces_every_published_script(row):
    name, method, *expected = row
    result = plan(spec_of(name, method))
    assert layout(result) == tuple(expected)
    assert result.policy == "recipe"
    assert result.zero_stage == int(expected[8][len("zero_stage")])
    assert result.offload is False
    assert result.recipe.endswith(f"_{method}.sh")
    assert result.notes[0] == f"recipe: InternVL's {result.recipe}"


@pytest.mark.parametrize("row", DERIVED_RECIPES, ids=lambda row: row[0])
def test_internvl3_lora_follows_the_nearest_internvl2_5_lora_script(row):
    name, source, *expected = row
    result = plan(spec_of(name, "lora"))
    assert layout(result) == tuple(expected)
    assert result.recipe.endswith(f"internvl2_5_{source.split('-')[1].lower()}_dynamic_res_2nd_finetune_lora.sh")
    assert any(note.startswith(f"{name} has no LoRA recipe") and source in note for note in result.notes)


@pytest.mark.parametrize("row", INTERNVL3_5_RECIPES, ids=lambda row: row[0])
def test_policy_recipe_reproduces_every_internvl3_5_sft_script(row):
    name, script, *expected = row
    result = plan(spec_of(name, "full"))
    assert layout(result) == tuple(expected)
    assert result.recipe == f"internvl_chat_gpt_oss/shell/{script}"
    assert result.notes[0] == f"recipe: InternVL's {result.recipe}"
    # the scripts train the vision tower; the default method does not, and the plan says how to
    assert f"InternVL's {result.recipe} trains the vision tower too (--freeze_backbone False); " in " ".join(
        result.notes
    )
    trained = plan(spec_of(name, "full", method={"type": "full", "freeze": {"vision": False}}))
    assert not any("trains the vision tower too" in note for note in trained.notes)


@pytest.mark.parametrize("row", INTERNVL3_5_PLANS, ids=lambda row: f"{row[0]}-{row[1]}-{row[2]}")
def test_every_internvl3_5_plan(row):
    name, method, policy, expected = row
    result = plan(spec_of(name, method, policy, 80))
    assert (result.verdict, *fitted(result)) == expected
    placement = [note for note in result.notes if note.startswith("mixture of experts: ")]
    assert len(placement) == (1 if model_spec(name).is_moe else 0)


def test_an_moe_plan_says_which_experts_each_gpu_holds():
    result = plan(spec_of("InternVL3_5-30B-A3B", "full", "minimal", 80))
    assert (result.gpus, result.zero_stage) == (16, 3)
    assert result.notes[-1] == (
        "mixture of experts: the weights, gradients and optimizer states of all 128 experts of each of the 48 "
        "layers are planned for (30.8 B parameters), the activations of the 8 each token is routed to (3.7 B active); "
        "ZeRO-3 shards every expert tensor over the 16 GPUs: GPU r holds experts 8r to 8r+7 of every layer and "
        "gathers a layer's 128 experts to run it"
    )
    lora = plan(spec_of("InternVL3_5-30B-A3B", "lora", "minimal", 80))
    assert lora.notes[-1].startswith("mixture of experts: the frozen weights of all 128 experts")
    assert lora.notes[-1].endswith("ZeRO-2: every GPU holds all of them")


def test_lora_on_the_experts_is_planned_and_refused_on_a_dense_model():
    experts = {"type": "lora", "lora": {"targets": ["llm", "experts"], "dropout": 0.0}}
    with_experts = plan(spec_of("InternVL3_5-30B-A3B", "lora", method=experts))
    attention = plan(spec_of("InternVL3_5-30B-A3B", "lora"))
    trainable = trainable_of(MethodConfig.model_validate(experts), model_spec("InternVL3_5-30B-A3B"))
    assert (trainable.lora_experts, trainable.lora_dropout) == (True, False)
    # 629 M adapter parameters more (a rank-16 pair per expert): 12 bytes each over the recipe's 2 GPUs
    assert (with_experts.gpus, with_experts.zero_stage) == (2, 3)
    assert (attention.memory.gib("optimizer states"), with_experts.memory.gib("optimizer states")) == (0.07, 3.59)
    grown = with_experts.memory.gib("optimizer states") - attention.memory.gib("optimizer states")
    assert round(grown, 2) == round(12 * 629_145_600 / 2 / GIB, 2) == 3.52
    with pytest.raises(BadInput) as error:
        plan(spec_of("InternVL3_5-8B", "lora", method=experts))
    assert [str(p) for p in error.value.problems] == [
        "spec.method.lora.targets: experts, but InternVL3_5-8B's language model has no experts"
    ]


def test_a_recipe_that_fits_and_one_that_does_not():
    fits = plan(spec_of("InternVL2_5-26B", "full"))
    assert (fits.verdict, fits.memory.total_gib, fits.budget_gib) == ("fits", 56.41, 72.0)
    exceeds = plan(spec_of("InternVL3-14B", "full"))
    assert (exceeds.verdict, exceeds.memory.total_gib) == ("exceeds", 122.92)
    assert exceeds.notes[-1].startswith(
        "estimated 122.9 GiB per GPU exceeds the 72.0 GiB budget (90% of 80 GiB) with full-length sequences "
        "(4 x 16384 tokens per GPU); largest parts: layer checkpoints 30.0, weights 28.2, gradients 27.6 GiB"
    )


def test_spec_values_win_over_the_recipe():
    result = plan(
        spec_of(
            "InternVL2_5-8B",
            "lora",
            training={"learningRate": 1e-4, "weightDecay": 0.0, "globalBatchSize": 32},
            data={"meta": "s3://data/meta.json", "maxSeqLength": 4096, "maxTiles": 4},
            method={"type": "lora", "dropPathRate": 0.2},
        )
    )
    assert (result.learning_rate, result.weight_decay, result.drop_path_rate) == (1e-4, 0.0, 0.2)
    assert (result.max_seq_length, result.max_tiles) == (4096, 4)
    assert (result.gpus, result.per_device_batch_size, result.gradient_accumulation_steps) == (2, 4, 4)


def test_explicit_gpus_and_stage(full_cr):
    result = plan(InternVLFinetune.model_validate(full_cr).spec)
    assert result.policy == "explicit"
    assert (result.nodes, result.gpus_per_node, result.gpus) == (2, 8, 16)
    assert (result.deepspeed_variant, result.per_device_batch_size, result.gradient_accumulation_steps) == (Z3, 2, 4)
    assert "16 GPUs as the spec sets (the recipe uses 8)" in result.notes
    assert result.memory.total_gib == 37.16


def test_explicit_stage_picks_that_stage_config():
    result = plan(spec_of("InternVL2_5-8B", "lora", deepspeed={"stage": 2}))
    assert result.policy == "recipe"
    assert (result.zero_stage, result.deepspeed_variant) == (2, "zero_stage2_config")
    assert "ZeRO-2 as the spec sets (the recipe uses ZeRO-1)" in result.notes


def test_cpu_offload_moves_the_recipe_to_zero3():
    result = plan(spec_of("InternVL2_5-8B", "full", deepspeed={"offload": "cpu"}))
    assert (result.zero_stage, result.offload, result.deepspeed_variant) == (
        3,
        True,
        "zero_stage3_config_100b_1e7_offload",
    )
    assert "ZeRO-3 instead of the recipe's ZeRO-1: CPU offload needs stage 3" in result.notes
    assert "CPU offload keeps weights and optimizer states in host memory: about 131 GiB per node" in result.notes


def test_recipe_offload_beyond_the_pod_memory_exceeds():
    result = plan(spec_of("InternVL2_5-8B", "full", deepspeed={"offload": "cpu"}, resources={"memory": "64Gi"}))
    assert (result.verdict, result.memory.total_gib) == ("exceeds", 15.85)
    assert (
        "CPU offload needs about 131 GiB of host memory per node, more than the 64 GiB spec.resources.memory sets"
        in (result.notes)
    )


def test_cpu_offload_with_stage_1_is_refused():
    with pytest.raises(BadInput) as error:
        plan(spec_of(deepspeed={"stage": 1, "offload": "cpu"}))
    assert [str(p) for p in error.value.problems] == [
        "spec.deepspeed.offload: cpu offload needs ZeRO stage 3, got stage 1"
    ]


def test_lora_under_zero3_is_flagged():
    result = plan(spec_of("InternVL2_5-26B", "lora"))
    assert any("InternVL issue #905" in note for note in result.notes)
    assert not any("#905" in note for note in plan(spec_of("InternVL2_5-8B", "lora")).notes)


def test_global_batch_that_does_not_split():
    adjusted = plan(spec_of("InternVL2_5-1B", "full", resources={"gpus": 24, "gpusPerNode": 8}))
    assert (adjusted.global_batch_size, adjusted.per_device_batch_size, adjusted.gradient_accumulation_steps) == (
        120,
        1,
        5,
    )
    assert "global batch 120 instead of the recipe's 128: 128 does not split over 24 GPUs" in adjusted.notes
    assert "1 per device instead of the recipe's 4, so that 120 splits over 24 GPUs" in adjusted.notes
    with pytest.raises(BadInput) as error:
        plan(spec_of("InternVL2_5-1B", "full", resources={"gpus": 24}, training={"globalBatchSize": 128}))
    assert [str(p) for p in error.value.problems] == [
        "spec.training.globalBatchSize: 128 does not split over 24 GPUs; use a multiple of 24"
    ]


@pytest.mark.parametrize(
    ("name", "method", "memory", "expected"),
    [
        # fewest GPUs, then the lowest stage, then the largest per-device batch that fits 90 %
        ("InternVL2_5-8B", "full", 80, (1, 2, Z3, 2, 32, 70.47)),
        ("InternVL2_5-8B", "lora", 80, (1, 1, Z1, 8, 2, 54.77)),
        ("InternVL2_5-4B", "full", 80, (1, 1, Z1, 4, 32, 69.78)),
        ("InternVL2_5-38B", "full", 80, (2, 8, Z3_34B, 4, 2, 65.72)),
        ("InternVL3-78B", "full", 80, (4, 8, Z3_100B, 1, 4, 65.6)),
        ("InternVL2_5-1B", "full", 141, (1, 1, Z1, 64, 2, 79.8)),
    ],
)
def test_policy_minimal(name, method, memory, expected):
    result = plan(spec_of(name, method, "minimal", memory))
    assert result.verdict == "fits"
    assert fitted(result) == expected
    assert result.memory.total_gib <= result.budget_gib
    assert result.global_batch_size == (128 if method == "full" else 16)
    assert result.notes[0].startswith("policy minimal: the fewest GPUs")


def test_minimal_checks_fewer_gpus_before_a_higher_stage():
    # ZeRO-1 fits on 4 GPUs, but ZeRO-1, 2 and 3 on 2 GPUs are tried first, and ZeRO-3 fits there
    result = plan(spec_of("InternVL2_5-8B", "full", "minimal", 80))
    wider = plan(spec_of("InternVL2_5-8B", "full", "minimal", 80, resources={"gpus": 4, "policy": "minimal"}))
    assert wider.verdict == "fits"
    assert (wider.gpus, wider.zero_stage) == (4, 1)
    assert (result.gpus, result.zero_stage) == (2, 3)


def test_minimal_offloads_only_when_nothing_else_fits():
    result = plan(spec_of("InternVL2_5-78B", "full", "minimal", 24))
    assert (result.gpus, result.offload, result.verdict, result.memory.total_gib) == (1, True, "fits", 16.92)
    assert "CPU offload: nothing fits without it" in result.notes
    assert "CPU offload keeps weights and optimizer states in host memory: about 1232 GiB per node" in result.notes
    never = plan(spec_of("InternVL2_5-78B", "full", "minimal", 24, deepspeed={"offload": "none"}))
    assert (never.verdict, never.offload) == ("nothing-fits", False)


def test_minimal_spreads_offload_over_nodes_when_the_pod_memory_is_set():
    result = plan(spec_of("InternVL2_5-78B", "full", "minimal", 24, resources={"memory": "512Gi"}))
    assert (result.nodes, result.gpus, result.offload) == (4, 32, True)
    assert "CPU offload keeps weights and optimizer states in host memory: about 308 GiB per node" in result.notes


def test_nothing_fits_says_why_with_numbers():
    result = plan(spec_of("InternVL3-78B", "full", "minimal", 16))
    assert result.verdict == "nothing-fits"
    assert (result.gpus, result.deepspeed_variant, result.per_device_batch_size) == (
        128,
        "zero_stage3_config_100b_1e7_offload",
        1,
    )
    assert result.notes[0] == (
        "nothing fits the 14.4 GiB budget (90% of 16 GiB): the smallest estimate is 29.5 GiB, with 128 GPUs "
        "(the most that split the global batch of 128), ZeRO-3 + CPU offload and 1 sample of 16384 tokens per GPU; "
        "29.5 GiB of it does not shrink with more GPUs "
        "(layer checkpoints 20.0, layer recompute 5.2, gathered weights (ZeRO-3) 2.3 GiB). "
        "Lower data.maxSeqLength or data.maxTiles, or use GPUs with more memory"
    )


def test_nothing_fits_on_fixed_gpus_names_them():
    result = plan(
        spec_of("InternVL2_5-26B", "full", "minimal", 80, resources={"gpus": 2}, deepspeed={"offload": "none"})
    )
    assert result.verdict == "nothing-fits"
    assert "with the 2 GPUs the spec sets, ZeRO-3 and 1 sample" in result.notes[0]


def test_plan_fills_status_batch_layout_and_train_config(lora_cr):
    resource = InternVLFinetune.model_validate(lora_cr)
    result = plan(resource.spec)
    status = result.to_status()
    assert status == PlanStatus(
        nodes=1,
        gpus_per_node=2,
        gpus=2,
        zero_stage=1,
        offload=False,
        per_device_batch_size=4,
        gradient_accumulation_steps=2,
        estimated_memory_gib=52.56,
        policy="recipe",
        notes=result.notes,
    )
    assert result.deepspeed_config() == deepspeed_config(Z1)
    spec = resource.spec
    config = TrainConfig.model_validate(
        {
            "model": spec.model.to_wire(),
            "method": {**spec.method.to_wire(), "dropPathRate": result.drop_path_rate},
            "data": {**spec.data.to_wire(), "maxSeqLength": result.max_seq_length, "maxTiles": result.max_tiles},
            "training": {
                **spec.training.to_wire(),
                "globalBatchSize": result.global_batch_size,
                "learningRate": result.learning_rate,
                "weightDecay": result.weight_decay,
            },
            "batch": result.batch_layout().to_wire(),
            "deepspeed": result.deepspeed_config(),
            "output": spec.output.to_wire(),
        }
    )
    assert config.batch.world_size == 2


@pytest.mark.parametrize("policy", ["recipe", "minimal"])
@pytest.mark.parametrize("memory", [24, 80])
def test_every_model_and_method_plans_into_a_valid_status(policy, memory):
    for name in MODEL_NAMES:
        for method in ("full", "lora"):
            result = plan(spec_of(name, method, policy, memory))
            status = PlanStatus.model_validate(result.to_status().to_wire())
            assert status.gpus == status.nodes * status.gpus_per_node
            assert (
                result.per_device_batch_size * result.gradient_accumulation_steps * result.gpus
                == result.global_batch_size
            )


def test_wire_form_uses_camel_case():
    wire = plan(spec_of()).to_wire()
    assert {"gpuMemoryGiB", "budgetGiB", "perDeviceBatchSize", "deepspeedVariant"} <= set(wire)
    assert set(wire["memory"]) == {"parts", "totalGiB", "peak"}


def test_trainable_parts_from_the_method():
    spec = model_spec("InternVL2_5-8B")
    full = trainable_of(MethodConfig(type="full"), spec)
    assert (full.vision_layers, full.projector, full.llm, full.lora_rank) == (0, True, True, None)
    lora = trainable_of(
        MethodConfig.model_validate({"type": "lora", "lora": {"rank": 8, "targets": ["llm", "vision"]}}), spec
    )
    assert (lora.projector, lora.llm, lora.lora_rank, lora.lora_llm, lora.lora_vision) == (False, False, 8, True, True)
    some = trainable_of(MethodConfig.model_validate({"type": "full", "unfreezeVisionLayers": 6}), spec)
    assert some.vision_layers == 6
    whole = trainable_of(MethodConfig.model_validate({"type": "full", "freeze": {"vision": False}}), spec)
    assert whole.vision_layers == 24


@pytest.mark.parametrize(
    ("name", "method", "depth"),
    [
        ("InternVL3-8B", {"type": "full", "unfreezeVisionLayers": 100}, 24),
        ("InternVL3-8B", {"type": "lora", "unfreezeVisionLayers": 25}, 24),
        ("InternVL2_5-26B", {"type": "full", "freeze": {"vision": False}, "unfreezeVisionLayers": 46}, 45),
    ],
)
def test_more_unfrozen_vision_layers_than_the_tower_has_are_refused(name, method, depth):
    # The trainer refuses them after scheduling and loading the base; the planner did clamp them.
    with pytest.raises(BadInput) as error:
        plan(spec_of(name, method=method))
    layers = method["unfreezeVisionLayers"]
    assert [str(p) for p in error.value.problems] == [
        f"spec.method.unfreezeVisionLayers: {layers} exceeds the vision tower's {depth} layers"
    ]


def test_every_vision_layer_of_the_catalog_depth_may_be_unfrozen():
    spec = spec_of("InternVL2_5-26B", method={"type": "full", "unfreezeVisionLayers": 45})
    assert trainable_of(spec.method, model_spec("InternVL2_5-26B")).vision_layers == 45
    assert plan(spec).verdict == "exceeds"


def test_tiles_per_sequence():
    packed = DataConfig(meta="s3://data/meta.json")
    assert tiles_per_sequence(packed, 6, 8192) == 8192 // 256 == 32
    assert tiles_per_sequence(packed, 12, 16384) == 64
    unpacked = DataConfig.model_validate({"meta": "s3://data/meta.json", "packing": False, "video": {"maxFrames": 8}})
    assert tiles_per_sequence(unpacked, 12, 16384) == 13  # 12 tiles and the thumbnail
    assert tiles_per_sequence(unpacked, 1, 16384) == 8  # a video's frames, one tile each
    assert tiles_per_sequence(unpacked, 6, 8192) == 8


def test_a_trained_vision_tower_is_planned_for_a_full_packed_sequence():
    result = plan(spec_of("InternVL2_5-8B", "full", method={"type": "full", "freeze": {"vision": False}}))
    vision_tokens = 4 * 32 * 1025  # per-device batch 4, 8192 / 256 tiles per packed sequence
    kept = 24 * 1024 * 2 * vision_tokens + (8 * 1024 + 2 * 4096) * 2 * vision_tokens
    assert result.memory.gib("vision activations") == round(kept / GIB, 2) == 10.01


QUANTITIES = [
    ("8", 8),
    ("1056439880Ki", 1056439880 * 2**10),
    ("1600Mi", 1600 * 2**20),
    ("1600Gi", 1600 * 2**30),
    ("2Ti", 2 * 2**40),
    ("1Pi", 2**50),
    ("1Ei", 2**60),
    ("1500n", 1500e-9),
    ("1500u", 1500e-6),
    ("1500m", 1.5),
    ("1500k", 1.5e6),
    ("1500M", 1.5e9),
    ("1500G", 1.5e12),
    ("2T", 2e12),
    ("2P", 2e15),
    ("2E", 2e18),
    ("1.5Gi", 1.5 * 2**30),
    ("0.5", 0.5),
    ("129e9", 129e9),
    ("1.5E12", 1.5e12),
    ("12e-3", 0.012),
]


@pytest.mark.parametrize(("quantity", "value"), QUANTITIES, ids=[q for q, _ in QUANTITIES])
def test_memory_is_read_as_kubernetes_reads_quantities(quantity, value):
    # Every suffix and exponent Kubernetes accepts, set on a validated spec as the API server
    # stores it (the CRD's pattern decides which ones reach the planner).
    spec = spec_of()
    spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"memory": quantity})})
    assert host_memory_gib(spec) == pytest.approx(value / GIB, rel=1e-12)


def test_a_binary_memory_request_plans_and_limits_offload():
    # 1056439880Ki was stored by the API server, then made the planner raise. CPU offload of an 8B
    # model's full fine-tune needs 130.84 GiB of host memory per node: 137199590 Ki exactly.
    assert plan(spec_of(resources={"memory": "1056439880Ki"})).verdict == "fits"
    offload = {"deepspeed": {"offload": "cpu"}}
    assert plan(spec_of(resources={"memory": "137199590Ki"}, **offload)).verdict == "fits"
    short = plan(spec_of(resources={"memory": "137199589Ki"}, **offload))
    assert short.verdict == "exceeds"
    assert any(note.endswith("more than the 130.844 GiB spec.resources.memory sets") for note in short.notes)


def test_plan_is_pure():
    spec = spec_of("InternVL3-8B", "lora", "minimal")
    before = copy.deepcopy(spec)
    assert plan(spec) == plan(spec)
    assert spec == before


# Plan and render agree -------------------------------------------------------------------------


def rendered_job(spec, policy_result):
    resource = InternVLFinetune.model_validate(
        {
            "apiVersion": "internvl.dev/v1alpha1",
            "kind": "InternVLFinetune",
            "metadata": {"name": "bounds", "namespace": "ml", "uid": "0b6d2c1e-8a7f-4e54-9d1a-3f2c5b7e9a10"},
            "spec": spec.to_wire(),
        }
    )
    return render(render_context(resource, policy_result, 1, OperatorSettings(), on_every_launcher(resource)))[-1]


@pytest.mark.parametrize("policy", ["recipe", "minimal"])
def test_a_huge_global_batch_on_one_gpu_stays_within_the_accumulation_bound(policy):
    spec = spec_of("InternVL2_5-1B", "lora", policy, resources={"gpus": 1}, training={"globalBatchSize": 1048576})
    result = plan(spec)
    assert result.verdict != "nothing-fits"
    assert result.per_device_batch_size * result.gradient_accumulation_steps == 1048576
    assert result.gradient_accumulation_steps <= MAX_ACCUMULATION
    assert result.per_device_batch_size <= MAX_PER_DEVICE_BATCH
    assert rendered_job(spec, result)["kind"] == "TrainJob"


def test_the_bounds_are_train_yamls():
    assert (MAX_PER_DEVICE_BATCH, MAX_ACCUMULATION) == (
        BatchLayout.model_json_schema()["properties"]["perDeviceBatchSize"]["maximum"],
        BatchLayout.model_json_schema()["properties"]["gradientAccumulationSteps"]["maximum"],
    )


@pytest.mark.parametrize(("policy", "gpus"), [("recipe", 1), ("minimal", 1), ("minimal", None)])
def test_a_global_batch_that_cannot_be_laid_out_is_refused_with_a_sentence(policy, gpus):
    # A prime above the accumulation bound: on one GPU it is neither a per-device batch nor an
    # accumulation, and no other GPU count divides it.
    resources = {"gpus": gpus, "gpusPerNode": 1} if gpus else {"gpusPerNode": 1}
    spec = spec_of("InternVL2_5-1B", "lora", policy, resources=resources, training={"globalBatchSize": 1048573})
    with pytest.raises(BadInput) as error:
        plan(spec)
    [problem] = error.value.problems
    assert problem.path == "spec.training.globalBatchSize"
    assert "cannot be laid out" in problem.message and f"at most {MAX_ACCUMULATION} accumulation" in problem.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(VALID_SPECS)
def test_whatever_the_planner_lays_out_renders(document):
    """For any spec the CRD admits and its launcher can carry, a plan the operator would run (fits
    or exceeds) renders."""
    spec = InternVLFinetuneSpec.model_validate(document)
    if chosen(spec, None, frozenset(LAUNCHERS)).unsupported(spec):
        return
    try:
        result = plan(spec)
    except BadInput as error:
        assert all(problem.path.startswith("spec.") for problem in error.problems)
        return
    if result.verdict != "nothing-fits":
        rendered_job(spec, result)
