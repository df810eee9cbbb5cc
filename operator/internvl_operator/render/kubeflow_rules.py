"""The rules Kubeflow enforces outside its CRD schemas: the PyTorchJob admission webhook and the
MPI operator's controller validation. An MPIJob that breaks them is accepted by the API server and
then silently never runs, so the operator checks every job it renders."""

from __future__ import annotations

import re
from typing import Any

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL_MAX = 63


def _dns_1035(name: str, what: str) -> list[str]:
    if len(name) > DNS_LABEL_MAX or not DNS_1035_LABEL.match(name):
        return [f"{what} {name!r} is not a DNS-1035 label (lower case, starts with a letter, at most 63)"]
    return []


def _containers_have_images(replica_type: str, spec: dict[str, Any]) -> list[str]:
    containers = spec.get("template", {}).get("spec", {}).get("containers", [])
    problems = [] if containers else [f"{replica_type}: needs at least one container"]
    problems += [f"{replica_type}: container {c.get('name')!r} has no image" for c in containers if not c.get("image")]
    return problems


def _pod_names(job: str, replica_specs: dict[str, Any], kinds: dict[str, str]) -> list[str]:
    """The last pod (and Service) name of each replica type, which must be a DNS-1035 label."""
    problems = []
    for replica_type, prefix in kinds.items():
        if replica_type in replica_specs:
            last = max(replica_specs[replica_type].get("replicas", 1) - 1, 0)
            problems += _dns_1035(f"{job}-{prefix}-{last}", f"{replica_type} pod name")
    return problems


def pytorchjob_problems(job: dict[str, Any]) -> list[str]:
    """What the training operator's PyTorchJob webhook would refuse (kubeflow-jobs §1.3)."""
    name = job["metadata"]["name"]
    replica_specs = job["spec"]["pytorchReplicaSpecs"]
    problems = _dns_1035(name, "job name")
    problems += [
        f"replica type {key!r} is neither Master nor Worker" for key in replica_specs if key not in {"Master", "Worker"}
    ]
    master = replica_specs.get("Master")
    if master is not None and master.get("replicas") != 1:
        problems.append("Master.replicas must be set to 1")
    worker = replica_specs.get("Worker")
    if worker is not None and worker.get("replicas", 1) < 1:
        problems.append("Worker.replicas must be at least 1")
    for replica_type, spec in replica_specs.items():
        problems += _containers_have_images(replica_type, spec)
        names = [c.get("name") for c in spec.get("template", {}).get("spec", {}).get("containers", [])]
        if "pytorch" not in names:
            problems.append(f"{replica_type}: needs a container named 'pytorch'")
    return problems + _pod_names(name, replica_specs, {"Master": "master", "Worker": "worker"})


def mpijob_problems(job: dict[str, Any]) -> list[str]:
    """What the MPI operator's controller would refuse (kubeflow-jobs §2.1)."""
    name = job["metadata"]["name"]
    spec = job["spec"]
    replica_specs = spec["mpiReplicaSpecs"]
    problems = _dns_1035(name, "job name")
    launcher = replica_specs.get("Launcher")
    if launcher is None or launcher.get("replicas") != 1:
        problems.append("Launcher.replicas must be set to 1")
    worker = replica_specs.get("Worker")
    if worker is not None and worker.get("replicas", 0) < 1:
        problems.append("Worker.replicas must be set and at least 1")
    if spec.get("slotsPerWorker") is None or spec["slotsPerWorker"] < 0:
        problems.append("slotsPerWorker must be set and not negative")
    if spec.get("runPolicy", {}).get("cleanPodPolicy", "None") not in {"None", "Running", "All"}:
        problems.append("runPolicy.cleanPodPolicy must be None, Running or All")
    for key in ("ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit"):
        if spec.get("runPolicy", {}).get(key, 0) < 0:
            problems.append(f"runPolicy.{key} must not be negative")
    for replica_type, replica in replica_specs.items():
        if replica.get("restartPolicy") not in {"Never", "OnFailure"}:
            problems.append(f"{replica_type}.restartPolicy must be Never or OnFailure")
        problems += _containers_have_images(replica_type, replica)
    return problems + _pod_names(name, replica_specs, {"Worker": "worker"})


def job_problems(job: dict[str, Any]) -> list[str]:
    return pytorchjob_problems(job) if job["kind"] == "PyTorchJob" else mpijob_problems(job)
