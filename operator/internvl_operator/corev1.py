"""The core/v1 pod pieces a spec may set, with Kubernetes' own validation rules.

Tolerations, environment variables and their sources, object references and the pod's affinity,
field for field as in core/v1, each bounded (so the API server can cost the CRD's CEL rules) and
validated as k8s.io/kubernetes/pkg/apis/core/validation validates a pod (ValidateTolerations,
validateEnv, ValidateAffinity, ValidateNodeSelector, ValidatePodAffinityTerm) and
k8s.io/apimachinery a label selector. What Kubernetes checks in code is a pattern or a CEL rule
here, with Kubernetes' message, so an object whose pods would be refused is refused when it is
stored, or by the operator naming the field.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, StringConstraints

from internvl_operator.kubeformats import (
    ANY_CASE_SUBDOMAIN_RE,
    DNS_SUBDOMAIN_MAX,
    DNS_SUBDOMAIN_RE,
    INT64_MAX,
    NAME_RE,
    QUALIFIED_NAME_MAX,
    Label,
    LabelValue,
    OptionalQualifiedName,
    QualifiedName,
    SpecLabels,
    Subdomain,
    prefix_within_limit,
)
from internvl_operator.rules import Rule, RuledSection
from internvl_trainer.config import Int, OptionalInt, Section
from internvl_trainer.problems import described_pattern

LIST_MAP_BY_NAME = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
"""Schema of a list whose items are keyed by their name (duplicates refused), as core/v1 marks a
container's env and a pod's imagePullSecrets."""

# ---------------------------------------------------------------------------------------------
# tolerations


class Toleration(RuledSection):
    """A pod toleration, as in core/v1: the pods may run on nodes with a matching taint."""

    rules = (
        Rule(
            "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
            'operator must be Exists when `key` is empty, which means "match all values and all keys"',
        ),
        Rule(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
            field="tolerationSeconds",
        ),
        Rule(
            "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "value must be empty when `operator` is 'Exists'",
            field="operator",
        ),
    )

    key: OptionalQualifiedName | None = None
    """Taint key, a qualified name; empty with operator Exists matches every taint."""

    operator: Literal["Exists", "Equal"] | None = None
    """Exists or Equal (default Equal)."""

    value: LabelValue | None = None
    """Taint value for operator Equal, a label value; empty for Exists."""

    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all."""

    toleration_seconds: OptionalInt = Field(None, ge=0, le=INT64_MAX)
    """How long a NoExecute taint is tolerated (effect NoExecute only); unset tolerates it
    forever."""


# ---------------------------------------------------------------------------------------------
# references


class LocalObjectReference(Section):
    """A reference to an object in the same namespace."""

    name: Label
    """Name of the object."""


ConfigMapKey = Annotated[
    str,
    StringConstraints(
        max_length=DNS_SUBDOMAIN_MAX,
        pattern=described_pattern(
            r"^\.?[-_a-zA-Z0-9][-._a-zA-Z0-9]*$",
            "a key of a ConfigMap or Secret: alphanumerics, '-', '_' or '.', not '.' or '..' nor starting with '..'",
        ),
    ),
]
"""A key of a ConfigMap or Secret (IsConfigMapKey)."""


class ConfigMapKeySelector(Section):
    """A key of a ConfigMap in the pod's namespace."""

    name: Subdomain
    """Name of the ConfigMap."""

    key: ConfigMapKey
    """The key to select."""

    optional: bool | None = None
    """Whether the ConfigMap or its key may be missing (the variable is then unset)."""


class SecretKeySelector(Section):
    """A key of a Secret in the pod's namespace."""

    name: Subdomain
    """Name of the Secret. Privileged: the pods read this Secret of the namespace."""

    key: ConfigMapKey
    """The key to select."""

    optional: bool | None = None
    """Whether the Secret or its key may be missing (the variable is then unset)."""


def _subscript_prefix_within_limit(field_path: str) -> str:
    if field_path.endswith("']"):
        prefix_within_limit(field_path.partition("['")[2][:-2])
    return field_path


_POD_FIELDS = (
    r"metadata\.(name|namespace|uid)|spec\.(nodeName|serviceAccountName)|status\.(hostIP|hostIPs|podIP|podIPs)"
)
PodFieldPath = Annotated[
    str,
    StringConstraints(
        max_length=len("metadata.annotations['']") + QUALIFIED_NAME_MAX,
        pattern=described_pattern(
            rf"^({_POD_FIELDS}|metadata\.labels\['({DNS_SUBDOMAIN_RE}/)?{NAME_RE}'\]"
            rf"|metadata\.annotations\['({ANY_CASE_SUBDOMAIN_RE}/)?{NAME_RE}'\])$",
            "a pod field for an env var: metadata.name, metadata.namespace, metadata.uid, spec.nodeName, "
            "spec.serviceAccountName, status.hostIP, status.hostIPs, status.podIP, status.podIPs, "
            "metadata.labels['<key>'] or metadata.annotations['<key>']",
        ),
    ),
    AfterValidator(_subscript_prefix_within_limit),
]


class ObjectFieldSelector(Section):
    """A field of the pod (the downward API)."""

    api_version: Literal["v1"] = "v1"
    """Version of the schema fieldPath is written in."""

    field_path: PodFieldPath
    """The pod field: metadata.name, metadata.namespace, metadata.uid, spec.nodeName,
    spec.serviceAccountName, status.hostIP(s), status.podIP(s), metadata.labels['<key>'] or
    metadata.annotations['<key>']."""


class ResourceFieldSelector(RuledSection):
    """A resource limit or request of a container (the downward API)."""

    rules = (
        Rule(
            "!has(self.divisor) || !self.resource.endsWith('.cpu') || self.divisor in ['1m', '1']",
            "only divisor's values 1m and 1 are supported with the cpu resource",
            field="divisor",
        ),
        Rule(
            "!has(self.divisor) || self.resource.endsWith('.cpu') || self.divisor != '1m'",
            "only divisor's values 1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei are supported with "
            "the memory, ephemeral-storage and hugepages resources",
            field="divisor",
        ),
    )

    container_name: Label | None = None
    """Container whose resource is read; unset: the trainer container itself."""

    resource: Annotated[
        str,
        StringConstraints(
            max_length=64,
            pattern=described_pattern(
                r"^(limits|requests)\.(cpu|memory|ephemeral-storage|hugepages-[0-9]+[KMGTPE]i)$",
                "limits.<resource> or requests.<resource> of cpu, memory, ephemeral-storage or hugepages-<size>",
            ),
        ),
    ]
    """The resource: limits.cpu, limits.memory, limits.ephemeral-storage, requests.cpu,
    requests.memory, requests.ephemeral-storage or limits|requests.hugepages-<size>."""

    divisor: Literal["1m", "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei"] | None = (
        None
    )
    """Unit of the value (default 1): 1m or 1 for cpu, 1 to 1Ei for the others."""


class EnvVarSource(RuledSection):
    """Where a variable's value comes from: exactly one of the four sources."""

    rules = (
        Rule(
            "has(self.configMapKeyRef) || has(self.fieldRef) || has(self.resourceFieldRef) || has(self.secretKeyRef)",
            "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
            reason="FieldValueRequired",
        ),
        Rule(
            "(has(self.configMapKeyRef) ? 1 : 0) + (has(self.fieldRef) ? 1 : 0) + (has(self.resourceFieldRef) ? 1 : 0)"
            " + (has(self.secretKeyRef) ? 1 : 0) <= 1",
            "may not have more than one field specified at a time",
        ),
    )

    config_map_key_ref: ConfigMapKeySelector | None = None
    """A key of a ConfigMap."""

    field_ref: ObjectFieldSelector | None = None
    """A field of the pod."""

    resource_field_ref: ResourceFieldSelector | None = None
    """A resource limit or request of the container."""

    secret_key_ref: SecretKeySelector | None = None
    """A key of a Secret."""


EnvVarName = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=256,
        pattern=described_pattern(
            r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", "an environment variable name: letters, digits, '_', '-' and '.'"
        ),
    ),
]


class EnvVar(RuledSection):
    """An environment variable of a container, as in core/v1."""

    rules = (
        Rule(
            "!has(self.valueFrom) || !has(self.value) || self.value == ''",
            "may not be specified when `value` is not empty",
            field="valueFrom",
            reason="FieldValueForbidden",
        ),
    )

    name: EnvVarName
    """Variable name."""

    value: Annotated[str, StringConstraints(max_length=32768)] | None = None
    """Literal value; $(NAME) refers to a variable defined before it."""

    value_from: EnvVarSource | None = None
    """Source of the value, instead of value: a ConfigMap or Secret key, a pod field, or a
    resource of the container."""


# ---------------------------------------------------------------------------------------------
# label selectors (metav1)

SET_OPERATOR_RULES = (
    Rule(
        "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
        "values must be specified when `operator` is 'In' or 'NotIn'",
        reason="FieldValueRequired",
    ),
    Rule(
        "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
        "values may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        field="values",
        reason="FieldValueForbidden",
    ),
)
"""The values a set operator needs: some for In and NotIn, none for Exists and DoesNotExist (the
same rules for label selectors and node selectors)."""


class LabelSelectorRequirement(RuledSection):
    """A label key, an operator and values."""

    rules = SET_OPERATOR_RULES

    key: QualifiedName
    """The label key."""

    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key's value relates to values."""

    values: list[LabelValue] | None = Field(None, max_length=64)
    """Label values: at least one for In and NotIn, none for Exists and DoesNotExist."""


class LabelSelector(Section):
    """Selects objects by label: every matchLabels pair and every expression must hold."""

    match_labels: SpecLabels | None = None
    """Labels, each equal to the object's."""

    match_expressions: list[LabelSelectorRequirement] | None = Field(None, max_length=32)
    """Requirements on the object's labels."""


# ---------------------------------------------------------------------------------------------
# node affinity


class NodeSelectorRequirement(RuledSection):
    """A requirement on a node label."""

    rules = (
        *SET_OPERATOR_RULES,
        Rule(
            "!(self.operator in ['Gt', 'Lt']) || (has(self.values) && size(self.values) == 1)",
            "values must be specified single value when `operator` is 'Lt' or 'Gt'",
            reason="FieldValueRequired",
        ),
    )

    key: QualifiedName
    """The node label key."""

    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    """How the label's value relates to values."""

    values: list[Annotated[str, StringConstraints(max_length=63)]] | None = Field(None, max_length=64)
    """Values: at least one for In and NotIn, none for Exists and DoesNotExist, one integer for Gt
    and Lt."""


class NodeFieldSelectorRequirement(Section):
    """A requirement on a node field: the node's name."""

    key: Literal["metadata.name"]
    """The node field; only metadata.name."""

    operator: Literal["In", "NotIn"]
    """In or NotIn."""

    values: list[Subdomain] = Field(min_length=1, max_length=1)
    """Exactly one node name."""


class NodeSelectorTerm(Section):
    """Requirements that must all hold for a node."""

    match_expressions: list[NodeSelectorRequirement] | None = Field(None, max_length=32)
    """Requirements on the node's labels."""

    match_fields: list[NodeFieldSelectorRequirement] | None = Field(None, max_length=8)
    """Requirements on the node's fields."""


class NodeSelector(Section):
    """Terms of which a node must match at least one."""

    node_selector_terms: list[NodeSelectorTerm] = Field(min_length=1, max_length=16)
    """The terms, ORed."""


class PreferredSchedulingTerm(Section):
    """A weighted preference for nodes."""

    weight: Int = Field(ge=1, le=100)
    """Weight, 1 to 100, added for each node that matches."""

    preference: NodeSelectorTerm
    """The nodes preferred."""


class NodeAffinity(Section):
    """Node affinity of the pods."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    """Nodes the pods must run on."""

    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = Field(
        None, max_length=32
    )
    """Nodes the scheduler prefers, by weight."""


# ---------------------------------------------------------------------------------------------
# pod affinity


def _label_keys_need_a_selector(field: str) -> Rule:
    return Rule(
        f"!has(self.{field}) || size(self.{field}) == 0 || has(self.labelSelector)",
        "must not be specified when labelSelector is not set",
        field=field,
        reason="FieldValueForbidden",
    )


class PodAffinityTerm(RuledSection):
    """Pods (by label, in some namespaces) that a pod must be, or not be, co-located with, within
    a topology domain."""

    rules = (
        _label_keys_need_a_selector("matchLabelKeys"),
        _label_keys_need_a_selector("mismatchLabelKeys"),
        Rule(
            "!has(self.matchLabelKeys) || !has(self.mismatchLabelKeys)"
            " || !self.matchLabelKeys.exists(k, k in self.mismatchLabelKeys)",
            "exists in both matchLabelKeys and mismatchLabelKeys",
            field="matchLabelKeys",
        ),
    )

    label_selector: LabelSelector | None = None
    """The pods, by label; unset selects none."""

    namespace_selector: LabelSelector | None = None
    """Namespaces of the pods, by label; an empty selector selects every namespace."""

    namespaces: list[Label] | None = Field(None, max_length=64)
    """Namespaces of the pods, by name; with neither this nor namespaceSelector, the pod's own."""

    topology_key: QualifiedName
    """Node label whose value defines the domain (such as kubernetes.io/hostname)."""

    match_label_keys: list[QualifiedName] | None = Field(None, max_length=32)
    """Label keys whose values, taken from the incoming pod, are added to labelSelector with In."""

    mismatch_label_keys: list[QualifiedName] | None = Field(None, max_length=32)
    """Label keys whose values, taken from the incoming pod, are added to labelSelector with
    NotIn."""


class WeightedPodAffinityTerm(Section):
    """A weighted pod affinity term."""

    weight: Int = Field(ge=1, le=100)
    """Weight, 1 to 100, added for each node that matches."""

    pod_affinity_term: PodAffinityTerm
    """The term."""


class PodAffinity(Section):
    """Pods the training pods should run near."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(None, max_length=32)
    """Terms that must all hold."""

    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = Field(
        None, max_length=32
    )
    """Terms the scheduler prefers, by weight."""


class PodAntiAffinity(PodAffinity):
    """Pods the training pods should not run near."""


class Affinity(Section):
    """Scheduling constraints of the pods, as in core/v1."""

    node_affinity: NodeAffinity | None = None
    """Nodes the pods run on."""

    pod_affinity: PodAffinity | None = None
    """Pods the pods run near."""

    pod_anti_affinity: PodAntiAffinity | None = None
    """Pods the pods keep away from."""
