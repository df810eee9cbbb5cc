"""Trying again later: a reconciliation that failed in a way a retry can fix (no answer from the
API server, 429, a 5xx) is scheduled again after an exponential delay with a cap.

A timer per waiting object, one at most, so no handler thread sleeps meanwhile; any event of the
object reconciles it sooner. A success resets the delay.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

BASE_SECONDS = 1.0
CAP_SECONDS = 300.0


class Backoff:
    """Schedules ``action(key)`` again while it keeps failing: after base, 2 x base, 4 x base, ...
    seconds, at most cap."""

    def __init__(
        self,
        action: Callable[[Hashable], None],
        *,
        base: float = BASE_SECONDS,
        cap: float = CAP_SECONDS,
        timer: Callable[..., Any] = threading.Timer,
    ):
        self._action = action
        self._base = base
        self._cap = cap
        self._timer = timer
        self._lock = threading.Lock()
        self._failures: dict[Hashable, int] = {}
        self._waiting: dict[Hashable, Any] = {}
        self._stopped = False

    def settle(self, key: Hashable, retry: bool) -> float | None:
        """After a reconciliation of ``key``: schedule the next try when ``retry``, else forget its
        failures. Returns the delay of a newly scheduled try."""
        with self._lock:
            if not retry:
                self._failures.pop(key, None)
                return None
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            if self._stopped or key in self._waiting:
                return None
            delay = min(self._cap, self._base * 2 ** (failures - 1))
            timer = self._timer(delay, self._fire, args=(key,))
            timer.daemon = True
            self._waiting[key] = timer
            timer.start()
            return delay

    def _fire(self, key: Hashable) -> None:
        with self._lock:
            self._waiting.pop(key, None)
            if self._stopped:
                return
        self._action(key)

    def stop(self) -> None:
        """Cancel every waiting try; nothing is scheduled any more."""
        with self._lock:
            self._stopped = True
            for timer in self._waiting.values():
                timer.cancel()
            self._waiting.clear()
