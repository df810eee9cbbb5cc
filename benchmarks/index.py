"""Annotation indexing: memory and time of the byte-offset index against InternVL's way of holding
annotations, a Python list of every line (``f.readlines()``, in every rank and every data-loader
worker), and ``json.load`` of a whole JSON array (the InternVL3 guide's format).

Each alternative runs in a fresh Python process (so one's garbage cannot inflate another's peak)
that imports numpy and the index module first, then measures: the time to get ready to read
samples, the growth of its peak resident memory (``VmHWM`` after, ``VmRSS`` before; the peak is
reset first where the kernel allows), the resident memory it keeps, and the time of 10,000 random
samples read and parsed. The file is written once in the page cache, so the times are the CPU
cost, not the disk's. Sample lines look like InternVL's (an image path and a two-turn
conversation, about 170 bytes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from benchmarks import Table

LINES = 1_000_000
ARRAY_SAMPLES = 200_000
RANDOM_READS = 10_000
TEMPLATE = (
    b'{"id": %d, "image": "images/%07d.jpg", "conversations": [{"from": "human", "value": '
    b'"<image>\\nWhat is shown?"}, {"from": "gpt", "value": "A cat sits on a red mat."}]}\n'
)

_PRELUDE = textwrap.dedent(
    """
    import json, random, sys, time
    from pathlib import Path
    import numpy as np
    from internvl_trainer.data.index import SourceIdentity, cached_index

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    source, folder = sys.argv[1], Path(sys.argv[2])
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = status("VmRSS")
    start = time.perf_counter()
    """
)

_READ = textwrap.dedent(
    """
    ready = time.perf_counter() - start
    grown, kept = status("VmHWM") - before, status("VmRSS") - before
    picks = random.Random(0).sample(range(count), {reads})
    start = time.perf_counter()
    for number in picks:
        json.loads(read(number))
    print(json.dumps({{"ready": ready, "grown": grown, "kept": kept, "reads": time.perf_counter() - start}}))
    """
)

ALTERNATIVES = {
    "lines": """
with open(source) as handle:
    lines = handle.readlines()
count = len(lines)
read = lines.__getitem__
""",
    "array": """
with open(source) as handle:
    samples = json.load(handle)
count = len(samples)
read = lambda number: json.dumps(samples[number])
""",
    "index": """
index = cached_index(folder, SourceIdentity.of_file(source), lambda: open(source, "rb"))
count = len(index)
import os
descriptor = os.open(source, os.O_RDONLY)
def read(number):
    offset, length = index.span(number)
    return os.pread(descriptor, length, offset)
""",
}


def _measure(kind: str, source: Path, folder: Path) -> dict[str, float]:
    code = _PRELUDE + ALTERNATIVES[kind] + _READ.format(reads=RANDOM_READS)
    result = subprocess.run(
        [sys.executable, "-c", code, str(source), str(folder)], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def _row(name: str, measured: dict[str, float]) -> list[str]:
    return [
        name,
        f"{measured['ready']:.2f} s",
        f"{measured['grown'] / 2**20:,.0f} MiB",
        f"{measured['kept'] / 2**20:,.0f} MiB",
        f"{measured['reads'] * 1000:.0f} ms",
    ]


COLUMNS = ["", "ready to read", "peak memory growth", "memory kept", f"{RANDOM_READS:,} random samples"]


def _lines_table(folder: Path) -> Table:
    source = folder / "train.jsonl"
    with open(source, "wb") as handle:
        for start in range(0, LINES, 50_000):
            handle.write(b"".join(TEMPLATE % (number, number) for number in range(start, start + 50_000)))
    size = source.stat().st_size
    rows = [
        _row("InternVL: `readlines()` into a list", _measure("lines", source, folder / "cold")),
        _row("byte-offset index, built (first rank of a node)", _measure("index", source, folder / "cache")),
        _row("byte-offset index, mapped (every other process)", _measure("index", source, folder / "cache")),
    ]
    return Table(
        title=f"Annotation index: {LINES:,} JSON lines ({size / 2**20:,.0f} MiB)",
        method=__doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
        columns=COLUMNS,
        rows=rows,
    )


def _array_table(folder: Path) -> Table:
    source = folder / "train.json"
    with open(source, "wb") as handle:
        handle.write(b"[\n")
        for start in range(0, ARRAY_SAMPLES, 50_000):
            chunk = [TEMPLATE % (n, n) for n in range(start, min(ARRAY_SAMPLES, start + 50_000))]
            handle.write(b",\n".join(line.rstrip(b"\n") for line in chunk))
            handle.write(b",\n" if start + 50_000 < ARRAY_SAMPLES else b"\n")
        handle.write(b"]\n")
    size = source.stat().st_size
    rows = [
        _row("`json.load` of the whole array", _measure("array", source, folder / "cold")),
        _row("byte-offset index of the array, built", _measure("index", source, folder / "cache")),
        _row("byte-offset index of the array, mapped", _measure("index", source, folder / "cache")),
    ]
    return Table(
        title=f"Annotation index: a JSON array of {ARRAY_SAMPLES:,} samples ({size / 2**20:,.0f} MiB)",
        method="As above, for a JSON array: the index finds each element's bytes without parsing the array.",
        columns=COLUMNS,
        rows=rows,
    )


def run() -> list[Table]:
    with tempfile.TemporaryDirectory(prefix="index-bench-") as folder:
        return [_lines_table(Path(folder)), _array_table(Path(folder))]


if __name__ == "__main__":
    for table in run():
        print(table.markdown())
