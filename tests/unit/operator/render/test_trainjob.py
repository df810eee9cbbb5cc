"""The TrainJob: the runtime it refers to, the trainer block, the operator's runtime patch,
suspend and Kueue; every example valid against Trainer v2.3's CRD, its webhook rules and the
"restricted" Pod Security Standard."""

import copy

import pytest

from internvl_operator.launchers import LAUNCHERS
from internvl_operator.planner import plan
from internvl_operator.render.kubeflow_rules import trainjob_problems
from internvl_operator.render.trainjob import PATCHABLE_POD_FIELDS, pod_patch, trainjob, unsupported_fields
from internvl_operator.resolve import render_context
from internvl_operator.settings import OperatorSettings
from internvl_operator.validation import parse
from tests.conftest import EXAMPLES, load_example
from tests.unit.operator.render.conftest import (
    UID,
    context_for,
    kubeflow_schema,
    plan_for,
    pod_templates,
    schema_errors,
)
from tests.unit.pod_security import restricted_violations

OBJECT_EXAMPLES = sorted(path.name for path in EXAMPLES.glob("*.yaml") if path.name != "train.yaml")


def node_patch(job):
    [patch] = job["spec"]["runtimePatches"]
    [node] = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return node["template"]["spec"]["template"]


# What the examples set that a TrainJob cannot carry; each example renders without it.
NOT_FOR_TRAINJOB = {"full-internvl2_5-26b.yaml": ["spec.pod.priorityClassName", "spec.ttlSecondsAfterFinished"]}


@pytest.mark.parametrize("example", OBJECT_EXAMPLES)
def test_every_example_renders_a_valid_trainjob(example):
    document = load_example(example)
    refused = [problem.split(":")[0] for problem in unsupported_fields(parse(document).spec)]
    assert refused == NOT_FOR_TRAINJOB.get(example, [])
    document["spec"].get("pod", {}).pop("priorityClassName", None)
    document["spec"].pop("ttlSecondsAfterFinished", None)
    resource = parse(document)
    job = trainjob(render_context(resource, plan(resource.spec), 1, OperatorSettings(), LAUNCHERS["trainjob"]))
    assert schema_errors(job) == []
    assert trainjob_problems(job) == []
    for name, template in pod_templates(job).items():
        assert restricted_violations(template) == [], name


def test_the_runtime_and_the_trainer(lora_cr):
    job = trainjob(context_for(lora_cr, plan=plan_for(nodes=4, gpus_per_node=4), attempt=2))
    assert (job["apiVersion"], job["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job["metadata"]["name"] == "charts-lora-a2"
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "internvl-torch",
    }
    trainer = job["spec"]["trainer"]
    assert trainer["image"].startswith("ghcr.io/internvl-finetune/trainer:")
    assert trainer["command"] == ["internvl-train", "launch", "--config", "/etc/internvl/train.yaml"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 4)
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "32", "nvidia.com/gpu": "4"},
        "limits": {"nvidia.com/gpu": "4"},
    }
    assert trainer["env"][:5] == [
        {"name": "LAUNCHER", "value": "pytorch"},
        {"name": "INTERNVL_NAME", "value": "charts-lora"},
        {"name": "INTERNVL_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "INTERNVL_UID", "value": UID},
        {"name": "INTERNVL_ATTEMPT", "value": "2"},
    ]
    assert not [variable for variable in trainer["env"] if variable["name"].startswith("PET_")]
    assert "activeDeadlineSeconds" not in job["spec"] and job["spec"]["suspend"] is False


def test_the_runtime_patch_carries_the_pod(lora_cr):
    job = trainjob(context_for(lora_cr, attempt=3))
    [patch] = job["spec"]["runtimePatches"]
    assert patch["manager"] == "internvl.dev/operator"
    pod = node_patch(job)
    assert pod["metadata"] == {
        "labels": {
            "app.kubernetes.io/name": "internvl-finetune",
            "app.kubernetes.io/instance": "charts-lora",
            "app.kubernetes.io/component": "trainer",
            "app.kubernetes.io/managed-by": "internvl-operator",
            "internvl.dev/uid": UID,
            "internvl.dev/attempt": "3",
        }
    }
    assert pod["spec"] == {
        "serviceAccountName": "charts-lora-trainer",
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "node",
                "volumeMounts": [
                    {"name": "train-config", "mountPath": "/etc/internvl", "readOnly": True},
                    {"name": "scratch", "mountPath": "/scratch"},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }
        ],
        "volumes": [
            {
                "name": "train-config",
                "configMap": {"name": "charts-lora-a3-train", "items": [{"key": "train.yaml", "path": "train.yaml"}]},
            },
            {"name": "scratch", "emptyDir": {"sizeLimit": "200Gi"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}},
        ],
    }


def test_placement_pull_secrets_and_scratch_go_through_the_patch(full_cr):
    cr = copy.deepcopy(full_cr)
    cr["spec"]["resources"]["scratch"] = {"claimName": "model-cache"}
    del cr["spec"]["ttlSecondsAfterFinished"]
    cr["spec"]["pod"] = {
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
                }
            }
        },
        "imagePullSecrets": [{"name": "registry"}],
        "annotations": {"sidecar.istio.io/inject": "false"},
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
    }
    job = trainjob(context_for(cr, plan_for(nodes=2)))
    pod = node_patch(job)
    assert pod["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert {key: pod["spec"][key] for key in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets")} == {
        key: cr["spec"]["pod"][key] for key in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets")
    }
    assert pod["spec"]["volumes"][1] == {"name": "scratch", "persistentVolumeClaim": {"claimName": "model-cache"}}
    # The user's variables are the trainer's (a patch may not set env on the container node).
    assert job["spec"]["trainer"]["env"][-1] == {"name": "NCCL_DEBUG", "value": "INFO"}
    assert "env" not in pod["spec"]["containers"][0]
    assert schema_errors(job) == [] and trainjob_problems(job) == []


def test_suspend_kueue_and_deadline(lora_cr):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["queueName"] = "gpu-queue"
    cr["spec"]["activeDeadlineSeconds"] = 86400
    job = trainjob(context_for(cr))
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    assert job["spec"]["activeDeadlineSeconds"] == 86400
    cr["spec"].pop("queueName")
    cr["spec"]["suspend"] = True
    job = trainjob(context_for(cr))
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"] and job["spec"]["suspend"] is True


def test_the_job_is_owned_by_the_object(lora_cr):
    [owner] = trainjob(context_for(lora_cr))["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "InternVLFinetune",
        "charts-lora",
        UID,
        True,
    )


UNSUPPORTED = [
    ({"pod": {"priorityClassName": "high"}}, "spec.pod.priorityClassName"),
    ({"pod": {"schedulerName": "volcano"}}, "spec.pod.schedulerName"),
    ({"pod": {"hostNetwork": True}}, "spec.pod.hostNetwork"),
    ({"ttlSecondsAfterFinished": 3600}, "spec.ttlSecondsAfterFinished"),
]


@pytest.mark.parametrize(("fields", "path"), UNSUPPORTED)
def test_fields_a_trainjob_cannot_carry_are_named_not_dropped(lora_cr, fields, path):
    cr = copy.deepcopy(lora_cr)
    cr["spec"].update(fields)
    context = context_for(cr, allow_host_network=True)
    [problem] = unsupported_fields(context.resource.spec)
    assert problem.startswith(f"{path}: ")
    with pytest.raises(ValueError, match=path):
        trainjob(context)


def test_the_schema_check_catches_misspelt_fields_cel_rules_and_repeated_keys(lora_cr):
    job = trainjob(context_for(lora_cr))
    job["spec"]["trainer"]["numNode"] = 1
    job["spec"]["managedBy"] = "someone"
    job["spec"]["trainer"]["env"].append({"name": "LAUNCHER", "value": "mpi"})
    node_patch(job)["spec"]["containers"][0]["volumeMount"] = []
    errors = schema_errors(job)
    assert any("numNode" in e for e in errors)
    assert any("volumeMount'" in e for e in errors)
    assert (
        "spec.managedBy: ManagedBy must be trainer.kubeflow.org/trainjob-controller or kueue.x-k8s.io/multikueue if set"
        in errors
    )
    assert 'spec.trainer.env[11].name: Duplicate value: "LAUNCHER"' in errors


def test_the_patch_never_drops_a_pod_field(lora_cr):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["pod"] = {"priorityClassName": "high", "hostNetwork": True}
    with pytest.raises(ValueError, match=r"runtimePatches cannot set the pod fields \['dnsPolicy', 'hostNetwork', "):
        pod_patch(context_for(cr, allow_host_network=True))


def test_the_patchable_pod_fields_are_trainers():
    schema = kubeflow_schema("TrainJob")["properties"]["spec"]["properties"]["runtimePatches"]["items"]
    jobs = schema["properties"]["trainingRuntimeSpec"]["properties"]["template"]["properties"]["spec"]
    job = jobs["properties"]["replicatedJobs"]["items"]["properties"]["template"]
    pod = job["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
    assert set(pod["properties"]) == PATCHABLE_POD_FIELDS
