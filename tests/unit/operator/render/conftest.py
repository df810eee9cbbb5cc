"""Render contexts for tests, and validation against the real Kubernetes and Kubeflow schemas."""

import copy
import functools

import jsonschema
import kubernetes_validate
import pytest
import yaml

from internvl_operator import validation
from internvl_operator.api import InternVLFinetune, PlanStatus
from internvl_operator.launchers import LAUNCHERS, Launcher, chosen
from internvl_operator.render import RenderContext
from internvl_operator.settings import OperatorSettings
from internvl_trainer.config import TrainConfig
from tests.conftest import REPO

KUBERNETES_VERSION = "1.32.0"
KUBEFLOW_CRDS = REPO.parent / "shared" / "reference" / "crds"
CRD_FILES = {
    "PyTorchJob": "kubeflow.org_pytorchjobs.yaml",
    "MPIJob": "kubeflow.org_mpijobs.v2beta1.yaml",
    "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
    "ClusterTrainingRuntime": "trainer.kubeflow.org_clustertrainingruntimes.yaml",
}
# Trainer's CRDs carry CEL rules and list-map keys, which the API server checks after the schema.
TRAINER_KINDS = {"TrainJob", "ClusterTrainingRuntime"}
UID = "0b6d2c1e-8a7f-4e54-9d1a-3f2c5b7e9a10"


def plan_for(nodes: int = 1, gpus_per_node: int = 8, zero_stage: int = 2, per_device: int = 2) -> PlanStatus:
    gpus = nodes * gpus_per_node
    return PlanStatus(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        gpus=gpus,
        zero_stage=zero_stage,
        per_device_batch_size=per_device,
        gradient_accumulation_steps=max(1, 128 // (per_device * gpus)),
        policy="recipe",
    )


def context_for(cr: dict, plan: PlanStatus | None = None, attempt: int = 1, **settings) -> RenderContext:
    """A context as the operator would build it, with a hand-resolved train.yaml."""
    cr = copy.deepcopy(cr)
    cr["metadata"]["uid"] = UID
    resource = InternVLFinetune.model_validate(cr)
    plan = plan or plan_for()
    spec = resource.spec
    global_batch = plan.per_device_batch_size * plan.gradient_accumulation_steps * plan.gpus
    storage = spec.storage.to_wire()
    storage.pop("credentialsSecret", None)
    train_config = TrainConfig.model_validate(
        {
            "run": {"name": resource.metadata.name, "uid": UID},
            "model": spec.model.to_wire(),
            "method": {**spec.method.to_wire(), "dropPathRate": 0.1},
            "data": {**spec.data.to_wire(), "maxSeqLength": 8192, "maxTiles": 6},
            "training": {
                **spec.training.to_wire(),
                "globalBatchSize": global_batch,
                "learningRate": 4e-5,
                "weightDecay": 0.05,
            },
            "batch": {
                "perDeviceBatchSize": plan.per_device_batch_size,
                "gradientAccumulationSteps": plan.gradient_accumulation_steps,
                "worldSize": plan.gpus,
            },
            "deepspeed": {"zero_optimization": {"stage": plan.zero_stage}},
            "storage": storage,
            "output": spec.output.to_wire(),
        }
    )
    return RenderContext(
        resource, plan, train_config, attempt, OperatorSettings(**settings), on_every_launcher(resource)
    )


def on_every_launcher(resource: InternVLFinetune) -> Launcher:
    """The launcher the operator runs the object as on a cluster serving every launcher."""
    return chosen(resource.spec, None, frozenset(LAUNCHERS))


@functools.cache
def kubeflow_schema(kind: str) -> dict:
    """The openAPIV3Schema of a Kubeflow CRD, made strict: the API server prunes unknown fields
    silently, so a test must refuse them to catch a misspelt one."""
    path = KUBEFLOW_CRDS / CRD_FILES[kind]
    if not path.exists():
        pytest.skip(f"Kubeflow CRDs not found at {KUBEFLOW_CRDS}; job schemas not checked")
    crd = yaml.safe_load(path.read_text())
    return _strict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def _strict(node):
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            if not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


def pod_templates(obj: dict) -> dict[str, dict]:
    """Every pod template a Kubeflow object describes, by replica type or replicated job: for a
    TrainJob, the pod patch of each job (kubeflow-jobs §3.2)."""
    kind = obj["kind"]
    if kind in ("PyTorchJob", "MPIJob"):
        replicas = obj["spec"]["pytorchReplicaSpecs" if kind == "PyTorchJob" else "mpiReplicaSpecs"]
        return {replica_type: replica["template"] for replica_type, replica in replicas.items()}
    if kind == "TrainJob":
        jobs = [
            job
            for patch in obj["spec"].get("runtimePatches", [])
            for job in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        ]
    else:
        jobs = obj["spec"]["template"]["spec"]["replicatedJobs"]
    return {job["name"]: job["template"]["spec"]["template"] for job in jobs}


def _trainer_errors(obj: dict) -> list[str]:
    """What the API server checks after the schema on a Trainer object's spec: list-map keys and
    CEL rules, on the spec as defaulted (metadata.name's rules are kubeflow_rules')."""
    spec_schema = kubeflow_schema(obj["kind"])["properties"]["spec"]
    served = validation.as_served(obj["spec"], spec_schema)
    problems = validation.list_type_problems(spec_schema, served, ("spec",))
    problems += validation.cel_problems(spec_schema, served, location=("spec",))
    return [f"{problem.path}: {problem.message}" for problem in problems]


def schema_errors(obj: dict) -> list[str]:
    """Every way ``obj`` breaks its schema: Kubeflow objects against their CRDs (Trainer's with
    their CEL rules), their pod templates and core objects against Kubernetes' own OpenAPI
    (strict)."""
    kind = obj["kind"]
    if kind not in CRD_FILES:
        return core_errors(obj)
    validator = jsonschema.Draft4Validator(kubeflow_schema(kind))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    if kind in TRAINER_KINDS:
        errors += _trainer_errors(obj)
    for name, template in pod_templates(obj).items():
        pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        errors += [f"{name}: {e}" for e in core_errors(pod_template)]
    return errors


def core_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [str(error)]
    return []


# What Kueue writes into an admitted TrainJob (kubeflow-jobs §4): its own runtime patch, with the
# flavor's node selector and tolerations and its pod labels on each replicated job, and the time
# Trainer's webhook stamps on every patch.
KUEUE_PATCH = {
    "manager": "kueue.x-k8s.io/manager",
    "time": "2026-12-06T18:00:00Z",
    "trainingRuntimeSpec": {
        "template": {
            "spec": {
                "replicatedJobs": [
                    {
                        "name": "node",
                        "template": {
                            "spec": {
                                "template": {
                                    "metadata": {"labels": {"kueue.x-k8s.io/podset": "node"}},
                                    "spec": {
                                        "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
                                        "tolerations": [
                                            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                                        ],
                                    },
                                }
                            }
                        },
                    }
                ]
            }
        }
    },
}
