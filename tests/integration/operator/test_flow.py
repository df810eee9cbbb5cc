"""The operator end to end against an emulated API server: kopf runs the real handlers, the test
plays the user, the training operator, the trainer and, where it is needed, a refusing API server
or someone planting objects.

The emulator (kmock) stores objects and serves watches but has no schema validation, garbage
collection, generation counting or controllers: the test patches job status itself, as the
training operator would, and bumps metadata.generation with each spec change, as the API server
would.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import kmock
import kopf
import pytest
import yaml
from prometheus_client import REGISTRY

from internvl_operator.api import InternVLFinetune
from internvl_operator.cluster import Cluster
from internvl_operator.handlers import REGISTRY as HANDLERS
from internvl_operator.launchers import LAUNCHERS
from internvl_operator.permissions import OPERATOR_PERMISSIONS
from internvl_operator.planner import plan
from internvl_operator.record import RECORD_ANNOTATION
from internvl_operator.render import render
from internvl_operator.resolve import render_context
from internvl_operator.settings import OperatorSettings
from tests.conftest import load_example
from tests.emulated_cluster import RESOURCES, client_for, serve
from tests.unit.operator.render.conftest import KUEUE_PATCH, on_every_launcher

NAMESPACE = "default"
FINETUNE = "internvl.dev/v1alpha1"
PYTORCHJOB = "kubeflow.org/v1"
TRAINJOB = "trainer.kubeflow.org/v1alpha1"
TIMEOUT = 15.0
SETTINGS = OperatorSettings(trainer_image="registry.local/trainer:test")


@dataclass
class Harness:
    """The emulated cluster, the operator's own client (its calls are recorded), and a client
    for the test's side of things."""

    emulator: Any
    operator_cluster: Cluster
    user: Cluster
    url: str

    async def call(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        # The emulator serves on this event loop; blocking clients must run off it.
        return await asyncio.to_thread(function, *args, **kwargs)

    async def get(self, api_version: str, kind: str, name: str) -> dict | None:
        return await self.call(self.user.get, api_version, kind, NAMESPACE, name)

    async def wait_for(self, check: Callable[[], Any], what: str) -> Any:
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            result = await self.call(check)
            if result:
                return result
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    async def condition(self, name: str, type_: str, status: str = "True", reason: str | None = None) -> dict:
        def check():
            obj = self.user.get(FINETUNE, "InternVLFinetune", NAMESPACE, name) or {}
            for condition in (obj.get("status") or {}).get("conditions") or []:
                if condition["type"] == type_ and condition["status"] == status:
                    if reason is None or condition["reason"] == reason:
                        return obj
            return None

        return await self.wait_for(check, f"{name}: {type_}={status} {reason or ''}")

    async def change_spec(self, name: str, spec: dict) -> None:
        """Change the spec and count the generation up, as the API server would."""

        def change():
            generation = self.user.get(FINETUNE, "InternVLFinetune", NAMESPACE, name)["metadata"]["generation"]
            patch = {"metadata": {"generation": generation + 1}, "spec": spec}
            self.user.patch(FINETUNE, "InternVLFinetune", NAMESPACE, name, patch)

        await self.call(change)

    async def job_status(
        self, name: str, *true_conditions: tuple[str, str, str], api_version: str = PYTORCHJOB, **status: Any
    ) -> None:
        """Play the training operator (or Trainer): set the job's conditions and other ``status``."""
        conditions = [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in true_conditions]
        [kind] = [launcher.kind for launcher in LAUNCHERS.values() if launcher.api_version == api_version]
        await self.call(
            self.user.patch,
            api_version,
            kind,
            NAMESPACE,
            name,
            {"status": {"conditions": conditions, **status}},
            subresource="status",
        )

    async def event(self, name: str, type_: str, reason: str, message: str | None = None) -> None:
        """Wait for the operator to post an event about an object (kopf posts them in the
        background; the emulator keeps only the first of a namespace, so its requests are read)."""
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while asyncio.get_running_loop().time() < deadline:
            for request in list(self.emulator["post", kmock.resource("", "v1", "events")]):
                event = request.data
                if (event["involvedObject"]["name"], event["type"], event["reason"]) == (name, type_, reason):
                    if message in (None, event["message"]):
                        return
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for the event {type_} {reason} about {name}")

    def refuse(self, resource: tuple[str, str, str], code: int, message: str, times: int | None = None) -> list:
        """Make the emulator answer creates of ``resource`` (group, version, plural) with ``code``
        and a Status, the first ``times`` ones or all, without keeping the object (kmock stores
        what is posted whatever the answer). Returns the list of the names refused."""
        refused: list[str] = []

        def answer(request: Any) -> Any:
            if times is not None and len(refused) >= times:
                raise NotImplementedError  # not an answer: served as usual
            name = request.data["metadata"]["name"]
            self.emulator.objects[request.resource, request.namespace, name].delete()
            refused.append(name)
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}
            return kmock.Response(status=code, payload=status)

        self.emulator["post", kmock.resource(*resource)] << answer
        return refused


@pytest.fixture
async def emulator() -> AsyncIterator[Any]:
    async with kmock.KubernetesEmulator() as emulated, kmock.Server(emulated):
        yield emulated


@dataclass
class RunningOperator:
    thread: threading.Thread
    stop: threading.Event


async def start_operator(url: str, cluster: Cluster) -> RunningOperator:
    """The operator in its own thread and event loop, as in production (kopf cancels the tasks
    of its loop when it stops, which must not include the test's)."""
    stop, ready = threading.Event(), threading.Event()
    memo = kopf.Memo(
        connection=kopf.ConnectionInfo(server=url),
        cluster=cluster,
        operator_settings=SETTINGS,
        server_timeout=10,
        retry_base_seconds=0.1,
        discovery_ttl_seconds=0.1,
    )
    operator = kopf.operator(
        registry=HANDLERS, namespaces=[NAMESPACE], standalone=True, memo=memo, stop_flag=stop, ready_flag=ready
    )
    thread = threading.Thread(target=asyncio.run, args=(operator,), daemon=True)
    thread.start()
    assert await asyncio.to_thread(ready.wait, TIMEOUT), "the operator did not start"
    return RunningOperator(thread, stop)


async def stop_operator(running: RunningOperator) -> None:
    running.stop.set()
    await asyncio.to_thread(running.thread.join, TIMEOUT)
    assert not running.thread.is_alive(), "the operator did not stop"


@pytest.fixture
async def harness(emulator) -> AsyncIterator[Harness]:
    serve(emulator)
    url = str(emulator.url).rstrip("/")
    operator_cluster = client_for(url)
    running = await start_operator(url, operator_cluster)
    yield Harness(emulator, operator_cluster, client_for(url), url)
    await stop_operator(running)


def finetune(example: str = "lora-internvl3-8b.yaml", uid: str = "uid-1", **spec: Any) -> dict:
    """An example object; a PyTorchJob where neither the example nor ``spec`` names a launcher
    (launcher="auto" for the default)."""
    obj = load_example(example)
    obj["metadata"].update({"namespace": NAMESPACE, "uid": uid, "generation": 1})
    obj["spec"].setdefault("launcher", "pytorchjob")
    obj["spec"].update(spec)
    return obj


async def test_create_run_succeed(harness):
    await harness.call(harness.user.create, finetune())
    job = await harness.wait_for(lambda: harness.user.get(PYTORCHJOB, "PyTorchJob", NAMESPACE, "charts-lora-a1"), "job")
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "InternVLFinetune",
        "charts-lora",
        "uid-1",
        True,
    )
    for kind, name in [("ConfigMap", "charts-lora-a1-train"), ("ServiceAccount", "charts-lora-trainer")]:
        child = await harness.get("v1", kind, name)
        assert child["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    obj = await harness.condition("charts-lora", "JobCreated")
    assert obj["status"]["plan"]["gpus"] == 2 and obj["status"]["attempt"] == 1

    await harness.job_status("charts-lora-a1", ("Running", "PyTorchJobRunning", "running"))
    await harness.condition("charts-lora", "Running")
    await harness.job_status("charts-lora-a1", ("Succeeded", "PyTorchJobSucceeded", "PyTorchJob succeeded"))
    obj = await harness.condition("charts-lora", "Succeeded")
    assert obj["status"]["completionTime"]
    assert REGISTRY.get_sample_value("internvl_operator_reconciles_total", {"result": "ok"}) > 0


async def test_failure_restarts_the_whole_job(harness):
    await harness.call(harness.user.create, finetune(maxRestarts=1))
    await harness.condition("charts-lora", "JobCreated")
    await harness.job_status("charts-lora-a1", ("Failed", "PyTorchJobFailed", "Master failed"))
    second = await harness.wait_for(
        lambda: harness.user.get(PYTORCHJOB, "PyTorchJob", NAMESPACE, "charts-lora-a2"), "attempt 2"
    )
    env = {
        e["name"]: e.get("value")
        for e in second["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["INTERNVL_ATTEMPT"] == "2" and env["INTERNVL_UID"] == "uid-1", "the same run uid, so it resumes"
    await harness.wait_for(
        lambda: harness.user.get(PYTORCHJOB, "PyTorchJob", NAMESPACE, "charts-lora-a1") is None, "a1 gone"
    )
    obj = await harness.get(FINETUNE, "InternVLFinetune", "charts-lora")
    assert obj["status"]["attempt"] == 2
    assert obj["status"]["lastFailureReason"] == "PyTorchJobFailed: Master failed"

    await harness.job_status("charts-lora-a2", ("Failed", "PyTorchJobFailed", "again"))
    obj = await harness.condition("charts-lora", "Failed", reason="PyTorchJobFailed")
    assert obj["status"]["attempt"] == 2


# Trainer's status of a TrainJob whose node pods are all ready (kubeflow-jobs §3.5).
NODES_READY = [{"name": "node", "active": 2, "ready": 2, "succeeded": 0, "failed": 0, "suspended": 0}]


async def test_a_trainjob_is_created_runs_and_succeeds(harness):
    await harness.call(harness.user.create, finetune(launcher="trainjob"))
    job = await harness.wait_for(lambda: harness.user.get(TRAINJOB, "TrainJob", NAMESPACE, "charts-lora-a1"), "job")
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("InternVLFinetune", "uid-1", True)
    assert job["spec"]["runtimeRef"]["name"] == "internvl-torch" and job["spec"]["suspend"] is False
    obj = await harness.condition("charts-lora", "JobCreated")
    assert (obj["status"]["job"]["kind"], obj["status"]["job"]["uid"]) == ("TrainJob", job["metadata"]["uid"])
    await harness.job_status("charts-lora-a1", api_version=TRAINJOB, jobsStatus=NODES_READY)
    await harness.condition("charts-lora", "Running")
    await harness.job_status(
        "charts-lora-a1", ("Complete", "AllJobsCompleted", "jobset completed successfully"), api_version=TRAINJOB
    )
    obj = await harness.condition("charts-lora", "Succeeded")
    assert obj["status"]["phase"] == "Succeeded" and obj["status"]["completionTime"]


async def test_a_failed_trainjob_restarts_as_a_new_attempt(harness):
    await harness.call(harness.user.create, finetune(launcher="trainjob", maxRestarts=1))
    await harness.condition("charts-lora", "JobCreated")
    await harness.job_status(
        "charts-lora-a1", ("Failed", "FailedJobs", "jobset failed"), api_version=TRAINJOB, jobsStatus=NODES_READY
    )
    second = await harness.wait_for(
        lambda: harness.user.get(TRAINJOB, "TrainJob", NAMESPACE, "charts-lora-a2"), "attempt 2"
    )
    env = {e["name"]: e.get("value") for e in second["spec"]["trainer"]["env"]}
    assert env["INTERNVL_ATTEMPT"] == "2" and env["INTERNVL_UID"] == "uid-1", "the same run uid, so it resumes"
    await harness.wait_for(
        lambda: harness.user.get(TRAINJOB, "TrainJob", NAMESPACE, "charts-lora-a1") is None, "a1 gone"
    )
    obj = await harness.get(FINETUNE, "InternVLFinetune", "charts-lora")
    assert obj["status"]["attempt"] == 2
    assert obj["status"]["lastFailureReason"] == "FailedJobs: jobset failed"

    await harness.job_status("charts-lora-a2", ("Failed", "FailedJobs", "again"), api_version=TRAINJOB)
    obj = await harness.condition("charts-lora", "Failed", reason="FailedJobs")
    assert obj["status"]["attempt"] == 2


@pytest.mark.parametrize(("name", "reason"), [("pytorchjob", "PyTorchJobSuspended"), ("trainjob", "Suspended")])
async def test_suspend_and_resume_without_kueue(harness, name, reason):
    launcher = LAUNCHERS[name]
    await harness.call(harness.user.create, finetune(launcher=name))
    await harness.condition("charts-lora", "JobCreated")
    await harness.change_spec("charts-lora", {"suspend": True})

    def suspended(value):
        job = harness.user.get(launcher.api_version, launcher.kind, NAMESPACE, "charts-lora-a1")
        return launcher.suspended(job) is value

    await harness.wait_for(lambda: suspended(True), "the job suspended")
    await harness.job_status("charts-lora-a1", ("Suspended", reason, "suspended"), api_version=launcher.api_version)
    await harness.condition("charts-lora", "Suspended", reason=reason)
    await harness.change_spec("charts-lora", {"suspend": False})
    await harness.wait_for(lambda: suspended(False), "the job resumed")


# The reason each launcher's controller gives its Suspended condition.
@pytest.mark.parametrize(("name", "reason"), [("pytorchjob", "PyTorchJobSuspended"), ("trainjob", "Suspended")])
async def test_a_kueue_held_job_is_left_to_kueue(harness, name, reason):
    launcher = LAUNCHERS[name]
    await harness.call(harness.user.create, finetune(launcher=name, queueName="team-a"))
    job = await harness.wait_for(
        lambda: harness.user.get(launcher.api_version, launcher.kind, NAMESPACE, "charts-lora-a1"), "job"
    )
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert launcher.suspended(job) is True
    workload = {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "Workload",
        "metadata": {
            "name": f"{name}-charts-lora-a1",
            "namespace": NAMESPACE,
            "labels": {"kueue.x-k8s.io/job-uid": "job-uid-7"},
        },
        "status": {
            "conditions": [
                {"type": "QuotaReserved", "status": "False", "message": "insufficient quota for nvidia.com/gpu"}
            ]
        },
    }
    await harness.call(harness.user.create, workload)
    await harness.call(
        harness.user.patch,
        launcher.api_version,
        launcher.kind,
        NAMESPACE,
        "charts-lora-a1",
        {"metadata": {"uid": "job-uid-7"}},
    )
    await harness.job_status("charts-lora-a1", ("Suspended", reason, "job suspended"), api_version=launcher.api_version)
    obj = await harness.condition("charts-lora", "Suspended", reason=reason)
    messages = [c["message"] for c in obj["status"]["conditions"] if c["type"] == "Suspended"]
    assert messages == ["job suspended; insufficient quota for nvidia.com/gpu"]
    await asyncio.sleep(0.5)
    job = await harness.get(launcher.api_version, launcher.kind, "charts-lora-a1")
    assert launcher.suspended(job) is True, "never unsuspended by the operator"


@pytest.mark.parametrize("name", ["pytorchjob", "trainjob"])
async def test_a_queued_job_without_a_workload_names_kueues_integration(harness, name):
    launcher = LAUNCHERS[name]
    await harness.call(harness.user.create, finetune(launcher=name, queueName="team-a"))
    await harness.wait_for(
        lambda: harness.user.get(launcher.api_version, launcher.kind, NAMESPACE, "charts-lora-a1"), "job"
    )
    await harness.job_status("charts-lora-a1", ("Suspended", "Suspended", "held"), api_version=launcher.api_version)
    obj = await harness.condition("charts-lora", "Suspended")
    [message] = [c["message"] for c in obj["status"]["conditions"] if c["type"] == "Suspended"]
    assert message.endswith(
        f"Kueue has no Workload for this {launcher.kind} yet; if none comes, Kueue does not manage the kind: "
        f"add {launcher.kueue_framework} to integrations.frameworks in Kueue's configuration"
    )


async def test_an_invalid_spec_is_reported_and_the_operator_runs_on(harness):
    bad = finetune(uid="uid-bad")
    bad["metadata"]["name"] = "broken"
    bad["spec"]["method"] = {"type": "full", "lora": {"rank": 4}}
    await harness.call(harness.user.create, bad)
    obj = await harness.condition("broken", "Valid", "False", "InvalidSpec")
    assert "lora settings are only allowed with method type lora" in obj["status"]["conditions"][0]["message"]
    await harness.call(harness.user.create, finetune())
    await harness.condition("charts-lora", "JobCreated")
    assert await harness.get(PYTORCHJOB, "PyTorchJob", "broken-a1") is None


@pytest.mark.parametrize(
    ("kind", "obj", "crd"),
    [
        ("MPIJob", finetune("mpijob-lora-internvl3-38b.yaml"), "mpijobs.kubeflow.org"),
        ("TrainJob", finetune(launcher="trainjob"), "trainjobs.trainer.kubeflow.org"),
    ],
    ids=["mpijob", "trainjob"],
)
async def test_a_missing_launcher_crd_is_reported(emulator, kind, obj, crd):
    serve(emulator, {k: v for k, v in RESOURCES.items() if v != kind})
    url = str(emulator.url).rstrip("/")
    running = await start_operator(url, client_for(url))
    harness = Harness(emulator, client_for(url), client_for(url), url)
    try:
        await harness.call(harness.user.create, obj)
        found = await harness.condition(obj["metadata"]["name"], "Valid", "False", "LauncherNotInstalled")
        assert f"install the CRD {crd}" in found["status"]["conditions"][0]["message"]
        serve(emulator)  # the CRD installed: found with no change to the object
        found = await harness.condition(obj["metadata"]["name"], "JobCreated")
        assert found["status"]["job"]["kind"] == kind
    finally:
        await stop_operator(running)


@pytest.mark.parametrize(
    ("served", "kind"),
    [(set(RESOURCES.values()), "TrainJob"), (set(RESOURCES.values()) - {"TrainJob"}, "PyTorchJob")],
    ids=["every-launcher", "no-trainjob"],
)
async def test_auto_runs_as_the_first_launcher_served_on_every_attempt(emulator, served, kind):
    serve(emulator, {resource: k for resource, k in RESOURCES.items() if k in served})
    url = str(emulator.url).rstrip("/")
    harness = Harness(emulator, client_for(url), client_for(url), url)
    running = await start_operator(url, harness.operator_cluster)
    try:
        await harness.call(harness.user.create, finetune(launcher="auto", maxRestarts=1))
        obj = await harness.condition("charts-lora", "JobCreated")
        assert obj["status"]["job"]["kind"] == kind
        assert obj["status"]["plan"]["launcher"] == kind.lower()
        launcher = LAUNCHERS[kind.lower()]
        failed = ("Failed", "FailedJobs" if kind == "TrainJob" else "PyTorchJobFailed", "node 0 failed")
        await harness.job_status("charts-lora-a1", failed, api_version=launcher.api_version)
        await harness.wait_for(
            lambda: harness.user.get(launcher.api_version, launcher.kind, NAMESPACE, "charts-lora-a2"), "attempt 2"
        )
    finally:
        await stop_operator(running)


@pytest.mark.parametrize("name", ["pytorchjob", "trainjob"])
async def test_a_restarted_operator_creates_no_duplicates(emulator, name):
    launcher = LAUNCHERS[name]
    serve(emulator)
    url = str(emulator.url).rstrip("/")
    user = client_for(url)
    harness = Harness(emulator, client_for(url), user, url)
    running = await start_operator(url, harness.operator_cluster)
    await harness.call(user.create, finetune(launcher=name))
    await harness.condition("charts-lora", "JobCreated")
    await stop_operator(running)

    restarted = client_for(url)
    running = await start_operator(url, restarted)
    try:
        await asyncio.sleep(1.0)
        jobs = await harness.call(user.list, launcher.api_version, launcher.kind, NAMESPACE, {})
        assert [j["metadata"]["name"] for j in jobs] == ["charts-lora-a1"]
        config_maps = await harness.call(user.list, "v1", "ConfigMap", NAMESPACE, {})
        assert [c["metadata"]["name"] for c in config_maps] == ["charts-lora-a1-train"]
        assert ("get", FINETUNE.split("/")[0], "internvlfinetunes") in restarted.calls
    finally:
        await stop_operator(running)


async def test_every_api_call_is_within_the_declared_permissions(harness):
    await harness.call(harness.user.create, finetune(maxRestarts=1))
    await harness.condition("charts-lora", "JobCreated")
    await harness.job_status("charts-lora-a1", ("Failed", "PyTorchJobFailed", "x"))
    await harness.wait_for(lambda: harness.user.get(PYTORCHJOB, "PyTorchJob", NAMESPACE, "charts-lora-a2"), "a2")
    await harness.change_spec("charts-lora", {"suspend": True})
    await harness.wait_for(
        lambda: harness.user.get(PYTORCHJOB, "PyTorchJob", NAMESPACE, "charts-lora-a2")["spec"]["runPolicy"]["suspend"],
        "suspended",
    )
    declared = {(verb, group, resource) for group, resource, verbs in OPERATOR_PERMISSIONS for verb in verbs}
    used = {call for call in harness.operator_cluster.calls if call[2]}
    assert used <= declared, f"calls outside the declared permissions: {sorted(used - declared)}"
    assert {
        ("create", "kubeflow.org", "pytorchjobs"),
        ("delete", "kubeflow.org", "pytorchjobs"),
        ("patch", "kubeflow.org", "pytorchjobs"),
        ("patch", "internvl.dev", "internvlfinetunes/status"),
        ("list", "", "pods"),
    } <= used


def rendered(obj: dict, attempt: int = 1) -> list[dict]:
    """The children the operator renders for an object."""
    resource = InternVLFinetune.model_validate(obj)
    return render(render_context(resource, plan(resource.spec), attempt, SETTINGS, on_every_launcher(resource)))


async def test_a_refused_job_is_reported_and_not_retried(harness):
    message = 'PyTorchJob.kubeflow.org "charts-lora-a1" is invalid: spec.pytorchReplicaSpecs.Master: Invalid value'
    refused = harness.refuse(("kubeflow.org", "v1", "pytorchjobs"), 422, message)
    await harness.call(harness.user.create, finetune())
    obj = await harness.condition("charts-lora", "JobCreated", "False", "CreateRefused")
    [created] = [c for c in obj["status"]["conditions"] if c["type"] == "JobCreated"]
    assert created["message"].startswith(f"the API server refused PyTorchJob charts-lora-a1 (HTTP 422): {message}")
    assert obj["status"]["phase"] == "Pending"
    await harness.event("charts-lora", "Warning", "CreateRefused", created["message"])
    assert await harness.get("v1", "ConfigMap", "charts-lora-a1-train") is not None, "the children before it exist"
    assert await harness.get(PYTORCHJOB, "PyTorchJob", "charts-lora-a1") is None
    assert refused == ["charts-lora-a1"], "a refusal is not retried while the spec stays the same"

    await harness.change_spec("charts-lora", {"maxRestarts": 5})
    await harness.wait_for(lambda: len(refused) == 2, "a new generation tried again")


async def test_a_failed_create_is_retried_with_backoff(harness):
    refused = harness.refuse(("kubeflow.org", "v1", "pytorchjobs"), 500, "etcdserver: request timed out", times=1)
    await harness.call(harness.user.create, finetune())
    await harness.wait_for(lambda: harness.user.get(PYTORCHJOB, "PyTorchJob", NAMESPACE, "charts-lora-a1"), "job")
    obj = await harness.condition("charts-lora", "JobCreated")
    assert refused == ["charts-lora-a1"]
    assert obj["status"]["job"]["uid"], "the job created on the retry is recorded"
    await harness.event("charts-lora", "Warning", "CreateFailed")


async def test_a_planted_config_map_is_not_adopted(harness):
    obj = finetune()
    config_map = rendered(obj)[0]  # owner reference, labels and even the content hash of the real one
    train = yaml.safe_load(config_map["data"]["train.yaml"])
    train["output"]["uri"] = "s3://attacker/loot"
    train["storage"]["endpoint"] = "http://attacker.example:9000"
    config_map["data"]["train.yaml"] = yaml.safe_dump(train)
    await harness.call(harness.user.create, config_map)
    await harness.call(harness.user.create, obj)
    found = await harness.condition("charts-lora", "JobCreated", "False", "NameConflict")
    [conflict] = [c for c in found["status"]["conditions"] if c["type"] == "JobCreated"]
    assert conflict["message"].startswith("ConfigMap charts-lora-a1-train exists with this InternVLFinetune as owner")
    assert await harness.get(PYTORCHJOB, "PyTorchJob", "charts-lora-a1") is None, "nothing runs with it"
    kept = await harness.get("v1", "ConfigMap", "charts-lora-a1-train")
    assert "s3://attacker/loot" in kept["data"]["train.yaml"]
    await harness.event("charts-lora", "Warning", "NameConflict", conflict["message"])


async def test_children_of_an_earlier_run_of_the_operator_are_adopted(harness):
    obj = finetune()
    for child in rendered(obj)[:-1]:  # it stopped before creating the job
        await harness.call(harness.user.create, child)
    await harness.call(harness.user.create, obj)
    found = await harness.condition("charts-lora", "JobCreated")
    record = json.loads(found["metadata"]["annotations"][RECORD_ANNOTATION])
    assert record["attempt"] == 1 and record["job"]["uid"] == found["status"]["job"]["uid"]
    config_maps = await harness.call(harness.user.list, "v1", "ConfigMap", NAMESPACE, {})
    assert [c["metadata"]["name"] for c in config_maps] == ["charts-lora-a1-train"]


async def test_a_trainjob_kueue_admitted_before_the_record_was_written_is_adopted(harness):
    obj = finetune(launcher="trainjob", queueName="team-a")
    *children, job = rendered(obj)
    job["spec"]["suspend"] = False
    job["spec"]["runtimePatches"].append(KUEUE_PATCH)
    for child in [*children, job]:
        await harness.call(harness.user.create, child)
    await harness.call(harness.user.create, obj)
    found = await harness.condition("charts-lora", "JobCreated")
    planted = await harness.get(TRAINJOB, "TrainJob", "charts-lora-a1")
    assert found["status"]["job"]["uid"] == planted["metadata"]["uid"]
    jobs = await harness.call(harness.user.list, TRAINJOB, "TrainJob", NAMESPACE, {})
    assert [j["metadata"]["name"] for j in jobs] == ["charts-lora-a1"]


async def test_a_status_forged_by_the_trainer_is_reverted(harness):
    await harness.call(harness.user.create, finetune())
    honest = await harness.condition("charts-lora", "JobCreated")
    forged = {
        "conditions": [
            {
                "type": "Succeeded",
                "status": "True",
                "reason": "JobSucceeded",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "phase": "Succeeded",
        "attempt": 5,
        "output": {"modelUri": "s3://attacker/model"},
        "progress": {"step": 3, "totalSteps": 10},
    }
    await harness.call(
        harness.user.patch,
        FINETUNE,
        "InternVLFinetune",
        NAMESPACE,
        "charts-lora",
        {"status": forged},
        subresource="status",
    )

    def reverted():
        status = (harness.user.get(FINETUNE, "InternVLFinetune", NAMESPACE, "charts-lora") or {})["status"]
        types = {c["type"]: c["status"] for c in status["conditions"]}
        return types.get("Succeeded") == "Unknown" and status.get("attempt") == 1 and "output" not in status and status

    status = await harness.wait_for(reverted, "the forged status reverted")
    assert status["phase"] == honest["status"]["phase"] and status["progress"]["step"] == 3
    assert await harness.get(PYTORCHJOB, "PyTorchJob", "charts-lora-a5") is None
