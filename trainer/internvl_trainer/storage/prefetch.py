"""Fetching the next keys before they are needed, on a bounded thread pool.

``Prefetcher(fetch, depth=N, threads=T)`` runs ``fetch(key)`` (for example
``lambda key: cache.fetch(storage, root.uri(key))``) on at most T threads, with at most N keys
fetched ahead: results waiting to be used never exceed N, so memory is bounded by the in-flight
window, whatever the dataset size. Two ways to use it:

- ``imap(keys)``: results in the order of ``keys`` (an iterable, consumed lazily), N ahead.
- ``hint(keys)`` then ``get(key)``: for random access (a sampler that knows the next indices);
  hints beyond the window are ignored, and ``get`` of a key never hinted fetches it directly.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Prefetcher(Generic[K, T]):
    """Runs ``fetch`` ahead of use: at most ``depth`` keys in flight or waiting, on ``threads`` threads."""

    def __init__(self, fetch: Callable[[K], T], *, depth: int = 8, threads: int = 4):
        if depth < 1 or threads < 1:
            raise ValueError("depth and threads must be at least 1")
        self._fetch = fetch
        self.depth = depth
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="prefetch")
        self._hinted: OrderedDict[K, Future[T]] = OrderedDict()
        self._lock = threading.Lock()

    def __enter__(self) -> Prefetcher[K, T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for future in self._hinted.values():
                future.cancel()
            self._hinted.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def imap(self, keys: Iterable[K], *, return_exceptions: bool = False) -> Iterator[tuple[K, T | BaseException]]:
        """``(key, fetch(key))`` in the order of ``keys``, fetching up to ``depth`` keys ahead.

        A failed fetch raises at its position (the fetches ahead are cancelled), or, with
        ``return_exceptions``, is yielded as ``(key, exception)`` and the iteration goes on."""
        upcoming = iter(keys)
        window: deque[tuple[K, Future[T]]] = deque()

        def fill() -> None:
            while len(window) < self.depth:
                try:
                    key = next(upcoming)
                except StopIteration:
                    return
                window.append((key, self._pool.submit(self._fetch, key)))

        try:
            fill()
            while window:
                key, future = window.popleft()
                try:
                    result: T | BaseException = future.result()
                except Exception as error:  # noqa: BLE001 - handed to the caller
                    if not return_exceptions:
                        raise
                    result = error
                fill()
                yield key, result
        finally:
            for _, future in window:
                future.cancel()

    def hint(self, keys: Iterable[K]) -> int:
        """Start fetching these keys, as far as the window allows; returns how many were started."""
        started = 0
        with self._lock:
            for key in keys:
                if key in self._hinted:
                    continue
                if len(self._hinted) >= self.depth and not self._drop_one_done():
                    break
                self._hinted[key] = self._pool.submit(self._fetch, key)
                started += 1
        return started

    def get(self, key: K) -> T:
        """``fetch(key)``: the prefetched result when it was hinted, otherwise fetched now."""
        with self._lock:
            future = self._hinted.pop(key, None)
        if future is None:
            return self._fetch(key)
        return future.result()

    def _drop_one_done(self) -> bool:
        """Forget the oldest finished but unclaimed hint (lock held); False when all are in flight."""
        for key, future in self._hinted.items():
            if future.done():
                del self._hinted[key]
                return True
        return False
