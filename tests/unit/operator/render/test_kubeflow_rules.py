"""Kubeflow's rules outside the schemas refuse what they must, so rendered jobs are checked."""

import copy

import pytest

from internvl_operator.render import render
from internvl_operator.render.kubeflow_rules import (
    mpijob_problems,
    pytorchjob_problems,
    training_runtime_problems,
    trainjob_problems,
)
from internvl_operator.render.runtime import cluster_training_runtime
from internvl_operator.render.trainjob import trainjob as render_trainjob
from internvl_operator.settings import OperatorSettings
from tests.unit.operator.render.conftest import context_for, plan_for

NOT_A_LABEL = "is not a DNS-1035 label (lower case, starts with a letter, at most 63)"


@pytest.fixture
def pytorchjob(lora_cr):
    lora_cr["spec"]["launcher"] = "pytorchjob"
    return render(context_for(lora_cr, plan=plan_for(nodes=2)))[-1]


@pytest.fixture
def mpijob(lora_cr):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["launcher"] = "mpijob"
    return render(context_for(cr, plan=plan_for(nodes=2)))[-1]


def test_rendered_jobs_pass(pytorchjob, mpijob):
    assert pytorchjob_problems(pytorchjob) == []
    assert mpijob_problems(mpijob) == []


def test_pytorchjob_rules(pytorchjob):
    replicas = pytorchjob["spec"]["pytorchReplicaSpecs"]
    pytorchjob["metadata"]["name"] = "7-" + "x" * 60
    del replicas["Master"]["replicas"]
    replicas["Worker"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    replicas["Worker"]["template"]["spec"]["containers"][0]["image"] = ""
    replicas["Launcher"] = copy.deepcopy(replicas["Master"])
    assert pytorchjob_problems(pytorchjob) == [
        f"job name '7-{'x' * 60}' {NOT_A_LABEL}",
        "replica type 'Launcher' is neither Master nor Worker",
        "Master.replicas must be set to 1",
        "Worker: container 'trainer' has no image",
        "Worker: needs a container named 'pytorch'",
        f"Master pod name '7-{'x' * 60}-master-0' {NOT_A_LABEL}",
        f"Worker pod name '7-{'x' * 60}-worker-0' {NOT_A_LABEL}",
    ]


def test_mpijob_rules(mpijob):
    spec = mpijob["spec"]
    spec["mpiReplicaSpecs"]["Worker"]["replicas"] = 0
    spec["mpiReplicaSpecs"]["Launcher"]["restartPolicy"] = "Always"
    spec["runPolicy"]["cleanPodPolicy"] = "Finished"
    spec["runPolicy"]["backoffLimit"] = -1
    del spec["slotsPerWorker"]
    assert mpijob_problems(mpijob) == [
        "Worker.replicas must be set and at least 1",
        "slotsPerWorker must be set and not negative",
        "runPolicy.cleanPodPolicy must be None, Running or All",
        "runPolicy.backoffLimit must not be negative",
        "Launcher.restartPolicy must be Never or OnFailure",
    ]


def test_the_last_worker_name_counts(mpijob):
    mpijob["metadata"]["name"] = "a" * 55
    mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] = 10
    assert mpijob_problems(mpijob) == [f"Worker pod name '{'a' * 55}-worker-9' {NOT_A_LABEL}"]


# Kubeflow Trainer v2.3 ----------------------------------------------------------------------


@pytest.fixture
def trainjob(lora_cr):
    return render_trainjob(context_for(lora_cr, plan=plan_for(nodes=2)))


def patched_node(job):
    [patch] = job["spec"]["runtimePatches"]
    [node] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return node


def test_a_rendered_trainjob_and_the_runtime_pass(trainjob):
    assert trainjob_problems(trainjob) == []
    assert training_runtime_problems(cluster_training_runtime(OperatorSettings())) == []


def test_trainjob_rules(trainjob):
    trainjob["metadata"]["name"] = "7-job"
    trainjob["spec"]["runtimeRef"]["name"] = "torch-distributed"
    trainjob["spec"]["trainer"]["env"] += [
        {"name": "PET_NNODES", "value": "3"},
        {"name": "PET_MASTER_PORT", "value": "1"},
    ]
    node = patched_node(trainjob)
    pod = node["template"]["spec"]["template"]["spec"]
    pod["containers"][0]["env"] = [{"name": "NCCL_DEBUG", "value": "INFO"}]
    pod["initContainers"] = [{"name": "fetch"}]
    patch = trainjob["spec"]["runtimePatches"][0]
    patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"].append({"name": "launcher"})
    assert trainjob_problems(trainjob) == [
        f"job name '7-job' {NOT_A_LABEL}",
        "runtimeRef must name ClusterTrainingRuntime internvl-torch, the runtime its patches are written for",
        "trainer.env must not set the variables Trainer reserves for torchrun: ['PET_MASTER_PORT', 'PET_NNODES']",
        "runtimePatches[internvl.dev/operator]: job 'node' has no container 'fetch'",
        "runtimePatches[internvl.dev/operator]: container 'node' must not have env (set it in spec.trainer.env)",
        "runtimePatches[internvl.dev/operator]: the runtime has no job 'launcher'",
        f"JobSet job name '7-job-node-0' {NOT_A_LABEL}",
        f"JobSet pod name '7-job-node-0-1-abcde' {NOT_A_LABEL}",
    ]


def test_the_last_jobset_pod_name_counts(trainjob):
    # JobSet names pod i of the first Job of replicated job node <job>-node-0-<i>-<5 random>.
    trainjob["metadata"]["name"] = "a" * 48
    assert trainjob_problems(trainjob) == []
    trainjob["spec"]["trainer"]["numNodes"] = 11
    assert trainjob_problems(trainjob) == [f"JobSet pod name '{'a' * 48}-node-0-10-abcde' {NOT_A_LABEL}"]


def test_training_runtime_rules():
    runtime = cluster_training_runtime(OperatorSettings())
    [job] = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    job["replicas"] = 2
    job["template"]["spec"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    initializer = copy.deepcopy(job)
    initializer["name"] = "dataset-initializer"
    initializer["replicas"] = 1
    initializer["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] = "dataset-initializer"
    unlabelled = copy.deepcopy(job)
    unlabelled["name"] = "sidecar"
    del unlabelled["template"]["metadata"]
    runtime["spec"]["template"]["spec"]["replicatedJobs"] += [initializer, unlabelled]
    assert training_runtime_problems(runtime) == [
        "replicatedJobs[node].replicas must be 1",
        "replicatedJobs[node]: the trainer job needs a container named 'node'",
        "replicatedJobs[dataset-initializer]: the dataset-initializer job needs a container named "
        "'dataset-initializer'",
    ]
