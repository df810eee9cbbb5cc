"""Offline validation of InternVLFinetune objects: the models, then the CRD's CEL rules.

The API server checks an object against the CRD's schema and evaluates its
``x-kubernetes-validations`` rules (transition rules, those that read ``oldSelf``, only on
update). This module does the same without a cluster, so ``internvl-operator validate`` and the
operator itself refuse exactly what the API server would, and name the field.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import cel
from pydantic import ValidationError

from internvl_operator.api import InternVLFinetune
from internvl_operator.crd import crd_schema
from internvl_trainer.problems import Problem, field_path, problems_from

_ABSENT = object()


@cache
def _program(rule: str) -> Any:
    return cel.compile(rule)


def _evaluate(rule: str, value: Any, old: Any) -> bool:
    context = cel.Context()
    context.add_variable("self", value)
    if old is not _ABSENT:
        context.add_variable("oldSelf", old)
    return _program(rule).execute(context) is True


def cel_problems(
    schema: dict[str, Any], value: Any, old: Any = _ABSENT, location: tuple[str | int, ...] = ()
) -> list[Problem]:
    """Evaluate every CEL rule of ``schema`` and its children on ``value``. Transition rules run
    only where ``old`` has a value at the same place, as on an update."""
    problems = []
    for rule in schema.get("x-kubernetes-validations", []):
        is_transition = "oldSelf" in rule["rule"]
        if is_transition and old is _ABSENT:
            continue
        if not _evaluate(rule["rule"], value, old if is_transition else _ABSENT):
            problems.append(Problem(field_path(location) + rule.get("fieldPath", ""), rule["message"]))
    if isinstance(value, dict):
        old_map = old if isinstance(old, dict) else {}
        children = schema.get("properties")
        for key, child_value in value.items():
            child_schema = children.get(key) if children is not None else schema.get("additionalProperties")
            if isinstance(child_schema, dict):
                problems += cel_problems(child_schema, child_value, old_map.get(key, _ABSENT), (*location, key))
    elif isinstance(value, list) and "items" in schema:
        # Kubernetes correlates old list items only for map-type lists; these lists have none.
        for index, item in enumerate(value):
            problems += cel_problems(schema["items"], item, _ABSENT, (*location, index))
    return problems


def parse(obj: Any) -> InternVLFinetune:
    """An InternVLFinetune from its dict form. Raises pydantic.ValidationError."""
    return InternVLFinetune.model_validate(obj)


def validate(obj: Any, old: Any = None) -> list[Problem]:
    """Every problem of an InternVLFinetune object (a dict as read from YAML), and of the update
    from ``old`` when one is given. An empty list means the API server would accept it."""
    if not isinstance(obj, dict):
        return [Problem("", f"expected an InternVLFinetune object (a mapping), got {type(obj).__name__}")]
    try:
        resource = parse(obj)
    except ValidationError as error:
        return problems_from(error)
    previous: Any = _ABSENT
    if old is not None:
        try:
            previous = parse(old).to_wire()
        except ValidationError as error:
            return [Problem(p.path, f"in the old object: {p.message}") for p in problems_from(error)]
    return cel_problems(_schema(), resource.to_wire(), previous)


@cache
def _schema() -> dict[str, Any]:
    return crd_schema()
