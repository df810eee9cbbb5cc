"""A local disk cache of remote objects (images, videos, model shards), shared by every data-loader
worker and rank on a node.

Layout under the cache folder::

    objects/ab/<sha256 of the URI><extension>   complete objects, the only files ever served
    tmp/<digest>.<size>.<random>.part           downloads in progress, each flock-ed by its writer
    locks/<3 hex digits>.lock                   per-key locks (4096 stripes): one download per object
    ledger, ledger.lock                         bytes held (objects + reserved downloads)

Guarantees:

- Atomic: an object is streamed into ``tmp/``, its size checked (and fsync-ed), then renamed into
  ``objects/``. A reader can only find complete files; a crash leaves a ``.part`` file that no
  one serves and that the next scan deletes (its writer's flock is gone).
- Safe across processes and threads: ``flock`` per key stripe, so several workers asking for one
  object download it once; a ledger under its own lock.
- Bounded: before a download starts, its size is reserved in the ledger. When the reservation
  would pass ``max_bytes``, the cache rescans itself (which also corrects the ledger after crashes)
  and evicts the least recently used objects (by modification time, which every hit refreshes)
  down to ``low_water`` of the cap. In-flight downloads count, so the files on disk never exceed
  the cap.

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
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from internvl_trainer.storage.errors import CacheCapacityError, IntegrityError, ObjectNotFound
from internvl_trainer.storage.uri import Location, parse

if TYPE_CHECKING:
    from internvl_trainer.storage.store import Storage

log = logging.getLogger(__name__)

_SUFFIX = re.compile(r"^\.[a-z0-9]{1,10}$")
_COPY_CHUNK = 4 * 1024 * 1024


class Cache:
    """A size-capped, LRU, multi-process cache of remote objects in a local folder."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        max_bytes: int,
        *,
        low_water: float = 0.9,
        fsync: bool = True,
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
        self._objects = self.root / "objects"
        self._tmp = self.root / "tmp"
        self._locks = self.root / "locks"
        for folder in (self._objects, self._tmp, self._locks):
            folder.mkdir(parents=True, exist_ok=True)
        self._ledger = self.root / "ledger"
        self._counter_lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        with self._locked(self.root / "ledger.lock"):
            if self._read_ledger() is None:
                self._scan_and_evict(self.max_bytes)

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

    # -- public -----------------------------------------------------------------------------

    def entry_path(self, uri: str | Location) -> Path:
        """Where the object of ``uri`` lives in the cache once fetched."""
        location = parse(uri)
        digest = hashlib.sha256(str(location).encode()).hexdigest()
        suffix = os.path.splitext(location.name)[1].lower()
        return self._objects / digest[:2] / (digest + (suffix if _SUFFIX.match(suffix) else ""))

    def fetch(self, storage: Storage, uri: str | os.PathLike[str] | Location) -> Path:
        """A local path holding the whole object: from the cache, or downloaded into it first.
        Local URIs are returned as they are (nothing is copied)."""
        location = parse(uri)
        if not location.is_s3:
            if not location.path.is_file():
                raise ObjectNotFound(f"{location}: no such file")
            return location.path
        final = self.entry_path(location)
        if self._touch(final):
            self._count(hits=1)
            return final
        with self._locked(self._locks / f"{final.name[:3]}.lock"):
            if self._touch(final):
                self._count(hits=1)
                return final
            self._download(storage, location, final)
        self._count(misses=1)
        return final

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
        with self.open(storage, uri) as handle:
            return handle.read()

    def usage(self) -> int:
        """Bytes on disk now: complete objects plus partial downloads (a scan, for checks and reports)."""
        total = 0
        for folder in (self._tmp, self._objects):
            for path in _files(folder):
                try:
                    total += path.stat().st_size
                except FileNotFoundError:
                    pass
        return total

    # -- internals --------------------------------------------------------------------------

    def _count(self, *, hits: int = 0, misses: int = 0, evictions: int = 0) -> None:
        with self._counter_lock:
            self.hits += hits
            self.misses += misses
            self.evictions += evictions

    @staticmethod
    def _touch(path: Path) -> bool:
        """Mark a cached object as just used; False when it is not there."""
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        return True

    def _download(self, storage: Storage, location: Location, final: Path) -> None:
        with storage.open(location) as stream:
            size = stream.size
            if size > self.max_bytes:
                raise CacheCapacityError(f"{location}: {size} bytes do not fit in a cache of {self.max_bytes}")
            part, descriptor = self._reserve(final.name[:64], size)
            done = False
            try:
                written = 0
                while True:
                    chunk = stream.read(_COPY_CHUNK)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        count = os.write(descriptor, view)
                        view = view[count:]
                    written += len(chunk)
                if written != size:
                    raise IntegrityError(f"{location}: {written} bytes arrived, expected {size}")
                if self.fsync:
                    os.fsync(descriptor)
                final.parent.mkdir(exist_ok=True)
                os.rename(part, final)
                done = True
            finally:
                os.close(descriptor)
                if not done:
                    part.unlink(missing_ok=True)
                    self._release(size)

    def _reserve(self, digest: str, size: int) -> tuple[Path, int]:
        """Reserve ``size`` bytes (evicting as needed) and create the flock-ed partial file, both
        under the ledger lock, so no scan can take the new file for an orphan."""
        deadline = time.monotonic() + self.wait_s
        while True:
            with self._locked(self.root / "ledger.lock"):
                total = self._read_ledger()
                if total is None or total + size > self.max_bytes:
                    target = max(0, int(self.max_bytes * self.low_water) - size)
                    total = self._scan_and_evict(target)
                if total + size <= self.max_bytes:
                    part = self._tmp / f"{digest}.{size}.{uuid.uuid4().hex}.part"
                    descriptor = os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                    fcntl.flock(descriptor, fcntl.LOCK_EX)
                    self._write_ledger(total + size)
                    return part, descriptor
            if time.monotonic() > deadline:
                raise CacheCapacityError(
                    f"waited {self.wait_s:.0f} s for {size} bytes in a cache of {self.max_bytes}: "
                    "downloads in flight fill it"
                )
            time.sleep(0.05)

    def _release(self, size: int) -> None:
        with self._locked(self.root / "ledger.lock"):
            total = self._read_ledger()
            if total is not None:
                self._write_ledger(max(0, total - size))

    def _scan_and_evict(self, target: int) -> int:
        """Recount the cache (ledger lock held), delete orphaned partial files, and evict least
        recently used objects until the total is at most ``target``. Returns the new total."""
        in_flight = 0
        # Partial files first, objects second: a file renamed in between is counted twice, never missed.
        for part in _files(self._tmp):
            reserved = _reserved_size(part)
            if _is_orphan(part):
                part.unlink(missing_ok=True)
                log.info("cache: deleted %s, left by a writer that died", part.name)
                continue
            in_flight += reserved
        objects = []
        for path in _files(self._objects):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            objects.append((stat.st_mtime_ns, stat.st_size, path))
        total = in_flight + sum(size for _, size, _ in objects)
        objects.sort()
        evicted = 0
        for _, size, path in objects:
            if total <= target:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            total -= size
            evicted += 1
        if evicted:
            self._count(evictions=evicted)
            log.debug("cache: evicted %d objects, %d bytes held", evicted, total)
        self._write_ledger(total)
        return total

    def _read_ledger(self) -> int | None:
        try:
            return int(self._ledger.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _write_ledger(self, total: int) -> None:
        with open(self._ledger, "w") as handle:
            handle.write(str(total))

    @contextmanager
    def _locked(self, path: Path) -> Iterator[None]:
        descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the flock


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


def _is_orphan(part: Path) -> bool:
    """Whether no live process holds the partial file's flock."""
    try:
        descriptor = os.open(part, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(descriptor)
    return True
