"""Runs are counted by their most decisive condition."""

from datetime import UTC, datetime

from prometheus_client import REGISTRY

from internvl_operator import conditions as cond
from internvl_operator import metrics

NOW = datetime(2026, 11, 23, tzinfo=UTC)


def with_true(*types):
    conditions = cond.initial(1, NOW)
    for type_ in types:
        conditions = cond.set_condition(conditions, type_, "True", "X", "", generation=1, now=NOW)
    return conditions


def test_state_of():
    assert metrics.state_of(cond.initial(1, NOW)) == "Pending"
    invalid = cond.set_condition(cond.initial(1, NOW), "Valid", "False", "InvalidSpec", "", generation=1, now=NOW)
    assert metrics.state_of(invalid) == "Invalid"
    assert metrics.state_of(with_true("Valid", "JobCreated")) == "JobCreated"
    assert metrics.state_of(with_true("Valid", "JobCreated", "Running")) == "Running"
    assert metrics.state_of(with_true("Valid", "JobCreated", "Succeeded")) == "Succeeded"
    assert metrics.state_of(with_true("Valid", "JobCreated", "Failed")) == "Failed"


def test_the_gauge_follows_each_run():
    def count(state):
        return REGISTRY.get_sample_value("internvl_operator_finetunes", {"state": state})

    metrics.observe("test-a", "Running")
    metrics.observe("test-b", "Running")
    running = count("Running")
    metrics.observe("test-a", "Succeeded")
    assert count("Running") == running - 1
    metrics.observe("test-b", None)
    assert count("Running") == running - 2
    metrics.observe("test-a", None)
