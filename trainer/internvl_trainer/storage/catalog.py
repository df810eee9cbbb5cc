"""The catalog: where the node cache keeps each object (a pack and an offset, or a file of its
own), in one file of fixed size that every process of the node maps into memory.

Layout of ``catalog`` under the cache folder: a header page (magic, geometry), then ``2**bits``
regions, each a 32-byte header (how many entries it holds, which one it drops next) and room for
``capacity`` entries of 32 bytes: pack, offset, size, and the key (the first 16 bytes of the
URI's sha256). An object's region is given by its key's first ``bits`` bits, which start with the
12 bits of its key lock's stripe: a region is read and written only under that one lock, which
the cache takes before it looks an object up anyway, so the catalog needs no lock of its own.
A lookup is one search of a few KiB of shared memory; a new entry is one ``pwrite`` of its 32
bytes and one of its region's count. (An SQLite table in its place cost a first read 4 %: a
transaction per lookup and per row, 8 ``fcntl`` calls each and a 4 KiB log frame per row.)

Entries and headers are 32-byte aligned, so none straddles a page, and a process that dies in a
``pwrite`` leaves each entry whole, old or new; a new entry counts only once its region's count
says so. Writes go through ``pwrite`` rather than the map: a full disk then fails one write
with an error instead of killing the process.

Nothing is deleted when packs and files are evicted: an entry whose pack or file is gone reads
as a miss, and the object's next download replaces it. When a region is full, the entries of
packs that are gone are dropped; if it is still full, its oldest entry makes room (that object is
downloaded again when next read, and the cache stays correct). The catalog is sized for twice
the objects that fill the cap at 64 KiB each (64 bytes of catalog per 64 KiB of cap, 0.1 %; at
least 16 entries a region, 2.2 MB), in a file whose pages are allocated as entries reach them.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

NAME = "catalog"
MAGIC = b"IVLCAT01"
_HEADER = struct.Struct("<8sII")
"""Magic, bits, capacity."""
_HEADER_BYTES = 4096
_REGION = struct.Struct("<II24x")
"""How many entries the region holds, and the next one a full region drops."""
_ENTRY = struct.Struct("<QII16s")
"""Pack, offset, size, key."""
_KEY_BYTES = 16
_KEY_AT = 16
"""Where the key starts within an entry."""
STRIPE_BITS = 12
"""A region lies within one key lock stripe: the first 12 bits of the key (see cache.py)."""
_MAX_BITS = 20
_PER_REGION = 32
"""Regions are added (up to ``2**_MAX_BITS``) until the expected objects average at most this many."""
_MIN_CAPACITY = 16
EXPECTED_OBJECT_BYTES = 64 * 1024
"""The object size the catalog is sized for: it has room for twice the objects of this size that fill the cap."""
IN_FILE = 0
"""The pack of an object kept in a file of its own: its entry spares ``Cache.read_bytes`` looking
for a file that is not there on every miss (a failed open of a long path costs as much as the
lookup)."""
_SIZE_MAX = 2**32 - 1


class Slot(NamedTuple):
    """Where one object's bytes are: ``size`` bytes at ``offset`` of pack ``pack`` (for an object
    in a file of its own, pack ``IN_FILE`` and its size, at most 4 GiB - 1)."""

    pack: int
    offset: int
    size: int


def geometry(max_bytes: int) -> tuple[int, int]:
    """The bits that pick a region and the entries each region has room for, for a cap of ``max_bytes``."""
    expected = max(1, max_bytes // EXPECTED_OBJECT_BYTES)
    bits = STRIPE_BITS
    while bits < _MAX_BITS and expected >> bits > _PER_REGION:
        bits += 1
    per_region = -(-expected // (1 << bits))
    return bits, max(_MIN_CAPACITY, 2 * per_region)


class Catalog:
    """The catalog of one cache folder, mapped by this process. Every call for a key must hold
    the key's stripe lock; open (which may create the file) under the cache's ledger lock."""

    def __init__(self, root: Path, max_bytes: int, *, pack_exists: Callable[[int], bool]):
        self._pack_exists = pack_exists
        self._descriptor = os.open(root / NAME, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            header = os.pread(self._descriptor, _HEADER.size, 0).ljust(_HEADER.size, b"\0")
            magic, bits, capacity = _HEADER.unpack(header)
            if magic != MAGIC or os.fstat(self._descriptor).st_size != _file_size(bits, capacity):
                bits, capacity = geometry(max_bytes)
                os.ftruncate(self._descriptor, 0)  # a damaged or unfinished one: its entries go
                os.ftruncate(self._descriptor, _file_size(bits, capacity))
                os.pwrite(self._descriptor, _HEADER.pack(MAGIC, bits, capacity), 0)  # valid from here
            self._map = mmap.mmap(self._descriptor, _file_size(bits, capacity), access=mmap.ACCESS_READ)
        except BaseException:
            os.close(self._descriptor)
            raise
        self._shift = 32 - bits
        self.capacity = capacity
        self._region_bytes = _region_bytes(capacity)

    def close(self) -> None:
        self._map.close()
        os.close(self._descriptor)

    def find(self, key: bytes) -> Slot | None:
        """Where the object of ``key`` (a sha256 digest) is, if it is catalogued."""
        region = self._region(key)
        at = self._entry_at(key[:_KEY_BYTES], region, self._header(region)[0])
        if at < 0:
            return None
        pack, offset, size, _ = _ENTRY.unpack_from(self._map, at)
        return Slot(pack, offset, size)

    def insert(self, key: bytes, slot: Slot) -> None:
        """Record where the object of ``key`` is (after its bytes are in place); raises OSError
        when the disk refuses the write."""
        short = key[:_KEY_BYTES]
        region = self._region(key)
        count, dropped_next = self._header(region)
        at = self._entry_at(short, region, count)
        entry = _ENTRY.pack(slot.pack, slot.offset, min(slot.size, _SIZE_MAX), short)
        if at >= 0:  # stored again: its entry replaced in place
            os.pwrite(self._descriptor, entry, at)
            return
        if count == self.capacity and (kept := self._sweep(region, count)) < count:
            count, dropped_next = kept, 0
        if count < self.capacity:
            at = region + _REGION.size + count * _ENTRY.size
            count += 1
        else:
            at = region + _REGION.size + dropped_next * _ENTRY.size
            dropped_next = (dropped_next + 1) % self.capacity
        os.pwrite(self._descriptor, entry, at)
        os.pwrite(self._descriptor, _REGION.pack(count, dropped_next), region)  # the entry counts from here

    def _region(self, key: bytes) -> int:
        """Where the key's region starts."""
        return _HEADER_BYTES + (int.from_bytes(key[:4], "big") >> self._shift) * self._region_bytes

    def _header(self, region: int) -> tuple[int, int]:
        """How many entries the region holds and the one it drops next, never past its room."""
        count, dropped_next = _REGION.unpack_from(self._map, region)
        return min(count, self.capacity), dropped_next % self.capacity

    def _entry_at(self, short: bytes, region: int, count: int) -> int:
        """Where the entry of ``short`` starts in the region, or -1."""
        first = region + _REGION.size + _KEY_AT
        end = region + _REGION.size + count * _ENTRY.size
        found = self._map.find(short, first, end)
        while found >= 0 and (found - first) % _ENTRY.size:  # the bytes matched across fields
            found = self._map.find(short, found + 1, end)
        return found - _KEY_AT if found >= 0 else -1

    def _sweep(self, region: int, count: int) -> int:
        """Move the region's entries whose pack is still there to its front, in order; returns
        how many there are (the caller writes the count: until then the old count covers
        whole entries, some twice)."""
        start = region + _REGION.size
        alive: dict[int, bool] = {IN_FILE: True}
        kept = []
        for at in range(start, start + count * _ENTRY.size, _ENTRY.size):
            pack = _ENTRY.unpack_from(self._map, at)[0]
            if pack not in alive:
                alive[pack] = self._pack_exists(pack)
            if alive[pack]:
                kept.append(self._map[at : at + _ENTRY.size])
        if len(kept) < count:
            os.pwrite(self._descriptor, b"".join(kept), start)
        return len(kept)


def _region_bytes(capacity: int) -> int:
    return _REGION.size + capacity * _ENTRY.size


def _file_size(bits: int, capacity: int) -> int:
    return _HEADER_BYTES + (1 << bits) * _region_bytes(capacity)


def remove_catalog(root: Path) -> None:
    """Delete the catalog (used when a reboot empties the cache, before any process maps it)."""
    (root / NAME).unlink(missing_ok=True)
