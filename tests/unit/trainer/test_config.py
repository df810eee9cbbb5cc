"""TrainConfig: the train.yaml contract between the operator and the trainer."""

import pytest
from pydantic import ValidationError

from internvl_trainer.config import (
    DataConfig,
    LoraConfig,
    MethodConfig,
    OutputLayout,
    TrainConfig,
    VideoConfig,
    dump_train_config,
    load_train_config,
)
from internvl_trainer.problems import problems_from
from tests.conftest import EXAMPLES


@pytest.fixture
def train_yaml() -> str:
    return (EXAMPLES / "train.yaml").read_text()


def problems(text: str) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        load_train_config(text)
    return [str(p) for p in problems_from(caught.value)]


def test_example_train_yaml_is_valid_and_fully_resolved(train_yaml):
    config = load_train_config(train_yaml)
    assert config.model.name == "InternVL3-1B"
    assert config.training.learning_rate == 4.0e-5
    assert config.batch.per_device_batch_size * config.batch.gradient_accumulation_steps == 8
    assert config.method.resolved_lora() == LoraConfig(rank=16, alpha=32, dropout=0.05, targets=["llm"])


def test_dump_then_load_is_identity(train_yaml):
    config = load_train_config(train_yaml)
    assert load_train_config(dump_train_config(config)) == config


def test_dump_uses_camel_case_and_leaves_unset_fields_out(train_yaml):
    text = dump_train_config(load_train_config(train_yaml))
    assert "perDeviceBatchSize: 1" in text
    assert "per_device" not in text
    assert "maxSteps: 100" in text
    assert "evalSteps" not in text  # unset optional


def test_unresolved_recipe_values_are_named_one_by_one(train_yaml):
    text = train_yaml.replace("  learningRate: 4.0e-5\n", "").replace("  maxTiles: 6\n", "")
    assert problems(text) == [
        "data.maxTiles: required field is missing",
        "training.learningRate: required field is missing",
    ]


def test_train_yaml_holds_every_recipe_value_as_a_plain_number():
    """The values the planner resolves are required in train.yaml's schema (docs/api.md) and typed
    as plain numbers, where the CR's spec leaves them optional."""
    schema = TrainConfig.model_json_schema(by_alias=True)
    sections = {
        name: schema["$defs"][schema["properties"][name]["$ref"].rsplit("/", 1)[1]]
        for name in ("method", "data", "training")
    }
    assert {"dropPathRate"} <= set(sections["method"]["required"])
    assert {"maxSeqLength", "maxTiles"} <= set(sections["data"]["required"])
    assert {"globalBatchSize", "learningRate", "weightDecay"} <= set(sections["training"]["required"])
    assert {"method", "data", "training"} <= set(schema["required"])
    assert sections["data"]["properties"]["maxTiles"]["type"] == "integer"  # no null
    assert "maxTiles" not in DataConfig.model_json_schema(by_alias=True).get("required", [])


def test_batch_layout_must_multiply_to_the_global_batch(train_yaml):
    text = train_yaml.replace("gradientAccumulationSteps: 8", "gradientAccumulationSteps: 4")
    assert problems(text) == [
        "batch: 1 per device x 4 accumulation x 1 processes = 4, but training.globalBatchSize is 8"
    ]


def test_unknown_keys_are_refused_with_their_path(train_yaml):
    text = train_yaml.replace("  maxSteps: 100\n", "  maxStep: 100\n")
    assert problems(text) == ["training.maxStep: unknown field"]


def test_uri_mismatch_says_what_a_uri_is(train_yaml):
    text = train_yaml.replace("uri: /tmp/internvl-out/laptop", "uri: relative/out")
    [message] = problems(text)
    assert message.startswith("output.uri: must be an s3://bucket/key URI")
    assert "relative/out" in message


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/prefix/key", "s3://my.bucket-1", "/abs/path", "file:///abs/path"],
)
def test_accepted_uris(uri):
    assert DataConfig(meta=uri).meta == uri


@pytest.mark.parametrize("uri", ["s3://ab/x", "s3://Bucket/x", "http://host/x", "rel/path", "s3://b ucket/x", ""])
def test_refused_uris(uri):
    with pytest.raises(ValidationError):
        DataConfig(meta=uri)


def test_freeze_defaults_follow_the_method():
    full = MethodConfig(type="full").resolved_freeze()
    lora = MethodConfig(type="lora").resolved_freeze()
    assert (full.vision, full.projector, full.llm) == (True, False, False)
    assert (lora.vision, lora.projector, lora.llm) == (True, True, True)


def test_explicit_freeze_flags_win_over_the_method_default():
    resolved = MethodConfig(type="full", freeze={"vision": False}).resolved_freeze()
    assert (resolved.vision, resolved.projector, resolved.llm) == (False, False, False)


def test_lora_settings_only_with_method_lora():
    with pytest.raises(ValidationError, match="only allowed with method type lora"):
        MethodConfig(type="full", lora={"rank": 8})
    assert MethodConfig(type="full").resolved_lora() is None


@pytest.mark.parametrize(
    ("method", "tower"),
    [
        ("  freeze:\n    llm: false\n", "llm"),
        ("  lora:\n    targets: [llm, vision]\n  freeze:\n    vision: false\n", "vision"),
    ],
)
def test_lora_targets_on_a_tower_trained_in_full_are_refused(train_yaml, method, tower):
    text = train_yaml.replace("  type: lora\n", "  type: lora\n" + method)
    assert problems(text) == [
        f"method.freeze.{tower}: false trains the whole {tower} tower in full, so LoRA target {tower} has nothing"
        " to adapt; keep the tower frozen or drop the target"
    ]


def test_expert_adapters_sit_in_the_llm_and_take_no_dropout(train_yaml):
    experts = "  lora:\n    targets: [llm, experts]\n"
    accepted = load_train_config(train_yaml.replace("  type: lora\n", "  type: lora\n" + experts + "    dropout: 0\n"))
    assert accepted.method.resolved_lora().targets == ["llm", "experts"]
    assert problems(train_yaml.replace("  type: lora\n", "  type: lora\n" + experts)) == [
        "method.lora.dropout: must be 0 with target experts: PEFT adapts the experts' stacked tensors without dropout"
    ]
    trained_llm = "  lora:\n    targets: [experts]\n    dropout: 0\n  freeze:\n    llm: false\n"
    assert problems(train_yaml.replace("  type: lora\n", "  type: lora\n" + trained_llm)) == [
        "method.freeze.llm: false trains the whole llm tower in full, so LoRA target experts has nothing"
        " to adapt; keep the tower frozen or drop the target"
    ]


def test_lora_on_one_tower_may_train_the_other_in_full():
    method = MethodConfig(type="lora", lora={"targets": ["vision"]}, freeze={"llm": False})
    assert method.resolved_freeze().llm is False


@pytest.mark.parametrize("sampling", ["rand", "middle", "fps1", "fps0.5", "fps12"])
def test_video_sampling_strategies(sampling):
    assert VideoConfig(sampling=sampling).sampling == sampling


@pytest.mark.parametrize("sampling", ["random", "fps", "fps-1", "middle1"])
def test_video_sampling_refused(sampling):
    with pytest.raises(ValidationError) as caught:
        VideoConfig(sampling=sampling)
    [problem] = problems_from(caught.value)
    assert str(problem) == f"sampling: must be rand, middle or fpsN (such as fps1 or fps0.5), got {sampling!r}"


def test_video_frame_bounds_are_ordered():
    with pytest.raises(ValidationError, match="minFrames \\(16\\) exceeds maxFrames \\(8\\)"):
        VideoConfig(min_frames=16, max_frames=8)


def test_output_layout_scopes_checkpoints_by_run_uid():
    layout = OutputLayout.under("s3://models/out/", "0f3c-uid")
    assert layout.checkpoints == "s3://models/out/runs/0f3c-uid/checkpoints"
    assert layout.tensorboard == "s3://models/out/runs/0f3c-uid/tensorboard"
    assert layout.plots == "s3://models/out/runs/0f3c-uid/plots"
    assert layout.metrics == "s3://models/out/runs/0f3c-uid/metrics.jsonl"
    assert layout.data_report == "s3://models/out/runs/0f3c-uid/data-report.json"
    assert layout.model == "s3://models/out/model"
    assert layout.model_original == "s3://models/out/model-original"
    assert layout.manifest == "s3://models/out/manifest.json"


def test_train_config_layout_uses_its_run(train_yaml):
    config = load_train_config(train_yaml.replace("  name: laptop\n", "  name: laptop\n  uid: abc-123\n"))
    assert config.layout.checkpoints == "/tmp/internvl-out/laptop/runs/abc-123/checkpoints"


def test_config_fields_all_have_descriptions():
    undocumented = [
        f"{model.__name__}.{name}"
        for model in (
            TrainConfig,
            *[f.annotation for f in TrainConfig.model_fields.values() if hasattr(f.annotation, "model_fields")],
        )
        for name, field in model.model_fields.items()
        if not field.description
    ]
    assert undocumented == []


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ("  workers: 2\n", "  workers: 2\n  packing: 'yes'\n", "data.packing"),
        ("  learningRate: 4.0e-5\n", "  learningRate: '1e-5'\n", "training.learningRate"),
        ("  maxSteps: 100\n", "  maxSteps: '100'\n", "training.maxSteps"),
        ("  maxSteps: 100\n", "  maxSteps: true\n", "training.maxSteps"),
        ("  maxSteps: 100\n", "  maxSteps: 100.5\n", "training.maxSteps"),
    ],
)
def test_values_of_the_wrong_json_type_are_refused(train_yaml, old, new, path):
    [problem] = problems(train_yaml.replace(old, new))
    assert problem.startswith(f"{path}: ")


def test_json_numbers_are_read_as_numbers(train_yaml):
    config = load_train_config(train_yaml.replace("  maxSteps: 100\n", "  maxSteps: 100.0\n").replace("0.05", "0"))
    assert config.training.max_steps == 100 and isinstance(config.training.max_steps, int)
    assert config.training.weight_decay == 0.0 and isinstance(config.training.weight_decay, float)


def test_an_endpoint_with_credentials_is_refused(train_yaml):
    text = train_yaml.replace("output:\n", "storage:\n  endpoint: http://admin:secret@minio:9000\noutput:\n")
    [problem] = problems(text)
    assert problem.startswith("storage.endpoint: must be an http:// or https:// URL without credentials")
