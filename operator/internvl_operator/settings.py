"""The operator's own settings: what a cluster administrator chooses once, not each user per run.

They come from the operator's environment (``INTERNVL_OPERATOR_<FIELD>``, set by the Helm chart)
and feed the renderers together with each object's spec and plan.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


def _project_version() -> str:
    try:
        return version("internvl-finetune")
    except PackageNotFoundError:
        return "0.0.0"


ENV_PREFIX = "INTERNVL_OPERATOR_"


class OperatorSettings(BaseModel):
    """Cluster-wide choices of one operator installation."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    trainer_image: str = f"ghcr.io/internvl-finetune/trainer:{_project_version()}"
    """Trainer image for objects that do not set spec.trainerImage."""

    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Pull policy of the trainer image."""

    shm_size_limit: str = "32Gi"
    """Size of the memory-backed /dev/shm of each training pod (data-loader workers share tensors
    through it)."""

    scratch_size_limit: str = "200Gi"
    """Size of the emptyDir scratch volume when the spec names neither a size nor a PVC."""

    cpu_per_gpu: int = Field(8, ge=1)
    """CPU request per GPU when the spec sets no CPU request."""

    master_port: int = Field(29500, ge=1, le=65535)
    """Rendezvous port of torch.distributed between the training processes."""

    ssh_auth_mount_path: str = "/home/trainer/.ssh"
    """Where MPIJob mounts its SSH keys: the home of the trainer image's non-root user."""

    launcher_cpu: str = "1"
    """CPU request of an MPIJob's launcher pod (it only runs mpirun)."""

    launcher_memory: str = "2Gi"
    """Memory request of an MPIJob's launcher pod."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> OperatorSettings:
        """Settings from ``INTERNVL_OPERATOR_<FIELD>`` variables (upper-case field names)."""
        values = {
            name: environ[ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if ENV_PREFIX + name.upper() in environ
        }
        return cls.model_validate(values)
