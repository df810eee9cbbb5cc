"""The ConfigMap that carries train.yaml to the trainer pods (docs/contract.md §1)."""

from __future__ import annotations

from typing import Any

from internvl_operator import naming
from internvl_operator.render.context import TRAIN_CONFIG_KEY, RenderContext
from internvl_trainer.config import dump_train_config


def train_config_map(context: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": context.metadata(naming.train_config_name(context.name, context.attempt), "train-config"),
        "data": {TRAIN_CONFIG_KEY: dump_train_config(context.train_config)},
    }
