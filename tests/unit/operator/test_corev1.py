"""The core/v1 pod pieces of a spec: refused as a pod would be, by the models and by the CRD's
CEL rules alone (what the API server enforces when the object is stored)."""

import copy

import pytest

from internvl_operator.crd import crd_schema
from internvl_operator.validation import as_served, cel_problems, parse, validate

SPEC_SCHEMA = crd_schema()["properties"]["spec"]
EXISTS_NEEDS_NO_KEY = 'operator must be Exists when `key` is empty, which means "match all values and all keys"'


def with_pod(cr: dict, **pod) -> dict:
    changed = copy.deepcopy(cr)
    changed["spec"]["pod"] = pod
    return changed


def problems(obj: dict) -> list[str]:
    return [str(p) for p in validate(obj)]


def rule_problems(obj: dict) -> list[str]:
    """What the CRD's CEL rules alone refuse, on the object as the API server defaults it."""
    spec = as_served(obj, crd_schema())["spec"]
    return [str(p) for p in cel_problems(SPEC_SCHEMA, spec, location=("spec",))]


def node_term(*requirements: dict) -> dict:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": list(requirements)}
    ]}}}  # fmt: skip


def pod_term(**term) -> dict:
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


TERM = "spec.pod.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
REQUIREMENT = "spec.pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
REQUIREMENT += ".matchExpressions[0]"

# Refused by a rule of the CRD: the API server refuses them at `kubectl apply`, with this message.
BY_RULES = [
    # ValidateTolerations
    ({"tolerations": [{"operator": "Equal", "value": "x"}]}, f"spec.pod.tolerations[0]: {EXISTS_NEEDS_NO_KEY}"),
    ({"tolerations": [{"effect": "NoSchedule"}]}, f"spec.pod.tolerations[0]: {EXISTS_NEEDS_NO_KEY}"),
    (
        {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "yes"}]},
        "spec.pod.tolerations[0].operator: value must be empty when `operator` is 'Exists'",
    ),
    (
        {"tolerations": [{"key": "gpu", "tolerationSeconds": 60}]},
        "spec.pod.tolerations[0].tolerationSeconds: effect must be 'NoExecute' when `tolerationSeconds` is set",
    ),
    (
        {"tolerations": [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 60}]},
        "spec.pod.tolerations[0].tolerationSeconds: effect must be 'NoExecute' when `tolerationSeconds` is set",
    ),
    # validateEnv, validateEnvVarValueFrom
    (
        {"env": [{"name": "TOKEN", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
        "spec.pod.env[0].valueFrom: may not be specified when `value` is not empty",
    ),
    (
        {"env": [{"name": "TOKEN", "valueFrom": {}}]},
        "spec.pod.env[0].valueFrom: must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or "
        "`secretKeyRef`",
    ),
    (
        {
            "env": [
                {
                    "name": "TOKEN",
                    "valueFrom": {
                        "secretKeyRef": {"name": "s", "key": "k"},
                        "configMapKeyRef": {"name": "c", "key": "k"},
                    },
                }
            ]
        },
        "spec.pod.env[0].valueFrom: may not have more than one field specified at a time",
    ),
    (
        {"env": [{"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1Mi"}}}]},
        "spec.pod.env[0].valueFrom.resourceFieldRef.divisor: only divisor's values 1m and 1 are supported with the "
        "cpu resource",
    ),
    (
        {"env": [{"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1m"}}}]},
        "spec.pod.env[0].valueFrom.resourceFieldRef.divisor: only divisor's values 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, "
        "1Mi, 1Gi, 1Ti, 1Pi, 1Ei are supported",
    ),
    # ValidateNodeSelectorRequirement
    (
        {"affinity": node_term({"key": "gpu", "operator": "In"})},
        f"{REQUIREMENT}: values must be specified when `operator` is 'In' or 'NotIn'",
    ),
    (
        {"affinity": node_term({"key": "gpu", "operator": "Exists", "values": ["a100"]})},
        f"{REQUIREMENT}.values: values may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
    ),
    (
        {"affinity": node_term({"key": "gpu-count", "operator": "Gt", "values": ["4", "8"]})},
        f"{REQUIREMENT}: values must be specified single value when `operator` is 'Lt' or 'Gt'",
    ),
    # ValidateLabelSelectorRequirement
    (
        {
            "affinity": pod_term(
                topologyKey="kubernetes.io/hostname",
                labelSelector={"matchExpressions": [{"key": "app", "operator": "NotIn"}]},
            )
        },
        f"{TERM}.labelSelector.matchExpressions[0]: values must be specified when `operator` is 'In' or 'NotIn'",
    ),
    # validateMatchLabelKeysAndMismatchLabelKeys
    (
        {"affinity": pod_term(topologyKey="kubernetes.io/hostname", matchLabelKeys=["app"])},
        f"{TERM}.matchLabelKeys: must not be specified when labelSelector is not set",
    ),
    (
        {
            "affinity": pod_term(
                topologyKey="kubernetes.io/hostname",
                labelSelector={"matchLabels": {"team": "a"}},
                matchLabelKeys=["app"],
                mismatchLabelKeys=["app"],
            )
        },
        f"{TERM}.matchLabelKeys: exists in both matchLabelKeys and mismatchLabelKeys",
    ),
    # IsExtendedResourceName
    *[
        (
            {"__resources": {"gpuResourceName": name}},
            "spec.resources.gpuResourceName: must be an extended resource name: a vendor's domain outside",
        )
        for name in ("kubernetes.io/gpu", "gpu.kubernetes.io/a100", "requests.example.com/gpu", "a" * 245 + "/gpu")
    ],
]

KEYS_ARE_QUALIFIED = "keys must be qualified names: an optional DNS subdomain prefix of at most 253 characters"
# Map keys, which the CRD cannot constrain but with a rule on the map: the models name the key.
BAD_KEYS = [
    ({"nodeSelector": {"gpu/type/x": "a100"}}, "spec.pod.nodeSelector", ".gpu/type/x: must be a qualified name"),
    ({"nodeSelector": {"Example.com/gpu": "a"}}, "spec.pod.nodeSelector", "[Example.com/gpu]: must be a qualified"),
    ({"nodeSelector": {"gpu-": "a"}}, "spec.pod.nodeSelector", ".gpu-: must be a qualified name"),
    ({"nodeSelector": {"a" * 254 + "/gpu": "a"}}, "spec.pod.nodeSelector", ".a"),
    ({"nodeSelector": {"a" * 314 + "/gpu": "a"}}, "spec.pod.nodeSelector", ".a"),
    ({"annotations": {"-note": "x"}}, "spec.pod.annotations", ".-note: must be a qualified name"),
    ({"annotations": {"example.com/" + "n" * 64: "x"}}, "spec.pod.annotations", "[example.com/nnn"),
    (
        {"affinity": pod_term(topologyKey="zone", labelSelector={"matchLabels": {"a/b/c": "x"}})},
        f"{TERM}.labelSelector.matchLabels",
        ".a/b/c: must be a qualified name",
    ),
]


@pytest.mark.parametrize(("changes", "where", "_"), BAD_KEYS)
def test_the_crd_rules_refuse_map_keys_that_are_not_qualified_names(lora_cr, changes, where, _):
    [problem] = rule_problems(obj_with(lora_cr, changes))
    assert problem.startswith(f"{where}: {KEYS_ARE_QUALIFIED} and '/', then a name of at most 63")


@pytest.mark.parametrize(("changes", "where", "key"), BAD_KEYS)
def test_the_models_name_the_key(lora_cr, changes, where, key):
    [problem] = problems(obj_with(lora_cr, changes))
    assert problem.startswith(where + key)


def obj_with(cr: dict, changes: dict) -> dict:
    changes = dict(changes)
    resources = changes.pop("__resources", None)
    changed = with_pod(cr, **changes)
    if resources is not None:
        changed["spec"]["resources"] = resources
        changed["spec"]["pod"] = {}
    return changed


@pytest.mark.parametrize(("changes", "message"), BY_RULES)
def test_the_crd_rules_refuse_what_a_pod_would(lora_cr, changes, message):
    [problem] = rule_problems(obj_with(lora_cr, changes))
    assert problem.startswith(message)


@pytest.mark.parametrize(("changes", "message"), BY_RULES)
def test_the_models_refuse_the_same_with_the_same_message(lora_cr, changes, message):
    assert [p for p in problems(obj_with(lora_cr, changes)) if p.startswith(message)]


# Refused by the schema's patterns and bounds, which the models are generated with, or by the
# models only where a pattern cannot say it (a prefix's length, the size of all annotations):
# there the operator reports Valid=False naming the field, because the pods would be refused.
BY_MODELS = [
    ({"tolerations": [{"key": "-gpu"}]}, "spec.pod.tolerations[0].key: must be empty or a qualified name"),
    ({"tolerations": [{"key": "gpu", "value": "a b"}]}, "spec.pod.tolerations[0].value: must be a label value"),
    ({"tolerations": [{"key": "a" * 254 + "/x"}]}, "spec.pod.tolerations[0].key: prefix part must be no more than"),
    ({"nodeSelector": {"gpu": "a100!"}}, "spec.pod.nodeSelector.gpu: must be a label value"),
    (
        {"annotations": {f"k{i}": "x" * 5000 for i in range(53)}},
        "spec.pod.annotations: annotations take 265149 bytes, more than the limit of 262144",
    ),
    (
        {"env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.containers"}}}]},
        "spec.pod.env[0].valueFrom.fieldRef.fieldPath: must be a pod field for an env var",
    ),
    (
        {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "..x"}}}]},
        "spec.pod.env[0].valueFrom.secretKeyRef.key: must be a key of a ConfigMap or Secret",
    ),
    (
        {"env": [{"name": "T", "valueFrom": {"configMapKeyRef": {"name": "Bad_Name", "key": "k"}}}]},
        "spec.pod.env[0].valueFrom.configMapKeyRef.name: must be a DNS subdomain",
    ),
    ({"affinity": {"nodeAffinity": "gpu-nodes"}}, "spec.pod.affinity.nodeAffinity: Input should be a valid dictionary"),
    ({"affinity": {"nodeAfinity": {}}}, "spec.pod.affinity.nodeAfinity: unknown field"),
    (
        {"affinity": pod_term(labelSelector={"matchLabels": {"app": "x"}})},
        f"{TERM}.topologyKey: required field is missing",
    ),
    (
        {
            "affinity": {
                "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 101, "preference": {}}]}
            }
        },  # fmt: skip
        "spec.pod.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: Input should be "
        "less than or equal to 100",
    ),
    (
        {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}},
        "spec.pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms: List "
        "should have at least 1 item",
    ),
    (
        {
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchFields": [{"key": "metadata.labels", "operator": "In", "values": ["n1"]}]}
                        ]
                    }
                }
            }
        },  # fmt: skip
        "spec.pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]"
        ".matchFields[0].key: Input should be 'metadata.name'",
    ),
    (
        {"affinity": pod_term(topologyKey="zone", namespaces=["Team_A"])},
        f"{TERM}.namespaces[0]: must be a DNS label",
    ),
    (
        {
            "affinity": pod_term(
                topologyKey="zone",
                labelSelector={"matchExpressions": [{"key": "app", "operator": "In", "values": ["a b"]}]},
            )
        },
        f"{TERM}.labelSelector.matchExpressions[0].values[0]: must be a label value",
    ),
]


@pytest.mark.parametrize(("pod", "message"), BY_MODELS)
def test_the_models_refuse_what_a_pod_would(lora_cr, pod, message):
    found = problems(with_pod(lora_cr, **pod))
    assert [p for p in found if p.startswith(message)], found


def test_deeply_nested_affinity_is_refused_without_an_exception(lora_cr):
    deep: dict = {}
    for _ in range(300):
        deep = {"nodeAffinity": deep}
    found = problems(with_pod(lora_cr, affinity=deep))
    assert found and found[0].startswith("spec.pod.affinity.nodeAffinity.nodeAffinity: unknown field")


ACCEPTED = [
    {"tolerations": [{"operator": "Exists"}]},
    {"tolerations": [{"key": "", "operator": "Exists"}]},
    {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
    {"tolerations": [{"key": "gpu", "value": "", "effect": "NoExecute", "tolerationSeconds": 300}]},
    {"tolerations": [{"key": "example.com/dedicated", "operator": "Equal", "value": "ml-team_1.a"}]},
    {"nodeSelector": {"kubernetes.io/arch": "amd64", "nvidia.com/gpu.product": "", "Node_Pool-1": "a"}},
    {"annotations": {"Example.COM/Note": "any text: at all", "sidecar.istio.io/inject": "false"}},
    {"env": [{"name": "TOKEN", "value": "", "valueFrom": {"secretKeyRef": {"name": "s.v1", "key": ".token"}}}]},
    {"env": [{"name": "INTERNVL_MODEL_CACHE", "value": "/scratch/models"}, {"name": "NCCL_DEBUG", "value": "INFO"}]},
    {"env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]},
    {
        "env": [
            {"name": "ZONE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['topology.kubernetes.io/zone']"}}}
        ]
    },
    {"env": [{"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Gi"}}}]},
    {"env": [{"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}}}]},
    {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["H100"]}]},
                        {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["node-1"]}]},
                    ]
                },
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "preference": {"matchExpressions": [{"key": "gpus", "operator": "Gt", "values": ["7"]}]},
                    }
                ],
            },
            "podAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 1,
                        "podAffinityTerm": {
                            "topologyKey": "topology.kubernetes.io/zone",
                            "labelSelector": {"matchLabels": {"app": "data-cache"}},
                            "namespaceSelector": {},
                            "matchLabelKeys": ["team"],
                        },
                    }
                ]
            },
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
                        "namespaces": ["ml", "ml-2"],
                        "mismatchLabelKeys": ["tenant"],
                    }
                ]
            },
        }
    },
]


@pytest.mark.parametrize("pod", ACCEPTED)
def test_what_a_pod_accepts_is_accepted_and_rendered_as_stored(lora_cr, pod):
    obj = with_pod(lora_cr, **pod)
    assert problems(obj) == []
    assert rule_problems(obj) == []
    stored, rendered = as_served(obj, crd_schema())["spec"]["pod"], parse(obj).spec.pod.to_wire()
    assert {field: rendered[field] for field in pod} == {field: stored[field] for field in pod}


def test_env_and_image_pull_secrets_are_maps_keyed_by_name(lora_cr):
    pod = SPEC_SCHEMA["properties"]["pod"]["properties"]
    for field in ("env", "imagePullSecrets"):
        assert pod[field]["x-kubernetes-list-type"] == "map"
        assert pod[field]["x-kubernetes-list-map-keys"] == ["name"]
    twice = with_pod(lora_cr, env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}])
    assert problems(twice) == ['spec.pod.env[1].name: Duplicate value: "A"']
    secrets = with_pod(lora_cr, imagePullSecrets=[{"name": "regcred"}, {"name": "regcred"}])
    assert problems(secrets) == ['spec.pod.imagePullSecrets[1].name: Duplicate value: "regcred"']
