"""From an InternVLFinetune and its plan to what the renderers need: the fully resolved
train.yaml (docs/contract.md §1) and the render context of one attempt."""

from __future__ import annotations

from typing import TypeVar

from internvl_operator.api import InternVLFinetune
from internvl_operator.launchers import Launcher
from internvl_operator.planner import Plan
from internvl_operator.render import RenderContext
from internvl_operator.settings import OperatorSettings
from internvl_trainer.config import (
    ResolvedDataConfig,
    ResolvedMethodConfig,
    ResolvedTrainingConfig,
    RunConfig,
    Section,
    StorageConfig,
    TrackingConfig,
    TrainConfig,
)

ResolvedSection = TypeVar("ResolvedSection", bound=Section)

# What `internvl-operator render` writes where no API server has assigned a uid yet.
OFFLINE_UID = "00000000-0000-0000-0000-000000000000"


def with_recipe(resolved: type[ResolvedSection], section: Section, **values: object) -> ResolvedSection:
    """A spec section as train.yaml holds it: ``resolved`` (the section's type with its recipe
    values required) built from the section and the values the plan chose."""
    return resolved.model_validate({**section.model_dump(), **values})


def train_config(resource: InternVLFinetune, plan: Plan, settings: OperatorSettings) -> TrainConfig:
    """train.yaml for the object: its own sections with every recipe value the plan chose, and
    the operator's default S3 endpoint where the spec names none."""
    spec = resource.spec
    storage = spec.storage.model_dump(exclude={"credentials_secret"})
    storage["endpoint"] = storage["endpoint"] or settings.default_storage_endpoint
    uid = resource.metadata.uid or OFFLINE_UID
    secrets = {"mlflow": {"credentials_secret"}, "wandb": {"api_key_secret"}}
    tracking = spec.tracking and TrackingConfig.model_validate(spec.tracking.model_dump(exclude=secrets))
    return TrainConfig(
        run=RunConfig(name=resource.metadata.name, uid=uid),
        model=spec.model,
        method=with_recipe(ResolvedMethodConfig, spec.method, drop_path_rate=plan.drop_path_rate),
        data=with_recipe(ResolvedDataConfig, spec.data, max_seq_length=plan.max_seq_length, max_tiles=plan.max_tiles),
        training=with_recipe(
            ResolvedTrainingConfig,
            spec.training,
            global_batch_size=plan.global_batch_size,
            learning_rate=plan.learning_rate,
            weight_decay=plan.weight_decay,
        ),
        batch=plan.batch_layout(),
        deepspeed=plan.deepspeed_config(),
        storage=StorageConfig.model_validate(storage),
        output=spec.output,
        tracking=tracking,
    )


def render_context(
    resource: InternVLFinetune, plan: Plan, attempt: int, settings: OperatorSettings, launcher: Launcher
) -> RenderContext:
    """Everything the renderers read for one attempt, run as ``launcher``."""
    return RenderContext(
        resource,
        plan.to_status(),
        train_config(resource, plan, settings),
        attempt,
        settings,
        launcher,
    )
