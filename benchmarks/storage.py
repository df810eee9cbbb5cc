"""S3 throughput of the trainer's storage layer and node cache against plain boto3, on a local
SeaweedFS server.

The storage layer adds resumable streaming, sha256 per file, a manifest and skip-what-is-there
logic on top of boto3; the node cache adds a disk copy shared by every worker and rank. These
tables show what that costs. Both sides of each comparison talk to the same server (started here,
on this machine), read or write the same bytes in the same way (whole, or in the same chunks), so
the server's and the loopback network's speed cancel out of the ratios.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import Table, interleaved
from internvl_trainer.storage import Cache, Storage
from internvl_trainer.storage.local_server import LocalS3Server
from internvl_trainer.train.run import scratch_root

MiB = 1024 * 1024
BUCKET = "bench"
READ_OBJECTS = 4
READ_OBJECT_SIZE = 128 * MiB
SHARDS = 8
SHARD_SIZE = 128 * MiB
ROUNDS = 3
UPLOAD_ROUNDS = 2
CACHE_OBJECTS = 1000
CACHE_OBJECT_SIZE = 117 * 1024
"""About the size of a training JPEG."""
CACHE_ROUNDS = 5
"""More rounds than the other tables: a round is short, and the first read's goal is within 10 %."""


def _streaming(server: LocalS3Server, storage: Storage) -> Table:
    client = storage.client()  # the same boto3 client the storage layer uses: only the layer differs
    rng = np.random.default_rng(0)
    keys = []
    for index in range(READ_OBJECTS):
        key = f"read/object-{index}.bin"
        client.put_object(Bucket=BUCKET, Key=key, Body=rng.bytes(READ_OBJECT_SIZE))
        keys.append(key)
    total = READ_OBJECTS * READ_OBJECT_SIZE

    def plain_whole() -> None:
        for key in keys:
            assert len(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()) == READ_OBJECT_SIZE

    def plain_chunks() -> None:
        for key in keys:
            body, received = client.get_object(Bucket=BUCKET, Key=key)["Body"], 0
            while chunk := body.read(1 * MiB):
                received += len(chunk)
            assert received == READ_OBJECT_SIZE

    def ours_whole() -> None:
        for key in keys:
            assert len(storage.read_bytes(f"s3://{BUCKET}/{key}")) == READ_OBJECT_SIZE

    def ours_chunks() -> None:
        for key in keys:
            received = 0
            with storage.open(f"s3://{BUCKET}/{key}") as stream:
                while chunk := stream.read(1 * MiB):
                    received += len(chunk)
            assert received == READ_OBJECT_SIZE

    whole, chunks = "whole object", "1 MiB chunks"
    alternatives = [
        (whole, "boto3 `get_object()['Body'].read()`", plain_whole),
        (whole, "`Storage.read_bytes()` (resumable)", ours_whole),
        (chunks, "boto3 `get_object()['Body'].read(1 MiB)` until empty", plain_chunks),
        (chunks, "`Storage.open().read(1 MiB)` until empty (resumable)", ours_chunks),
    ]
    timings = interleaved({label: function for _, label, function in alternatives}, rounds=ROUNDS, min_time=0.0)
    baselines = {how: timings[label] for how, label, _ in alternatives if label.startswith("boto3")}
    return Table(
        title="Streaming reads from S3",
        method=(
            f"{READ_OBJECTS} objects of {READ_OBJECT_SIZE // MiB} MiB on a local SeaweedFS (`weed server -s3`),"
            f" read one after the other in one process, either whole or in 1 MiB chunks; each reader is compared"
            f" with boto3 doing the same with the same client; best of {ROUNDS} interleaved rounds. Goal for the"
            " storage layer: at least 0.9x the throughput of plain boto3."
        ),
        columns=["Read", "Reader", f"Time for {total // MiB} MiB", "MiB/s", "Throughput vs boto3 doing the same"],
        rows=[
            [
                how,
                label,
                f"{timings[label]:.2f} s",
                f"{total / MiB / timings[label]:,.0f}",
                f"{baselines[how] / timings[label]:.2f}x",
            ]
            for how, label, _ in alternatives
        ],
    )


def _file_creation(folder: Path, count: int = 200) -> float:
    """CPU seconds to create one empty file in ``folder``, a new folder."""
    folder.mkdir()
    start = time.process_time()
    for index in range(count):
        os.close(os.open(folder / str(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    return (time.process_time() - start) / count


def _cache(server: LocalS3Server, storage: Storage, workdir: Path) -> Table:
    client = storage.client()  # the same boto3 client the cache downloads with: only the cache differs
    rng = np.random.default_rng(2)
    keys = [f"images/{index:05d}.jpg" for index in range(CACHE_OBJECTS)]
    for key in keys:
        client.put_object(Bucket=BUCKET, Key=key, Body=rng.bytes(CACHE_OBJECT_SIZE))
    uris = [f"s3://{BUCKET}/{key}" for key in keys]
    folders = iter(range(1000))
    caches: list[Cache] = []

    def plain() -> None:
        for key in keys:
            assert len(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()) == CACHE_OBJECT_SIZE

    def plain_to_files() -> None:
        folder = workdir / f"files-{next(folders)}"
        (folder / "tmp").mkdir(parents=True)
        for key in keys:
            data = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            name = hashlib.sha256(key.encode()).hexdigest()
            part = folder / "tmp" / name
            descriptor = os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.write(descriptor, data)
            os.close(descriptor)
            final = folder / name[:2] / name
            final.parent.mkdir(exist_ok=True)
            os.rename(part, final)

    def plain_to_one_file() -> None:
        descriptor = os.open(workdir / f"appended-{next(folders)}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            for key in keys:
                os.write(descriptor, client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        finally:
            os.close(descriptor)

    def cold() -> None:
        cache = Cache(workdir / f"cache-{next(folders)}", 2**30)
        for uri in uris:
            assert len(cache.read_bytes(storage, uri)) == CACHE_OBJECT_SIZE
        assert cache.misses == CACHE_OBJECTS
        caches.append(cache)

    def cold_fetch() -> None:
        cache = Cache(workdir / f"cache-{next(folders)}", 2**30)
        for uri in uris:
            assert len(cache.fetch(storage, uri).read_bytes()) == CACHE_OBJECT_SIZE

    def warm() -> None:
        cache = caches[-1]
        for uri in uris:
            assert len(cache.read_bytes(storage, uri)) == CACHE_OBJECT_SIZE

    alternatives = {
        "boto3 `get_object()['Body'].read()` (no cache)": plain,
        "boto3, then each object written to a new file and renamed into place (no locks, no ledger)": plain_to_files,
        "boto3, then each object appended to one open file (no locks, no index)": plain_to_one_file,
        "`Cache.read_bytes()`, first read: the node's first download (the default data path)": cold,
        "`Cache.fetch()` + read the file, first read (the file written before it returns)": cold_fetch,
        "`Cache.read_bytes()` again: from the node's disk": warm,
    }
    created = _file_creation(workdir / "creation")
    wall = dict.fromkeys(alternatives, float("inf"))
    cpu = dict.fromkeys(alternatives, float("inf"))
    plain()  # warm-up: connections, the server's volume
    for _ in range(CACHE_ROUNDS):  # interleaved: A, B, C, D, A, B, C, D, ...
        for label, function in alternatives.items():
            os.sync()  # the disk writes the last reader left to the kernel are not this one's
            start, start_cpu = time.perf_counter(), time.process_time()
            function()
            wall[label] = min(wall[label], time.perf_counter() - start)
            cpu[label] = min(cpu[label], time.process_time() - start_cpu)
    baseline = wall["boto3 `get_object()['Body'].read()` (no cache)"]
    first = wall["`Cache.read_bytes()`, first read: the node's first download (the default data path)"]
    again = wall["`Cache.read_bytes()` again: from the node's disk"]
    files = wall["boto3, then each object written to a new file and renamed into place (no locks, no ledger)"]
    appended = wall["boto3, then each object appended to one open file (no locks, no index)"]
    first_met = "met" if first <= 1.1 * baseline else "not met"
    again_met = "met" if again * 20 <= baseline else "not met"
    goals = (
        f"first read {first / baseline:.2f}x boto3's time (goal ≤ 1.1x: {first_met}), {first / appended:.2f}x boto3"
        f" appending each object to one file, {first / files:.2f}x boto3 writing each object to a file of its own;"
        f" read again {baseline / again:.0f}x faster than boto3 (goal ≥ 20x: {again_met})"
    )
    return Table(
        title=f"Node cache: {CACHE_OBJECTS:,} image-sized objects, first read and read again",
        method=(
            f"{CACHE_OBJECTS:,} objects of {CACHE_OBJECT_SIZE // 1024} KiB (random bytes) on a local SeaweedFS,"
            " read whole one after the other in one process, boto3 and the cache with the same client; a first"
            " read uses a new, empty cache folder in the trainer's scratch folder (`$INTERNVL_SCRATCH`, else"
            f" `~/.cache/internvl`; on this machine's disk, ext4, where creating an empty file there took"
            f" {created * 1e6:.0f} µs of CPU: ext4 costs from about 20 µs to 0.8 ms a file on this disk, depending"
            " on where it placed the folder) with the default settings (no fsync: a reboot empties the cache;"
            " objects of up to 4 MiB are appended to packs). Every reader that writes hands its bytes to the"
            " kernel's page cache, which writes them to disk later: an untimed `sync` before each timing keeps one"
            f" reader's disk writes out of the next one's time. Best of {CACHE_ROUNDS} interleaved rounds. CPU: the"
            " process's CPU time. Result: " + goals + "."
        ),
        columns=["Reader", "Time per object", "Time vs boto3", "CPU per object"],
        rows=[
            [
                label,
                f"{wall[label] / CACHE_OBJECTS * 1e3:.3f} ms",
                f"{wall[label] / baseline:.2f}x",
                f"{cpu[label] / CACHE_OBJECTS * 1e3:.3f} ms",
            ]
            for label in alternatives
        ],
    )


def _upload(server: LocalS3Server, storage: Storage, workdir: Path) -> Table:
    client = server.client()
    folder = workdir / "shards"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for index in range(SHARDS):
        (folder / f"model-{index + 1:05d}-of-{SHARDS:05d}.safetensors").write_bytes(rng.bytes(SHARD_SIZE))
    total = SHARDS * SHARD_SIZE
    files = sorted(folder.iterdir())
    runs = iter(range(1000))

    def plain() -> None:
        prefix = f"plain-{next(runs)}"
        for path in files:
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}")

    def plain_with_sha() -> None:
        prefix = f"plain-sha-{next(runs)}"
        for path in files:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.name}", ExtraArgs={"Metadata": {"sha256": digest}})

    def ours() -> None:
        storage.upload(folder, f"s3://{BUCKET}/ours-{next(runs)}", producer={"benchmark": "storage"})

    def ours_again() -> None:
        storage.upload(folder, f"s3://{BUCKET}/ours-again", producer={"benchmark": "storage"})

    ours_again()  # the first upload of this prefix; the timed ones find everything in place
    plain()  # warm-up: the server grows its volumes on the first gigabyte
    alternatives = [
        ("boto3 `upload_file` loop (default TransferConfig)", plain),
        ("boto3 `upload_file` loop + sha256 metadata", plain_with_sha),
        ("`Storage.upload()`: parallel, sha256, manifest.json last", ours),
        ("`Storage.upload()` again, everything already there", ours_again),
    ]
    timings = interleaved(dict(alternatives), rounds=UPLOAD_ROUNDS, min_time=0.0)
    baseline = timings[alternatives[0][0]]
    return Table(
        title="Uploading a model folder to S3",
        method=(
            f"A folder of {SHARDS} shards of {SHARD_SIZE // MiB} MiB ({total / 2**30:.0f} GiB, random bytes, in the"
            " page cache) uploaded to a fresh prefix of a local SeaweedFS, after one untimed warm-up upload;"
            f" best of {UPLOAD_ROUNDS} interleaved rounds. The server's writes bound every row on a small machine."
            f" `Storage` uses {storage.threads} threads, multipart above"
            f" {storage.transfer.multipart_threshold // MiB} MiB in {storage.transfer.multipart_chunksize // MiB} MiB"
            " parts."
        ),
        columns=["Uploader", f"Time for {total // MiB} MiB", "MiB/s", "Time vs plain loop"],
        rows=[
            [label, f"{seconds:.2f} s", f"{total / MiB / seconds:,.0f}", f"{seconds / baseline:.2f}x"]
            for label, seconds in timings.items()
        ],
    )


def run() -> list[Table]:
    saved = dict(os.environ)
    scratch = scratch_root(os.environ)  # where the trainer keeps its data cache
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="storage-bench-") as temporary,
            tempfile.TemporaryDirectory(prefix="cache-bench-", dir=scratch) as caches,
        ):
            workdir = Path(temporary)
            with LocalS3Server(workdir / "seaweedfs") as server:
                os.environ.update(server.client_environment())
                server.create_bucket(BUCKET)
                storage = Storage(server.storage_config())
                return [
                    _streaming(server, storage),
                    _cache(server, storage, Path(caches)),
                    _upload(server, storage, workdir),
                ]
    finally:
        os.environ.clear()
        os.environ.update(saved)


if __name__ == "__main__":
    for table in run():
        print(table.markdown())
