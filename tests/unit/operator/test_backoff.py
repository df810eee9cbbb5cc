"""Retries wait exponentially longer up to a cap, one waiting per object, none after a success or a stop."""

from internvl_operator.backoff import Backoff


class FakeTimer:
    """A timer that fires only when the test says so."""

    made: list["FakeTimer"] = []

    def __init__(self, delay, function, args):
        self.delay, self.function, self.args = delay, function, args
        self.started = self.cancelled = False
        FakeTimer.made.append(self)

    def start(self):
        self.started = True

    def cancel(self):
        self.cancelled = True

    def fire(self):
        self.function(*self.args)


def backoff(results):
    """A Backoff whose action reports each failure again until ``results`` says it succeeds."""
    FakeTimer.made = []
    tries: list = []

    def action(key):
        tries.append(key)
        retry.settle(key, results.pop(0))

    retry = Backoff(action, base=1.0, cap=8.0, timer=FakeTimer)
    return retry, tries


def test_the_delay_doubles_up_to_the_cap_and_a_success_resets_it():
    retry, tries = backoff([True, True, True, True, False])
    assert retry.settle("ns/a", True) == 1.0
    for _ in range(5):
        FakeTimer.made[-1].fire()
    assert [timer.delay for timer in FakeTimer.made] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert tries == ["ns/a"] * 5 and all(timer.started for timer in FakeTimer.made)
    assert retry.settle("ns/a", True) == 1.0, "after a success the next failure starts over"


def test_one_waiting_try_per_object():
    retry, _ = backoff([])
    assert retry.settle("ns/a", True) == 1.0
    assert retry.settle("ns/a", True) is None, "an event's failure while a try waits schedules no second one"
    assert retry.settle("ns/b", True) == 1.0
    assert len(FakeTimer.made) == 2


def test_nothing_runs_after_a_stop():
    retry, tries = backoff([])
    retry.settle("ns/a", True)
    retry.stop()
    assert FakeTimer.made[0].cancelled
    FakeTimer.made[0].fire()
    assert tries == [] and retry.settle("ns/a", True) is None
