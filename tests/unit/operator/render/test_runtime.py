"""The ClusterTrainingRuntime internvl-torch: torch policy, one job node with container node, the
installation's image and volume sizes, restricted pods; valid against Trainer v2.3's CRD and its
runtime webhook."""

from internvl_operator.render.kubeflow_rules import INTERNVL_TORCH_JOBS, runtime_jobs, training_runtime_problems
from internvl_operator.render.runtime import cluster_training_runtime
from internvl_operator.settings import OperatorSettings
from tests.unit.operator.render.conftest import pod_templates, schema_errors
from tests.unit.pod_security import restricted_violations


def test_the_runtime():
    runtime = cluster_training_runtime(OperatorSettings())
    assert (runtime["apiVersion"], runtime["kind"]) == ("trainer.kubeflow.org/v1alpha1", "ClusterTrainingRuntime")
    assert runtime["metadata"] == {"name": "internvl-torch", "labels": {"trainer.kubeflow.org/framework": "torch"}}
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    assert "podGroupPolicy" not in runtime["spec"]
    template = runtime["spec"]["template"]["spec"]
    assert template["failurePolicy"] == {"maxRestarts": 0}
    [job] = template["replicatedJobs"]
    assert (job["name"], job["replicas"]) == ("node", 1)
    assert job["template"]["metadata"] == {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}}
    assert job["template"]["spec"]["backoffLimit"] == 0
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert "initContainers" not in pod
    [node] = pod["containers"]
    assert node["name"] == "node"
    assert node["image"] == OperatorSettings().trainer_image
    assert node["command"] == ["internvl-train", "launch", "--config", "/etc/internvl/train.yaml"]
    assert node["volumeMounts"] == [
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    assert pod["volumes"] == [
        {"name": "scratch", "emptyDir": {"sizeLimit": "200Gi"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}},
    ]


def test_the_installation_sets_image_pull_policy_and_sizes():
    settings = OperatorSettings(
        trainer_image="registry.example.com/trainer:1.2",
        image_pull_policy="Always",
        shm_size_limit="64Gi",
        scratch_size_limit="1Ti",
    )
    [job] = cluster_training_runtime(settings)["spec"]["template"]["spec"]["replicatedJobs"]
    pod = job["template"]["spec"]["template"]["spec"]
    assert (pod["containers"][0]["image"], pod["containers"][0]["imagePullPolicy"]) == (
        "registry.example.com/trainer:1.2",
        "Always",
    )
    assert [volume["emptyDir"]["sizeLimit"] for volume in pod["volumes"]] == ["1Ti", "64Gi"]


def test_the_runtime_is_valid_and_restricted():
    runtime = cluster_training_runtime(OperatorSettings())
    assert schema_errors(runtime) == []
    assert training_runtime_problems(runtime) == []
    assert restricted_violations(pod_templates(runtime)["node"]) == []


def test_trainjob_rules_know_its_jobs_and_containers():
    assert runtime_jobs(cluster_training_runtime(OperatorSettings())) == INTERNVL_TORCH_JOBS
