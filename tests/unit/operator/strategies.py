"""Hypothesis strategies for InternVLFinetune objects, generated from the CRD's own schema.

`VALID_SPECS` draws specs the API server would store (every field, bound and enum of the schema)
that also satisfy the cross-field rules; `JSON` draws arbitrary JSON values for free-form fields
and for mutating a valid spec.
"""

import math

from hypothesis import strategies as st

from internvl_operator.api import is_reserved_env_name
from internvl_operator.crd import crd_schema
from internvl_operator.rules import Rule
from internvl_trainer.config import LORA_TARGET_TOWERS

SPEC_SCHEMA = crd_schema()["properties"]["spec"]
# Map keys are qualified names (the models check them; the CRD cannot).
KEYS = st.from_regex(r"[a-z]([a-z0-9.-]{0,9}[a-z0-9])?", fullmatch=True)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=6,
)


def from_schema(node: dict) -> st.SearchStrategy:
    """Values a structural schema node admits (its CEL rules aside)."""
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if node.get("x-kubernetes-int-or-string"):
        return st.integers(0, 2**31 - 1) | st.from_regex(r"[0-9]{1,3}%", fullmatch=True)
    kind = node["type"]
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return st.dictionaries(KEYS, JSON, max_size=2)
    if kind == "object" and "properties" in node:
        required = set(node.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in node["properties"].items() if k in required},
            optional={k: from_schema(v) for k, v in node["properties"].items() if k not in required},
        )
    if kind == "object" and "patternProperties" in node:
        [(pattern, values)] = node["patternProperties"].items()
        keys = st.from_regex(pattern, fullmatch=True).filter(lambda key: len(key) <= 317)
        return st.dictionaries(keys, from_schema(values), max_size=min(node.get("maxProperties", 2), 2))
    if kind == "object" and "additionalProperties" in node:
        return st.dictionaries(KEYS, from_schema(node["additionalProperties"]), max_size=2)
    if kind == "object":
        return st.just({})
    if kind == "array":
        low = node.get("minItems", 0)
        size = {"min_size": low, "max_size": max(low, min(node.get("maxItems", 2), 2))}
        # The API server refuses duplicates in a set and duplicate keys in a map list.
        if node.get("x-kubernetes-list-type") == "set":
            size["unique"] = True
        elif node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            size["unique_by"] = lambda item: tuple(item.get(key) for key in keys)
        return st.lists(from_schema(node["items"]), **size)
    if kind == "string":
        if node.get("format") == "date-time":
            return st.datetimes().map(lambda d: d.isoformat() + "Z")
        low, high = node.get("minLength", 0), min(node.get("maxLength", 40), 40)
        text = (
            st.from_regex(node["pattern"], fullmatch=True)
            if "pattern" in node
            else st.text(min_size=low, max_size=high)
        )
        return text.filter(lambda s: low <= len(s) <= node.get("maxLength", math.inf))
    if kind == "integer":
        return st.integers(node.get("minimum", -(2**31)), node.get("maximum", 2**31))
    if kind == "number":
        return st.floats(
            node.get("minimum", -1e6),
            node.get("maximum", 1e6),
            exclude_min=node.get("exclusiveMinimum", False),
            exclude_max=node.get("exclusiveMaximum", False),
        )
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(f"no strategy for {node}")


def satisfy_rules(spec: dict) -> dict:
    """Make a schema-valid spec satisfy the cross-field rules too."""
    method = spec.get("method", {})
    if method.get("type", "lora") != "lora":
        method.pop("lora", None)
    else:
        for target in method.get("lora", {}).get("targets", ["llm"]):
            tower = LORA_TARGET_TOWERS[target]
            if method.get("freeze", {}).get(tower) is False:
                method["freeze"][tower] = True
        if "experts" in method.get("lora", {}).get("targets", []):
            method["lora"]["dropout"] = 0.0
    resources = spec.get("resources", {})
    per_node = resources.get("gpusPerNode", 8)
    if "gpus" in resources and resources["gpus"] > per_node:
        resources["gpus"] -= resources["gpus"] % per_node
    scratch = resources.get("scratch", {})
    if "sizeLimit" in scratch:
        scratch.pop("claimName", None)
    video = spec.get("data", {}).get("video", {})
    if video.get("minFrames", 8) > video.get("maxFrames", 32):
        video["minFrames"], video["maxFrames"] = video.get("maxFrames", 32), video.get("minFrames", 8)
    if not _extended_resource_name_holds(resources.get("gpuResourceName", "nvidia.com/gpu")):
        resources.pop("gpuResourceName")
    pod = spec.get("pod", {})
    for toleration in pod.get("tolerations", []):
        if not toleration.get("key"):
            toleration["operator"] = "Exists"
        if toleration.get("operator") == "Exists":
            toleration.pop("value", None)
        if "tolerationSeconds" in toleration:
            toleration["effect"] = "NoExecute"
    for variable in pod.get("env", []):
        if is_reserved_env_name(variable["name"]):
            variable["name"] = f"USER_{variable['name']}"
        source = variable.get("valueFrom")
        if source is not None:
            variable.pop("value", None)
            kinds = list(source)  # exactly one source
            variable["valueFrom"] = (
                {kinds[0]: source[kinds[0]]} if kinds else {"fieldRef": {"fieldPath": "metadata.name"}}
            )
            variable["valueFrom"].get("resourceFieldRef", {}).pop("divisor", None)
    pod["env"] = list({variable["name"]: variable for variable in pod.get("env", [])}.values())
    _satisfy_selector_rules(pod.get("affinity", {}))
    return spec


def _extended_resource_name_holds(name: str) -> bool:
    [rule] = SPEC_SCHEMA["properties"]["resources"]["properties"]["gpuResourceName"]["x-kubernetes-validations"]
    return Rule(rule["rule"], rule["message"]).holds(name)


def _satisfy_selector_rules(node) -> None:
    """Requirements get the values their operator needs; label keys of a pod affinity term need
    its labelSelector and may not be both matched and mismatched."""
    if isinstance(node, list):
        for item in node:
            _satisfy_selector_rules(item)
    if not isinstance(node, dict):
        return
    operator = node.get("operator")
    if operator in ("In", "NotIn") and node.get("key") != "metadata.name" and not node.get("values"):
        node["values"] = ["a"]
    elif operator in ("Exists", "DoesNotExist"):
        node.pop("values", None)
    elif operator in ("Gt", "Lt"):
        node["values"] = ["1"]
    if "topologyKey" in node:
        if "labelSelector" not in node:
            node.pop("matchLabelKeys", None)
            node.pop("mismatchLabelKeys", None)
        elif "mismatchLabelKeys" in node:
            node["mismatchLabelKeys"] = [
                k for k in node["mismatchLabelKeys"] if k not in node.get("matchLabelKeys", [])
            ]
    for child in node.values():
        _satisfy_selector_rules(child)


def as_object(spec) -> dict:
    return {"apiVersion": "internvl.dev/v1alpha1", "kind": "InternVLFinetune", "metadata": {"name": "x"}, "spec": spec}


VALID_SPECS = from_schema(SPEC_SCHEMA).map(satisfy_rules)
