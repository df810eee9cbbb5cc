"""Packs: the node cache's small objects, appended to shared pack files and found through the
catalog (catalog.py), so that keeping an image costs one write instead of a file of its own.

Layout under the cache folder::

    packs/<16 hex digits>.pack   objects one after another; flock-ed by the one process appending to it

Creating a file costs ext4 from 20 µs to almost 1 ms depending on where it placed the folder,
as much as downloading a small image; appending to an open file costs what copying the bytes
does. Each process appends to a pack of its own (its flock marks the pack as live, so that no
scan evicts it) and closes it for good when it reaches its limit or the next object would take
it past (a pack holds at least one object).
Readers of any process find an object through the catalog: its entry is written after its bytes,
so an entry never points at bytes still to come. A pack is the unit of eviction: whole packs go,
least recently used first. An entry whose pack is gone is simply a miss.

A pack's file grows ahead of its objects, a few MiB at a time (``lengthen``), so the cache's
ledger is touched once per few objects, and a scan counting file sizes counts the room a writer
holds. Closing a pack gives the room it did not use back.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import threading
from pathlib import Path

from internvl_trainer.storage.catalog import Slot

SUFFIX = ".pack"
GROWTH = 4 * 1024 * 1024
"""How much a pack's file grows ahead of its objects at a time (at most: never past its limit)."""


class Packs:
    """The pack files of one cache folder, and the one this process appends to."""

    def __init__(self, root: Path, *, durable: bool):
        self.folder = root / "packs"
        self.folder.mkdir(exist_ok=True)
        self._durable = durable
        self._start()

    def _start(self) -> None:
        """This process's thread lock and (no) pack of its own."""
        self.append_lock = threading.Lock()
        """Held by a thread from finding room for an object to writing it: one object at a time."""
        self._pack: int | None = None
        self._descriptor = -1
        self._used = 0
        self._length = 0

    def after_fork(self) -> None:
        """In a forked child: not its parent's pack (the inherited descriptor shares the
        parent's flock, and the parent appends to that pack)."""
        if self._descriptor >= 0:
            os.close(self._descriptor)  # the parent's descriptor keeps the flock
        self._start()

    # -- reads ------------------------------------------------------------------------------

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

    def exists(self, pack: int) -> bool:
        return self.path(pack).exists()

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
            pack = 1 + secrets.randbelow(2**63 - 1)  # never IN_FILE; random: never an evicted pack's again
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


def _allocate(descriptor: int, offset: int, length: int) -> None:
    """Give the file ``length`` more bytes from ``offset``: allocated at once where the system
    can (ext4 then has no blocks to find as each object is written), else a hole."""
    try:
        os.posix_fallocate(descriptor, offset, length)
    except (AttributeError, OSError) as error:  # macOS has none; some file systems refuse
        if isinstance(error, OSError) and error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise  # ENOSPC and the like
        os.ftruncate(descriptor, offset + length)
