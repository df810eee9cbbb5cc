"""Names of the objects the operator creates for an InternVLFinetune.

Deterministic (a restarted operator finds what it created), one job per attempt, and valid
however long the object's name is: Kubeflow names each pod and its Service ``<job>-worker-<i>``
and requires DNS-1035 labels (lower case, starting with a letter, at most 63 characters), so the
job name leaves room for the longest such suffix.
"""

from __future__ import annotations

import hashlib
import re

DNS_LABEL_MAX = 63
# The longest suffix Kubeflow adds to a job name: "-worker-" and a 4-digit index (4096 nodes).
POD_SUFFIX_ROOM = len("-worker-4095")
# The longest attempt suffix: "-a" and up to three digits (maxRestarts is at most 100).
ATTEMPT_SUFFIX_ROOM = len("-a101")
STEM_MAX = DNS_LABEL_MAX - POD_SUFFIX_ROOM - ATTEMPT_SUFFIX_ROOM
_HASH_LENGTH = 8


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
