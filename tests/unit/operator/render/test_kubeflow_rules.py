"""Kubeflow's rules outside the schemas refuse what they must, so rendered jobs are checked."""

import copy

import pytest

from internvl_operator.render import render
from internvl_operator.render.kubeflow_rules import job_problems
from tests.unit.operator.render.conftest import context_for, plan_for

NOT_A_LABEL = "is not a DNS-1035 label (lower case, starts with a letter, at most 63)"


@pytest.fixture
def pytorchjob(lora_cr):
    return render(context_for(lora_cr, plan=plan_for(nodes=2)))[-1]


@pytest.fixture
def mpijob(lora_cr):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["launcher"] = "mpijob"
    return render(context_for(cr, plan=plan_for(nodes=2)))[-1]


def test_rendered_jobs_pass(pytorchjob, mpijob):
    assert job_problems(pytorchjob) == []
    assert job_problems(mpijob) == []


def test_pytorchjob_rules(pytorchjob):
    replicas = pytorchjob["spec"]["pytorchReplicaSpecs"]
    pytorchjob["metadata"]["name"] = "7-" + "x" * 60
    del replicas["Master"]["replicas"]
    replicas["Worker"]["template"]["spec"]["containers"][0]["name"] = "trainer"
    replicas["Worker"]["template"]["spec"]["containers"][0]["image"] = ""
    replicas["Launcher"] = copy.deepcopy(replicas["Master"])
    assert job_problems(pytorchjob) == [
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
    assert job_problems(mpijob) == [
        "Worker.replicas must be set and at least 1",
        "slotsPerWorker must be set and not negative",
        "runPolicy.cleanPodPolicy must be None, Running or All",
        "runPolicy.backoffLimit must not be negative",
        "Launcher.restartPolicy must be Never or OnFailure",
    ]


def test_the_last_worker_name_counts(mpijob):
    mpijob["metadata"]["name"] = "a" * 55
    mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] = 10
    assert job_problems(mpijob) == [f"Worker pod name '{'a' * 55}-worker-9' {NOT_A_LABEL}"]
