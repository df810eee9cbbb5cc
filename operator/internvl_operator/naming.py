"""Names of the objects the operator creates for an InternVLFinetune, and of the pods the
launchers' controllers create from its job.

Deterministic (a restarted operator finds what it created), one job per attempt, and valid
however long the object's name is: the controllers name each pod after the job and require
DNS-1035 labels (lower case, starting with a letter, at most 63 characters), so the job name
leaves room for the longest suffix any launcher adds to it.
"""

from __future__ import annotations

import hashlib
import re

DNS_LABEL_MAX = 63
# The most pods a job can have: one per node, and spec.resources.gpus is at most 4096.
MOST_NODES = 4096
# The replicated job of a TrainJob's runtime (render.trainjob): JobSet names its Jobs and pods after it.
TRAINJOB_NODE = "node"
# Kubernetes names each pod of a Job after the Job and five random characters (any five here).
RANDOM_POD_SUFFIX = "-abcde"
# The longest attempt suffix: "-a" and up to three digits (maxRestarts is at most 100).
ATTEMPT_SUFFIX_ROOM = len("-a101")
_HASH_LENGTH = 8


def replica_pod_name(job: str, replica_type: str, index: int) -> str:
    """The pod (and Service) Kubeflow v1 and the MPI operator create for replica ``index`` of a
    replica type (Master, Worker) of a PyTorchJob or MPIJob."""
    return f"{job}-{replica_type.lower()}-{index}"


def jobset_job_name(jobset: str, replicated_job: str) -> str:
    """The Job JobSet creates for a replicated job of one replica (a TrainJob's JobSet has the
    TrainJob's name)."""
    return f"{jobset}-{replicated_job}-0"


def jobset_pod_name(jobset: str, replicated_job: str, index: int) -> str:
    """The longest name pod ``index`` of that Job can get."""
    return f"{jobset_job_name(jobset, replicated_job)}-{index}{RANDOM_POD_SUFFIX}"


def longest_pod_names(job: str) -> tuple[str, ...]:
    """The longest pod name each launcher can give a pod of ``job``: a PyTorchJob's or MPIJob's
    last worker, a TrainJob's last node."""
    last = MOST_NODES - 1
    return replica_pod_name(job, "Worker", last), jobset_pod_name(job, TRAINJOB_NODE, last)


POD_SUFFIX_ROOM = max(len(pod) for pod in longest_pod_names(""))
STEM_MAX = DNS_LABEL_MAX - POD_SUFFIX_ROOM - ATTEMPT_SUFFIX_ROOM


def stem(name: str) -> str:
    """A DNS-1035 label of at most STEM_MAX characters that stands for the object ``name``.
    Names that must be shortened or changed keep a hash of the original, so two objects never
    share a stem."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label[:1].isalpha():
        label = f"ivft-{label}".rstrip("-")
    if label == name and len(label) <= STEM_MAX:
        return label
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LENGTH]
    return f"{label[: STEM_MAX - _HASH_LENGTH - 1].rstrip('-')}-{digest}"


def job_name(name: str, attempt: int) -> str:
    """The Kubeflow job of one attempt (1 for the first)."""
    return f"{stem(name)}-a{attempt}"


def train_config_name(name: str, attempt: int) -> str:
    """The ConfigMap holding train.yaml for one attempt."""
    return f"{job_name(name, attempt)}-train"


def trainer_account_name(name: str) -> str:
    """The ServiceAccount, Role and RoleBinding the trainer runs with (one per object)."""
    return f"{stem(name)}-trainer"
