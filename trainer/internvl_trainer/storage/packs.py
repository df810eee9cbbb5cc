"""Packs: the node cache's small objects, appended to shared pack files and found through an
SQLite index, so that keeping an image costs one write instead of a file of its own.

Layout under the cache folder::

    packs/<16 hex digits>.pack   objects one after another; flock-ed by the one process appending to it
    index.sqlite                 key (sha256 of the URI) -> pack, offset, size, or IN_FILE for an
                                 object kept in a file of its own (WAL journal beside it)

Creating a file costs ext4 from 20 µs to almost 1 ms depending on where it placed the folder,
as much as downloading a small image; appending to an open file costs what copying the bytes
does. Each process appends to a pack of its own (its flock marks the pack as live, so that no
scan evicts it) and closes it for good when it reaches its limit or the next object would take
it past (a pack holds at least one object).
Readers of any process find an object through the index: its row is written after its bytes, so
a row never points at bytes still to come. A pack is the unit of eviction: whole packs go, least
recently used first, and their rows with them. A row whose pack is gone is simply a miss.

A pack's file grows ahead of its objects, a few MiB at a time (``lengthen``), so the cache's
ledger is touched once per few objects, and a scan counting file sizes counts the room a writer
holds. Closing a pack gives the room it did not use back.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

_SCHEMA = """
CREATE TABLE IF NOT EXISTS packed (
    key BLOB PRIMARY KEY,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    size INTEGER NOT NULL
) WITHOUT ROWID;
"""
"""No index by pack: it would double the cost of every insert, and rows are deleted by pack
only when packs are evicted, a batch at a time."""
SUFFIX = ".pack"
INDEX = "index.sqlite"
INDEX_FILES = (INDEX, INDEX + "-wal", INDEX + "-shm")
"""The index and SQLite's files beside it (the write-ahead log and its shared-memory map)."""
IN_FILE = 0
"""The pack of an object kept in a file of its own: its row spares ``Cache.read_bytes`` looking
for a file that is not there on every miss (a failed open of a long path costs as much as the
row's lookup)."""
GROWTH = 4 * 1024 * 1024
"""How much a pack's file grows ahead of its objects at a time (at most: never past its limit)."""
_FORGET_BATCH = 500

_ABANDONED: list[sqlite3.Connection] = []
"""Connections a forked child inherited: never used and never closed there, as SQLite requires
(closing one could touch the parent's locks and journal)."""


class Slot(NamedTuple):
    """Where one object's bytes are: ``size`` bytes at ``offset`` of pack ``pack``."""

    pack: int
    offset: int
    size: int


class Packs:
    """The pack files and the index of one cache folder, as one process sees them."""

    def __init__(self, root: Path, *, durable: bool, wait_s: float):
        self.folder = root / "packs"
        self.folder.mkdir(exist_ok=True)
        self._index_path = root / INDEX
        self._durable = durable
        self._wait_s = wait_s
        self._connect()

    def _connect(self) -> None:
        """This process's connection, thread locks and (no) pack of its own."""
        self._index = sqlite3.connect(
            self._index_path, timeout=self._wait_s, isolation_level=None, check_same_thread=False
        )
        # Without fsync a reboot empties the cache (see cache.py), so SQLite need not flush
        # either; WAL lets readers go on while a writer commits.
        self._index.execute("PRAGMA journal_mode=WAL")
        self._index.execute(f"PRAGMA synchronous={'NORMAL' if self._durable else 'OFF'}")
        self._index.executescript(_SCHEMA)
        self._index_lock = threading.Lock()
        self.append_lock = threading.Lock()
        """Held by a thread from finding room for an object to writing it: one object at a time."""
        self._pack: int | None = None
        self._descriptor = -1
        self._used = 0
        self._length = 0

    def after_fork(self) -> None:
        """In a forked child: its own connection, and not its parent's pack (the inherited
        descriptor shares the parent's flock, and the parent appends to that pack)."""
        _ABANDONED.append(self._index)
        if self._descriptor >= 0:
            os.close(self._descriptor)  # the parent's descriptor keeps the flock
        self._connect()

    # -- reads ------------------------------------------------------------------------------

    def find(self, key: bytes) -> Slot | None:
        """Where the object of ``key`` is, if it is indexed."""
        with self._index_lock:
            row = self._index.execute("SELECT pack, offset, size FROM packed WHERE key = ?", (key,)).fetchone()
        return Slot._make(row) if row else None

    def read(self, slot: Slot) -> bytes | None:
        """The object's bytes, marking its pack as just used; None when the pack is gone."""
        try:
            descriptor = os.open(self.path(slot.pack), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            os.utime(descriptor)
            data = os.pread(descriptor, slot.size, slot.offset)
        finally:
            os.close(descriptor)
        return data if len(data) == slot.size else None

    def path(self, pack: int) -> Path:
        return self.folder / f"{pack:016x}{SUFFIX}"

    # -- writes (``append_lock`` held) ------------------------------------------------------

    def fits(self, size: int, limit: int) -> bool:
        """Whether ``size`` more bytes may go into this process's pack (any object may go into
        an empty one)."""
        return self._used == 0 or self._used + size <= limit

    def full(self, limit: int) -> bool:
        return self._used >= limit

    def shortfall(self, size: int, limit: int) -> int:
        """How many bytes the pack's file must grow by before it has room for ``size`` more
        (0: it has): what the caller reserves in the ledger before ``lengthen``."""
        free = self._length - self._used
        if size <= free:
            return 0
        return max(size - free, min(GROWTH, limit - self._length))

    def lengthen(self, grow: int) -> None:
        """Grow the pack's file by ``grow`` bytes (a new pack if this process has none); ledger lock held."""
        if self._pack is None:
            pack = 1 + secrets.randbelow(2**63 - 1)  # never IN_FILE
            descriptor = os.open(self.path(pack), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            self._pack, self._descriptor = pack, descriptor
        _allocate(self._descriptor, self._length, grow)
        self._length += grow

    def place(self, size: int) -> Slot:
        """The room for the next object, which ``shortfall`` made sure there is."""
        assert self._pack is not None and self._used + size <= self._length
        slot = Slot(self._pack, self._used, size)
        self._used += size
        return slot

    def write(self, slot: Slot, data: bytes) -> None:
        view = memoryview(data)
        offset = slot.offset
        while view:
            count = os.pwrite(self._descriptor, view, offset)
            view, offset = view[count:], offset + count
        if self._durable:
            os.fsync(self._descriptor)

    def insert(self, key: bytes, slot: Slot) -> None:
        """Make a written object findable."""
        with self._index_lock:
            self._index.execute(
                "INSERT OR REPLACE INTO packed VALUES (?, ?, ?, ?)", (key, slot.pack, slot.offset, slot.size)
            )

    def close(self, *, trim: bool = True) -> int:
        """Close this process's pack for good (it becomes evictable); with ``trim``, first cut
        the room it did not use (ledger lock held). Returns the bytes given back."""
        freed = 0
        if self._descriptor >= 0:
            if trim:
                freed = self._length - self._used
                os.ftruncate(self._descriptor, self._used)
            os.close(self._descriptor)
        self._pack, self._descriptor, self._used, self._length = None, -1, 0, 0
        return freed

    # -- eviction ---------------------------------------------------------------------------

    def forget(self, packs: Iterable[int], files: Iterable[bytes] = ()) -> int:
        """Delete the rows of evicted packs and of the keys of evicted files; returns how many
        objects the packs held."""
        forgotten = 0
        with self._index_lock:
            for batch in _batches(list(packs)):
                marks = ", ".join("?" * len(batch))
                forgotten += self._index.execute(f"DELETE FROM packed WHERE pack IN ({marks})", batch).rowcount
            for batch in _batches(list(files)):
                marks = ", ".join("?" * len(batch))
                self._index.execute(f"DELETE FROM packed WHERE pack = {IN_FILE} AND key IN ({marks})", batch)
        return forgotten


def _batches(items: list[Any]) -> Iterator[list[Any]]:
    """``items`` in lists short enough for one statement's parameters."""
    for start in range(0, len(items), _FORGET_BATCH):
        yield items[start : start + _FORGET_BATCH]


def _allocate(descriptor: int, offset: int, length: int) -> None:
    """Give the file ``length`` more bytes from ``offset``: allocated at once where the system
    can (ext4 then has no blocks to find as each object is written), else a hole."""
    try:
        os.posix_fallocate(descriptor, offset, length)
    except (AttributeError, OSError) as error:  # macOS has none; some file systems refuse
        if isinstance(error, OSError) and error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise  # ENOSPC and the like
        os.ftruncate(descriptor, offset + length)


def pack_of(path: Path) -> int | None:
    """The pack a file of the packs folder is, or None for anything else."""
    if not path.name.endswith(SUFFIX):
        return None
    try:
        return int(path.name[: -len(SUFFIX)], 16)
    except ValueError:
        return None


def remove_index(root: Path) -> None:
    """Delete the index (no connection may be open: used when a reboot empties the cache)."""
    for name in INDEX_FILES:
        (root / name).unlink(missing_ok=True)
