"""`validate` handles an object in the API server's order: nulls and defaults, list keys, models, CEL."""

import copy

import pytest

from internvl_operator.validation import cel_problems, list_type_problems, parse, validate


def with_spec(base: dict, **changes) -> dict:
    changed = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = changed["spec"]
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return changed


def messages(obj, old=None) -> list[str]:
    return [str(p) for p in validate(obj, old)]


@pytest.mark.parametrize("field", ["method", "training", "pod", "data__packing", "method__type", "launcher"])
def test_an_explicit_null_on_a_defaulted_field_takes_the_default(lora_cr, field):
    # The API server replaces the null by the field's default before it validates.
    nulled = with_spec(lora_cr, **{field: None})
    assert messages(nulled) == []
    assert parse(nulled) == parse(lora_cr) if field != "method__type" else parse(nulled).spec.method.type == "lora"


def test_an_explicit_null_without_a_default_is_dropped(lora_cr):
    assert messages(with_spec(lora_cr, queueName=None, trainerImage=None, pod__priorityClassName=None)) == []
    assert messages(with_spec(lora_cr, model=None)) == ["spec.model: required field is missing"]


def test_a_null_list_item_is_not_dropped(lora_cr):
    [problem] = validate(with_spec(lora_cr, pod__imagePullSecrets=[None]))
    assert problem.path == "spec.pod.imagePullSecrets[0]"


def test_the_input_is_not_modified(lora_cr):
    nulled = with_spec(lora_cr, method=None)
    before = copy.deepcopy(nulled)
    validate(nulled)
    assert nulled == before


@pytest.mark.parametrize("field", ["env", "imagePullSecrets"])
def test_map_lists_refuse_a_repeated_name_at_its_second_occurrence(lora_cr, field):
    item = {"name": "a-b"} if field == "imagePullSecrets" else {"name": "A_B", "value": "1"}
    other = {"name": "c"} if field == "imagePullSecrets" else {"name": "C", "value": "2"}
    obj = with_spec(lora_cr, **{f"pod__{field}": [item, other, item, item]})
    assert messages(obj) == [f'spec.pod.{field}[2].name: Duplicate value: "{item["name"]}"']


SET = {"type": "array", "items": {"type": "integer"}, "x-kubernetes-list-type": "set"}
MAP_LIST = {
    "type": "array",
    "items": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}},
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["a", "b"],
}


def test_set_lists_refuse_a_repeated_item_and_tell_true_from_one():
    assert [str(p) for p in list_type_problems(SET, [1, 2, 1, True, 1.5, 1], ("s",))] == ["s[2]: Duplicate value: 1"]


def test_map_lists_with_several_keys_name_the_item():
    items = [{"a": "x", "b": 1}, {"a": "x", "b": 2}, {"b": 1, "a": "x"}, {}, None]
    assert [str(p) for p in list_type_problems(MAP_LIST, items, ("m",))] == [
        'm[2]: Duplicate value: {"a": "x", "b": 1}',
        "m[4]: Duplicate value: {}",
    ]


TRANSITION = {
    **MAP_LIST,
    "items": {
        **MAP_LIST["items"],
        "x-kubernetes-validations": [{"rule": "self.b == oldSelf.b", "message": "b is immutable"}],
    },
    "x-kubernetes-list-map-keys": ["a"],
}


def test_transition_rules_in_map_lists_compare_the_item_with_the_same_key():
    old = [{"a": "x", "b": 1}, {"a": "y", "b": 2}]
    assert cel_problems(TRANSITION, [{"a": "y", "b": 2}, {"a": "x", "b": 1}, {"a": "z", "b": 9}], old) == []
    assert [str(p) for p in cel_problems(TRANSITION, [{"a": "y", "b": 3}], old, ("m",))] == ["m[0]: b is immutable"]


def test_a_rule_that_cannot_be_evaluated_is_a_problem_not_an_exception():
    node = {"type": "object", "properties": {"low": {"type": "integer"}}}
    node["x-kubernetes-validations"] = [{"rule": "self.low <= self.high", "message": "low above high"}]
    [problem] = cel_problems(node, {"low": 1}, location=("w",))
    assert problem.path == "w" and problem.message.endswith("evaluating rule: low above high")


def deep(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    "changes",
    [
        {"launcher": deep(100_000)},
        {"pod__tolerations": deep(100_000)},
        {"method__lora": {"rank": deep(100_000)}},
        {"pod__env": [{"name": "A", "value": deep(100_000)}]},
    ],
)
def test_input_nested_beyond_the_interpreter_gets_problems_not_exceptions(lora_cr, changes):
    problems = validate(with_spec(lora_cr, **changes))
    assert problems and all(len(str(p)) < 1000 for p in problems)


def test_metadata_nested_beyond_the_interpreter_is_no_problem(lora_cr):
    obj = copy.deepcopy(lora_cr)
    obj["metadata"]["annotations"] = {"a": "b"}
    obj["metadata"]["x"] = deep(100_000)
    assert all(p.path.startswith("metadata") for p in validate(obj))


def test_a_huge_value_is_reported_briefly(lora_cr):
    [problem] = validate(with_spec(lora_cr, launcher="x" * 1_000_000))
    assert problem.path == "spec.launcher" and len(problem.message) < 1000
