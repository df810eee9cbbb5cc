"""Conditions keep metav1.Condition's shape, a fixed order, and their transition times."""

from datetime import UTC, datetime

from internvl_operator import conditions

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 23, 11, 30, 0, tzinfo=UTC)


def test_initial_conditions_are_unknown_in_order():
    initial = conditions.initial(generation=1, now=T0)
    assert [c["type"] for c in initial] == ["Valid", "JobCreated", "Running", "Suspended", "Succeeded", "Failed"]
    assert initial[0] == {
        "type": "Valid",
        "status": "Unknown",
        "observedGeneration": 1,
        "lastTransitionTime": "2026-11-23T10:00:00Z",
        "reason": "Pending",
        "message": "",
    }


def test_transition_time_changes_only_with_the_status():
    first = conditions.set_condition([], "Running", "True", "JobRunning", "a", generation=1, now=T0)
    same = conditions.set_condition(first, "Running", "True", "JobRunning", "b", generation=2, now=T1)
    flipped = conditions.set_condition(same, "Running", "False", "JobSucceeded", "c", generation=2, now=T1)
    assert same[0]["lastTransitionTime"] == "2026-11-23T10:00:00Z"
    assert (same[0]["message"], same[0]["observedGeneration"]) == ("b", 2)
    assert flipped[0]["lastTransitionTime"] == "2026-11-23T11:30:00Z"


def test_setting_keeps_the_others_and_the_order():
    current = conditions.initial(generation=1, now=T0)
    updated = conditions.set_condition(current, "Succeeded", "True", "JobSucceeded", "", generation=1, now=T1)
    assert [c["type"] for c in updated] == [c["type"] for c in current]
    assert conditions.is_true(updated, "Succeeded") and not conditions.is_true(updated, "Failed")
    assert current[4]["status"] == "Unknown", "the input list is not changed"


def test_long_messages_are_cut_to_the_api_limit():
    [condition] = conditions.set_condition([], "Failed", "True", "X", "m" * 40000, generation=None, now=T0)
    assert len(condition["message"]) == 32768
    assert "observedGeneration" not in condition


def test_the_phase_summarises_the_conditions_terminal_first():
    def with_true(*types: str) -> list[dict]:
        result = conditions.initial(generation=1, now=T0)
        for type_ in types:
            result = conditions.set_condition(result, type_, "True", "Why", "", generation=1, now=T0)
        return result

    assert conditions.phase([]) == "Pending"
    assert conditions.phase(with_true()) == "Pending"
    assert conditions.phase(with_true("Valid", "JobCreated")) == "Starting"
    assert conditions.phase(with_true("Valid", "JobCreated", "Running")) == "Running"
    assert conditions.phase(with_true("Valid", "JobCreated", "Suspended")) == "Suspended"
    assert conditions.phase(with_true("Valid", "JobCreated", "Succeeded")) == "Succeeded"
    assert conditions.phase(with_true("Valid", "JobCreated", "Running", "Failed")) == "Failed"
    refused = conditions.set_condition(with_true(), "Valid", "False", "InvalidSpec", "", generation=1, now=T0)
    assert conditions.phase(refused) == "Invalid"


def test_a_condition_found_without_a_transition_time_gets_one():
    # The status subresource takes what a trainer writes; the operator never trusts its shape.
    found = [{"type": "Running", "status": "True", "reason": "X", "message": ""}]
    [condition] = conditions.set_condition(found, "Running", "True", "JobRunning", "", generation=1, now=T1)
    assert condition["lastTransitionTime"] == "2026-11-23T11:30:00Z"
