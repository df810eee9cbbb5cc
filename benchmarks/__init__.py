"""Reproducible performance measurements; ``make bench`` runs them all and writes docs/benchmarks.md.

Each benchmark is a module listed in ``benchmarks.__main__.BENCHMARKS`` with a ``run()`` that
returns tables. A table compares alternatives measured in the same run, side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Table:
    """One benchmark's result: what was measured, how, and a row per alternative."""

    title: str
    method: str
    columns: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        lines = [f"## {self.title}", "", self.method, "", "| " + " | ".join(self.columns) + " |"]
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


def seconds_per_call(function: Callable[[], object], *, repeats: int = 5, min_time: float = 0.2) -> float:
    """The best of ``repeats`` timings of ``function``, each averaged over enough calls to take
    ``min_time`` seconds (the best, because noise only ever adds time)."""
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            function()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            break
        calls *= 2
    best = elapsed / calls
    for _ in range(repeats - 1):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def interleaved(
    alternatives: dict[str, Callable[[], object]], *, rounds: int = 3, min_time: float = 0.2
) -> dict[str, float]:
    """The best seconds per call of each alternative over ``rounds`` rounds, each round timing
    every alternative once in turn (A, B, C, A, B, C, ...), so that a change in the machine's load
    hits every alternative alike instead of the one that happened to run then."""
    best = dict.fromkeys(alternatives, float("inf"))
    for _ in range(rounds):
        for label, function in alternatives.items():
            best[label] = min(best[label], seconds_per_call(function, repeats=1, min_time=min_time))
    return best
