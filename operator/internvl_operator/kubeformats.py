"""Kubernetes' value formats, as pydantic types: names, label keys and values, annotations,
quantities, extended resource names, timestamps, and the bounds of int32 and int64.

Each type mirrors a rule of k8s.io/apimachinery's validation (IsDNS1123Label,
IsDNS1123Subdomain, IsQualifiedName, IsValidLabelValue, ValidateAnnotations) or of core/v1's
(resource.Quantity, IsExtendedResourceName). Patterns use explicit ASCII classes only: the API
server matches them with Go's regexp, where ``\\s``, ``\\d`` and ``\\w`` are ASCII, and pydantic
with Rust's, where they are Unicode. What a pattern cannot say (a prefix's length, the total size
of annotations) is a validator with the same rule; map keys, which the CRD cannot constrain (it
has no ``propertyNames``), are checked by a CEL rule on the map as well as by the models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

from internvl_operator.rules import Rule, checked
from internvl_trainer.problems import described_pattern

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
QUALIFIED_NAME_MAX = DNS_SUBDOMAIN_MAX + 1 + DNS_LABEL_MAX  # prefix, '/', name
TOTAL_ANNOTATION_SIZE = 256 * 1024  # apimachinery's TotalAnnotationSizeLimitB, keys and values in bytes

# Fragments of patterns, free of backslashes ('[.]' for a dot) so that CEL rules can quote them.
DNS_LABEL_RE = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_SUBDOMAIN_RE = rf"{DNS_LABEL_RE}([.]{DNS_LABEL_RE})*"
# Annotation keys are checked lower-cased, so their prefix may have capitals.
ANY_CASE_SUBDOMAIN_RE = r"[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?([.][a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*"
# The name part of a qualified name: at most 63, bounded in the pattern itself.
NAME_RE = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
# A prefix longer than a DNS subdomain may be, which a pattern cannot bound.
LONG_PREFIX_RE = rf"^[^/]{{{DNS_SUBDOMAIN_MAX + 1},}}/"
_QUALIFIED_NAME_MEANING = (
    "a qualified name: an optional DNS subdomain prefix and '/', then a name of at most 63 alphanumerics, "
    "'-', '_' or '.' that starts and ends with an alphanumeric"
)


def prefix_within_limit(value: str) -> str:
    prefix, slash, _ = value.rpartition("/")
    if slash and len(prefix) > DNS_SUBDOMAIN_MAX:
        raise PydanticCustomError("prefix_too_long", f"prefix part must be no more than {DNS_SUBDOMAIN_MAX} characters")
    return value


def _qualified_name(prefix: str, meaning: str, *, optional: bool = False) -> object:
    body = rf"({prefix}/)?{NAME_RE}"
    pattern = rf"^({body})?$" if optional else rf"^{body}$"
    return Annotated[
        str,
        StringConstraints(max_length=QUALIFIED_NAME_MAX, pattern=described_pattern(pattern, meaning)),
        AfterValidator(prefix_within_limit),
    ]


Label = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=DNS_LABEL_MAX,
        pattern=described_pattern(rf"^{DNS_LABEL_RE}$", "a DNS label: lower-case letters, digits and '-', at most 63"),
    ),
]
"""A DNS-1123 label: the name of a namespace, Secret, PVC, priority class or queue."""

Subdomain = Annotated[
    str,
    StringConstraints(
        min_length=1,
        max_length=DNS_SUBDOMAIN_MAX,
        pattern=described_pattern(
            rf"^{DNS_SUBDOMAIN_RE}$", "a DNS subdomain: lower-case letters, digits, '-' and '.', at most 253"
        ),
    ),
]
"""A DNS-1123 subdomain: the name of an object such as a ConfigMap or a node."""

QualifiedName = _qualified_name(DNS_SUBDOMAIN_RE, _QUALIFIED_NAME_MEANING)
"""A label key, taint key or topology key (IsQualifiedName)."""

OptionalQualifiedName = _qualified_name(DNS_SUBDOMAIN_RE, f"empty or {_QUALIFIED_NAME_MEANING}", optional=True)
"""A qualified name, or empty (a toleration's key)."""

AnnotationKey = _qualified_name(ANY_CASE_SUBDOMAIN_RE, _QUALIFIED_NAME_MEANING)
"""An annotation key: a qualified name once lower-cased (ValidateAnnotations)."""

LabelValue = Annotated[
    str,
    StringConstraints(
        max_length=DNS_LABEL_MAX,
        pattern=described_pattern(
            r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$",
            "a label value: empty, or at most 63 alphanumerics, '-', '_' or '.' that starts and ends with an "
            "alphanumeric",
        ),
    ),
]
"""A label value (IsValidLabelValue)."""

AnnotationValue = Annotated[str, StringConstraints(max_length=TOTAL_ANNOTATION_SIZE)]

MAP_ENTRIES_MAX = 64


def _keys_are_qualified_names(prefix: str) -> Rule:
    """The CRD cannot constrain map keys (no ``propertyNames``); this rule checks them on the API
    server. Kubernetes estimates a map key's size as 0, so ``matches`` on keys is cheap statically;
    the length test first keeps it cheap at run time too."""
    return Rule(
        f"self.all(k, size(k) <= {QUALIFIED_NAME_MAX} && k.matches('^({prefix}/)?{NAME_RE}$')"
        f" && !k.matches('{LONG_PREFIX_RE}'))",
        f"keys must be qualified names: an optional DNS subdomain prefix of at most {DNS_SUBDOMAIN_MAX} characters "
        f"and '/', then a name of at most {DNS_LABEL_MAX} alphanumerics, '-', '_' or '.' that starts and ends with "
        "an alphanumeric",
    )


def _within_total_size(annotations: dict[str, str]) -> dict[str, str]:
    size = sum(len(key.encode()) + len(value.encode()) for key, value in annotations.items())
    if size > TOTAL_ANNOTATION_SIZE:
        raise PydanticCustomError(
            "annotations_too_long",
            f"annotations take {size} bytes, more than the limit of {TOTAL_ANNOTATION_SIZE} (256 KiB) for all keys "
            "and values together",
        )
    return annotations


Labels = dict[QualifiedName, LabelValue]
"""Labels, or a node selector (ValidateLabels): qualified-name keys and label values."""

Annotations = Annotated[dict[AnnotationKey, AnnotationValue], AfterValidator(_within_total_size)]
"""Annotations (ValidateAnnotations): qualified-name keys, at most 256 KiB in all."""

# Maps of the spec: at most 64 entries, and keys checked on the API server too. (The bound goes
# before the validators: after one, it would not reach the schema.)
SpecLabels = Annotated[
    dict[QualifiedName, LabelValue],
    Field(max_length=MAP_ENTRIES_MAX),
    *checked(_keys_are_qualified_names(DNS_SUBDOMAIN_RE)),
]
"""Labels, a node selector or matchLabels in the spec."""

SpecAnnotations = Annotated[
    dict[AnnotationKey, AnnotationValue],
    Field(max_length=MAP_ENTRIES_MAX),
    *checked(_keys_are_qualified_names(ANY_CASE_SUBDOMAIN_RE)),
    AfterValidator(_within_total_size),
]
"""Annotations in the spec."""


Quantity = Annotated[
    str,
    StringConstraints(
        max_length=64,
        pattern=described_pattern(
            r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]{1,3}|[numkMGTPE]|[KMGTPE]i)?$",
            "a non-negative quantity such as 8, 500m, 1.5, 1e3 or 64Gi",
        ),
    ),
]
"""A Kubernetes resource quantity (resource.Quantity) that is not negative, as pod requests must
be: digits with an optional fraction, then a decimal exponent (e3), an SI suffix (n, u, m, k, M,
G, T, P, E) or a binary one (Ki, Mi, Gi, Ti, Pi, Ei). The exponent has at most three digits:
Kubernetes reads it into an int32 (a longer one wraps around), and no resource needs more."""

ExtendedResourceName = Annotated[
    str,
    StringConstraints(
        max_length=QUALIFIED_NAME_MAX,
        pattern=described_pattern(
            rf"^{DNS_SUBDOMAIN_RE}/{NAME_RE}$",
            "an extended resource name such as nvidia.com/gpu: a domain, '/' and a name",
        ),
    ),
    *checked(
        Rule(
            "!self.contains('kubernetes.io/') && !self.startsWith('requests.') && !self.matches('^[^/]{245,}/')",
            "must be an extended resource name: a vendor's domain outside kubernetes.io, not starting with "
            "'requests.', of at most 244 characters (so that requests.<name> is a qualified name)",
        )
    ),
]
"""An extended resource name (IsExtendedResourceName), such as nvidia.com/gpu."""


def _text_or_datetime(value: Any) -> Any:
    if not isinstance(value, str | datetime):
        raise PydanticCustomError("datetime_type", "Input should be an RFC 3339 date-time string")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_text_or_datetime), Field(strict=False)]
"""A point in time, written as an RFC 3339 string (metav1.Time)."""
