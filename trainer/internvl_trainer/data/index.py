"""Byte-offset indexes of annotation files: where each sample's text starts, how long it is, and on
which line of the file it begins.

InternVL reads a whole JSONL file into a Python list of lines in every rank (and every data-loader
worker that copies it), so memory grows with the dataset. Here a file is scanned once, as a stream,
into 16 bytes per sample (offset, length, line) written to an index file in the node's cache
folder; every rank and worker maps that file read-only, and a sample's text is read with one
positioned read (or one ranged GET) when it is drawn.

Formats, told apart by the first character that is not white space:

- JSON lines (InternVL's ``.jsonl``): one sample per line; blank lines are left out, lines keep
  their numbers. A line that is not valid JSON is still indexed (it is a bad sample, reported
  with its line when read, never a reason to refuse the file).
- A JSON array of samples (the InternVL3 guide's ``.json``): the array is scanned for its
  top-level elements without being parsed; the line of an element is the line its first
  character is on. A broken array structure (not closed, text after it) makes the file unusable:
  ``AnnotationFormatError`` with the line.

Scanning keeps memory flat: JSON lines are scanned in 1 MiB chunks with numpy (about 0.1 s per
100 MB); in arrays, each element is matched whole by one regular expression (objects nested up to
five deep) or, failing that, scanned from one bracket, comma or string to the next.

The index file (``<sha256 of the URI>.idx``) starts with a 64-byte header: magic, record count,
format, and a digest of the source's identity (URI, size and ETag, or size, inode and
modification time for local files), so a changed source gets a new index. It is written to a
temporary file, fsync-ed and renamed into place under a per-file ``flock``: the first process
builds it, the others wait and map it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np

RECORD = np.dtype([("offset", "<u8"), ("length", "<u4"), ("line", "<u4")])
"""One sample: byte offset of its text, its length in bytes, and its 1-based line number."""

MAGIC = b"IVLIDX01"
HEADER = struct.Struct("<8sQ8s32s8x")
"""magic, record count, format, identity digest, padding: 64 bytes."""
assert HEADER.size == 64

CHUNK = 1 << 20
"""Bytes read from the source at a time."""

_FLUSH = 1 << 13
_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"

Format = Literal["jsonl", "json"]


class AnnotationFormatError(ValueError):
    """An annotation file whose structure cannot be indexed; the message starts with ``file:line``."""


# ---------------------------------------------------------------------------------------------
# scanning


def _chunks(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while True:
        chunk = stream.read(size)
        if not chunk:
            return
        yield chunk


def detect_format(head: bytes) -> Format | None:
    """The format of a file starting with ``head``; None when ``head`` is only white space."""
    if len(head) < len(_BOM) and _BOM.startswith(head):
        return None
    text = head.removeprefix(_BOM).lstrip(_WHITESPACE)
    if not text:
        return None
    return "json" if text[:1] == b"[" else "jsonl"


def scan(
    stream: BinaryIO, sink: Callable[[np.ndarray], None], *, source: str = "annotation", chunk_size: int = CHUNK
) -> Format:
    """Scan ``stream`` from its start, passing the samples found to ``sink`` in RECORD arrays (in
    file order). Returns the format. Raises AnnotationFormatError for a broken JSON array."""
    head = b""
    chunks = _chunks(stream, chunk_size)
    found: Format | None = None
    for chunk in chunks:
        head += chunk
        found = detect_format(head)
        if found is not None:
            break
    everything = _chain(head, chunks)
    if found == "json":
        _scan_array(everything, sink, source)
        return "json"
    _scan_lines(everything, sink)
    return "jsonl"


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


_SPACE_BYTES = np.array([32, 9, 13, 10], dtype=np.uint8)


def _has_text(segment: np.ndarray) -> bool:
    """Whether a byte segment holds anything besides white space."""
    return bool(segment.size) and not bool(np.isin(segment, _SPACE_BYTES).all())


def _scan_lines(chunks: Iterator[bytes], sink: Callable[[np.ndarray], None]) -> None:
    base = 0  # absolute offset of the chunk's first byte
    start = 0  # absolute offset of the line being read
    number = 0  # 0-based number of that line
    pending = False  # whether the part of that line seen so far holds text
    is_space = np.zeros(256, dtype=bool)
    is_space[_SPACE_BYTES] = True
    for chunk in chunks:
        data = np.frombuffer(chunk, dtype=np.uint8)
        newlines = np.flatnonzero(data == 10)
        if not newlines.size:
            pending = pending or _has_text(data)
            base += data.size
            continue
        count = newlines.size
        starts = np.empty(count, dtype=np.int64)
        starts[0] = start - base
        starts[1:] = newlines[:-1] + 1
        lengths = newlines - starts
        # A line has text when its first byte is not white space; the few lines that start with
        # white space (and the first one, which may have begun in an earlier chunk) are looked at whole.
        keep = lengths > 0
        keep[1:] &= ~is_space[data[starts[1:]]]  # starts[k] <= newlines[k] < data.size for k >= 1
        for position in np.flatnonzero((lengths[1:] > 0) & ~keep[1:]) + 1:
            keep[position] = _has_text(data[starts[position] : newlines[position]])
        keep[0] = pending or _has_text(data[max(0, starts[0]) : newlines[0]])
        if keep.any():
            chosen = np.flatnonzero(keep)
            records = np.empty(chosen.size, dtype=RECORD)
            records["offset"] = starts[chosen] + base
            records["length"] = _checked_lengths(lengths[chosen])
            records["line"] = number + chosen + 1
            sink(records)
        number += count
        start = base + int(newlines[-1]) + 1
        pending = _has_text(data[newlines[-1] + 1 :])
        base += data.size
    if pending:
        records = np.empty(1, dtype=RECORD)
        records[0] = (start, _checked_lengths(np.asarray([base - start]))[0], number + 1)
        sink(records)


def _checked_lengths(lengths: np.ndarray) -> np.ndarray:
    if lengths.size and int(lengths.max()) >= 2**32:
        raise AnnotationFormatError(f"a sample of {int(lengths.max())} bytes; at most 4 GiB per sample")
    return lengths


_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_SKIP_TOP = re.compile(rb'(?:[^"\[\]{},]++|' + _STRING + rb")*+", re.DOTALL)
"""Text and whole strings up to the next bracket or comma (or a string not closed yet)."""
_SKIP_INNER = re.compile(rb'(?:[^"\[\]{}]++|' + _STRING + rb")*+", re.DOTALL)
"""The same inside a nested array or object, where commas do not matter."""


def _nested(levels: int) -> bytes:
    inner = rb'(?:[^"\[\]{}]++|' + _STRING + (rb"|" + _nested(levels - 1) if levels else b"") + rb")*+"
    return rb"(?:\{" + inner + rb"\}|\[" + inner + rb"\])"


_VALUE = re.compile(_nested(4), re.DOTALL)
"""A whole object or array nested at most five deep (InternVL's samples are three deep), matched in
one call: the fast path; anything else (deeper, cut by the end of the buffer, unbalanced) is
scanned bracket by bracket."""
_TEXT = re.compile(rb"[^ \t\r\n]")


class _ArrayScanner:
    """The top-level elements of a JSON array read in chunks (see the module docstring)."""

    def __init__(self, chunks: Iterator[bytes], sink: Callable[[np.ndarray], None], source: str):
        self.chunks = chunks
        self.sink = sink
        self.source = source
        self.buffer = b""
        self.base = 0
        self.position = 0
        self.lines = 0  # newlines before ``counted`` (absolute: discarded ones included)
        self.counted = 0
        self.found: list[tuple[int, int, int]] = []

    def refill(self) -> bool:
        if self.position:
            self.lines += self.buffer.count(b"\n", self.counted, self.position)
            self.buffer = self.buffer[self.position :]
            self.base += self.position
            self.position = 0
            self.counted = 0
        chunk = next(self.chunks, None)
        if chunk is None:
            return False
        self.buffer += chunk
        return True

    def line_at(self, index: int) -> int:
        self.lines += self.buffer.count(b"\n", self.counted, index)
        self.counted = index
        return self.lines + 1

    def fail(self, message: str, index: int | None = None) -> AnnotationFormatError:
        line = self.line_at(index) if index is not None else self.lines + self.buffer.count(b"\n", self.counted) + 1
        return AnnotationFormatError(f"{self.source}:{line}: {message}")

    def emit(self, start: int, end: int, line: int) -> None:
        if end - start >= 2**32:
            raise self.fail(f"a sample of {end - start} bytes; at most 4 GiB per sample")
        self.found.append((start, end - start, line))
        if len(self.found) >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        if self.found:
            self.sink(np.array(self.found, dtype=RECORD))
            self.found = []

    def next_text(self) -> int | None:
        """The index of the next byte that is not white space, reading on as needed."""
        while True:
            match = _TEXT.search(self.buffer, self.position)
            if match:
                return match.start()
            self.position = len(self.buffer)
            if not self.refill():
                return None

    def run(self) -> None:
        self.refill()
        if self.buffer.startswith(_BOM):
            self.position = len(_BOM)
        opening = self.next_text()
        if opening is None or self.buffer[opening : opening + 1] != b"[":
            raise self.fail("expected a JSON array", opening)
        self.position = opening + 1
        first = True
        while True:
            start = self.next_text()
            if start is None:
                raise self.fail("the JSON array is not closed")
            if first and self.buffer[start : start + 1] == b"]":
                self.position = start + 1
                break
            first = False
            element_start, element_line = self.base + start, self.line_at(start)
            self.position = start
            if self.element(element_start, element_line):
                break
        trailing = self.next_text()
        if trailing is not None:
            raise self.fail("text after the end of the JSON array", trailing)
        self.flush()

    def element(self, start: int, line: int) -> bool:
        """Scan one element up to its delimiter; True when the array ends after it."""
        whole = _VALUE.match(self.buffer, self.position)
        if whole is not None:
            self.position = whole.end()
        depth = 0
        while True:
            skip = _SKIP_INNER if depth else _SKIP_TOP
            index = skip.match(self.buffer, self.position).end()
            if index == len(self.buffer) or self.buffer[index] == 0x22:  # the end, or a string not closed yet
                self.position = index
                if not self.refill():
                    raise self.fail(
                        "a string is not closed" if index < len(self.buffer) else "the JSON array is not closed"
                    )
                continue
            token = self.buffer[index]
            self.position = index + 1
            if token == 0x5B or token == 0x7B:  # '[' or '{'
                depth += 1
            elif depth:  # ']' or '}' inside the element
                depth -= 1
            elif token == 0x7D:
                raise self.fail("'}' without its '{'", index)
            else:  # ']' or ',' of the array itself
                self.emit(start, self.base + index, line)
                return token == 0x5D


def _scan_array(chunks: Iterator[bytes], sink: Callable[[np.ndarray], None], source: str) -> None:
    _ArrayScanner(chunks, sink, source).run()


# ---------------------------------------------------------------------------------------------
# index files


@dataclass(frozen=True)
class SourceIdentity:
    """What makes an index valid for a source: its URI, size, and version (ETag, or inode and
    modification time)."""

    uri: str
    size: int
    version: str

    def digest(self) -> bytes:
        return hashlib.sha256(f"{self.uri}\n{self.size}\n{self.version}".encode()).digest()

    @classmethod
    def of_file(cls, path: str | os.PathLike[str], uri: str | None = None) -> SourceIdentity:
        stat = os.stat(path)
        return cls(uri or os.fspath(path), stat.st_size, f"{stat.st_ino}:{stat.st_mtime_ns}")


class AnnotationIndex:
    """The records of one annotation file, mapped read-only from its index file."""

    def __init__(self, records: np.ndarray, format: Format, path: Path | None = None):
        self.records = records
        self.format = format
        self.path = path

    def __len__(self) -> int:
        return int(self.records.shape[0])

    def span(self, number: int) -> tuple[int, int]:
        """(offset, length) of record ``number``."""
        offset, length, _ = self.records[number].item()
        return offset, length

    def line(self, number: int) -> int:
        """The 1-based line record ``number`` starts on."""
        return self.records[number].item()[2]

    def __getstate__(self) -> dict:
        # Another process maps the file again instead of receiving a copy of the records.
        if self.path is None:
            return {"records": np.asarray(self.records), "format": self.format, "path": None}
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        if state.get("path") is None:
            self.__init__(state["records"], state["format"])
            return
        loaded = read_index(state["path"])
        if loaded is None:
            raise FileNotFoundError(f"{state['path']}: the annotation index is gone")
        self.__init__(loaded.records, loaded.format, loaded.path)

    @classmethod
    def build(cls, stream: BinaryIO, *, source: str = "annotation") -> AnnotationIndex:
        """An index in memory (tests, small files)."""
        parts: list[np.ndarray] = []
        found = scan(stream, parts.append, source=source)
        records = np.concatenate(parts) if parts else np.empty(0, dtype=RECORD)
        return cls(records, found)


def write_index(stream: BinaryIO, path: Path, identity: SourceIdentity, *, source: str | None = None) -> int:
    """Scan ``stream`` into the index file ``path`` (atomically). Returns the number of records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    count = 0
    try:
        with open(temporary, "wb") as handle:
            handle.write(bytes(HEADER.size))

            def sink(records: np.ndarray) -> None:
                nonlocal count
                handle.write(records.tobytes())
                count += records.shape[0]

            found = scan(stream, sink, source=source or identity.uri)
            handle.seek(0)
            handle.write(HEADER.pack(MAGIC, count, found.encode(), identity.digest()))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return count


def read_index(path: Path, identity: SourceIdentity | None = None) -> AnnotationIndex | None:
    """The index in ``path``; None when it is missing, damaged, or made from another version of
    the source than ``identity``."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(HEADER.size)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        return None
    if len(header) != HEADER.size:
        return None
    magic, count, found, digest = HEADER.unpack(header)
    if magic != MAGIC or size != HEADER.size + count * RECORD.itemsize:
        return None
    if identity is not None and digest != identity.digest():
        return None
    kind = found.rstrip(b"\0").decode()
    if kind not in ("jsonl", "json"):
        return None
    if count == 0:
        records = np.empty(0, dtype=RECORD)
    else:
        records = np.memmap(path, dtype=RECORD, mode="r", offset=HEADER.size, shape=(count,))
    return AnnotationIndex(records, kind, path)  # type: ignore[arg-type]


def index_path(folder: Path, uri: str) -> Path:
    return folder / f"{hashlib.sha256(uri.encode()).hexdigest()[:32]}.idx"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def cached_index(
    folder: Path, identity: SourceIdentity, open_source: Callable[[], BinaryIO], *, source: str | None = None
) -> AnnotationIndex:
    """The index of a source, from ``folder`` or built into it once (other processes wait for the
    builder and then map its file). ``open_source`` opens the source for streaming."""
    path = index_path(folder, identity.uri)
    found = read_index(path, identity)
    if found is not None:
        return found
    with _locked(path.with_suffix(".lock")):
        found = read_index(path, identity)
        if found is not None:
            return found
        with open_source() as stream:
            write_index(stream, path, identity, source=source)
    built = read_index(path, identity)
    if built is None:
        raise OSError(f"{path}: the annotation index just written cannot be read back")
    return built
