"""train.yaml resolved from an object and its plan: the spec's sections with the plan's values."""

from internvl_operator.api import InternVLFinetune
from internvl_operator.launchers import LAUNCHERS
from internvl_operator.planner import plan
from internvl_operator.render.pod import trainer_env
from internvl_operator.resolve import OFFLINE_UID, render_context, train_config
from internvl_operator.settings import OperatorSettings


def test_recipe_values_come_from_the_plan(lora_cr):
    resource = InternVLFinetune.model_validate(lora_cr)
    result = plan(resource.spec)
    config = train_config(resource, result, OperatorSettings())
    assert (config.training.global_batch_size, config.training.learning_rate, config.training.weight_decay) == (
        16,
        4e-5,
        0.05,
    )
    assert (config.data.max_seq_length, config.data.max_tiles, config.method.drop_path_rate) == (16384, 12, 0.0)
    assert config.batch.to_wire() == {"perDeviceBatchSize": 4, "gradientAccumulationSteps": 2, "worldSize": 2}
    assert config.deepspeed["zero_optimization"]["stage"] == 1
    assert config.run.to_wire() == {"name": "charts-lora", "uid": OFFLINE_UID, "resume": "latest"}


def test_spec_values_are_kept_and_credentials_stay_out(full_cr):
    full_cr["metadata"]["uid"] = "5f3a"
    resource = InternVLFinetune.model_validate(full_cr)
    config = train_config(resource, plan(resource.spec), OperatorSettings())
    assert config.run.uid == "5f3a"
    assert (config.training.learning_rate, config.training.global_batch_size) == (2e-5, 128)
    assert config.training.loss_reduction == "square"
    assert config.method.drop_path_rate == 0.4
    assert config.storage.to_wire() == {"region": "eu-west-1", "addressingStyle": "auto"}
    assert config.output.layouts == ["hf", "original"]


def test_render_context_carries_the_plan_status(lora_cr):
    resource = InternVLFinetune.model_validate(lora_cr)
    result = plan(resource.spec)
    context = render_context(resource, result, 2, OperatorSettings(), LAUNCHERS["pytorchjob"])
    assert context.plan == result.to_status()
    assert (context.attempt, context.job_name) == (2, "charts-lora-a2")


def test_operator_defaults_fill_storage_the_spec_leaves_out(lora_cr):
    del lora_cr["spec"]["storage"]
    resource = InternVLFinetune.model_validate(lora_cr)
    settings = OperatorSettings(default_storage_endpoint="http://minio.ml:9000", default_credentials_secret="s3")
    context = render_context(resource, plan(resource.spec), 1, settings, LAUNCHERS["pytorchjob"])
    assert context.train_config.storage.endpoint == "http://minio.ml:9000"
    secrets = [
        e["valueFrom"]["secretKeyRef"]["name"] for e in trainer_env(context) if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert secrets == ["s3", "s3", "s3"]


def test_tracking_settings_reach_train_yaml_without_their_secrets(lora_cr):
    lora_cr["spec"]["tracking"] = {
        "mlflow": {"trackingUri": "https://mlflow.ml:5000", "experiment": "internvl", "credentialsSecret": "mlflow"},
        "wandb": {"project": "vlm", "apiKeySecret": "wandb"},
    }
    resource = InternVLFinetune.model_validate(lora_cr)
    config = train_config(resource, plan(resource.spec), OperatorSettings())
    assert config.tracking.to_wire() == {
        "mlflow": {"trackingUri": "https://mlflow.ml:5000", "experiment": "internvl", "logArtifacts": False},
        "wandb": {"project": "vlm"},
    }


def test_no_tracking_section_without_trackers(lora_cr):
    resource = InternVLFinetune.model_validate(lora_cr)
    config = train_config(resource, plan(resource.spec), OperatorSettings())
    assert "tracking" not in config.to_wire()
