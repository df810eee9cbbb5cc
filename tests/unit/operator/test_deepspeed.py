"""DeepSpeed configs: InternVL's variants, HF "auto" values, and transformers' parser accepts them all."""

import json

import pytest

from internvl_operator.deepspeed import (
    OFFLOAD_VARIANT,
    ZERO_VARIANTS,
    ZeroSettings,
    ZeroVariant,
    deepspeed_config,
    variant_for,
)

AUTO_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping")


@pytest.mark.parametrize(
    ("stage", "offload", "params", "variant"),
    [
        (1, False, 8_000_000_000, "zero_stage1_config"),
        (2, False, 8_000_000_000, "zero_stage2_config"),
        (3, False, 25_514_186_112, "zero_stage3_config"),
        (3, False, 38_388_164_992, "zero_stage3_config_34b"),
        (3, False, 78_408_318_336, "zero_stage3_config_100b"),
        (3, True, 2_000_000_000, "zero_stage3_config_100b_1e7_offload"),
    ],
)
def test_variant_by_stage_offload_and_size(stage, offload, params, variant):
    assert variant_for(stage, offload, params) == ZeroVariant(name=variant, stage=stage, offload=offload)


def test_each_variant_reads_its_stage_and_offload_from_its_block():
    assert [(v.name, v.stage, v.offload) for v in map(ZeroVariant.named, ZERO_VARIANTS)] == [
        ("zero_stage1_config", 1, False),
        ("zero_stage2_config", 2, False),
        ("zero_stage3_config", 3, False),
        ("zero_stage3_config_34b", 3, False),
        ("zero_stage3_config_100b", 3, False),
        ("zero_stage3_config_100b_1e7_offload", 3, True),
    ]
    assert ZeroVariant.named(OFFLOAD_VARIANT).config() == deepspeed_config(OFFLOAD_VARIANT)


def test_offload_needs_stage_3():
    with pytest.raises(ValueError, match="stage 3"):
        variant_for(2, True, 1)


def test_internvl_settings_per_variant():
    zero = ZERO_VARIANTS
    assert zero["zero_stage1_config"]["reduce_bucket_size"] == 1e9
    assert zero["zero_stage2_config"]["reduce_bucket_size"] == 1e8
    assert [zero[name]["stage3_param_persistence_threshold"] for name in list(zero)[2:]] == [1e7, 1e5, 1e4, 1e4]
    offload = zero[OFFLOAD_VARIANT]
    assert (offload["overlap_comm"], offload["reduce_bucket_size"], offload["stage3_max_live_parameters"]) == (
        False,
        1e7,
        1e8,
    )
    assert offload["offload_param"] == offload["offload_optimizer"] == {"device": "cpu", "pin_memory": True}


def test_hf_fills_the_batch_clipping_and_precision():
    config = deepspeed_config("zero_stage1_config")
    assert all(config[key] == "auto" for key in AUTO_KEYS)
    assert config["bf16"] == {"enabled": "auto"}
    assert config["fp16"]["enabled"] == "auto"
    assert "optimizer" not in config
    assert "scheduler" not in config
    assert config["wall_clock_breakdown"] is False


def test_optimizer_block_on_request():
    config = deepspeed_config("zero_stage3_config", optimizer=True)
    assert config["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": "auto", "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": "auto"},
    }


def test_configs_are_independent_copies():
    config = deepspeed_config("zero_stage3_config")
    config["zero_optimization"]["stage"] = 2
    assert deepspeed_config("zero_stage3_config")["zero_optimization"]["stage"] == 3


def test_zero_settings_read_from_the_config():
    assert ZeroSettings.of(deepspeed_config(OFFLOAD_VARIANT)) == ZeroSettings(
        stage=3,
        offload_params=True,
        offload_optimizer=True,
        reduce_bucket_size=10_000_000,
        overlap_comm=False,
        prefetch_bucket_size=10_000_000,
        max_live_parameters=100_000_000,
        sub_group_size=10_000_000,
    )
    stage1 = ZeroSettings.of(deepspeed_config("zero_stage1_config"))
    assert (stage1.stage, stage1.reduce_bucket_size, stage1.overlap_comm, stage1.offload_optimizer) == (
        1,
        1_000_000_000,
        True,
        False,
    )


@pytest.fixture
def training_arguments(tmp_path):
    transformers = pytest.importorskip("transformers")
    return transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        learning_rate=4e-5,
        weight_decay=0.05,
        max_grad_norm=1.0,
        bf16=True,
        use_cpu=True,
        report_to=[],
    )


@pytest.fixture
def hf_deepspeed():
    """transformers' DeepSpeed integration; its global config is dropped after each test so that
    no later test loads a model as if under ZeRO-3."""
    pytest.importorskip("deepspeed")
    from transformers.integrations import deepspeed as integration

    yield integration
    integration.unset_hf_deepspeed_config()


@pytest.mark.parametrize("optimizer", [False, True])
@pytest.mark.parametrize("variant", list(ZERO_VARIANTS))
def test_transformers_parser_accepts_and_fills_every_variant(variant, optimizer, training_arguments, hf_deepspeed):
    parsed = hf_deepspeed.HfTrainerDeepSpeedConfig(deepspeed_config(variant, optimizer=optimizer))
    parsed.trainer_config_process(training_arguments)
    parsed.trainer_config_finalize(training_arguments, None, 100)

    stage = ZERO_VARIANTS[variant]["stage"]
    assert parsed.get_value("zero_optimization.stage") == stage
    assert parsed.is_zero3() is (stage == 3)
    assert parsed.is_offload() is (variant == OFFLOAD_VARIANT)
    assert '"auto"' not in json.dumps(parsed.config)
    config = parsed.config
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (2, 4)
    assert config["train_batch_size"] == 2 * 4 * training_arguments.world_size
    assert config["gradient_clipping"] == 1.0
    assert (config["bf16"]["enabled"], config["fp16"]["enabled"]) == (True, False)
    if optimizer:
        assert config["optimizer"]["params"]["lr"] == 4e-5
        assert config["optimizer"]["params"]["weight_decay"] == 0.05


def test_deepspeed_itself_parses_a_filled_config(training_arguments, hf_deepspeed):
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = hf_deepspeed.HfTrainerDeepSpeedConfig(deepspeed_config(OFFLOAD_VARIANT))
    parsed.trainer_config_process(training_arguments)
    parsed.trainer_config_finalize(training_arguments, None, 10)
    config = DeepSpeedConfig(parsed.config)
    assert config.zero_optimization_stage == 3
    assert config.train_batch_size == 8
    assert config.zero_config.offload_optimizer.device == "cpu"
    assert config.zero_config.offload_param.device == "cpu"
