"""Bad samples, counted by kind with their ``file:line``, and the data report.

A bad sample never ends a run: whoever reads samples catches ``SampleError``, hands it to
``BadSamples.skip`` with the sample's place, and goes on. Every sample a run skips goes this way,
over-long ones the policy drops included. ``skip`` counts it under its kind (the ``SampleError``
subclasses of ``errors``), keeps the first few of each kind as examples, and logs it. In strict mode it raises
``StrictDataError`` instead, whose message is the sample's ``file:line: reason``.

Data-loader workers and ranks are separate processes: with a ``folder``, every bad sample is also
appended to ``folder/bad-<pid>.jsonl``, and ``summary`` adds up every process's file (a sample
seen twice, by a resumed run or a later epoch, counts once: both count through one path).
``write_report`` stores a data report (the run's ``runs/<uid>/data-report.json``, docs/contract.md
§3) through storage.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from internvl_trainer.data.errors import SampleError, StrictDataError

if TYPE_CHECKING:
    from internvl_trainer.storage import Storage

log = logging.getLogger(__name__)

EXAMPLES_PER_KIND = 5

_IN_MEMORY = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>")
"""How Pillow names an in-memory file in its errors: noise in a report."""


class BadSamples:
    """Bad samples of a process (and, with ``folder``, of every process of a run)."""

    def __init__(self, *, strict: bool = False, examples: int = EXAMPLES_PER_KIND, folder: Path | None = None):
        self.strict = strict
        self.examples_per_kind = examples
        self.folder = folder
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def skip(self, error: SampleError, where: str) -> None:
        """Count a bad sample at ``where`` (``file:line``); in strict mode raise StrictDataError."""
        message = _IN_MEMORY.sub("", str(error))
        if self.strict:
            raise StrictDataError(where, message) from error
        self.record(error.kind, where, message)

    def record(self, kind: str, where: str, message: str) -> None:
        """Count a bad sample of ``kind`` (skipped; the non-strict path of ``skip``)."""
        message = _IN_MEMORY.sub("", message)
        if not self._count(kind, where, message):
            return
        log.warning("skipped a bad sample at %s (%s): %s", where, kind, message)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"kind": kind, "where": where, "message": message}) + "\n"
            with open(self.folder / f"bad-{os.getpid()}.jsonl", "a") as handle:
                handle.write(line)

    def _count(self, kind: str, where: str, message: str) -> bool:
        """Count a sample once per kind and place, keeping the first examples; whether it was new."""
        with self._lock:
            if (kind, where) in self._seen:
                return False
            self._seen.add((kind, where))
            self.counts[kind] += 1
            listed = self.examples.setdefault(kind, [])
            if len(listed) < self.examples_per_kind:
                listed.append(f"{where}: {message}")
            return True

    def summary(self) -> dict[str, Any]:
        """``{"skipped", "byKind", "examples"}``: over every process's file with a folder, else
        over this object's own counts."""
        if self.folder is not None and self.folder.is_dir():
            merged = BadSamples(examples=self.examples_per_kind)
            for path in sorted(self.folder.glob("bad-*.jsonl")):
                for line in path.read_text().splitlines():
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a process that was killed
                        continue
                    merged._count(entry["kind"], entry["where"], entry["message"])
            return merged.summary()
        with self._lock:
            counts = dict(sorted(self.counts.items()))
            examples = {kind: list(self.examples[kind]) for kind in counts}
        return {"skipped": sum(counts.values()), "byKind": counts, "examples": examples}


def write_report(report: dict[str, Any], uri: str, storage: Storage) -> None:
    """Write the data report (JSON) to ``uri`` (``s3://`` or local) through ``storage``: the run's
    ``runs/<uid>/data-report.json`` and ``internvl-data validate --report``."""
    storage.write_bytes(uri, (json.dumps(report, indent=2) + "\n").encode())
