"""The disk cache shared by several processes against a real S3 server."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from internvl_trainer.storage import Cache
from tests.conftest import REPO
from tests.integration.faulty_proxy import Faults

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB

READER = textwrap.dedent(
    """
    import hashlib, json, random, sys
    from internvl_trainer.config import StorageConfig
    from internvl_trainer.storage import Cache, Storage

    endpoint, cache_root, cap, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    expected = json.loads(sys.argv[5])
    storage = Storage(StorageConfig(endpoint=endpoint, addressing_style="path"))
    cache = Cache(cache_root, cap)
    rng = random.Random(seed)
    uris = sorted(expected)
    wrong = []
    for step in range(90):
        uri = rng.choice(uris)
        if step % 3 == 1:
            with cache.open(storage, uri) as handle:
                data = handle.read()
        elif step % 3 == 2:
            data = cache.read_bytes(storage, uri)  # kept in a pack
        else:
            path = cache.fetch(storage, uri)
            try:
                data = path.read_bytes()
            except FileNotFoundError:  # evicted between fetch and read: allowed for fetch(), not a wrong read
                continue
        if hashlib.sha256(data).hexdigest() != expected[uri]:
            wrong.append([uri, len(data)])
    print(json.dumps({"wrong": wrong, "hits": cache.hits, "misses": cache.misses, "evictions": cache.evictions}))
    """
)


def bytes_on_disk(root) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        if folder == str(root):
            continue
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total


def bytes_on_disk_now(root) -> int:
    """``bytes_on_disk`` as of one moment: counted under the cache's ledger lock, so that no
    eviction or reservation runs between two files counted (without it, one walk can count an
    object and, later, the object that replaced it after its eviction)."""
    import fcntl

    descriptor = os.open(root / "ledger", os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        return bytes_on_disk(root)
    finally:
        os.close(descriptor)


def test_concurrent_readers_never_see_partial_files_and_the_cap_holds(s3_server, storage, proxy, base, tmp_path):
    rng = np.random.default_rng(11)
    expected = {}
    for index in range(24):
        content = rng.bytes(int(rng.integers(100 * KiB, 1200 * KiB)))
        uri = f"{base}/images/{index:02d}.jpg"
        storage.write_bytes(uri, content)
        expected[uri] = hashlib.sha256(content).hexdigest()
    cap = 4 * MiB
    cache_root = tmp_path / "cache"
    Cache(cache_root, cap)  # the node's cache, empty
    # Slow, uneven transfers widen every race window between the readers.
    proxy.faults = Faults(rate=0.3, kinds=("delay",), delay=(0.0, 0.05), bandwidth=40 * MiB)

    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, proxy.endpoint, str(cache_root), str(cap), str(seed), json.dumps(expected)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    largest = 0
    while any(reader.poll() is None for reader in readers):
        largest = max(largest, bytes_on_disk_now(cache_root))
        time.sleep(0.005)
    results = []
    for reader in readers:
        out, err = reader.communicate()
        assert reader.returncode == 0, err
        results.append(json.loads(out))

    assert all(result["wrong"] == [] for result in results), results
    assert largest <= cap
    assert bytes_on_disk(cache_root) == Cache(cache_root, cap).usage() <= cap
    assert sum(result["hits"] for result in results) > 0
    assert sum(result["evictions"] for result in results) > 0, "the cap never forced an eviction"
    assert not list((cache_root / "tmp").iterdir())
    assert list((cache_root / "packs").iterdir()), "no object was packed"


FETCHER = textwrap.dedent(
    """
    import sys
    from internvl_trainer.config import StorageConfig
    from internvl_trainer.storage import Cache, Storage

    endpoint, cache_root, cap, uri = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    Cache(cache_root, cap).fetch(Storage(StorageConfig(endpoint=endpoint, addressing_style="path")), uri)
    """
)


def test_a_killed_download_is_never_served_and_is_cleaned_up(storage, proxy, base, tmp_path):
    content = np.random.default_rng(5).bytes(6 * MiB)
    uri = f"{base}/video.mp4"
    storage.write_bytes(uri, content)
    cache_root = tmp_path / "cache"
    cap = 10 * MiB
    proxy.faults = Faults(bandwidth=2 * MiB)  # 3 s for the whole object

    child = subprocess.Popen([sys.executable, "-c", FETCHER, proxy.endpoint, str(cache_root), str(cap), uri], cwd=REPO)
    deadline = time.monotonic() + 30
    partial = []
    while time.monotonic() < deadline and child.poll() is None:
        partial = [path for path in (cache_root / "tmp").glob("*.part")] if (cache_root / "tmp").exists() else []
        if partial and partial[0].stat().st_size > 1 * MiB:
            break
        time.sleep(0.01)
    assert child.poll() is None and partial, "the download was not caught mid-way"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    cache = Cache(cache_root, cap)
    final = cache.entry_path(uri)
    assert not final.exists(), "a killed download left a file under its final name"
    assert partial[0].exists()
    assert 1 * MiB < partial[0].stat().st_size < len(content)

    # The dead writer's reservation (6 MiB) plus this one would pass the cap: the rescan finds the
    # orphan (its flock died with the writer), deletes it and corrects the ledger.
    assert cache.read_bytes(storage, uri) == content
    assert not partial[0].exists()
    assert list((cache_root / "tmp").iterdir()) == []
    assert cache.usage() == len(content)
    assert int((cache_root / "ledger").read_text()) == len(content)


def test_many_threads_download_one_object_once(storage, proxy, base, tmp_path, proxied_storage):
    from concurrent.futures import ThreadPoolExecutor

    content = os.urandom(2 * MiB)
    uri = f"{base}/shared.bin"
    storage.write_bytes(uri, content)
    proxy.faults = Faults(bandwidth=20 * MiB)
    cache = Cache(tmp_path / "cache", 8 * MiB)
    reader = proxied_storage()
    start = proxy.mark()
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: cache.fetch(reader, uri), range(8)))
    assert len(set(paths)) == 1 and paths[0].read_bytes() == content
    assert len(proxy.entries(method="GET", since=start)) == 1
    assert (cache.hits, cache.misses) == (7, 1)


READ_ONCE = textwrap.dedent(
    """
    import hashlib, sys, time
    from internvl_trainer.config import StorageConfig
    from internvl_trainer.storage import Cache, Storage

    endpoint, cache_root, uri, start = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    storage = Storage(StorageConfig(endpoint=endpoint, addressing_style="path"))
    cache = Cache(cache_root, 64 * 1024 * 1024)
    time.sleep(max(0.0, start - time.time()))  # every process asks at the same moment
    print(hashlib.sha256(cache.read_bytes(storage, uri)).hexdigest())
    """
)


def test_processes_reading_one_object_from_memory_download_it_once(storage, proxy, base, tmp_path):
    content = os.urandom(1 * MiB)  # small enough to be kept in a pack
    uri = f"{base}/shared.jpg"
    storage.write_bytes(uri, content)
    proxy.faults = Faults(bandwidth=10 * MiB)
    cache_root = tmp_path / "cache"
    start, begin = proxy.mark(), time.time() + 3
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READ_ONCE, proxy.endpoint, str(cache_root), uri, str(begin)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [reader.communicate() for reader in readers]
    assert all(reader.returncode == 0 for reader in readers), outputs
    assert {out.strip() for out, _ in outputs} == {hashlib.sha256(content).hexdigest()}
    assert len(proxy.entries(method="GET", since=start)) == 1
    cache = Cache(cache_root, 64 * MiB)
    assert uri in cache and not cache.entry_path(uri).exists()
    assert cache.read_bytes(storage, uri) == content and cache.misses == 0
    assert list((cache_root / "tmp").iterdir()) == []
