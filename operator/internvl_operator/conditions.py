"""Conditions in the shape of Kubernetes' metav1.Condition, and the set an InternVLFinetune shows.

``Succeeded`` and ``Failed`` are terminal, so ``kubectl wait --for=condition=Succeeded`` works; the
others say where a run is: its spec is ``Valid``, its job was ``JobCreated``, it is ``Running`` or
``Suspended``. A condition's ``lastTransitionTime`` changes only when its status does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

VALID = "Valid"
JOB_CREATED = "JobCreated"
RUNNING = "Running"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
TYPES = (VALID, JOB_CREATED, RUNNING, SUSPENDED, SUCCEEDED, FAILED)
TERMINAL = (SUCCEEDED, FAILED)

Status = Literal["True", "False", "Unknown"]
MESSAGE_MAX = 32768


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC with second precision, as the API server writes metav1.Time."""
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]], type_: str) -> bool:
    condition = find(conditions, type_)
    return condition is not None and condition.get("status") == "True"


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: Status,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """A new list with condition ``type_`` set, kept in TYPES order; its transition time is kept
    when the status did not change."""
    previous = find(conditions, type_)
    changed = previous is None or previous.get("status") != status or not previous.get("lastTransitionTime")
    condition: dict[str, Any] = {
        "type": type_,
        "status": status,
        "observedGeneration": generation,
        "lastTransitionTime": timestamp(now) if changed else previous["lastTransitionTime"],
        "reason": reason,
        "message": message[:MESSAGE_MAX],
    }
    if generation is None:
        del condition["observedGeneration"]
    others = [c for c in conditions if c.get("type") != type_]
    order = {name: index for index, name in enumerate(TYPES)}
    return sorted([*others, condition], key=lambda c: order.get(c.get("type"), len(order)))


def phase(conditions: list[dict[str, Any]]) -> str:
    """The one word ``kubectl get`` shows for a set of conditions (the conditions stay the API):
    a terminal condition first, then a refused spec, a suspension, a running job, a created one."""
    for type_, word in ((FAILED, "Failed"), (SUCCEEDED, "Succeeded")):
        if is_true(conditions, type_):
            return word
    valid = find(conditions, VALID)
    if valid is not None and valid.get("status") == "False":
        return "Invalid"
    for type_, word in ((SUSPENDED, "Suspended"), (RUNNING, "Running"), (JOB_CREATED, "Starting")):
        if is_true(conditions, type_):
            return word
    return "Pending"


def initial(generation: int | None, now: datetime) -> list[dict[str, Any]]:
    """Every condition as Unknown, applied on the first visit as API conventions ask."""
    conditions: list[dict[str, Any]] = []
    for type_ in TYPES:
        conditions = set_condition(conditions, type_, "Unknown", "Pending", "", generation=generation, now=now)
    return conditions
