"""The catalog: sized by the cap, shared through the file, entries replaced in place, full regions
dropping dead packs' entries and then their oldest, and whole entries only, whatever fails."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from internvl_trainer.storage import catalog
from internvl_trainer.storage.catalog import Catalog, Slot, geometry

MiB = 1024 * 1024
GiB = 1024 * MiB


def key(region: int, number: int) -> bytes:
    """A 32-byte key in ``region`` of a 12-bit catalog (its first 12 bits)."""
    return (region << 20).to_bytes(4, "big") + number.to_bytes(4, "big") + bytes(24)


def open_catalog(root, live=lambda pack: True, max_bytes=64 * MiB) -> Catalog:
    return Catalog(root, max_bytes, pack_exists=live)


@pytest.mark.parametrize(
    ("max_bytes", "expected"),
    [
        (1 * MiB, (12, 16)),
        (64 * MiB, (12, 16)),
        (50 * GiB, (15, 50)),
        (2 * 1024 * GiB, (20, 64)),
        (16 * 1024 * GiB, (20, 512)),
    ],
)
def test_regions_and_room_follow_the_cap(max_bytes, expected):
    assert geometry(max_bytes) == expected


def test_entries_are_shared_through_the_file_whose_geometry_wins(tmp_path):
    first = open_catalog(tmp_path)
    first.insert(key(7, 1), Slot(5, 100, 2000))
    assert (tmp_path / catalog.NAME).stat().st_size == 4096 + 4096 * (32 + 16 * 32)
    second = open_catalog(tmp_path, max_bytes=50 * GiB)  # another cap: the file's geometry stays
    assert second.capacity == 16
    assert second.find(key(7, 1)) == Slot(5, 100, 2000)
    assert second.find(key(7, 2)) is None and second.find(key(8, 1)) is None
    second.insert(key(7, 2), Slot(6, 0, 10))
    assert first.find(key(7, 2)) == Slot(6, 0, 10)


def test_an_object_stored_again_replaces_its_entry(tmp_path):
    index = open_catalog(tmp_path)
    index.insert(key(3, 0), Slot(1, 0, 10))
    index.insert(key(3, 0), Slot(2, 40, 10))
    for number in range(1, 16):  # the region's other 15 entries fit: the first took one
        index.insert(key(3, number), Slot(2, number, 1))
    assert index.find(key(3, 0)) == Slot(2, 40, 10)
    assert all(index.find(key(3, number)) == Slot(2, number, 1) for number in range(1, 16))


def test_a_full_region_drops_dead_packs_entries_then_its_oldest(tmp_path):
    live = {2}
    index = open_catalog(tmp_path, live=live.__contains__)
    for number in range(16):
        index.insert(key(9, number), Slot(1 if number < 4 else 2, number, 1))
    index.insert(key(9, 16), Slot(2, 16, 1))  # full: pack 1 is gone, its 4 entries go
    assert [index.find(key(9, number)) is not None for number in range(17)] == [False] * 4 + [True] * 13
    for number in range(17, 20):
        index.insert(key(9, number), Slot(2, number, 1))
    index.insert(key(9, 20), Slot(2, 20, 1))  # full of live entries: the oldest goes
    index.insert(key(9, 21), Slot(2, 21, 1))
    assert [index.find(key(9, number)) is not None for number in range(4, 22)] == [False] * 2 + [True] * 16
    assert index.find(key(10, 0)) is None  # the neighbouring region is untouched


def test_key_bytes_matched_across_fields_are_not_an_entry(tmp_path):
    index = open_catalog(tmp_path)
    slot = Slot(0x1_5000, 7, 9)  # its bytes start 00 50: region 5, as a key
    lookalike = struct.pack("<QII", *slot) + bytes(16)
    index.insert(key(5, 1), Slot(1, 0, 1))
    index.insert(key(5, 2), slot)  # the lookalike's first 16 bytes are this entry's fields
    assert index.find(lookalike) is None
    assert index.find(key(5, 2)) == slot


def test_a_damaged_catalog_is_made_anew(tmp_path):
    (tmp_path / catalog.NAME).write_bytes(b"not a catalog")
    index = open_catalog(tmp_path)
    assert (tmp_path / catalog.NAME).stat().st_size == 4096 + 4096 * (32 + 16 * 32)
    assert index.find(key(1, 1)) is None
    index.insert(key(1, 1), Slot(3, 0, 1))
    assert open_catalog(tmp_path).find(key(1, 1)) == Slot(3, 0, 1)


def test_a_damaged_region_header_never_sends_a_write_past_its_region(tmp_path):
    index = open_catalog(tmp_path)
    for number in range(16):
        index.insert(key(6, number), Slot(2, number, 1))
    index.insert(key(7, 0), Slot(2, 99, 1))
    with open(tmp_path / catalog.NAME, "r+b") as handle:
        handle.seek(4096 + 6 * (32 + 16 * 32))
        handle.write(struct.pack("<II", 1000, 1000))  # more entries than room, a drop beyond it
    index.insert(key(6, 16), Slot(2, 16, 1))
    assert index.find(key(6, 16)) == Slot(2, 16, 1)
    assert [index.find(key(6, number)) is not None for number in range(16)] == [True] * 8 + [False] + [True] * 7
    assert index.find(key(7, 0)) == Slot(2, 99, 1)


@pytest.mark.parametrize("failing_write", [1, 2])
def test_an_entry_whose_writes_did_not_all_land_is_not_found(tmp_path, monkeypatch, failing_write):
    index = open_catalog(tmp_path)
    writes = []
    real_pwrite = os.pwrite

    def pwrite(descriptor, data, offset):
        writes.append(offset)
        if len(writes) == failing_write:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(OSError, match="No space left"):
        index.insert(key(2, 1), Slot(3, 0, 1))
    assert index.find(key(2, 1)) is None  # the entry, then its region's count: both or nothing


def test_a_forked_process_sees_the_entries_of_its_parent_and_the_parent_its(tmp_path):
    index = open_catalog(tmp_path)
    index.insert(key(4, 1), Slot(3, 0, 1))
    child = os.fork()
    if child == 0:
        code = 1
        try:
            index.insert(key(4, 2), Slot(3, 1, 1))
            code = 0 if index.find(key(4, 1)) == Slot(3, 0, 1) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert index.find(key(4, 2)) == Slot(3, 1, 1)
