"""Prefetch: order, the bounded window, errors, hints."""

from __future__ import annotations

import threading
import time

import pytest

from internvl_trainer.storage import Prefetcher


class Tracker:
    """A fetch function that records how many fetches run at once and how far ahead they go."""

    def __init__(self, delay: float = 0.01, fail: set[int] | None = None):
        self.delay = delay
        self.fail = fail or set()
        self.running = 0
        self.most_running = 0
        self.started: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, key: int) -> str:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.started.append(key)
        time.sleep(self.delay)
        with self._lock:
            self.running -= 1
        if key in self.fail:
            raise OSError(f"cannot fetch {key}")
        return f"value-{key}"


def test_results_come_in_order_with_a_bounded_window():
    fetch = Tracker()
    consumed = []
    with Prefetcher(fetch, depth=4, threads=3) as prefetcher:
        for key, value in prefetcher.imap(range(30)):
            assert value == f"value-{key}"
            consumed.append(key)
            # Never more than `depth` keys started beyond what has been consumed.
            assert len(fetch.started) <= len(consumed) + 4
    assert consumed == list(range(30))
    assert fetch.most_running <= 3
    assert fetch.most_running >= 2, "nothing ran in parallel"


def test_keys_are_consumed_lazily():
    fetch = Tracker(delay=0)

    def keys():
        yield from range(1_000_000_000)

    with Prefetcher(fetch, depth=5, threads=2) as prefetcher:
        iterator = prefetcher.imap(keys())
        for _ in range(3):
            next(iterator)
        time.sleep(0.05)
        assert len(fetch.started) <= 3 + 5
        iterator.close()


def test_an_error_raises_at_its_position():
    fetch = Tracker(fail={3})
    seen = []
    with Prefetcher(fetch, depth=4, threads=2) as prefetcher:
        with pytest.raises(OSError, match="cannot fetch 3"):
            for key, _ in prefetcher.imap(range(10)):
                seen.append(key)
    assert seen == [0, 1, 2]


def test_errors_can_be_returned_instead():
    fetch = Tracker(fail={1, 4})
    with Prefetcher(fetch, depth=3, threads=2) as prefetcher:
        results = list(prefetcher.imap(range(6), return_exceptions=True))
    assert [key for key, _ in results] == list(range(6))
    assert [isinstance(value, OSError) for _, value in results] == [False, True, False, False, True, False]


def test_hint_and_get():
    fetch = Tracker(delay=0.02)
    with Prefetcher(fetch, depth=3, threads=3) as prefetcher:
        assert prefetcher.hint([10, 11, 12, 13, 14]) == 3  # the window holds three
        time.sleep(0.1)
        assert sorted(fetch.started) == [10, 11, 12]
        assert prefetcher.get(11) == "value-11"
        assert prefetcher.get(99) == "value-99"  # never hinted: fetched now
        assert fetch.started.count(11) == 1
        # 10 and 12 are done but unclaimed: new hints push them out of the window.
        assert prefetcher.hint([20, 21, 22]) == 3
        time.sleep(0.1)
        assert prefetcher.get(10) == "value-10"  # dropped, so fetched again
        assert fetch.started.count(10) == 2


def test_invalid_settings():
    with pytest.raises(ValueError):
        Prefetcher(lambda key: key, depth=0)
    with pytest.raises(ValueError):
        Prefetcher(lambda key: key, threads=0)
