"""What every renderer reads: the object, its plan, the resolved train.yaml, the attempt and the
operator's settings, with the metadata all children share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from internvl_operator import naming
from internvl_operator.api import KIND, InternVLFinetune, PlanStatus
from internvl_operator.settings import OperatorSettings
from internvl_trainer.config import GROUP_VERSION, TrainConfig

if TYPE_CHECKING:
    from internvl_operator.launchers import Launcher

APP_NAME = "internvl-finetune"
MANAGED_BY = "internvl-operator"
UID_LABEL = "internvl.dev/uid"
ATTEMPT_LABEL = "internvl.dev/attempt"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# On every child: a digest of what the operator set on it (render.content). On the job: a hash of
# the spec it was made from, and what spec.suspend was when the operator last wrote the job's
# runPolicy.suspend (the one annotation the operator changes after creating a child).
CONTENT_HASH_ANNOTATION = "internvl.dev/content-hash"
SPEC_HASH_ANNOTATION = "internvl.dev/spec-hash"
SUSPEND_ANNOTATION = "internvl.dev/spec-suspend"
TRAIN_CONFIG_DIR = "/etc/internvl"
TRAIN_CONFIG_KEY = "train.yaml"
TRAIN_CONFIG_PATH = f"{TRAIN_CONFIG_DIR}/{TRAIN_CONFIG_KEY}"
SCRATCH_PATH = "/scratch"


@dataclass(frozen=True)
class RenderContext:
    """One attempt of one InternVLFinetune, ready to render."""

    resource: InternVLFinetune
    plan: PlanStatus
    train_config: TrainConfig
    attempt: int
    settings: OperatorSettings
    launcher: Launcher
    """The kind of job the attempt runs as."""

    @property
    def name(self) -> str:
        return self.resource.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.resource.metadata.namespace

    @property
    def uid(self) -> str:
        return self.train_config.run.uid

    @property
    def job_name(self) -> str:
        return naming.job_name(self.name, self.attempt)

    @property
    def image(self) -> str:
        return self.resource.spec.trainer_image or self.settings.trainer_image

    def labels(self, component: str, *, per_attempt: bool = True) -> dict[str, str]:
        """Labels of every child: the app.kubernetes.io set plus the object's uid, and the attempt
        for the children that are made anew for each attempt."""
        labels = {
            "app.kubernetes.io/name": APP_NAME,
            "app.kubernetes.io/instance": naming.stem(self.name),
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": MANAGED_BY,
            UID_LABEL: self.uid,
        }
        if per_attempt:
            labels[ATTEMPT_LABEL] = str(self.attempt)
        return labels

    def metadata(
        self, name: str, component: str, *, per_attempt: bool = True, labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Metadata of a child object: its name, the object's namespace, labels, and an owner
        reference so that deleting the InternVLFinetune deletes it."""
        metadata: dict[str, Any] = {"name": name}
        if self.namespace:
            metadata["namespace"] = self.namespace
        metadata["labels"] = {**self.labels(component, per_attempt=per_attempt), **(labels or {})}
        metadata["ownerReferences"] = [
            {
                "apiVersion": GROUP_VERSION,
                "kind": KIND,
                "name": self.name,
                "uid": self.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        return metadata
