"""Offline validation of InternVLFinetune objects, in the order the API server validates them.

For an object sent to it, apiextensions-apiserver first drops the explicit nulls of non-nullable
fields, or replaces them by the field's default where it has one, and applies the schema's
defaults (PruneNonNullableNullsWithoutDefaults, then Default); it then checks the object against
the schema, the uniqueness of the keys of ``x-kubernetes-list-type: map`` lists and of the items
of ``set`` lists, and last evaluates the ``x-kubernetes-validations`` CEL rules on the defaulted
object (transition rules, those that read ``oldSelf``, only on update). This module does the same
without a cluster, so ``internvl-operator validate`` and the operator itself accept and refuse
what the API server would, and name the field; the schema check is the pydantic models the schema
is generated from.

The work is bounded: every walk follows the schema, so it goes no deeper than the schema does
(free-form values are not entered), each value is visited a fixed number of times, and CEL sees
only the fields the schema declares, as in Kubernetes.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

import cel
from pydantic import ValidationError

from internvl_operator.api import InternVLFinetune
from internvl_operator.crd import crd_schema
from internvl_trainer.problems import Problem, field_path, problems_from

_ABSENT = object()
Location = tuple[str | int, ...]


@cache
def _schema() -> dict[str, Any]:
    return crd_schema()


def _child_schema(node: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The schema of field ``key`` of an object of ``node``: its property, else the map's value
    schema (apiextensions' getSchemaForField)."""
    child = node.get("properties", {}).get(key)
    if child is None and isinstance(node.get("additionalProperties"), dict):
        child = node["additionalProperties"]
    return child


def as_served(value: Any, node: dict[str, Any]) -> Any:
    """``value`` as the API server validates it: explicit nulls of non-nullable fields without a
    default removed, those with a default and absent fields replaced by the default, in the whole
    schema-declared tree. The input is not modified."""
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        items = node["items"]
        defaulted = "default" in items and not items.get("nullable")
        return [
            copy.deepcopy(items["default"]) if item is None and defaulted else as_served(item, items) for item in value
        ]
    if not isinstance(value, dict):
        return value
    served: dict[str, Any] = {}
    for key, child in value.items():
        schema = _child_schema(node, key)
        if child is None and schema is not None and not schema.get("nullable"):
            if "default" not in schema:
                continue  # PruneNonNullableNullsWithoutDefaults
            child = copy.deepcopy(schema["default"])
        served[key] = as_served(child, schema) if schema is not None else child
    for key, prop in node.get("properties", {}).items():
        if key not in served and "default" in prop:
            served[key] = as_served(copy.deepcopy(prop["default"]), prop)
    return served


def _type_tagged(value: Any) -> Any:
    """A hashable identity of a JSON value that tells true from 1 and 1 from "1", as Go does. A
    compound value nested too deeply to serialize is its own identity: the models refuse it."""
    if isinstance(value, dict | list):
        try:
            return ("compound", json.dumps(value, sort_keys=True, default=str))
        except RecursionError:
            return ("unique", id(value))
    return (type(value).__name__, value)


def _duplicates(keys: list[Any]) -> list[int]:
    """The index of the second occurrence of every repeated key (listtype's validateListSet)."""
    seen: dict[Any, int] = {}
    repeated = []
    for index, key in enumerate(keys):
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 2:
            repeated.append(index)
    return repeated


def _list_problems(node: dict[str, Any], items: list[Any], location: Location) -> list[Problem]:
    list_type = node.get("x-kubernetes-list-type")
    if list_type == "set":
        return [
            Problem(field_path((*location, i)), f"Duplicate value: {json.dumps(items[i], default=str)}")
            for i in _duplicates([_type_tagged(item) for item in items])
        ]
    if list_type != "map" or any(item is not None and not isinstance(item, dict) for item in items):
        return []  # the models refuse items of the wrong type
    names = node["x-kubernetes-list-map-keys"]
    keys = [{name: item[name] for name in names if name in item} if item else {} for item in items]
    problems = []
    for i in _duplicates([_type_tagged(key) for key in keys]):
        if len(names) == 1 and keys[i]:
            where, value = (*location, i, names[0]), keys[i][names[0]]
        else:
            where, value = (*location, i), keys[i]
        problems.append(Problem(field_path(where), f"Duplicate value: {json.dumps(value, default=str)}"))
    return problems


def list_type_problems(node: dict[str, Any], value: Any, location: Location = ()) -> list[Problem]:
    """Repeated keys of ``x-kubernetes-list-type: map`` lists and repeated items of ``set``
    lists, anywhere in ``value`` (listtype.ValidateListSetsAndMaps)."""
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        problems = _list_problems(node, value, location)
        for index, item in enumerate(value):
            problems += list_type_problems(node["items"], item, (*location, index))
        return problems
    if isinstance(value, dict) and node.get("type") == "object":
        problems = []
        for key, child in value.items():
            schema = _child_schema(node, key)
            if schema is not None:
                problems += list_type_problems(schema, child, (*location, key))
        return problems
    return []


def _cel_value(value: Any, node: dict[str, Any]) -> Any:
    """``value`` as a CEL rule sees it: only the fields the schema declares (the content of a
    free-form object is not exposed), numbers of ``number`` fields as doubles and whole numbers of
    ``integer`` fields as ints."""
    kind = None if node.get("x-kubernetes-int-or-string") else node.get("type")
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "array" and isinstance(value, list):
        return [_cel_value(item, node["items"]) for item in value]
    if kind == "object" and isinstance(value, dict):
        if isinstance(node.get("additionalProperties"), dict):
            return {key: _cel_value(child, node["additionalProperties"]) for key, child in value.items()}
        declared = node.get("properties", {})
        return {key: _cel_value(child, declared[key]) for key, child in value.items() if key in declared}
    return value


@cache
def _program(rule: str) -> Any:
    return cel.compile(rule)


def _rule_problem(rule: dict[str, Any], value: Any, old: Any, location: Location) -> Problem | None:
    context = cel.Context()
    context.add_variable("self", value)
    if old is not _ABSENT:
        context.add_variable("oldSelf", old)
    described = rule.get("message") or f"failed rule: {rule['rule']}"  # the API server's ruleErrorString
    try:
        passed = _program(rule["rule"]).execute(context) is True
    except Exception as error:  # the library raises plain exceptions (no such key, no such overload)
        return Problem(field_path(location), f"{error} evaluating rule: {described}")
    return None if passed else Problem(field_path(location) + rule.get("fieldPath", ""), described)


def _correlated(node: dict[str, Any], items: list[Any], old: Any) -> list[Any]:
    """The old item of each item of a list, where Kubernetes correlates them: by key in
    ``x-kubernetes-list-type: map`` lists, nowhere in other lists."""
    if node.get("x-kubernetes-list-type") != "map" or not isinstance(old, list):
        return [_ABSENT] * len(items)
    names = node["x-kubernetes-list-map-keys"]

    def key(item: Any) -> Any:
        return _type_tagged([item.get(name) for name in names]) if isinstance(item, dict) else None

    by_key = {key(item): item for item in old}
    return [by_key.get(key(item), _ABSENT) for item in items]


def _rule_problems(node: dict[str, Any], value: Any, old: Any, location: Location) -> list[Problem]:
    problems = []
    for rule in node.get("x-kubernetes-validations", []):
        is_transition = "oldSelf" in rule["rule"]
        if is_transition and old is _ABSENT:
            continue
        problem = _rule_problem(rule, value, old if is_transition else _ABSENT, location)
        if problem is not None:
            problems.append(problem)
    if isinstance(value, dict):
        old_map = old if isinstance(old, dict) else {}
        for key, child in value.items():
            schema = _child_schema(node, key)
            if schema is not None:
                problems += _rule_problems(schema, child, old_map.get(key, _ABSENT), (*location, key))
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, (item, old_item) in enumerate(zip(value, _correlated(node, value, old), strict=True)):
            problems += _rule_problems(node["items"], item, old_item, (*location, index))
    return problems


def cel_problems(node: dict[str, Any], value: Any, old: Any = _ABSENT, location: Location = ()) -> list[Problem]:
    """Evaluate every CEL rule of ``node`` and its children on ``value`` (already defaulted, as
    the API server evaluates them). Transition rules run only where ``old`` has a value at the
    same place, as on an update."""
    previous = _cel_value(old, node) if old is not _ABSENT else _ABSENT
    return _rule_problems(node, _cel_value(value, node), previous, location)


def parse(obj: Any) -> InternVLFinetune:
    """An InternVLFinetune from its dict form, read as the API server reads it (nulls dropped,
    defaults applied). Raises pydantic.ValidationError."""
    return InternVLFinetune.model_validate(as_served(obj, _schema()))


def _schema_problems(served: dict[str, Any]) -> list[Problem]:
    problems = list_type_problems(_schema(), served)
    try:
        InternVLFinetune.model_validate(served)
    except ValidationError as error:
        problems += problems_from(error)
    return problems


def validate(obj: Any, old: Any = None) -> list[Problem]:
    """Every problem of an InternVLFinetune object (a JSON-like value, as read from YAML), and of
    the update from ``old`` when one is given. An empty list means the API server would accept
    it."""
    if not isinstance(obj, dict):
        return [Problem("", f"expected an InternVLFinetune object (a mapping), got {type(obj).__name__}")]
    served = as_served(obj, _schema())
    problems = _schema_problems(served)
    previous: Any = _ABSENT
    if old is not None:
        previous = as_served(old, _schema())
        problems += [Problem(p.path, f"in the old object: {p.message}") for p in _schema_problems(previous)]
    if problems:
        return problems
    return cel_problems(_schema(), served, previous)
