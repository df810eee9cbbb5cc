"""The operator's own settings: what a cluster administrator chooses once, not each user per run.

Each field is an environment variable ``INTERNVL_OPERATOR_<FIELD>`` (set by the Helm chart from
its values) and a flag of ``internvl-operator run`` (``--trainer-image``); a flag wins over the
environment. They feed the renderers together with each object's spec and plan.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from internvl_operator.api import InternVLFinetuneSpec, Label, Quantity


def _project_version() -> str:
    try:
        return version("internvl-finetune")
    except PackageNotFoundError:
        return "0.0.0"


class OperatorSettings(BaseSettings):
    """Cluster-wide choices of one operator installation."""

    model_config = SettingsConfigDict(
        env_prefix="INTERNVL_OPERATOR_", extra="forbid", frozen=True, use_attribute_docstrings=True
    )

    trainer_image: str = f"ghcr.io/internvl-finetune/trainer:{_project_version()}"
    """Trainer image for objects that do not set spec.trainerImage."""

    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    """Pull policy of the trainer image."""

    default_storage_endpoint: str | None = None
    """S3 endpoint for objects that do not set spec.storage.endpoint (a cluster-local MinIO, say)."""

    default_credentials_secret: Label | None = None
    """Secret with S3 credentials for objects that do not set spec.storage.credentialsSecret; it
    must exist in each object's namespace."""

    shm_size_limit: Quantity = "32Gi"
    """Size of the memory-backed /dev/shm of each training pod (data-loader workers share tensors
    through it)."""

    scratch_size_limit: Quantity = "200Gi"
    """Size of the emptyDir scratch volume when the spec names neither a size nor a PVC."""

    cpu_per_gpu: int = Field(8, ge=1)
    """CPU request per GPU when the spec sets no CPU request."""

    master_port: int = Field(29500, ge=1, le=65535)
    """Rendezvous port of torch.distributed between the training processes."""

    ssh_auth_mount_path: str = "/home/trainer/.ssh"
    """Where MPIJob mounts its SSH keys: the home of the trainer image's non-root user."""

    launcher_cpu: Quantity = "1"
    """CPU request of an MPIJob's launcher pod (it only runs mpirun)."""

    launcher_memory: Quantity = "2Gi"
    """Memory request of an MPIJob's launcher pod."""

    allow_host_network: bool = False
    """Honour spec.pod.hostNetwork: the pods of such an object share their node's network
    namespace, a node-level privilege the "restricted" Pod Security Standard forbids. Off, such an
    object is refused (Valid=False, reason HostNetworkNotAllowed)."""

    def privilege_refusal(self, spec: InternVLFinetuneSpec) -> tuple[str, str] | None:
        """Why this installation refuses a spec for a privilege it does not grant, as a condition's
        (reason, message); None when it grants every one the spec asks for."""
        if spec.pod.host_network and not self.allow_host_network:
            return (
                "HostNetworkNotAllowed",
                "spec.pod.hostNetwork: this installation does not let pods share their node's network namespace; "
                "remove the field, or ask the cluster administrator to enable it (operator setting "
                "INTERNVL_OPERATOR_ALLOW_HOST_NETWORK, chart value settings.allowHostNetwork)",
            )
        return None
