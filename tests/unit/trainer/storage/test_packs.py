"""Packs: small objects appended to pack files that grow ahead, close when full, are evicted
whole (their catalog entries then read as misses), stay their process's own across forks, and fall back cleanly."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from internvl_trainer.storage import Cache
from internvl_trainer.storage import cache as cache_module
from internvl_trainer.storage.catalog import IN_FILE, Catalog, Slot
from internvl_trainer.storage.packs import GROWTH, Packs
from internvl_trainer.storage.uri import parse
from tests.unit.trainer.storage.test_cache import FakeStorage, objects

KiB = 1024
MiB = 1024 * KiB


def packs(root) -> list:
    return sorted((root / "packs").iterdir())


def held(path) -> bool:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)


def ledger(root) -> int:
    return int((root / "ledger").read_text())


def test_a_pack_grows_ahead_and_is_cut_to_its_objects_when_full(tmp_path):
    remote = FakeStorage(objects(104))
    cache = Cache(tmp_path, 64 * MiB)  # a pack holds a 64th of the cap: 1 MiB, 102 objects of 10 KiB
    cache.read_bytes(remote, "s3://bkt/img/0.jpg")
    [first] = packs(tmp_path)
    assert first.stat().st_size == 1 * MiB == ledger(tmp_path) == cache.usage()  # room ahead, counted
    for index in range(1, 103):
        cache.read_bytes(remote, f"s3://bkt/img/{index}.jpg")
    assert len(packs(tmp_path)) == 2 and not held(first)
    assert first.stat().st_size == 102 * 10 * KiB  # closed: the unused room given back
    assert ledger(tmp_path) == cache.usage() == 102 * 10 * KiB + 1 * MiB
    for index in range(103):
        assert cache.read_bytes(remote, f"s3://bkt/img/{index}.jpg") == bytes([index]) * 10 * KiB
    assert len(remote.opens) == 103


def test_growth_is_capped_by_the_constant_and_the_limit(tmp_path):
    cache = Cache(tmp_path, 50 * 1024 * MiB)
    cache.read_bytes(FakeStorage(objects(1)), "s3://bkt/img/0.jpg")
    assert packs(tmp_path)[0].stat().st_size == GROWTH


def test_an_object_larger_than_a_pack_gets_a_pack_of_its_own_closed_at_once(tmp_path):
    remote = FakeStorage(objects(2, size=30 * KiB))
    cache = Cache(tmp_path, 640 * KiB)  # packs of 10 KiB
    for index in range(2):
        cache.read_bytes(remote, f"s3://bkt/img/{index}.jpg")
    assert [path.stat().st_size for path in packs(tmp_path)] == [30 * KiB, 30 * KiB]
    assert not any(held(path) for path in packs(tmp_path))  # both evictable already


def test_a_live_pack_is_counted_but_not_evicted_and_a_dead_ones_objects_go_with_it(tmp_path):
    remote = FakeStorage(objects(2))
    writer = Cache(tmp_path, 64 * MiB)
    writer.read_bytes(remote, "s3://bkt/img/0.jpg")
    other = Cache(tmp_path, 64 * MiB)  # another process, as far as locks go: its own descriptors
    other.read_bytes(remote, "s3://bkt/img/1.jpg")
    assert len(packs(tmp_path)) == 2 and all(held(path) for path in packs(tmp_path))
    with other._ledger_locked():
        assert other._scan_and_evict(0) == 2 * MiB  # both live: counted, kept
    del writer  # its process ends: its pack is no longer live
    with other._ledger_locked():
        assert other._scan_and_evict(0) == 1 * MiB
    assert other.evictions == 1
    assert "s3://bkt/img/0.jpg" not in other and "s3://bkt/img/1.jpg" in other
    assert other.read_bytes(remote, "s3://bkt/img/0.jpg") == bytes([0]) * 10 * KiB
    assert remote.opens == ["s3://bkt/img/0.jpg", "s3://bkt/img/1.jpg", "s3://bkt/img/0.jpg"]


def test_an_entry_whose_pack_is_gone_is_a_miss(tmp_path):
    remote = FakeStorage(objects(1))
    cache = Cache(tmp_path, 64 * MiB)
    cache.read_bytes(remote, "s3://bkt/img/0.jpg")
    cache._packs.close()
    packs(tmp_path)[0].unlink()  # evicted by another process between its lookup and its read
    assert cache.read_bytes(remote, "s3://bkt/img/0.jpg") == bytes([0]) * 10 * KiB
    assert len(remote.opens) == 2 and cache.misses == 2


def test_objects_over_4_mib_are_kept_in_files(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "_PACKED_MAX", 20 * KiB)
    remote = FakeStorage(objects(2, size=30 * KiB))
    cache = Cache(tmp_path, 64 * MiB)
    assert cache.read_bytes(remote, "s3://bkt/img/0.jpg") == bytes([0]) * 30 * KiB
    assert cache.entry_path("s3://bkt/img/0.jpg").read_bytes() == bytes([0]) * 30 * KiB
    assert packs(tmp_path) == []


def test_files_and_packs_serve_each_other_without_a_download(tmp_path):
    remote = FakeStorage(objects(2))
    cache = Cache(tmp_path, 64 * MiB)
    cache.read_bytes(remote, "s3://bkt/img/0.jpg")
    path = cache.fetch(remote, "s3://bkt/img/0.jpg")  # a path wanted: the file comes from the pack
    assert path.read_bytes() == bytes([0]) * 10 * KiB
    cache.fetch(remote, "s3://bkt/img/1.jpg")
    assert cache.read_bytes(remote, "s3://bkt/img/1.jpg") == bytes([1]) * 10 * KiB  # from its file
    assert remote.opens == ["s3://bkt/img/0.jpg", "s3://bkt/img/1.jpg"]
    assert (cache.hits, cache.misses) == (2, 2)


@pytest.mark.parametrize("refused", [(Packs, "write"), (Catalog, "insert")])
def test_an_object_that_cannot_be_kept_is_still_read(tmp_path, monkeypatch, caplog, refused):
    def disk_full(self, *arguments):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(*refused, disk_full)
    remote = FakeStorage(objects(1))
    cache = Cache(tmp_path, 64 * MiB)
    with caplog.at_level(logging.WARNING, "internvl_trainer.storage.cache"):
        assert cache.read_bytes(remote, "s3://bkt/img/0.jpg") == bytes([0]) * 10 * KiB
    assert "s3://bkt/img/0.jpg not kept: [Errno 28] No space left on device" in caplog.text
    assert "s3://bkt/img/0.jpg" not in cache
    assert ledger(tmp_path) == cache.usage()


def test_without_fallocate_the_pack_grows_as_a_hole(tmp_path, monkeypatch):
    def refused(descriptor, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", refused)
    cache = Cache(tmp_path, 64 * MiB)
    cache.read_bytes(FakeStorage(objects(1)), "s3://bkt/img/0.jpg")
    assert packs(tmp_path)[0].stat().st_size == 1 * MiB
    assert cache.read_bytes(FakeStorage({}), "s3://bkt/img/0.jpg") == bytes([0]) * 10 * KiB


def test_threads_packing_at_once_keep_every_object_whole(tmp_path):
    remote = FakeStorage({f"s3://bkt/img/{index}.jpg": os.urandom(3 * KiB + index) for index in range(200)})
    cache = Cache(tmp_path, 64 * MiB)
    uris = sorted(remote.objects)
    with ThreadPoolExecutor(8) as pool:
        contents = list(pool.map(lambda uri: cache.read_bytes(remote, uri), uris))
    assert contents == [remote.objects[uri] for uri in uris]
    fresh = Cache(tmp_path, 64 * MiB)
    assert [fresh.read_bytes(FakeStorage({}), uri) for uri in uris] == contents
    assert fresh.hits == 200


def test_a_forked_worker_packs_into_a_pack_of_its_own(tmp_path):
    remote = FakeStorage(objects(3))
    cache = Cache(tmp_path, 64 * MiB)
    cache.read_bytes(remote, "s3://bkt/img/0.jpg")
    [parents] = packs(tmp_path)
    child = os.fork()
    if child == 0:
        code = 1
        try:
            cache.read_bytes(remote, "s3://bkt/img/1.jpg")
            code = 0 if "s3://bkt/img/0.jpg" in cache else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(packs(tmp_path)) == 2 and held(parents)  # the child's pack is closed with the child
    assert parents.stat().st_size == 1 * MiB
    assert cache.read_bytes(FakeStorage({}), "s3://bkt/img/1.jpg") == bytes([1]) * 10 * KiB
    cache.read_bytes(remote, "s3://bkt/img/2.jpg")
    assert len(packs(tmp_path)) == 2  # the parent goes on with its own pack


@pytest.mark.parametrize("bad", [b"", b"x" * 5])
def test_a_short_read_from_a_pack_is_a_miss(tmp_path, bad, monkeypatch):
    remote = FakeStorage(objects(1))
    cache = Cache(tmp_path, 64 * MiB)
    cache.read_bytes(remote, "s3://bkt/img/0.jpg")
    monkeypatch.setattr(os, "pread", lambda descriptor, size, offset: bad)
    assert "s3://bkt/img/0.jpg" not in cache


def test_files_are_catalogued_and_an_evicted_files_entry_reads_as_a_miss(tmp_path):
    remote = FakeStorage(objects(6))
    cache = Cache(tmp_path, 30 * KiB, low_water=1.0)
    for number in range(3):
        cache.fetch(remote, f"s3://bkt/img/{number}.jpg")
        time.sleep(0.01)  # modification times a clock tick apart
    for number in range(3):
        key = cache._key(parse(f"s3://bkt/img/{number}.jpg"))[0]
        assert cache._catalog.find(key) == Slot(IN_FILE, 0, 10 * KiB)
    cache.fetch(remote, "s3://bkt/img/3.jpg")  # 0, the least recently used, goes
    assert "s3://bkt/img/0.jpg" not in cache
    assert cache.read_bytes(remote, "s3://bkt/img/3.jpg") == bytes([3]) * 10 * KiB  # from its file
    assert remote.opens.count("s3://bkt/img/3.jpg") == 1
    assert cache.read_bytes(remote, "s3://bkt/img/0.jpg") == bytes([0]) * 10 * KiB  # downloaded again
    assert remote.opens.count("s3://bkt/img/0.jpg") == 2


def test_a_file_its_entry_never_reached_is_fetched_but_downloaded_again_to_be_read(tmp_path, monkeypatch):
    remote = FakeStorage(objects(1))
    cache = Cache(tmp_path, 64 * MiB)
    with monkeypatch.context() as patch:
        patch.setattr(Catalog, "insert", lambda self, key, slot: None)  # the process died in between
        path = cache.fetch(remote, "s3://bkt/img/0.jpg")
    assert cache.fetch(remote, "s3://bkt/img/0.jpg") == path and len(remote.opens) == 1
    assert cache.read_bytes(remote, "s3://bkt/img/0.jpg") == bytes([0]) * 10 * KiB
    assert len(remote.opens) == 2  # read_bytes goes by the catalog alone


def test_stray_files_are_evicted_like_objects_without_breaking_the_scan(tmp_path):
    cache = Cache(tmp_path, 64 * MiB)
    (tmp_path / "packs" / "notes.txt").write_bytes(b"x" * 100)
    (tmp_path / "objects" / "zz").mkdir()
    (tmp_path / "objects" / "zz" / "stray").write_bytes(b"y" * 100)
    with cache._ledger_locked():
        assert cache._scan_and_evict(0) == 0
    assert cache.evictions == 2 and cache.usage() == 0
