"""Whether an object found under a child's name is that child: a TrainJob Kueue admitted, its
runtime patch beside the operator's, is; one whose operator patch changed or went is not. The
lists matched by key are those the launchers' CRDs declare map lists."""

import copy

import jsonschema
import pytest

from internvl_operator import validation
from internvl_operator.launchers import LAUNCHERS
from internvl_operator.render import render
from internvl_operator.render.content import LIST_MAP_KEYS, content_hash, difference, projected
from internvl_operator.render.context import CONTENT_HASH_ANNOTATION
from tests.unit.operator.render.conftest import KUEUE_PATCH, context_for, kubeflow_schema, plan_for

TRAINJOB = LAUNCHERS["trainjob"]


def crd_errors(job):
    """What the API server refuses in a TrainJob by its CRD: the schema, list-map keys and CEL rules
    (a runtime patch's pod is a patch, not a pod Kubernetes' own schema applies to)."""
    schema = kubeflow_schema("TrainJob")
    errors = [error.message for error in jsonschema.Draft4Validator(schema).iter_errors(job)]
    spec_schema = schema["properties"]["spec"]
    spec = validation.as_served(job["spec"], spec_schema)
    problems = validation.list_type_problems(spec_schema, spec, ("spec",))
    problems += validation.cel_problems(spec_schema, spec, location=("spec",))
    return errors + [problem.message for problem in problems]


def declared_map_lists(value, schema, path=()):
    """The lists in ``value`` that ``schema`` declares map lists, by path ("*" for each item of a
    list), with their keys."""
    found = {}
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                found |= declared_map_lists(item, properties[key], (*path, key))
    elif isinstance(value, list):
        if schema.get("x-kubernetes-list-type") == "map":
            found[path] = tuple(schema["x-kubernetes-list-map-keys"])
        for item in value:
            found |= declared_map_lists(item, schema.get("items", {}), (*path, "*"))
    return found


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_the_lists_matched_by_key_are_the_map_lists_the_crd_declares(lora_cr, launcher):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["launcher"] = launcher
    cr["spec"]["pod"] = {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "registry"}],
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
    }
    *_, job = render(context_for(cr, plan_for(nodes=2)))
    declared = declared_map_lists(job, kubeflow_schema(job["kind"]))
    assert LIST_MAP_KEYS.get((job["apiVersion"], job["kind"]), {}) == declared


@pytest.fixture
def rendered(lora_cr):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["launcher"] = "trainjob"
    cr["spec"]["queueName"] = "gpu-queue"
    *_, job = render(context_for(cr))
    return job


def admitted(job, patches):
    """``job`` as the API server returns it once Kueue admitted it, with these runtime patches."""
    found = copy.deepcopy(job)
    found["metadata"] |= {"uid": "4b1c", "resourceVersion": "812", "generation": 2}
    found["spec"]["suspend"] = False
    found["spec"]["runtimePatches"] = [{**patch, "time": "2026-12-06T17:59:00Z"} for patch in patches]
    found["status"] = {
        "conditions": [],
        "jobsStatus": [{"name": "node", "active": 1, "ready": 0, "succeeded": 0, "failed": 0, "suspended": 0}],
    }
    return found


@pytest.mark.parametrize("kueue_first", [False, True])
def test_a_trainjob_kueue_admitted_is_the_child(rendered, kueue_first):
    [mine] = rendered["spec"]["runtimePatches"]
    found = admitted(rendered, [KUEUE_PATCH, mine] if kueue_first else [mine, KUEUE_PATCH])
    assert crd_errors(found) == []
    assert difference(rendered, found, TRAINJOB.suspend_path) is None
    # The hash the operator wrote is the hash of what it finds, Kueue's patch left out.
    list_map_keys = LIST_MAP_KEYS[(TRAINJOB.api_version, TRAINJOB.kind)]
    assert (
        content_hash(projected(found, rendered, list_map_keys), TRAINJOB.suspend_path)
        == (rendered["metadata"]["annotations"][CONTENT_HASH_ANNOTATION])
    )


def pod_of(patch):
    [job] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return job["template"]["spec"]["template"]["spec"]


def changed_account(patches):
    pod_of(patches[0])["serviceAccountName"] = "default"
    return patches


def changed_volume(patches):
    [volume] = [v for v in pod_of(patches[0])["volumes"] if "configMap" in v]
    volume["configMap"]["name"] = "planted-train"
    return patches


def operators_gone(patches):
    return patches[1:]


def operators_renamed(patches):
    patches[0]["manager"] = "example.com/other"
    return patches


@pytest.mark.parametrize("change", [changed_account, changed_volume, operators_gone, operators_renamed])
def test_a_trainjob_whose_operator_patch_changed_or_went_is_not_the_child(rendered, change):
    patches = change(copy.deepcopy([*rendered["spec"]["runtimePatches"], KUEUE_PATCH]))
    conflict = difference(rendered, admitted(rendered, patches), TRAINJOB.suspend_path)
    assert conflict == (
        f"TrainJob {rendered['metadata']['name']} exists with this InternVLFinetune as owner but was not created "
        "by the operator for it: its labels, annotations or content differ from what the operator renders"
    )


def test_an_item_added_to_a_list_that_is_not_a_map_list_is_a_difference(rendered):
    found = admitted(rendered, rendered["spec"]["runtimePatches"])
    assert difference(rendered, found, TRAINJOB.suspend_path) is None
    found["spec"]["trainer"]["command"].append("--debug")
    assert difference(rendered, found, TRAINJOB.suspend_path) is not None
