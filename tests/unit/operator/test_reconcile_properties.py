"""Property: every object the API server can store reaches a status, never an exception.

Objects are generated from the CRD's own schema (spec and status), with the metadata the API
server sets, and reconciled with the launcher's CRD served or not, with no job, and with the job
of the current attempt in every phase its conditions and pods can show, owned by the object or
by someone else. Every status patch the operator writes must be one the API server stores.
"""

import copy
import uuid
from datetime import UTC, datetime

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from internvl_operator import conditions as cond
from internvl_operator.crd import crd_schema
from internvl_operator.launchers import LAUNCHERS
from internvl_operator.reconcile import Observed, reconcile
from internvl_operator.settings import OperatorSettings
from tests.unit.operator.strategies import SPEC_SCHEMA, VALID_SPECS, from_schema

NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
STATUS_SCHEMA = crd_schema()["properties"]["status"]
STATUS_VALIDATOR = jsonschema.Draft7Validator(STATUS_SCHEMA)

DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
# metadata.name of a custom resource: a DNS-1123 subdomain of at most 253 characters.
NAMES = st.from_regex(rf"{DNS_LABEL}(\.{DNS_LABEL}){{0,4}}", fullmatch=True).filter(lambda name: len(name) <= 253)
NAMESPACES = st.from_regex(DNS_LABEL, fullmatch=True)


@st.composite
def stored_objects(draw):
    """An InternVLFinetune as the API server returns it: a spec the schema admits (satisfying the
    CEL rules or not: the operator must cope with either), any status the schema admits (the
    status subresource takes what a trainer or an older operator wrote), and server-set metadata."""
    spec = draw(st.one_of(VALID_SPECS, from_schema(SPEC_SCHEMA)))
    obj = {
        "apiVersion": "internvl.dev/v1alpha1",
        "kind": "InternVLFinetune",
        "metadata": {
            "name": draw(NAMES),
            "namespace": draw(NAMESPACES),
            "uid": str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)), version=4)),
            "generation": draw(st.integers(1, 2**63 - 1)),
            "resourceVersion": str(draw(st.integers(1, 2**63 - 1))),
            "creationTimestamp": "2026-11-23T11:00:00Z",
        },
        "spec": spec,
    }
    status = draw(st.none() | from_schema(STATUS_SCHEMA))
    if status is not None:
        obj["status"] = status
    return obj


def pod(phase_cause):
    """A pod of the job showing one cause job_status reads, or none."""
    status = {
        "unschedulable": {
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4"}]
        },
        "image": {
            "containerStatuses": [
                {"name": "pytorch", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}
            ]
        },
        "oom": {"containerStatuses": [{"name": "pytorch", "state": {"terminated": {"reason": "OOMKilled"}}}]},
        "bad-input": {"containerStatuses": [{"name": "pytorch", "state": {"terminated": {"exitCode": 2}}}]},
        "running": {"phase": "Running"},
    }[phase_cause]
    return {"metadata": {"name": "job-pod-0"}, "status": status}


JOB_CONDITIONS = {
    "none": [],
    "created": [("Created", "JobCreated", "created")],
    "running": [("Running", "JobRunning", "running")],
    "suspended": [("Suspended", "JobSuspended", "suspended")],
    "restarting": [("Restarting", "JobRestarting", "restarting")],
    "succeeded": [("Succeeded", "JobSucceeded", "done")],
    "failed": [("Failed", "JobFailed", "boom")],
}
POD_CAUSES = ["unschedulable", "image", "oom", "bad-input", "running"]


def observe(body, job=None, pods=(), served=frozenset(LAUNCHERS), queue_message=None, operator_settings=None):
    observed = Observed(body, job, list(pods), served, NOW, queue_message)
    return reconcile(observed, operator_settings or OperatorSettings())


def merged(target, patch):
    """A JSON merge patch (RFC 7386) applied, as the API server applies the operator's: null
    removes a key, an object merges key by key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merged(result.get(key), value)
    return result


def applied(body, actions):
    """The object once the API server merged the status patch, which it must accept."""
    updated = copy.deepcopy(body)
    updated["status"] = merged(body.get("status") or {}, actions.status)
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in STATUS_VALIDATOR.iter_errors(updated["status"])
    ]
    assert errors == [], "the API server would refuse the status patch"
    return updated


def check(body, actions):
    """What every reconciliation must give: a status patch the API server stores, no condition
    that says the operator failed, and events with a type, a reason and a message."""
    assert isinstance(actions.status, dict)
    updated = applied(body, actions)
    before = (body.get("status") or {}).get("conditions") or []
    for condition in actions.status.get("conditions") or []:
        # The reasons of the operator's safety nets: an exception was caught, a bug to fix.
        if condition not in before:
            assert condition["reason"] not in ("OperatorError", "RenderFailed"), condition["message"]
    for kind, reason, message in actions.events:
        assert kind in ("Normal", "Warning") and reason and isinstance(message, str)
    return updated


PROPERTY = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


@PROPERTY
@given(
    obj=stored_objects(),
    served=st.frozensets(st.sampled_from(sorted(LAUNCHERS))),
    allow_host_network=st.booleans(),
    conditions=st.sampled_from(sorted(JOB_CONDITIONS)),
    pods=st.lists(st.sampled_from(POD_CAUSES), max_size=2),
    owned=st.booleans(),
    queue_message=st.none() | st.text(max_size=40),
)
def test_every_stored_object_reaches_a_status(obj, served, allow_host_network, conditions, pods, owned, queue_message):
    operator_settings = OperatorSettings(allow_host_network=allow_host_network)
    first = observe(obj, served=served, operator_settings=operator_settings)
    body = check(obj, first)
    if not first.create:
        assert cond.find(body["status"].get("conditions") or [], cond.VALID) is not None
        return
    job = copy.deepcopy(first.create[-1])
    job["metadata"]["uid"] = "job-uid"
    if not owned:
        job["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    job["status"] = {
        "conditions": [
            {"type": type_, "status": "True", "reason": reason, "message": message}
            for type_, reason, message in JOB_CONDITIONS[conditions]
        ]
    }
    again = observe(
        body,
        job,
        [pod(cause) for cause in pods],
        served=served,
        queue_message=queue_message,
        operator_settings=operator_settings,
    )
    check(body, again)


def test_a_global_batch_that_cannot_be_laid_out_is_invalid_with_a_sentence(lora_cr):
    body = copy.deepcopy(lora_cr)
    body["metadata"].update({"uid": "7d9f3c2a-1b4e-4f6a-8c0d-2e5f7a9b1c3d", "generation": 1})
    body["spec"]["resources"] = {"gpus": 1, "gpusPerNode": 1}
    body["spec"]["training"] = {"globalBatchSize": 1048573}
    actions = observe(body)
    valid = cond.find(actions.status["conditions"], cond.VALID)
    assert (valid["status"], valid["reason"]) == ("False", "InvalidSpec")
    assert valid["message"].startswith("spec.training.globalBatchSize: 1048573 samples over 1 GPU cannot be laid out")
    assert actions.create == []


def test_a_huge_global_batch_on_one_gpu_creates_its_job(lora_cr):
    body = copy.deepcopy(lora_cr)
    body["metadata"].update({"uid": "7d9f3c2a-1b4e-4f6a-8c0d-2e5f7a9b1c3d", "generation": 1})
    body["spec"]["resources"] = {"gpus": 1, "gpusPerNode": 1}
    body["spec"]["training"] = {"globalBatchSize": 1048576}
    actions = observe(body)
    assert [c["kind"] for c in actions.create][-1] == "TrainJob"
    assert cond.find(actions.status["conditions"], cond.JOB_CREATED)["status"] == "True"


def test_host_network_is_refused_unless_the_installation_allows_it(lora_cr):
    body = copy.deepcopy(lora_cr)
    body["metadata"].update({"uid": "7d9f3c2a-1b4e-4f6a-8c0d-2e5f7a9b1c3d", "generation": 1})
    body["spec"]["pod"] = {"hostNetwork": True}
    refused = observe(body)
    valid = cond.find(refused.status["conditions"], cond.VALID)
    assert (valid["status"], valid["reason"]) == ("False", "HostNetworkNotAllowed")
    assert "spec.pod.hostNetwork" in valid["message"] and "INTERNVL_OPERATOR_ALLOW_HOST_NETWORK" in valid["message"]
    assert refused.create == [] and ("Warning", "HostNetworkNotAllowed") in [e[:2] for e in refused.events]
    allowed = observe(body, operator_settings=OperatorSettings(allow_host_network=True))
    pod_spec = allowed.create[-1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod_spec["hostNetwork"] is True
