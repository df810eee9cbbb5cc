"""Prometheus metrics of the operator: reconciliations, their failures, and runs by state.

Served by ``internvl-operator run --metrics-port``; the Helm chart's optional Service and
ServiceMonitor scrape it.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from typing import Any

from prometheus_client import Counter, Gauge

from internvl_operator import conditions as cond

RECONCILES = Counter("internvl_operator_reconciles", "Reconciliations of InternVLFinetunes", ["result"])
RUNS = Gauge("internvl_operator_finetunes", "InternVLFinetunes by state", ["state"])
STATES = ("Invalid", "Pending", "JobCreated", "Running", "Suspended", "Succeeded", "Failed")

_lock = threading.Lock()
_states: dict[str, str] = {}


def state_of(conditions: list[dict[str, Any]]) -> str:
    """One word for a run: the most decisive condition that is true."""
    for type_ in (cond.FAILED, cond.SUCCEEDED, cond.SUSPENDED, cond.RUNNING, cond.JOB_CREATED):
        if cond.is_true(conditions, type_):
            return type_
    valid = cond.find(conditions, cond.VALID)
    return "Invalid" if valid is not None and valid.get("status") == "False" else "Pending"


def observe(uid: str, state: str | None) -> None:
    """Record a run's state (None: it is gone) and refresh the gauge."""
    with _lock:
        if state is None:
            _states.pop(uid, None)
        else:
            _states[uid] = state
        counts = Tally(_states.values())
        for name in STATES:
            RUNS.labels(name).set(counts.get(name, 0))
