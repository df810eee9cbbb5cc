"""The rules Kubeflow enforces outside its CRD schemas: the PyTorchJob admission webhook, the MPI
operator's controller validation, the Trainer v2.3 webhooks of TrainJob and ClusterTrainingRuntime,
and the names JobSet (which runs a TrainJob) requires. An MPIJob or a TrainJob's JobSet that
breaks them is accepted by the API server and then silently never runs, so the operator checks
every job it renders."""

from __future__ import annotations

import re
from typing import Any

from internvl_operator import naming
from internvl_operator.render import runtime, trainjob

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _dns_1035(name: str, what: str) -> list[str]:
    if len(name) > naming.DNS_LABEL_MAX or not DNS_1035_LABEL.match(name):
        return [f"{what} {name!r} is not a DNS-1035 label (lower case, starts with a letter, at most 63)"]
    return []


def _containers_have_images(replica_type: str, spec: dict[str, Any]) -> list[str]:
    containers = spec.get("template", {}).get("spec", {}).get("containers", [])
    problems = [] if containers else [f"{replica_type}: needs at least one container"]
    problems += [f"{replica_type}: container {c.get('name')!r} has no image" for c in containers if not c.get("image")]
    return problems


def _pod_names(job: str, replica_specs: dict[str, Any], replica_types: tuple[str, ...]) -> list[str]:
    """The last pod (and Service) name of each replica type, which must be a DNS-1035 label."""
    problems = []
    for replica_type in replica_types:
        if replica_type in replica_specs:
            last = max(replica_specs[replica_type].get("replicas", 1) - 1, 0)
            problems += _dns_1035(naming.replica_pod_name(job, replica_type, last), f"{replica_type} pod name")
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
    return problems + _pod_names(name, replica_specs, ("Master", "Worker"))


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
    return problems + _pod_names(name, replica_specs, ("Worker",))


# Trainer's torch plugin sets these for torchrun and refuses a TrainJob whose trainer sets them.
TORCH_RESERVED_ENV = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")
# Containers whose environment only the Trainer and Initializer APIs may set, never a patch.
ENV_OWNED_CONTAINERS = {trainjob.NODE, "dataset-initializer", "model-initializer"}
# The container each Trainer ancestor's job must have (Trainer's runtime webhook).
ANCESTOR_CONTAINERS = {
    "trainer": trainjob.NODE,
    "dataset-initializer": "dataset-initializer",
    "model-initializer": "model-initializer",
}
# The containers of each job of internvl-torch, the runtime every rendered TrainJob refers to.
INTERNVL_TORCH_JOBS = {trainjob.NODE: {trainjob.NODE}}


def _runtime_ref_problems(ref: dict[str, Any]) -> list[str]:
    if ref != trainjob.RUNTIME_REF:
        runtime_named = f"{trainjob.RUNTIME_KIND} {trainjob.RUNTIME_NAME}"
        return [f"runtimeRef must name {runtime_named}, the runtime its patches are written for"]
    return []


def _patch_problems(patches: list[dict[str, Any]], jobs: dict[str, set[str]]) -> list[str]:
    problems = []
    for patch in patches:
        manager = patch.get("manager")
        replicated_jobs = (
            patch.get("trainingRuntimeSpec", {}).get("template", {}).get("spec", {}).get("replicatedJobs", [])
        )
        for job_patch in replicated_jobs:
            job = job_patch["name"]
            if job not in jobs:
                problems.append(f"runtimePatches[{manager}]: the runtime has no job {job!r}")
                continue
            pod = job_patch.get("template", {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                name = container["name"]
                if name not in jobs[job]:
                    problems.append(f"runtimePatches[{manager}]: job {job!r} has no container {name!r}")
                elif container.get("env") and name in ENV_OWNED_CONTAINERS:
                    problems.append(
                        f"runtimePatches[{manager}]: container {name!r} must not have env (set it in spec.trainer.env)"
                    )
    return problems


def trainjob_problems(job: dict[str, Any], runtime_jobs: dict[str, set[str]] = INTERNVL_TORCH_JOBS) -> list[str]:
    """What Trainer's TrainJob webhook would refuse (kubeflow-jobs §3.2, §3.4), given the jobs and
    containers of the runtime it refers to, and the names JobSet would then refuse: the child
    Job ``<job>-node-0`` and its last pod ``<job>-node-0-<numNodes-1>-<5 random>``."""
    name = job["metadata"]["name"]
    spec = job["spec"]
    trainer = spec.get("trainer", {})
    problems = _dns_1035(name, "job name")
    problems += _runtime_ref_problems(spec["runtimeRef"])
    reserved = sorted({variable["name"] for variable in trainer.get("env", [])} & set(TORCH_RESERVED_ENV))
    if reserved:
        problems.append(f"trainer.env must not set the variables Trainer reserves for torchrun: {reserved}")
    problems += _patch_problems(spec.get("runtimePatches", []), runtime_jobs)
    child_job = naming.jobset_job_name(name, trainjob.NODE)
    last_pod = naming.jobset_pod_name(name, trainjob.NODE, trainer.get("numNodes", 1) - 1)
    return problems + _dns_1035(child_job, "JobSet job name") + _dns_1035(last_pod, "JobSet pod name")


def runtime_jobs(training_runtime: dict[str, Any]) -> dict[str, set[str]]:
    """The containers (init containers included) of each replicated job of a runtime."""
    jobs = training_runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return {
        job["name"]: {
            container["name"]
            for field in ("initContainers", "containers")
            for container in job["template"]["spec"]["template"]["spec"].get(field, [])
        }
        for job in jobs
    }


def training_runtime_problems(training_runtime: dict[str, Any]) -> list[str]:
    """What Trainer's (Cluster)TrainingRuntime webhook would refuse: each job labelled as a
    Trainer ancestor has one replica and the container that ancestor needs."""
    problems = []
    for job in training_runtime["spec"]["template"]["spec"]["replicatedJobs"]:
        ancestor = job["template"].get("metadata", {}).get("labels", {}).get(runtime.ANCESTOR_LABEL)
        if ancestor not in ANCESTOR_CONTAINERS:
            continue
        if job.get("replicas", 1) != 1:
            problems.append(f"replicatedJobs[{job['name']}].replicas must be 1")
        containers = {c["name"] for c in job["template"]["spec"]["template"]["spec"].get("containers", [])}
        if ANCESTOR_CONTAINERS[ancestor] not in containers:
            needed = ANCESTOR_CONTAINERS[ancestor]
            problems.append(f"replicatedJobs[{job['name']}]: the {ancestor} job needs a container named {needed!r}")
    return problems
