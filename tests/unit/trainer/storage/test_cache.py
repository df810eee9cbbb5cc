"""The disk cache with a fake remote: hits, LRU eviction under the cap, atomicity, orphans, threads."""

from __future__ import annotations

import io
import os
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from internvl_trainer.storage import Cache, CacheCapacityError, ObjectNotFound
from internvl_trainer.storage.uri import parse


class Stream(io.BytesIO):
    def __init__(self, data: bytes, fail_after: int | None):
        super().__init__(data)
        self.size = len(data)
        self._fail_after = fail_after

    def read(self, amount: int = -1) -> bytes:
        if self._fail_after is not None and self.tell() >= self._fail_after:
            raise OSError("connection lost for good")
        if self._fail_after is not None:
            amount = min(amount if amount >= 0 else self.size, self._fail_after - self.tell())
        return super().read(amount)


class FakeStorage:
    """Remote objects in a dict; counts opens; can fail mid-stream or stall."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.opens: list[str] = []
        self.fail_after: dict[str, int] = {}
        self.delay = 0.0
        self._lock = threading.Lock()

    def reader(self, uri):
        uri = str(parse(uri))
        with self._lock:
            self.opens.append(uri)
        if uri not in self.objects:
            raise ObjectNotFound(f"{uri}: no such object")
        time.sleep(self.delay)
        return Stream(self.objects[uri], self.fail_after.get(uri))


KiB = 1024
MiB = 1024 * KiB


def objects(count: int, size: int = 10 * KiB) -> dict[str, bytes]:
    return {f"s3://bkt/img/{index}.jpg": bytes([index]) * size for index in range(count)}


def test_miss_then_hit(tmp_path):
    remote = FakeStorage(objects(2))
    cache = Cache(tmp_path, 100 * KiB)
    path = cache.fetch(remote, "s3://bkt/img/0.jpg")
    assert path.read_bytes() == bytes([0]) * 10 * KiB
    assert path.suffix == ".jpg" and path.is_relative_to(tmp_path / "objects")
    assert cache.fetch(remote, "s3://bkt/img/0.jpg") == path
    assert cache.read_bytes(remote, "s3://bkt/img/0.jpg") == bytes([0]) * 10 * KiB
    assert remote.opens == ["s3://bkt/img/0.jpg"]
    assert (cache.hits, cache.misses) == (2, 1)
    assert cache.usage() == 10 * KiB
    assert int((tmp_path / "ledger").read_text()) == 10 * KiB


def test_local_paths_are_not_copied(tmp_path):
    local = tmp_path / "a.jpg"
    local.write_bytes(b"x")
    cache = Cache(tmp_path / "cache", 1000)
    assert cache.fetch(FakeStorage({}), str(local)) == local
    with pytest.raises(ObjectNotFound):
        cache.fetch(FakeStorage({}), str(tmp_path / "missing.jpg"))
    with pytest.raises(ObjectNotFound):
        cache.fetch(FakeStorage({}), "s3://bkt/missing.jpg")
    assert cache.usage() == 0


def test_least_recently_used_objects_are_evicted_under_the_cap(tmp_path):
    remote = FakeStorage(objects(10))
    cache = Cache(tmp_path, 50 * KiB, low_water=1.0)
    for index in range(5):
        cache.fetch(remote, f"s3://bkt/img/{index}.jpg")
        time.sleep(0.01)
    cache.fetch(remote, "s3://bkt/img/0.jpg")  # 0 is now the most recently used
    time.sleep(0.01)
    cache.fetch(remote, "s3://bkt/img/5.jpg")  # needs room: 1, the oldest, goes
    assert not cache.entry_path("s3://bkt/img/1.jpg").exists()
    for index in (0, 2, 3, 4, 5):
        assert cache.entry_path(f"s3://bkt/img/{index}.jpg").exists()
    assert cache.evictions == 1
    assert cache.usage() <= 50 * KiB


def test_low_water_evicts_in_batches(tmp_path):
    remote = FakeStorage(objects(10))
    cache = Cache(tmp_path, 50 * KiB, low_water=0.5)
    for index in range(6):
        cache.fetch(remote, f"s3://bkt/img/{index}.jpg")
        time.sleep(0.01)
    # The sixth needed room: the cache went down to half the cap minus the newcomer (15 KiB) first,
    # evicting the four oldest at once, so the next few misses need no scan.
    assert cache.evictions == 4
    assert cache.usage() == 20 * KiB
    assert [cache.entry_path(f"s3://bkt/img/{index}.jpg").exists() for index in range(6)] == [False] * 4 + [True] * 2


def test_object_larger_than_the_cap(tmp_path):
    remote = FakeStorage({"s3://bkt/huge.mp4": b"x" * 2000})
    cache = Cache(tmp_path, 1000)
    with pytest.raises(CacheCapacityError, match="do not fit"):
        cache.fetch(remote, "s3://bkt/huge.mp4")
    assert cache.usage() == 0


def test_a_failed_download_leaves_nothing_and_releases_its_reservation(tmp_path):
    remote = FakeStorage(objects(1, size=100 * KiB))
    remote.fail_after["s3://bkt/img/0.jpg"] = 30 * KiB
    cache = Cache(tmp_path, 1000 * KiB)
    with pytest.raises(OSError, match="connection lost"):
        cache.fetch(remote, "s3://bkt/img/0.jpg")
    assert not cache.entry_path("s3://bkt/img/0.jpg").exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert int((tmp_path / "ledger").read_text()) == 0
    del remote.fail_after["s3://bkt/img/0.jpg"]
    assert cache.read_bytes(remote, "s3://bkt/img/0.jpg") == bytes([0]) * 100 * KiB


def test_a_short_object_is_not_cached(tmp_path):
    class Liar(FakeStorage):
        def reader(self, uri):
            stream = super().reader(uri)
            stream.size += 10  # announces more than it sends
            return stream

    cache = Cache(tmp_path, 1000 * KiB)
    with pytest.raises(Exception, match="bytes arrived, expected"):
        cache.fetch(Liar(objects(1)), "s3://bkt/img/0.jpg")
    assert not cache.entry_path("s3://bkt/img/0.jpg").exists()


def test_orphaned_partial_files_are_deleted_and_the_ledger_corrected(tmp_path):
    cache = Cache(tmp_path, 100 * KiB)
    orphan = tmp_path / "tmp" / f"{'0' * 64}.{90 * KiB}.deadbeef.part"
    orphan.write_bytes(b"half")  # nobody holds its flock: its writer died
    (tmp_path / "ledger").write_text(str(90 * KiB))  # the dead writer's reservation
    remote = FakeStorage(objects(1, size=20 * KiB))
    cache.fetch(remote, "s3://bkt/img/0.jpg")
    assert not orphan.exists()
    assert int((tmp_path / "ledger").read_text()) == 20 * KiB


def test_a_partial_file_held_by_a_live_writer_is_kept_and_counted(tmp_path):
    import fcntl

    cache = Cache(tmp_path, 100 * KiB)
    live = tmp_path / "tmp" / f"{'1' * 64}.{85 * KiB}.cafe.part"
    descriptor = os.open(live, os.O_CREAT | os.O_WRONLY)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    try:
        (tmp_path / "ledger").write_text("garbage")  # unreadable: forces a rescan
        remote = FakeStorage(objects(1, size=20 * KiB))
        cache.wait_s = 0.3
        with pytest.raises(CacheCapacityError, match="downloads in flight fill it"):
            cache.fetch(remote, "s3://bkt/img/0.jpg")  # 85 + 20 > 100, and the 85 are in flight
        assert live.exists()
    finally:
        os.close(descriptor)
    cache.fetch(remote, "s3://bkt/img/0.jpg")  # the writer is gone now
    assert not live.exists()


@pytest.fixture(params=[True, False], ids=["ofd-locks", "lock-files"])
def key_locks(request, monkeypatch):
    """Both ways of locking a key: Linux's OFD locks, and a lock file per stripe elsewhere."""
    from internvl_trainer.storage import cache

    monkeypatch.setattr(cache, "OFD_LOCKS", request.param)
    return request.param


def test_threads_fetching_one_object_download_it_once(tmp_path, key_locks):
    remote = FakeStorage(objects(1, size=200 * KiB))
    remote.delay = 0.05
    cache = Cache(tmp_path, 1000 * KiB)
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: cache.fetch(remote, "s3://bkt/img/0.jpg"), range(16)))
    assert len(set(paths)) == 1
    assert remote.opens == ["s3://bkt/img/0.jpg"]
    assert (cache.hits, cache.misses) == (15, 1)


def test_open_survives_eviction_between_fetch_and_open(tmp_path, monkeypatch):
    remote = FakeStorage(objects(1))
    cache = Cache(tmp_path, 1000 * KiB)
    original = cache.fetch
    calls = []

    def fetch_then_evict(storage, uri):
        path = original(storage, uri)
        if not calls:
            path.unlink()  # another process evicts it right away
        calls.append(path)
        return path

    monkeypatch.setattr(cache, "fetch", fetch_then_evict)
    with cache.open(remote, "s3://bkt/img/0.jpg") as handle:
        assert handle.read() == bytes([0]) * 10 * KiB
    assert len(calls) == 2


def test_pickles_for_data_loader_workers(tmp_path):
    cache = Cache(tmp_path, 1234, low_water=0.8, fsync=False)
    copy = pickle.loads(pickle.dumps(cache))
    assert (copy.root, copy.max_bytes, copy.low_water, copy.fsync) == (tmp_path, 1234, 0.8, False)
    assert repr(copy) == f"Cache({str(tmp_path)!r}, max_bytes=1234)"


def test_invalid_settings(tmp_path):
    with pytest.raises(ValueError):
        Cache(tmp_path, 0)
    with pytest.raises(ValueError):
        Cache(tmp_path, 10, low_water=0)


def test_keys_without_a_usable_extension(tmp_path):
    cache = Cache(tmp_path, 1000)
    assert cache.entry_path("s3://bkt/a/noext").suffix == ""
    assert cache.entry_path("s3://bkt/a/weird.ext$").suffix == ""
    assert cache.entry_path("s3://bkt/a/B.JPG").suffix == ".jpg"
    assert cache.entry_path("s3://bkt/a/1.jpg") != cache.entry_path("s3://bkt/b/1.jpg")


# ---------------------------------------------------------------------------------------------
# the cost of a first read


def test_read_bytes_keeps_a_small_object_in_a_pack(tmp_path):
    remote = FakeStorage(objects(2, size=30 * KiB))
    cache = Cache(tmp_path, 100 * KiB)
    assert cache.read_bytes(remote, "s3://bkt/img/1.jpg") == bytes([1]) * 30 * KiB
    assert "s3://bkt/img/1.jpg" in cache and "s3://bkt/img/0.jpg" not in cache
    assert not cache.entry_path("s3://bkt/img/1.jpg").exists()
    assert [path.suffix for path in (tmp_path / "packs").iterdir()] == [".pack"]
    assert cache.usage() == 30 * KiB and int((tmp_path / "ledger").read_text()) == 30 * KiB
    assert list((tmp_path / "tmp").iterdir()) == []
    assert cache.read_bytes(remote, "s3://bkt/img/1.jpg") == bytes([1]) * 30 * KiB
    assert remote.opens == ["s3://bkt/img/1.jpg"]
    assert (cache.hits, cache.misses) == (1, 1)


def test_a_miss_costs_no_fsync_and_no_ledger_file_opens(tmp_path, monkeypatch):
    # Profiled on a cold read: each miss opened the ledger's lock and the ledger twice and
    # fsync-ed the object, as long as the download itself for a small image; then creating a
    # file per object cost as much again on ext4.
    remote = FakeStorage(objects(4))
    cache = Cache(tmp_path, 100 * MiB)
    opened, flushed = [], []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *args: opened.append(os.path.basename(path)) or real_open(path, *args))
    monkeypatch.setattr(os, "fsync", flushed.append)
    cache.fetch(remote, "s3://bkt/img/0.jpg")
    assert len(opened) == 2 and opened[0] == "keys.lock" and opened[1].endswith(".part")
    for index in (1, 2, 3):
        cache.read_bytes(remote, f"s3://bkt/img/{index}.jpg")
    # The process's pack once; nothing else: the key lock's descriptor is the one fetch opened,
    # and the catalog says the object has no file (looking for one cost as much as the lookup).
    assert opened[2:] == [name for name in opened[2:] if name.endswith(".pack")] and len(opened) == 3
    assert flushed == []


def test_with_fsync_every_object_is_flushed_before_it_can_be_found(tmp_path, monkeypatch):
    remote = FakeStorage(objects(2))
    flushed = []
    monkeypatch.setattr(os, "fsync", flushed.append)
    cache = Cache(tmp_path, 100 * KiB, fsync=True)
    cache.fetch(remote, "s3://bkt/img/0.jpg")
    cache.read_bytes(remote, "s3://bkt/img/1.jpg")
    assert len(flushed) == 2  # the file before its rename, the pack before its catalog entry
    assert not (tmp_path / "unsynced-boot").exists()


def test_a_cache_written_without_fsync_is_emptied_after_a_reboot(tmp_path, monkeypatch):
    from internvl_trainer.storage import cache as module

    remote = FakeStorage(objects(2))
    monkeypatch.setattr(module, "boot_id", lambda: "boot-1")
    cache = Cache(tmp_path, 100 * KiB)
    cache.fetch(remote, "s3://bkt/img/0.jpg")
    cache.read_bytes(remote, "s3://bkt/img/1.jpg")
    assert (tmp_path / "unsynced-boot").read_text() == "boot-1"
    again = Cache(tmp_path, 100 * KiB)  # same boot: kept
    assert "s3://bkt/img/0.jpg" in again and "s3://bkt/img/1.jpg" in again

    monkeypatch.setattr(module, "boot_id", lambda: "boot-2")
    del cache, again  # their processes ended with the boot
    after = Cache(tmp_path, 100 * KiB)
    assert "s3://bkt/img/0.jpg" not in after and "s3://bkt/img/1.jpg" not in after
    assert all(after._catalog.find(after._key(parse(uri))[0]) is None for uri in remote.objects)  # made anew
    assert after.usage() == 0 and int((tmp_path / "ledger").read_text()) == 0
    assert list((tmp_path / "packs").iterdir()) == []
    assert (tmp_path / "unsynced-boot").read_text() == "boot-2"


def test_a_cache_written_with_fsync_survives_a_reboot(tmp_path, monkeypatch):
    from internvl_trainer.storage import cache as module

    remote = FakeStorage(objects(1))
    monkeypatch.setattr(module, "boot_id", lambda: "boot-1")
    Cache(tmp_path, 100 * KiB, fsync=True).fetch(remote, "s3://bkt/img/0.jpg")
    monkeypatch.setattr(module, "boot_id", lambda: "boot-2")
    assert Cache(tmp_path, 100 * KiB, fsync=True).entry_path("s3://bkt/img/0.jpg").exists()
    monkeypatch.setattr(module, "boot_id", lambda: None)  # no boot id: every object is flushed
    assert Cache(tmp_path, 100 * KiB)._flush


def test_threads_reading_one_object_download_it_once(tmp_path, key_locks):
    remote = FakeStorage(objects(1, size=200 * KiB))
    remote.delay = 0.05
    cache = Cache(tmp_path, 1000 * KiB)
    with ThreadPoolExecutor(8) as pool:
        contents = list(pool.map(lambda _: cache.read_bytes(remote, "s3://bkt/img/0.jpg"), range(16)))
    assert contents == [bytes([0]) * 200 * KiB] * 16
    assert remote.opens == ["s3://bkt/img/0.jpg"]
    assert (cache.hits, cache.misses) == (15, 1)


def test_packed_objects_keep_the_cap(tmp_path):
    remote = FakeStorage(objects(12))
    cache = Cache(tmp_path, 50 * KiB, low_water=1.0)
    for index in range(12):
        assert cache.read_bytes(remote, f"s3://bkt/img/{index}.jpg") == bytes([index]) * 10 * KiB
        assert cache.usage() <= 50 * KiB
    assert cache.evictions == 7
    assert [f"s3://bkt/img/{index}.jpg" in cache for index in range(12)] == [False] * 7 + [True] * 5
    assert int((tmp_path / "ledger").read_text()) == cache.usage()


def test_a_forked_worker_has_its_own_ledger_lock_and_drops_its_parents_key_locks(tmp_path):
    import fcntl

    cache = Cache(tmp_path, 100 * KiB)
    cache._unlock_key(cache._lock_key(b"\x00\x10"))  # a free descriptor in the pool
    held = cache._lock_key(b"\xab\xc0")  # as a download holds it
    inherited = [held[0], *cache._key_descriptors]
    keys = os.stat(tmp_path / "keys.lock").st_ino
    readable, writable = os.pipe()
    with cache._ledger_locked():
        child = os.fork()
        if child == 0:  # the child: the ledger lock is its parent's, not its own
            answers = []
            try:
                try:
                    fcntl.flock(cache._ledger_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    answers.append("shared ledger lock")
                except BlockingIOError:
                    answers.append("own ledger lock")
                # An inherited descriptor shares its parent's OFD locks: a lock taken on it would
                # not exclude the parent. The child drops them all and opens its own.
                for descriptor in inherited:
                    try:
                        if os.fstat(descriptor).st_ino == keys:  # not a number used again since
                            answers.append("kept a key descriptor")
                    except OSError:
                        pass
                second = cache._lock_key(b"\xab\xc0")
                answers.append(repr(time.monotonic()))  # when the parent had let go of it
                cache._unlock_key(second)
            finally:
                os.write(writable, ",".join(answers).encode())
                os._exit(0)
        time.sleep(0.5)
    released = time.monotonic()
    cache._unlock_key(held)
    answer = os.read(readable, 200).decode()
    os.waitpid(child, 0)
    os.close(readable)
    os.close(writable)
    ledger, taken = answer.split(",")
    assert ledger == "own ledger lock"
    assert float(taken) >= released
