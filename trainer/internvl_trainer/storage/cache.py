"""A local disk cache of remote objects (images, videos, model shards), shared by every data-loader
worker and rank on a node.

Layout under the cache folder::

    objects/ab/<sha256 of the URI><extension>   objects kept as files of their own (``fetch``, ``open``,
                                                and ``read_bytes`` of objects over 4 MiB)
    packs/<id>.pack                             smaller objects ``read_bytes`` kept (see packs.py)
    catalog                                     where each object is: a pack and offset, or its file
    tmp/<digest>.<size>.<random>.part           downloads in progress, each flock-ed by its writer
    keys.lock                                   per-key locks: one byte of it per key stripe (4096)
    locks/<3 hex digits>.lock                   per-key locks where the system has no OFD locks
    ledger                                      bytes held (objects + packs + reserved downloads), flock-ed
    unsynced-boot                               the boot that wrote objects without fsync, if any

Guarantees:

- Atomic: a file is streamed into ``tmp/``, its size checked, then renamed into ``objects/``; a
  packed object is written into room reserved at the end of a pack, and its catalog entry comes
  after its bytes. A reader can only find complete objects; a process that dies leaves a
  ``.part`` file that no one serves and that the next scan deletes (its writer's flock is gone),
  or bytes in a pack that no entry points at. Only a machine crash can lose data the kernel had not
  yet written to disk; with ``fsync`` on, every object is flushed before it can be found. With
  ``fsync`` off (the default: a flush costs as much as a fifth of a small object's download), the
  cache records the boot it was written in, and the first ``Cache`` opened after a reboot empties
  it. Where the boot cannot be told (no ``/proc/sys/kernel/random/boot_id``), objects are always
  flushed.
- Safe across processes and threads: a lock per key stripe, taken before the object is looked
  up, so several workers asking for one object download it once. The key locks are
  open-file-description byte-range locks on one file (Linux's ``F_OFD_SETLKW``: owned by the
  descriptor like ``flock``, so threads with descriptors of their own exclude each other), taken
  on descriptors a process keeps in a pool, which spares a new cache creating a lock file per
  stripe and a lock an open and a close; elsewhere (macOS) each stripe is a lock file of its own
  under ``flock``. The ledger
  is under its own ``flock``, taken on a descriptor each process opens once
  (forked workers open their own) and, within a process, under a thread lock.
- Bounded: before an object is written to disk, its size is reserved in the ledger. When the
  reservation would pass ``max_bytes``, the cache rescans itself (which also corrects the ledger
  after crashes) and evicts the least recently used files and packs (by modification time, which
  every hit refreshes) down to ``low_water`` of the cap; a pack still being appended to is
  counted but not evicted. In-flight downloads count, so the files on disk never exceed the cap
  (the catalog, 0.1 % of the cap, and the lock files are not counted).

A first read costs about what a plain GET does (docs/benchmarks.md): ``read_bytes`` keeps an
object of up to 4 MiB by appending it to its process's pack, one write into an open file instead
of creating a file (on ext4 that costs as much as downloading a small image), and finds any object
with one lookup in the catalog, a table in shared memory guarded by the key locks (catalog.py),
files included (a file the catalog does not know, left by a crash between the rename and the
entry, serves ``fetch`` but not ``read_bytes``). A pack holds a 64th of the cap
at most (64 MiB at most), so a cache never waits long for packs that are still being written.

An object evicted while a reader has it open stays readable for that reader (POSIX). Use
``open`` to get a file that cannot vanish; ``fetch`` returns a path for libraries that need one,
valid until the object is evicted.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from internvl_trainer.storage.catalog import IN_FILE, Catalog, Slot, remove_catalog
from internvl_trainer.storage.errors import CacheCapacityError, IntegrityError, ObjectNotFound
from internvl_trainer.storage.packs import Packs
from internvl_trainer.storage.uri import Location, parse

if TYPE_CHECKING:
    from internvl_trainer.storage.store import Storage

log = logging.getLogger(__name__)

_SUFFIX = re.compile(r"^\.[a-z0-9]{1,10}$")
_COPY_CHUNK = 4 * 1024 * 1024
_PACKED_MAX = 4 * 1024 * 1024
"""Objects up to this size are downloaded in one read and kept in a pack by ``read_bytes``.
Larger ones are streamed to a file of their own in chunks."""
_PACK_MAX = 64 * 1024 * 1024
_PACKS_PER_CAP = 64
"""A pack holds at most this share of the cap (and at most ``_PACK_MAX``)."""
_LEDGER_WIDTH = 20
"""The ledger is one number padded to this many bytes, rewritten in place: truncating and
rewriting a file makes ext4 flush it at close, which costs more than the rest of a reservation."""

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

_Made = TypeVar("_Made")


def boot_id() -> str | None:
    """This boot's id (Linux), or None where the kernel does not tell."""
    try:
        return BOOT_ID.read_text().strip() or None
    except OSError:
        return None


class Cache:
    """A size-capped, LRU, multi-process cache of remote objects in a local folder."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_bytes: int,
        *,
        low_water: float = 0.9,
        fsync: bool = False,
        wait_s: float = 120.0,
    ):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if not 0.0 < low_water <= 1.0:
            raise ValueError("low_water must be in (0, 1]")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.low_water = low_water
        self.fsync = fsync
        self.wait_s = wait_s
        self._boot = boot_id()
        self._flush = fsync or self._boot is None
        self._pack_limit = max(1, min(_PACK_MAX, max_bytes // _PACKS_PER_CAP))
        self._objects = self.root / "objects"
        self._objects_folder = str(self._objects)
        self._tmp = self.root / "tmp"
        for folder in (self._objects, self._tmp):
            folder.mkdir(parents=True, exist_ok=True)
        self._keys = self.root / "keys.lock"
        self._keys.touch()
        if not OFD_LOCKS:
            (self.root / "locks").mkdir(exist_ok=True)
        self._ledger = self.root / "ledger"
        self._ledger_fd = -1
        self._open_ledger()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        """Files and packs this process evicted (a pack goes with all of its objects)."""
        _CACHES.add(self)
        with self._ledger_locked():
            forgotten = self._forget_an_earlier_boot()
            self._packs = Packs(self.root, durable=self._flush)
            # Opened once a reboot's emptying has deleted the old catalog, if it did.
            self._catalog = Catalog(self.root, max_bytes, pack_exists=self._packs.exists)
            if forgotten or self._read_ledger() is None:
                self._scan_and_evict(self.max_bytes)

    def _open_ledger(self) -> None:
        """This process's ledger descriptor and thread locks: set up again in a forked child,
        whose inherited descriptors share its parent's flocks (a key lock the child kept open
        would outlive the parent's release) and whose inherited locks may have been held by a
        thread that does not exist in the child."""
        if self._ledger_fd >= 0:
            os.close(self._ledger_fd)  # the parent's copy stays open: its flock is untouched
        for stripe in getattr(self, "_stripes", ()):
            os.close(stripe)
        self._ledger_fd = os.open(self._ledger, os.O_CREAT | os.O_RDWR, 0o644)
        self._ledger_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self._stripes: set[int] = set()
        """Descriptors for key locks, free or holding one (closed in a forked child), under ``_stripes_lock``."""
        self._stripes_lock = threading.Lock()
        self._key_descriptors: list[int] = []
        """The free ones (OFD locks): a descriptor per thread holding a key lock at once, at most."""

    def _after_fork(self) -> None:
        self._open_ledger()
        if hasattr(self, "_packs"):  # not when another thread forked during __init__
            self._packs.after_fork()

    def __del__(self) -> None:
        if getattr(self, "_ledger_fd", -1) >= 0:
            os.close(self._ledger_fd)
            self._ledger_fd = -1
        if hasattr(self, "_packs"):
            self._packs.close(trim=False)  # its unused room stays counted until a scan
        if hasattr(self, "_catalog"):
            self._catalog.close()

    def _forget_an_earlier_boot(self) -> bool:
        """Empty a cache that a process which did not flush wrote to before a reboot (ledger lock
        held); record this boot when this process will not flush. True when objects were dropped."""
        marker = self.root / "unsynced-boot"
        try:
            written: str | None = marker.read_text().strip()
        except FileNotFoundError:
            written = None
        forgotten = written is not None and written != self._boot
        if forgotten:
            for path in (*_files(self._objects), *_files(self.root / "packs")):
                path.unlink(missing_ok=True)
            remove_catalog(self.root)
            log.warning("cache %s: written without fsync before a reboot; emptied", self.root)
        if not self._flush and written != self._boot:
            _write_durably(marker, str(self._boot))  # on disk before any object it vouches for
        elif forgotten:
            marker.unlink()
        return forgotten

    def __getstate__(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "max_bytes": self.max_bytes,
            "low_water": self.low_water,
            "fsync": self.fsync,
            "wait_s": self.wait_s,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.pop("root"), state.pop("max_bytes"), **state)

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r}, max_bytes={self.max_bytes})"

    def __contains__(self, uri: str | Location) -> bool:
        """Whether the object of ``uri`` is in the cache now, as a file or packed."""
        key, final = self._key(parse(uri))
        held = self._lock_key(key)  # the catalog is read under the key's lock only
        try:
            return os.path.exists(final) or self._unpack(key) is not None
        finally:
            self._unlock_key(held)

    # -- public -----------------------------------------------------------------------------

    def entry_path(self, uri: str | Location) -> Path:
        """Where the object of ``uri`` lives in the cache once fetched."""
        return Path(self._key(parse(uri))[1])

    def fetch(self, storage: Storage, uri: str | os.PathLike[str] | Location) -> Path:
        """A local path holding the whole object: from the cache, or downloaded into it first.
        Local URIs are returned as they are (nothing is copied)."""
        location = parse(uri)
        if not location.is_s3:
            if not location.path.is_file():
                raise ObjectNotFound(f"{location}: no such file")
            return location.path
        key, final = self._key(location)
        if self._touch(final):
            self._count(hits=1)
        else:
            self._fill(storage, location, key, final, in_memory=False)
        return Path(final)

    def open(self, storage: Storage, uri: str | os.PathLike[str] | Location) -> BinaryIO:
        """The cached object opened for reading (it stays readable even if evicted meanwhile)."""
        for _ in range(5):
            path = self.fetch(storage, uri)
            try:
                return open(path, "rb")
            except FileNotFoundError:
                continue  # evicted between fetch and open: fetch again
        raise CacheCapacityError(f"{uri}: evicted again and again before it could be opened; the cache is too small")

    def read_bytes(self, storage: Storage, uri: str | os.PathLike[str] | Location) -> bytes:
        """The whole object: from a pack or file of the cache, or downloaded (an object of up to
        4 MiB is kept in a pack; a larger one in a file of its own)."""
        location = parse(uri)
        if location.is_s3:
            key, final = self._key(location)
            # Looked up under the key's lock, hit or miss: a miss then costs one lookup, not two.
            data = self._fill(storage, location, key, final, in_memory=True)
            if data is not None:
                return data
        with self.open(storage, location) as handle:  # a local file, or a large object just stored
            return handle.read()

    def usage(self) -> int:
        """Bytes on disk now: files, packs and partial downloads (a scan, for checks and reports)."""
        total = 0
        for folder in (self._tmp, self._objects, self._packs.folder):
            for path in _files(folder):
                try:
                    total += path.stat().st_size
                except FileNotFoundError:
                    pass
        return total

    # -- internals --------------------------------------------------------------------------

    def _key(self, location: Location) -> tuple[bytes, str]:
        """The object's key (sha256 of its URI) and the path of its file (a string: a miss's
        bookkeeping is a tenth of a small object's download, and path objects add to it)."""
        digest = hashlib.sha256(str(location).encode()).digest()
        name = digest.hex()
        suffix = os.path.splitext(location.name)[1].lower()
        if not _SUFFIX.match(suffix):
            suffix = ""
        return digest, f"{self._objects_folder}/{name[:2]}/{name}{suffix}"

    def _count(self, *, hits: int = 0, misses: int = 0, evictions: int = 0) -> None:
        with self._counter_lock:
            self.hits += hits
            self.misses += misses
            self.evictions += evictions

    @staticmethod
    def _touch(path: str) -> bool:
        """Mark a cached file as just used; False when it is not there."""
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        return True

    def _unpack(self, key: bytes) -> bytes | None:
        """A packed object's bytes (its pack marked as just used), or None."""
        slot = self._catalog.find(key)
        return None if slot is None or slot.pack == IN_FILE else self._packs.read(slot)

    def _cached(self, key: bytes, final: str) -> bytes | None:
        """The object's bytes from its pack or file, as the catalog says, counted as a hit; None
        when not cached (a file without an entry, left by a crash between the two, is not found)."""
        slot = self._catalog.find(key)
        if slot is None:
            return None
        if slot.pack != IN_FILE:
            data = self._packs.read(slot)
        else:
            try:
                descriptor = os.open(final, os.O_RDONLY)
            except FileNotFoundError:
                return None
            with open(descriptor, "rb") as handle:
                os.utime(descriptor)
                data = handle.read()
        if data is not None:
            self._count(hits=1)
        return data

    def _fill(self, storage: Storage, location: Location, key: bytes, final: str, *, in_memory: bool) -> bytes | None:
        """Under the key's lock, the object from the cache if another worker stored it meanwhile,
        else downloaded. With ``in_memory``, an object of up to 4 MiB is packed and its bytes
        returned; otherwise the file is in place on return (None)."""
        held = self._lock_key(key)
        try:
            if in_memory:
                data = self._cached(key, final)
                if data is not None:
                    return data
            elif self._touch(final):
                self._count(hits=1)
                return None
            elif (packed := self._unpack(key)) is not None:  # read before: a file from the pack's bytes
                self._store(location, key, final, len(packed), iter((packed,)))
                self._count(hits=1)
                return None
            with storage.reader(location) as stream:
                size = stream.size
                if size > self.max_bytes:
                    raise CacheCapacityError(f"{location}: {size} bytes do not fit in a cache of {self.max_bytes}")
                if not in_memory or size > _PACKED_MAX:
                    self._store(location, key, final, size, _copy_stream(stream, size))
                    self._count(misses=1)
                    return None
                data = stream.read()  # one buffer, as boto3's read(); a stream resumes a broken body itself
            if len(data) != size:
                raise IntegrityError(f"{location}: {len(data)} bytes arrived, expected {size}")
            self._count(misses=1)
            self._pack(location, key, data)
            return data
        finally:
            self._unlock_key(held)

    def _lock_key(self, key: bytes) -> tuple[int, int]:
        """Take the lock of ``key``'s stripe (its first 12 bits: 4096); returns the descriptor that
        holds it and the stripe. OFD locks are taken on a descriptor of a pool (a thread takes one
        for itself: OFD locks on one descriptor do not exclude each other); lock files are
        opened each time, and closed to unlock."""
        stripe = int.from_bytes(key[:2], "big") >> 4
        if OFD_LOCKS:
            try:
                descriptor = self._key_descriptors.pop()
            except IndexError:
                descriptor = self._open_key_descriptor(self._keys, os.O_RDWR)
            try:
                fcntl.fcntl(descriptor, fcntl.F_OFD_SETLKW, key_lock(fcntl.F_WRLCK, stripe))
            except BaseException:
                self._key_descriptors.append(descriptor)
                raise
            return descriptor, stripe
        descriptor = self._open_key_descriptor(self.root / "locks" / f"{stripe:03x}.lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except BaseException:
            self._close_key_descriptor(descriptor)
            raise
        return descriptor, stripe

    def _open_key_descriptor(self, path: Path, flags: int) -> int:
        with self._stripes_lock:  # a fork must not copy a descriptor that is not in the set
            descriptor = os.open(path, flags, 0o644)
            self._stripes.add(descriptor)
        return descriptor

    def _close_key_descriptor(self, descriptor: int) -> None:
        with self._stripes_lock:
            self._stripes.discard(descriptor)
            os.close(descriptor)  # closing releases the lock

    def _unlock_key(self, held: tuple[int, int]) -> None:
        descriptor, stripe = held
        if OFD_LOCKS:
            fcntl.fcntl(descriptor, fcntl.F_OFD_SETLK, key_lock(fcntl.F_UNLCK, stripe))
            self._key_descriptors.append(descriptor)
        else:
            self._close_key_descriptor(descriptor)

    def _pack(self, location: Location, key: bytes, data: bytes) -> None:
        """Keep a small object in this process's pack. The reader has its bytes whatever
        happens: an object that cannot be kept is downloaded again next time."""
        packs, size, limit = self._packs, len(data), self._pack_limit
        try:
            with packs.append_lock:
                if not packs.fits(size, limit):
                    self._close_pack()
                grow = packs.shortfall(size, limit)
                if grow:
                    self._reserve(grow, lambda: packs.lengthen(grow))
                slot = packs.place(size)
                packs.write(slot, data)
                self._catalog.insert(key, slot)
                if packs.full(limit):  # closed now, not at the next object: only a closed pack can be evicted
                    self._close_pack()
        except (CacheCapacityError, OSError) as error:
            log.warning("cache: %s not kept: %s", location, error)

    def _close_pack(self) -> None:
        with self._ledger_locked():
            self._release_locked(self._packs.close())

    def _store(self, location: Location, key: bytes, final: str, size: int, chunks: Iterator[bytes]) -> None:
        """Reserve ``size`` bytes, write ``chunks`` to a partial file, check the size, rename it
        into place and catalogue it; on any failure delete the partial file and release the reservation."""
        part = self._tmp / f"{os.path.basename(final)[:64]}.{size}.{uuid.uuid4().hex}.part"
        descriptor = self._reserve(size, lambda: _create_held(part))
        done = False
        try:
            written = 0
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    count = os.write(descriptor, view)
                    view = view[count:]
                written += len(chunk)
            if written != size:
                raise IntegrityError(f"{location}: {written} bytes arrived, expected {size}")
            if self._flush:
                os.fsync(descriptor)
            try:
                os.rename(part, final)
            except FileNotFoundError:  # the first object of its folder
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.rename(part, final)
            done = True
        finally:
            os.close(descriptor)
            if not done:
                part.unlink(missing_ok=True)
                self._release(size)
        try:
            self._catalog.insert(key, Slot(IN_FILE, 0, size))
        except OSError as error:  # the file serves fetch(); read_bytes will download it again
            log.warning("cache: %s not catalogued: %s", location, error)

    def _reserve(self, size: int, make: Callable[[], _Made]) -> _Made:
        """Reserve ``size`` bytes (evicting as needed) and ``make`` the space they go to (a
        flock-ed partial file, room in a pack), both under the ledger lock, so no scan can miss it."""
        deadline = time.monotonic() + self.wait_s
        while True:
            with self._ledger_locked():
                total = self._read_ledger()
                if total is None or total + size > self.max_bytes:
                    target = max(0, int(self.max_bytes * self.low_water) - size)
                    total = self._scan_and_evict(target)
                if total + size <= self.max_bytes:
                    made = make()
                    self._write_ledger(total + size)
                    return made
            if time.monotonic() > deadline:
                raise CacheCapacityError(
                    f"waited {self.wait_s:.0f} s for {size} bytes in a cache of {self.max_bytes}: "
                    "downloads in flight fill it"
                )
            time.sleep(0.05)

    def _release(self, size: int) -> None:
        with self._ledger_locked():
            self._release_locked(size)

    def _release_locked(self, size: int) -> None:
        total = self._read_ledger()
        if total is not None:
            self._write_ledger(max(0, total - size))

    def _scan_and_evict(self, target: int) -> int:
        """Recount the cache (ledger lock held), delete orphaned partial files, and evict least
        recently used files and packs until the total is at most ``target``. Returns the new total."""
        in_flight = 0
        # Partial files first, objects second: a file renamed in between is counted twice, never missed.
        for part in _files(self._tmp):
            reserved = _reserved_size(part)
            if not _held(part):
                part.unlink(missing_ok=True)
                log.info("cache: deleted %s, left by a writer that died", part.name)
                continue
            in_flight += reserved
        # Files, then whatever is in the packs folder (a pack still being appended to is held).
        found = [(path, False) for path in _files(self._objects)]
        found += [(path, True) for path in _files(self._packs.folder)]
        evictable: list[tuple[int, int, Path]] = []
        for path, in_packs in found:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if in_packs and _held(path):  # still being appended to: counted, not evicted
                in_flight += stat.st_size
            else:
                evictable.append((stat.st_mtime_ns, stat.st_size, path))
        total = in_flight + sum(size for _, size, _ in evictable)
        evictable.sort()
        evicted = 0
        for _, size, path in evictable:
            if total <= target:
                break
            path.unlink(missing_ok=True)  # its catalog entry now reads as a miss
            evicted += 1
            total -= size
        if evicted:
            self._count(evictions=evicted)
            log.debug("cache: evicted %d files and packs, %d bytes held", evicted, total)
        self._write_ledger(total)
        os.ftruncate(self._ledger_fd, _LEDGER_WIDTH)  # whatever else was there is gone
        return total

    def _read_ledger(self) -> int | None:
        try:
            return int(os.pread(self._ledger_fd, 64, 0))
        except ValueError:
            return None

    def _write_ledger(self, total: int) -> None:
        os.pwrite(self._ledger_fd, f"{total:<{_LEDGER_WIDTH}d}".encode(), 0)

    @contextmanager
    def _ledger_locked(self) -> Iterator[None]:
        with self._ledger_lock:  # the flock is the descriptor's: it does not exclude this process's threads
            fcntl.flock(self._ledger_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._ledger_fd, fcntl.LOCK_UN)


def _create_held(part: Path) -> int:
    """A new partial file, flock-ed so that no scan takes it for an orphan."""
    descriptor = os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


def _write_durably(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.write(descriptor, text.encode())
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the name too
    finally:
        os.close(folder)


def _copy_stream(stream: BinaryIO, size: int) -> Iterator[bytes]:
    written = 0
    while True:
        # Sized reads: a small object costs no 4 MiB buffer (one past the end reads b"").
        chunk = stream.read(max(1, min(_COPY_CHUNK, size - written)))
        if not chunk:
            return
        written += len(chunk)
        yield chunk


OFD_LOCKS = hasattr(fcntl, "F_OFD_SETLKW")
"""Whether the system has open-file-description locks (Linux); elsewhere a lock file per stripe."""


def key_lock(kind: int, byte: int) -> bytes:
    """Linux's ``struct flock`` (type, whence, start, length, pid: 0, as OFD locks require) for a
    lock of ``kind`` on one byte of the key lock file."""
    return struct.pack("hhqqi", kind, os.SEEK_SET, byte, 1, 0)


_CACHES: weakref.WeakSet[Cache] = weakref.WeakSet()


_FORKING: list[Cache] = []


def _before_fork() -> None:
    _FORKING[:] = list(_CACHES)
    for cache in _FORKING:
        cache._stripes_lock.acquire()


def _after_fork_in_parent() -> None:
    for cache in _FORKING:
        cache._stripes_lock.release()
    _FORKING.clear()


def _after_fork_in_child() -> None:
    for cache in _FORKING:
        cache._after_fork()
    _FORKING.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def _files(folder: Path) -> Iterator[Path]:
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _files(Path(entry.path))
        elif entry.is_file(follow_symlinks=False):
            yield Path(entry.path)


def _reserved_size(part: Path) -> int:
    try:
        return int(part.name.split(".")[1])
    except (IndexError, ValueError):
        return 0


def _held(path: Path) -> bool:
    """Whether a live process holds the file's flock (a partial file's writer, a pack's appender)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True  # gone meanwhile: nothing to delete or evict
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(descriptor)
    return False
