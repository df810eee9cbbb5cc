"""The PyTorchJob: replicas, the torchrun command, the contract's environment, resources,
volumes, placement and run policy."""

import copy

from internvl_operator.render import render
from tests.unit.operator.render.conftest import UID, context_for, plan_for


def job_of(cr, **kwargs):
    cr = copy.deepcopy(cr)
    cr["spec"]["launcher"] = "pytorchjob"
    *_, job = render(context_for(cr, **kwargs))
    return job


def trainer_of(job, replica="Master"):
    return job["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]["containers"][0]


def test_one_node_is_a_master_only(lora_cr):
    job = job_of(lora_cr)
    assert job["apiVersion"] == "kubeflow.org/v1"
    assert job["metadata"]["name"] == "charts-lora-a1"
    assert job["metadata"]["namespace"] == "ml"
    assert job["spec"]["nprocPerNode"] == "8"
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["restartPolicy"] == "Never"


def test_four_nodes_are_a_master_and_three_workers(lora_cr):
    replicas = job_of(lora_cr, plan=plan_for(nodes=4, gpus_per_node=4))["spec"]["pytorchReplicaSpecs"]
    assert {k: v["replicas"] for k, v in replicas.items()} == {"Master": 1, "Worker": 3}
    assert replicas["Master"]["template"] == replicas["Worker"]["template"]


def test_the_trainer_container(lora_cr):
    trainer = trainer_of(job_of(lora_cr, attempt=3))
    assert trainer["name"] == "pytorch"
    assert trainer["image"].startswith("ghcr.io/internvl-finetune/trainer:")
    assert trainer["command"] == ["internvl-train", "launch", "--config", "/etc/internvl/train.yaml"]
    assert trainer["ports"] == [{"name": "pytorchjob-port", "containerPort": 29500}]
    assert trainer["env"] == [
        {"name": "LAUNCHER", "value": "pytorch"},
        {"name": "INTERNVL_NAME", "value": "charts-lora"},
        {"name": "INTERNVL_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "INTERNVL_UID", "value": UID},
        {"name": "INTERNVL_ATTEMPT", "value": "3"},
        {"name": "INTERNVL_SCRATCH", "value": "/scratch"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        *[
            {"name": key, "valueFrom": {"secretKeyRef": {"name": "s3-credentials", "key": key, "optional": optional}}}
            for key, optional in [
                ("AWS_ACCESS_KEY_ID", False),
                ("AWS_SECRET_ACCESS_KEY", False),
                ("AWS_SESSION_TOKEN", True),
            ]
        ],
    ]
    assert trainer["resources"] == {"requests": {"cpu": "64", "nvidia.com/gpu": "8"}, "limits": {"nvidia.com/gpu": "8"}}
    assert trainer["volumeMounts"] == [
        {"name": "train-config", "mountPath": "/etc/internvl", "readOnly": True},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]


def test_the_pod(lora_cr):
    pod = job_of(lora_cr, attempt=2)["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    assert pod["metadata"]["labels"] == {
        "app.kubernetes.io/name": "internvl-finetune",
        "app.kubernetes.io/instance": "charts-lora",
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/managed-by": "internvl-operator",
        "internvl.dev/uid": UID,
        "internvl.dev/attempt": "2",
    }
    assert pod["spec"]["serviceAccountName"] == "charts-lora-trainer"
    assert pod["spec"]["volumes"] == [
        {
            "name": "train-config",
            "configMap": {"name": "charts-lora-a2-train", "items": [{"key": "train.yaml", "path": "train.yaml"}]},
        },
        {"name": "scratch", "emptyDir": {"sizeLimit": "200Gi"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}},
    ]
    assert "nodeSelector" not in pod["spec"] and "hostNetwork" not in pod["spec"]
    # The "restricted" Pod Security Standard, with the image's own non-root user.
    assert pod["spec"]["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert trainer_of(job_of(lora_cr))["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def test_spec_resources_placement_and_env(lora_cr):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["resources"] = {
        "gpuResourceName": "amd.com/gpu",
        "gpusPerNode": 4,
        "cpu": "48",
        "memory": "512Gi",
        "ephemeralStorage": "100Gi",
        "scratch": {"claimName": "model-cache"},
    }
    cr["spec"]["pod"] = {
        "nodeSelector": {"gpu": "mi300x"},
        "tolerations": [{"key": "amd.com/gpu", "operator": "Exists"}],
        "priorityClassName": "high",
        "schedulerName": "volcano",
        "imagePullSecrets": [{"name": "registry"}],
        "annotations": {"team": "vision"},
        "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
        "hostNetwork": True,
    }
    cr["spec"]["trainerImage"] = "registry.example.com/trainer:1.2"
    job = job_of(cr, plan=plan_for(nodes=2, gpus_per_node=4))
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]
    trainer = pod["spec"]["containers"][0]
    assert trainer["image"] == "registry.example.com/trainer:1.2"
    assert trainer["resources"] == {
        "requests": {"cpu": "48", "memory": "512Gi", "ephemeral-storage": "100Gi", "amd.com/gpu": "4"},
        "limits": {"amd.com/gpu": "4"},
    }
    assert trainer["env"][-1] == {"name": "NCCL_DEBUG", "value": "INFO"}
    assert pod["metadata"]["annotations"] == {"team": "vision"}
    assert pod["spec"]["volumes"][1] == {"name": "scratch", "persistentVolumeClaim": {"claimName": "model-cache"}}
    assert {k: pod["spec"][k] for k in ("nodeSelector", "tolerations", "priorityClassName", "schedulerName")} == {
        "nodeSelector": {"gpu": "mi300x"},
        "tolerations": [{"key": "amd.com/gpu", "operator": "Exists"}],
        "priorityClassName": "high",
        "schedulerName": "volcano",
    }
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    assert (pod["spec"]["hostNetwork"], pod["spec"]["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")


def test_run_policy(lora_cr):
    assert job_of(lora_cr)["spec"]["runPolicy"] == {"cleanPodPolicy": "Running", "backoffLimit": 0, "suspend": False}
    cr = copy.deepcopy(lora_cr)
    cr["spec"].update({"activeDeadlineSeconds": 86400, "ttlSecondsAfterFinished": 3600, "suspend": True})
    assert job_of(cr)["spec"]["runPolicy"] == {
        "cleanPodPolicy": "Running",
        "backoffLimit": 0,
        "suspend": True,
        "activeDeadlineSeconds": 86400,
        "ttlSecondsAfterFinished": 3600,
    }


def test_a_queued_job_is_created_suspended_with_kueues_label(lora_cr):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["queueName"] = "gpu-queue"
    job = job_of(cr)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["runPolicy"]["suspend"] is True


def test_the_job_is_owned_by_the_object(lora_cr):
    assert job_of(lora_cr)["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "internvl.dev/v1alpha1",
            "kind": "InternVLFinetune",
            "name": "charts-lora",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def test_no_spec_value_reaches_a_shell(lora_cr):
    cr = copy.deepcopy(lora_cr)
    cr["spec"]["pod"] = {"env": [{"name": "EVIL", "value": "$(rm -rf /); `reboot`"}]}
    cr["spec"]["output"]["uri"] = "s3://models/out;rm-rf;reboot"
    for launcher in ("pytorchjob", "mpijob"):
        cr["spec"]["launcher"] = launcher
        *_, job = render(context_for(cr))
        replicas = job["spec"].get("pytorchReplicaSpecs") or job["spec"]["mpiReplicaSpecs"]
        for replica in replicas.values():
            for container in replica["template"]["spec"]["containers"]:
                command = container.get("command", [])
                assert command[:1] not in (["sh"], ["bash"], ["/bin/sh"], ["/bin/bash"])
                assert not any("rm -rf" in part or "reboot" in part for part in command), command
