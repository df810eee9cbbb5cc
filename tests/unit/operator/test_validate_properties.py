"""Property: validation never crashes, accepts every valid spec, and names paths that exist.

Valid specs are generated from the CRD's own schema (so every field, bound and enum is covered)
and then made to satisfy the cross-field rules. Arbitrary inputs are valid specs with one node
replaced, removed or added.
"""

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from internvl_operator.validation import validate
from tests.unit.operator.strategies import JSON, KEYS, VALID_SPECS, as_object


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
        # A missing field, or the field a rule's message is about (its fieldPath, as the API server
        # reports it), may be absent from the input; the object that lacks it may not.
        parent = re.sub(r"(\.?[^.\[\]]+|\[[^\]]+\])$", "", problem.path)
        assert resolves(obj, problem.path) or resolves(obj, parent), f"{problem} names a path not in the input"


@st.composite
def deeply_nested_objects(draw):
    """A valid object with one node replaced by a value nested deeper than Python can recurse."""
    obj = as_object(draw(VALID_SPECS))
    *parents, key = draw(st.sampled_from([loc for loc in locations_of(obj) if loc]))
    parent = obj
    for part in parents:
        parent = parent[part]
    value, name = draw(JSON), draw(KEYS)
    # A list's later items nest too; every level a new node, as in any object read from YAML or
    # JSON (`[inner, inner]` would share one node 2**depth times, which no stored object does).
    wrap = draw(st.sampled_from([lambda inner: [inner], lambda inner: {name: inner}, lambda inner: [0, inner]]))
    for _ in range(draw(st.integers(1, 5_000))):
        value = wrap(value)
    parent[key] = value
    return obj


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(deeply_nested_objects())
def test_any_nesting_gets_brief_problems_not_exceptions(obj):
    assert all(len(str(problem)) < 2000 for problem in validate(obj))


@settings(max_examples=60, deadline=None)
@given(JSON)
def test_any_json_value_gets_problems_not_exceptions(value):
    problems = validate(value)
    assert problems, "a random value is never a valid InternVLFinetune"
