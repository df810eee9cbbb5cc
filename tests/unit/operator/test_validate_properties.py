"""Property: validation never crashes, accepts every valid spec, and names paths that exist.

Valid specs are generated from the CRD's own schema (so every field, bound and enum is covered)
and then made to satisfy the cross-field rules. Arbitrary inputs are valid specs with one node
replaced, removed or added.
"""

import math
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from internvl_operator.crd import crd_schema
from internvl_operator.validation import validate

SPEC_SCHEMA = crd_schema()["properties"]["spec"]
KEYS = st.from_regex(r"[a-z][a-z0-9.-]{0,10}", fullmatch=True)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=6,
)


def from_schema(node: dict) -> st.SearchStrategy:
    if "enum" in node:
        return st.sampled_from(node["enum"])
    kind = node["type"]
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return st.dictionaries(KEYS, JSON, max_size=2)
    if kind == "object" and "properties" in node:
        required = set(node.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in node["properties"].items() if k in required},
            optional={k: from_schema(v) for k, v in node["properties"].items() if k not in required},
        )
    if kind == "object":
        return st.dictionaries(KEYS, from_schema(node["additionalProperties"]), max_size=2)
    if kind == "array":
        return st.lists(from_schema(node["items"]), min_size=node.get("minItems", 0), max_size=min(node["maxItems"], 2))
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
    return spec


def as_object(spec) -> dict:
    return {"apiVersion": "internvl.dev/v1alpha1", "kind": "InternVLFinetune", "metadata": {"name": "x"}, "spec": spec}


VALID_SPECS = from_schema(SPEC_SCHEMA).map(satisfy_rules)


def resolves(obj, path: str) -> bool:
    node = obj
    for name, bracketed in re.findall(r"([^.\[\]]+)|\[([^\]]+)\]", path):
        if isinstance(node, list) and bracketed.isdigit() and int(bracketed) < len(node):
            node = node[int(bracketed)]
        elif isinstance(node, dict) and (name or bracketed) in node:
            node = node[name or bracketed]
        else:
            return False
    return True


def locations_of(node, location=()):
    yield location
    if isinstance(node, dict):
        for key, value in node.items():
            yield from locations_of(value, (*location, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from locations_of(value, (*location, index))


@st.composite
def mutated_objects(draw):
    obj = as_object(draw(VALID_SPECS))
    *parents, key = draw(st.sampled_from([loc for loc in locations_of(obj) if loc]))
    parent = obj
    for part in parents:
        parent = parent[part]
    action = draw(st.sampled_from(["replace", "remove", "add"]))
    if action == "replace":
        parent[key] = draw(JSON)
    elif action == "remove":
        del parent[key]
    elif isinstance(parent, dict):
        parent[draw(KEYS)] = draw(JSON)
    return obj


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(VALID_SPECS)
def test_a_spec_generated_valid_never_errors(spec):
    assert validate(as_object(spec)) == []


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(mutated_objects())
def test_every_problem_names_a_path_of_the_input(obj):
    for problem in validate(obj):
        missing = problem.message == "required field is missing"
        # A missing field cannot be in the input; the object that lacks it must be.
        where = (problem.path.rsplit(".", 1)[0] if "." in problem.path else "") if missing else problem.path
        assert resolves(obj, where), f"{problem} names a path that is not in the input"


@settings(max_examples=60, deadline=None)
@given(JSON)
def test_any_json_value_gets_problems_not_exceptions(value):
    problems = validate(value)
    assert problems, "a random value is never a valid InternVLFinetune"
