"""Byte-offset indexes: JSON lines and JSON arrays scanned in chunks of any size give the same
records, broken arrays are refused with their line, an index is built once per file and shared,
and indexing a million lines keeps a process's memory flat."""

from __future__ import annotations

import io
import json
import multiprocessing
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from internvl_trainer.data.index import (
    HEADER,
    AnnotationFormatError,
    AnnotationIndex,
    SourceIdentity,
    cached_index,
    index_path,
    read_index,
    scan,
)

LINES = b'{"a": 1}\n\n   \n{"b": 2}\r\n  {"c": 3}\n\t\n{"d": "\\u00e9"}'
ARRAY = (
    b'\xef\xbb\xbf [\n  {"a": "x,]}\\"y"},\n\n  {"b": [1, 2, {"c": "]"}]} ,\n  {"d": "\\\\"}'
    b', {"e": {"f": [[], {}]}},\n{"g": [[[[[["deep, \\"]]"]]]]]]}\n]\n'
)


def records(data: bytes, chunk_size: int) -> tuple[str, list[tuple[int, int, int]]]:
    parts: list[np.ndarray] = []
    found = scan(io.BytesIO(data), parts.append, chunk_size=chunk_size)
    every = np.concatenate(parts) if parts else np.empty(0)
    return found, [(int(offset), int(length), int(line)) for offset, length, line in every]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 8, 13, 1 << 20])
def test_json_lines_skip_blank_lines_and_keep_line_numbers(chunk_size):
    found, spans = records(LINES, chunk_size)
    assert found == "jsonl"
    assert [line for _, _, line in spans] == [1, 4, 5, 7]
    assert [json.loads(LINES[offset : offset + length]) for offset, length, _ in spans] == [
        {"a": 1},
        {"b": 2},
        {"c": 3},
        {"d": "é"},  # the last line has no newline
    ]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 16, 1 << 20])
def test_json_array_elements_are_found_without_parsing(chunk_size):
    found, spans = records(ARRAY, chunk_size)
    assert found == "json"
    assert [line for _, _, line in spans] == [2, 4, 5, 5, 6]
    assert [json.loads(ARRAY[offset : offset + length]) for offset, length, _ in spans] == [
        {"a": 'x,]}"y'},
        {"b": [1, 2, {"c": "]"}]},
        {"d": "\\"},
        {"e": {"f": [[], {}]}},
        {"g": [[[[[['deep, "]]']]]]]]},  # deeper than the fast path goes
    ]


def test_an_empty_file_and_an_empty_array_hold_no_samples():
    assert records(b"", 4) == ("jsonl", [])
    assert records(b" \n\n", 4) == ("jsonl", [])
    assert records(b"[ \n ]\n", 4) == ("json", [])


def test_a_broken_element_is_indexed_and_fails_later():
    found, spans = records(b'[{"a": 1}, {"b" 2}, 3,]', 4)
    assert found == "json"
    assert [(offset, length) for offset, length, _ in spans] == [(1, 8), (11, 7), (20, 1), (22, 0)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'[{"a": 1},\n{"b": 2}', "annotation:2: the JSON array is not closed"),
        (b'[{"a": 1}]\n\n{"b": 2}', "annotation:3: text after the end of the JSON array"),
        (b'[\n{"a": "no end}]', "annotation:2: a string is not closed"),
        (b"[1,\n\n}]", "annotation:3: '}' without its '{'"),
    ],
)
def test_a_broken_array_names_its_line(data, message):
    with pytest.raises(AnnotationFormatError) as caught:
        records(data, 3)
    assert str(caught.value) == message


def write(path: Path, data: bytes) -> SourceIdentity:
    path.write_bytes(data)
    return SourceIdentity.of_file(path)


def test_the_index_is_built_once_and_rebuilt_when_the_file_changes(tmp_path):
    source = tmp_path / "train.jsonl"
    identity = write(source, LINES)
    opened: list[str] = []

    def opener(path=source):
        opened.append(str(path))
        return open(path, "rb")

    index = cached_index(tmp_path / "index", identity, opener)
    assert (len(index), index.format, index.span(1), index.line(1)) == (4, "jsonl", (14, 9), 4)
    assert isinstance(index.records, np.memmap)
    assert len(cached_index(tmp_path / "index", identity, opener)) == 4
    assert len(opened) == 1  # the second call mapped the file built by the first

    time.sleep(0.01)
    changed = write(source, LINES + b'\n{"e": 5}\n')
    assert changed != identity
    assert len(cached_index(tmp_path / "index", changed, opener)) == 5
    assert len(opened) == 2
    assert read_index(index_path(tmp_path / "index", identity.uri), identity) is None  # replaced


def test_a_damaged_index_file_is_rebuilt(tmp_path):
    source = tmp_path / "train.jsonl"
    identity = write(source, LINES)
    index = cached_index(tmp_path / "index", identity, lambda: open(source, "rb"))
    path = index.path
    path.write_bytes(path.read_bytes()[: HEADER.size + 20])
    assert read_index(path, identity) is None
    assert len(cached_index(tmp_path / "index", identity, lambda: open(source, "rb"))) == 4


def test_an_index_pickles_as_its_path(tmp_path):
    source = tmp_path / "train.jsonl"
    identity = write(source, LINES)
    index = cached_index(tmp_path / "index", identity, lambda: open(source, "rb"))
    payload = pickle.dumps(index)
    assert len(payload) < 400  # the records stay in the file
    again = pickle.loads(payload)
    assert isinstance(again.records, np.memmap) and again.span(3) == index.span(3)
    in_memory = AnnotationIndex.build(io.BytesIO(ARRAY))
    assert pickle.loads(pickle.dumps(in_memory)).span(2) == in_memory.span(2)


def _build_in_another_process(folder: str, source: str, log: str) -> int:
    def opener():
        with open(log, "a") as handle:
            handle.write("built\n")
        time.sleep(0.3)  # long enough for the other process to wait on the lock
        return open(source, "rb")

    return len(cached_index(Path(folder), SourceIdentity.of_file(source), opener))


def test_processes_share_one_build(tmp_path):
    source = tmp_path / "train.jsonl"
    write(source, LINES)
    log = tmp_path / "log"
    context = multiprocessing.get_context("fork")
    with context.Pool(3) as pool:
        sizes = pool.starmap(_build_in_another_process, [(str(tmp_path / "index"), str(source), str(log))] * 3)
    assert sizes == [4, 4, 4]
    assert log.read_text() == "built\n"


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from internvl_trainer.data.index import SourceIdentity, cached_index

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    source, folder = sys.argv[1], Path(sys.argv[2])
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current size
    except OSError:
        pass
    before = status("VmRSS")
    index = cached_index(folder, SourceIdentity.of_file(source), lambda: open(source, "rb"))
    grown = status("VmHWM") - before
    last = len(index) - 1
    print(json.dumps({"grown": grown, "samples": len(index), "last": [*index.span(last), index.line(last)]}))
    """
)


def test_indexing_a_million_lines_keeps_memory_flat(tmp_path):
    source = tmp_path / "million.jsonl"
    template = (
        b'{"id": %d, "image": "images/%07d.jpg", "conversations": [{"from": "human", "value": '
        b'"<image>\\nWhat is shown?"}, {"from": "gpt", "value": "A cat sits on a red mat."}]}\n'
    )
    with open(source, "wb") as handle:
        for start in range(0, 1_000_000, 50_000):
            handle.write(b"".join(template % (number, number) for number in range(start, start + 50_000)))
    size = source.stat().st_size
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(source), str(tmp_path / "index")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    measured = json.loads(result.stdout)
    last_line = template % (999_999, 999_999)
    assert measured["samples"] == 1_000_000
    assert measured["last"] == [size - len(last_line), len(last_line) - 1, 1_000_000]
    assert measured["grown"] < 64 * 2**20, f"indexing grew the process by {measured['grown'] / 2**20:.1f} MiB"
