"""The API models agree with the API server: strict JSON types, Kubernetes' integer bounds and
string formats, the object's metadata, reserved env names and the fields that need privileges."""

import copy
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from kubernetes.utils.quantity import parse_quantity
from pydantic import TypeAdapter, ValidationError

from internvl_operator.api import (
    RESERVED_ENV_NAMES,
    RESERVED_ENV_PREFIXES,
    InternVLFinetune,
    InternVLFinetuneStatus,
    Quantity,
    is_reserved_env_name,
)
from internvl_operator.crd import crd_schema
from internvl_operator.render.mpijob import mpijob
from internvl_operator.render.pytorchjob import pytorchjob
from internvl_operator.validation import as_served, cel_problems, validate
from internvl_trainer.config import TrainConfig
from tests.unit.operator.render.conftest import context_for, plan_for
from tests.unit.operator.test_crd import walk

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
SPEC_SCHEMA = crd_schema()["properties"]["spec"]


def changed(cr: dict, path: str, value) -> dict:
    """A copy of ``cr`` with the dotted ``path`` set to ``value``."""
    obj = copy.deepcopy(cr)
    *parents, leaf = path.split(".")
    node = obj
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return obj


def problems(obj: dict) -> list[str]:
    return [str(p) for p in validate(obj)]


# ---------------------------------------------------------------------------------------------
# strict types


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("spec.resources.gpus", "8"),
        ("spec.resources.gpus", True),
        ("spec.deepspeed.stage", True),
        ("spec.deepspeed.stage", "2"),
        ("spec.data.packing", "yes"),
        ("spec.data.packing", 1),
        ("spec.training.learningRate", "1e-5"),
        ("spec.training.learningRate", True),
        ("spec.training.warmupRatio", float("nan")),
        ("spec.method.lora", {"rank": 8.5}),
        ("spec.suspend", "false"),
        ("spec.storage.region", 1),
    ],
)
def test_values_the_api_server_refuses_for_their_type_are_refused(lora_cr, path, value):
    found = problems(changed(lora_cr, path, value))
    assert found and found[0].startswith(path), found


@pytest.mark.parametrize(
    ("path", "value", "parsed"),
    [
        ("spec.resources.gpus", 8.0, 8),  # JSON has one kind of number; kubectl sends YAML's 8.0 as 8
        ("spec.deepspeed.stage", 3.0, 3),
        ("spec.training.learningRate", 1, 1.0),
        ("spec.data.evalSplit", 0, 0.0),
    ],
)
def test_json_numbers_are_accepted_as_the_api_server_does(lora_cr, path, value, parsed):
    obj = changed(lora_cr, path, value)
    assert problems(obj) == []
    node = InternVLFinetune.model_validate(obj).to_wire()
    for part in path.split("."):
        node = node[part]
    assert node == parsed and type(node) is type(parsed)


def test_status_times_are_read_from_rfc_3339_strings_only():
    condition = {"type": "Valid", "status": "True", "reason": "Valid", "message": ""}
    status = InternVLFinetuneStatus.model_validate(
        {
            "conditions": [{**condition, "lastTransitionTime": "2025-03-01T12:00:00Z"}],
            "startTime": "2025-03-01T12:00:00Z",
        }
    )
    assert status.conditions[0].last_transition_time.year == 2025
    with pytest.raises(ValidationError, match="RFC 3339"):
        InternVLFinetuneStatus.model_validate({"conditions": [{**condition, "lastTransitionTime": 1740830400}]})


# ---------------------------------------------------------------------------------------------
# integer bounds


def test_every_integer_has_bounds_within_int64():
    for path, node in walk(crd_schema()):
        if node["type"] != "integer":
            continue
        if "enum" in node:  # an enum bounds it too
            assert all(isinstance(v, int) and -(2**63) <= v <= INT64_MAX for v in node["enum"]), path
            continue
        assert "minimum" in node and "maximum" in node, f"{path} has no bounds"
        assert -(2**63) <= node["minimum"] <= node["maximum"] <= INT64_MAX, path


@pytest.mark.parametrize(
    ("field", "maximum"),
    [
        ("spec.ttlSecondsAfterFinished", INT32_MAX),  # the job's runPolicy.ttlSecondsAfterFinished is an int32
        ("spec.activeDeadlineSeconds", INT64_MAX),
        ("spec.pod.tolerations[].tolerationSeconds", INT64_MAX),
        ("spec.training.seed", INT32_MAX),
        ("status.observedGeneration", INT64_MAX),
    ],
)
def test_fields_that_land_in_kubernetes_fields_have_their_type_s_bound(lora_cr, field, maximum):
    [node] = [node for path, node in walk(crd_schema()) if path == f"<root>.{field}"]
    assert node["maximum"] == maximum
    if field.startswith("spec.") and "[]" not in field:
        assert problems(changed(lora_cr, field, maximum)) == []
        assert problems(changed(lora_cr, field, maximum + 1))[0].startswith(f"{field}: Input should be less than")


def test_toleration_seconds_beyond_int64_are_refused(lora_cr):
    pod = {"tolerations": [{"key": "gpu", "effect": "NoExecute", "tolerationSeconds": 2**63}]}
    assert problems(changed(lora_cr, "spec.pod", pod)) == [
        "spec.pod.tolerations[0].tolerationSeconds: Input should be less than or equal to 9223372036854775807"
    ]


# ---------------------------------------------------------------------------------------------
# patterns


def _patterns(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern":
                yield value
            elif key == "patternProperties":
                yield from value
            elif key == "rule":  # the regular expressions of CEL rules run in Go too
                yield from re.findall(r"matches\('([^']*)'\)", value)
            yield from _patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item)


# Go's regexp and Rust's disagree on these: \s, \d, \w, \b are ASCII in Go and Unicode in Rust (and
# so in pydantic), as are case folding and Unicode classes.
UNICODE_SENSITIVE = re.compile(r"\\[sSdDwWbBpP]|\(\?[a-zA-Z]*i")


@pytest.mark.parametrize("model", [InternVLFinetune, TrainConfig])
def test_no_pattern_uses_a_unicode_sensitive_class(model):
    patterns = [*_patterns(model.model_json_schema(by_alias=True)), *_patterns(crd_schema())]
    assert patterns
    assert [p for p in patterns if UNICODE_SENSITIVE.search(p)] == []


def test_a_non_ascii_space_is_not_whitespace_as_in_go(lora_cr):
    # Go's [^\s] admits a no-break space; so must the models, or validate refuses what the server stores.
    assert problems(changed(lora_cr, "spec.output.uri", "s3://models/run\u00a01")) == []
    assert problems(changed(lora_cr, "spec.output.uri", "s3://models/run 1"))[0].startswith("spec.output.uri: must be")


# ---------------------------------------------------------------------------------------------
# cross-field rules the API server enforces


def rule_problems(obj: dict) -> list[str]:
    spec = as_served(obj, crd_schema())["spec"]
    return [str(p) for p in cel_problems(SPEC_SCHEMA, spec, location=("spec",))]


def test_more_min_frames_than_max_frames_is_refused_by_the_api_server_too(lora_cr):
    obj = changed(lora_cr, "spec.data.video", {"minFrames": 40, "maxFrames": 32})
    assert rule_problems(obj) == ["spec.data.video.minFrames: minFrames must not exceed maxFrames"]
    assert problems(obj) == ["spec.data.video: minFrames (40) exceeds maxFrames (32)"]
    assert rule_problems(changed(lora_cr, "spec.data.video", {"minFrames": 16})) == []


@pytest.mark.parametrize(
    "endpoint", ["http://user:secret@minio:9000", "https://key@s3.example.com", "http://a:b@host/path@x"]
)
def test_an_endpoint_with_credentials_is_refused(lora_cr, endpoint):
    [problem] = problems(changed(lora_cr, "spec.storage.endpoint", endpoint))
    assert problem.startswith("spec.storage.endpoint: must be an http:// or https:// URL without credentials")


MLFLOW = {"trackingUri": "http://mlflow.ml:5000", "experiment": "internvl"}
WANDB = {"project": "vlm", "apiKeySecret": "wandb"}


@pytest.mark.parametrize(
    ("tracking", "field", "reason"),
    [
        ({"mlflow": {**MLFLOW, "trackingUri": "https://user:pw@mlflow.ml"}}, "mlflow.trackingUri", "must be an http"),
        ({"mlflow": {**MLFLOW, "trackingUri": "file:///mlruns"}}, "mlflow.trackingUri", "must be an http"),
        ({"mlflow": {"trackingUri": "http://mlflow.ml:5000"}}, "mlflow.experiment", "required field is missing"),
        ({"mlflow": {**MLFLOW, "credentialsSecret": "Bad_Name"}}, "mlflow.credentialsSecret", "must be"),
        ({"wandb": {"project": "vlm"}}, "wandb.apiKeySecret", "required field is missing"),
        ({"wandb": {**WANDB, "project": "team/vlm"}}, "wandb.project", "must be a project name"),
        ({"wandb": {**WANDB, "entity": "my team"}}, "wandb.entity", "must be letters"),
        ({"wandb": {**WANDB, "apiKey": "abc"}}, "wandb.apiKey", "unknown field"),
    ],
)
def test_a_bad_tracking_setting_is_refused_naming_its_field(lora_cr, tracking, field, reason):
    [problem] = problems(changed(lora_cr, "spec.tracking", tracking))
    assert problem.startswith(f"spec.tracking.{field}: {reason}"), problem


def test_both_trackers_are_accepted(lora_cr):
    assert problems(changed(lora_cr, "spec.tracking", {"mlflow": MLFLOW, "wandb": WANDB})) == []


@pytest.mark.parametrize(
    "endpoint", ["http://minio.minio.svc:9000", "https://s3.example.com/base?x=1#y", "http://h/a@b"]
)
def test_an_endpoint_without_credentials_is_accepted(lora_cr, endpoint):
    assert problems(changed(lora_cr, "spec.storage.endpoint", endpoint)) == []


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("nvidia.com/gpu", True),
        ("amd.com/gpu", True),
        ("gpu.intel.com/i915", True),
        ("example.com/Fast_GPU.v2", True),
        ("gpu", False),
        ("nvidia.com/", False),
        ("Nvidia.com/gpu", False),
        ("nvidia.com/gpu/x", False),
        ("kubernetes.io/gpu", False),
        ("requests.nvidia.com/gpu", False),
    ],
)
def test_gpu_resource_name_is_an_extended_resource_name(lora_cr, name, accepted):
    found = problems(changed(lora_cr, "spec.resources.gpuResourceName", name))
    assert (found == []) is accepted, found


# ---------------------------------------------------------------------------------------------
# quantities


QUANTITY_PATTERN = SPEC_SCHEMA["properties"]["resources"]["properties"]["memory"]["pattern"]


@pytest.mark.parametrize(
    "quantity",
    ["0", "8", "500m", "1.5", ".5", "5.", "+1", "1e3", "1E3", "2e-3", "1e+3", "64Gi", "1Ei", "100n", "10u", "2k", "3E"],
)
def test_kubernetes_quantities_are_accepted_and_parse(quantity):
    assert TypeAdapter(Quantity).validate_python(quantity) == quantity
    assert parse_quantity(quantity) >= 0


@pytest.mark.parametrize(
    "quantity",
    ["-1", "-500m", "1K", "1e", "1.5.5", "Gi", "1 Gi", "1KiB", "0x10", "1e3Gi", "inf", ".0E2000000000000000000"],
)
def test_other_strings_and_negative_quantities_are_refused(quantity):
    with pytest.raises(ValidationError):
        TypeAdapter(Quantity).validate_python(quantity)


@example(".0E999")
@given(st.from_regex(QUANTITY_PATTERN, fullmatch=True).filter(lambda q: len(q) <= 64))
def test_every_quantity_the_pattern_admits_parses_as_a_quantity(quantity):
    assert parse_quantity(quantity) >= 0


def test_a_large_binary_quantity_is_accepted(lora_cr):
    assert problems(changed(lora_cr, "spec.resources.memory", "1056439880Ki")) == []


# ---------------------------------------------------------------------------------------------
# metadata


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"name": "x", "nmespace": "ml"}, "metadata.nmespace: unknown field"),
        ({"name": "x", "labels": {"team/a/b": "x"}}, "metadata.labels.team/a/b: must be a qualified name"),
        ({"name": "x", "labels": {"Example.com/team": "x"}}, "metadata.labels[Example.com/team]: must be a qualified"),
        ({"name": "x", "labels": {"team": "a b"}}, "metadata.labels.team: must be a label value"),
        ({"name": "x", "annotations": {"-note": "x"}}, "metadata.annotations.-note: must be a qualified name"),
        ({"name": "x", "annotations": {"note": "x" * 262141}}, "metadata.annotations: annotations take 262145 bytes"),
        ({"name": "x", "finalizers": ["a/b/c"]}, "metadata.finalizers[0]: must be a qualified name"),
        ({"name": "X"}, "metadata.name: must be a DNS subdomain"),
        ({"name": "x", "generation": "1"}, "metadata.generation: Input should be a valid integer"),
    ],
)
def test_metadata_is_validated_as_the_api_server_does(lora_cr, metadata, message):
    found = problems({**lora_cr, "metadata": metadata})
    assert found and found[0].startswith(message), found


def test_metadata_the_api_server_writes_is_read(lora_cr):
    metadata = {
        "name": "charts-lora",
        "namespace": "ml",
        "uid": "0b6d2c1e-8a7f-4e54-9d1a-3f2c5b7e9a10",
        "resourceVersion": "4711",
        "generation": 2,
        "creationTimestamp": "2025-03-01T12:00:00Z",
        "labels": {"app.kubernetes.io/part-of": "charts", "tier": ""},
        "annotations": {"Example.COM/Note": "x" * 1000, "kopf.zalando.org/last-handled-configuration": "{}"},
        "finalizers": ["kopf.zalando.org/KopfFinalizerMarker"],
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u", "controller": True}],
        "managedFields": [
            {
                "manager": "kubectl",
                "operation": "Apply",
                "apiVersion": "internvl.dev/v1alpha1",
                "time": "2025-03-01T12:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:model": {}}},
            }
        ],
    }
    obj = {**lora_cr, "metadata": metadata}
    assert problems(obj) == []
    assert InternVLFinetune.model_validate(obj).metadata.uid == metadata["uid"]


# ---------------------------------------------------------------------------------------------
# env names the operator and Kubeflow set


def _rendered_env_names(job: dict) -> set[str]:
    names = set()
    replicas = job["spec"].get("pytorchReplicaSpecs") or job["spec"]["mpiReplicaSpecs"]
    for replica in replicas.values():
        for container in replica["template"]["spec"]["containers"]:
            names |= {variable["name"] for variable in container["env"]}
            command = container.get("command") or []
            names |= {arg.split("=", 1)[0] for flag, arg in zip(command, command[1:], strict=False) if flag == "-x"}
    return names


def test_every_variable_the_renderers_set_is_reserved(lora_cr):
    context = context_for(lora_cr, plan_for(nodes=2))
    names = _rendered_env_names(pytorchjob(context)) | _rendered_env_names(mpijob(context))
    assert {"MASTER_ADDR", "INTERNVL_UID", "AWS_ACCESS_KEY_ID", "LAUNCHER"} <= names
    assert [name for name in sorted(names) if not is_reserved_env_name(name)] == []


@pytest.mark.parametrize(
    "name", ["MASTER_ADDR", "AWS_SECRET_ACCESS_KEY", "RANK", "PET_NNODES", "OMPI_MCA_x", "LAUNCHER"]
)
def test_a_reserved_env_name_is_refused_naming_them_all(lora_cr, name):
    obj = changed(lora_cr, "spec.pod", {"env": [{"name": name, "value": "x"}]})
    [problem] = problems(obj)
    assert problem.startswith("spec.pod.env[0].name: is reserved: the operator or Kubeflow sets INTERNVL_NAME")
    assert all(reserved in problem for reserved in RESERVED_ENV_NAMES + RESERVED_ENV_PREFIXES)
    assert rule_problems(obj) == [problem]


# ---------------------------------------------------------------------------------------------
# the shape of the spec


def test_no_field_of_the_spec_is_free_form():
    free = [path for path, node in walk(SPEC_SCHEMA) if node.get("x-kubernetes-preserve-unknown-fields")]
    assert free == []


@pytest.mark.parametrize(
    "field",
    [
        "pod.hostNetwork",
        "pod.imagePullSecrets",
        "pod.schedulerName",
        "pod.priorityClassName",
        "storage.credentialsSecret",
        "tracking.mlflow.credentialsSecret",
        "tracking.wandb.apiKeySecret",
        "resources.scratch.claimName",
    ],
)
def test_privileged_fields_say_so(field):
    node = SPEC_SCHEMA
    for part in field.split("."):
        node = node["properties"][part]
    assert "Privileged:" in node["description"]
