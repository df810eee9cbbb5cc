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
from collections.abc import Callable
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
CACHE_OBJECTS = 2000
CACHE_OBJECT_SIZE = 117 * 1024
"""About the size of a training JPEG."""
CACHE_ROUNDS = 3


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

    def get(key: str) -> bytes:
        return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def plain() -> Callable[[int], bytes]:
        return lambda index: get(keys[index])

    def plain_to_files() -> Callable[[int], bytes]:
        folder = workdir / f"files-{next(folders)}"
        (folder / "tmp").mkdir(parents=True)

        def read(index: int) -> bytes:
            data = get(keys[index])
            name = hashlib.sha256(keys[index].encode()).hexdigest()
            part = folder / "tmp" / name
            descriptor = os.open(part, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.write(descriptor, data)
            os.close(descriptor)
            final = folder / name[:2] / name
            final.parent.mkdir(exist_ok=True)
            os.rename(part, final)
            return data

        return read

    def plain_to_one_file() -> Callable[[int], bytes]:
        appended = open(workdir / f"appended-{next(folders)}", "xb", buffering=0)  # closed with the reader

        def read(index: int) -> bytes:
            data = get(keys[index])
            appended.write(data)
            return data

        return read

    def cold() -> Callable[[int], bytes]:
        cache = Cache(workdir / f"cache-{next(folders)}", 2**30)
        return lambda index: cache.read_bytes(storage, uris[index])

    def cold_fetch() -> Callable[[int], bytes]:
        cache = Cache(workdir / f"cache-{next(folders)}", 2**30)
        return lambda index: cache.fetch(storage, uris[index]).read_bytes()

    warm = Cache(workdir / "warm", 2**30)
    for uri in uris:
        warm.read_bytes(storage, uri)

    baseline_label = "boto3 `get_object()['Body'].read()` (no cache)"
    files_label = "boto3, then the object written to a new file and renamed into place (no locks, no ledger)"
    appended_label = "boto3, then the object appended to one open file (no locks, no catalog)"
    first_label = "`Cache.read_bytes()`, first read: the node's first download (the default data path)"
    again_label = "`Cache.read_bytes()` again: from the node's disk"
    alternatives = {
        baseline_label: plain,
        files_label: plain_to_files,
        appended_label: plain_to_one_file,
        first_label: cold,
        "`Cache.fetch()` + read the file, first read (the object in a file of its own)": cold_fetch,
    }
    created = _file_creation(workdir / "creation")
    wall = dict.fromkeys([*alternatives, again_label], 0.0)
    cpu = dict.fromkeys([*alternatives, again_label], 0.0)
    for index in range(CACHE_OBJECTS):
        get(keys[index])  # warm-up: connections, the server's copy of every object
    for _ in range(CACHE_ROUNDS):
        readers = {label: start() for label, start in alternatives.items()}  # fresh caches and folders
        os.sync()  # the disk writes an earlier round left to the kernel are not this one's
        labels = list(readers)
        for index in range(CACHE_OBJECTS):
            for turn in range(len(labels)):  # each object read by every reader in turn, who goes first rotating
                label = labels[(index + turn) % len(labels)]
                start, start_cpu = time.perf_counter(), time.process_time()
                assert len(readers[label](index)) == CACHE_OBJECT_SIZE
                wall[label] += time.perf_counter() - start
                cpu[label] += time.process_time() - start_cpu
        start, start_cpu = time.perf_counter(), time.process_time()
        for uri in uris:  # as in a second epoch: one hit after another
            assert len(warm.read_bytes(storage, uri)) == CACHE_OBJECT_SIZE
        wall[again_label] += time.perf_counter() - start
        cpu[again_label] += time.process_time() - start_cpu
    reads = CACHE_ROUNDS * CACHE_OBJECTS
    baseline, first, again = wall[baseline_label], wall[first_label], wall[again_label]
    first_met = "met" if first <= 1.1 * baseline else "not met"
    again_met = "met" if again * 20 <= baseline else "not met"
    goals = (
        f"first read {first / baseline:.2f}x boto3's time (goal ≤ 1.1x: {first_met}),"
        f" {first / wall[appended_label]:.2f}x the time of boto3 then appending each object to one file,"
        f" {first / wall[files_label]:.2f}x that of boto3 then writing each object to a file of its own;"
        f" read again {baseline / again:.0f}x faster than boto3 (goal ≥ 20x: {again_met})"
    )
    return Table(
        title=f"Node cache: {CACHE_OBJECTS:,} image-sized objects, first read and read again",
        method=(
            f"{CACHE_OBJECTS:,} objects of {CACHE_OBJECT_SIZE // 1024} KiB (random bytes) on a local SeaweedFS,"
            " read whole in one process, boto3 and the cache with the same client. Each object is read by every"
            " reader in turn before the next object (who goes first rotates), so a change in the machine's speed,"
            " which on this machine moves a GET from 1.7 to 3 ms within minutes, hits every reader alike; times"
            f" are summed over {CACHE_ROUNDS} rounds of all the objects, each round with new, empty caches and"
            " folders in the trainer's scratch folder (`$INTERNVL_SCRATCH`, else `~/.cache/internvl`; ext4 here,"
            f" where creating an empty file took {created * 1e6:.0f} µs of CPU, and from about 20 µs to 0.8 ms"
            " depending on where ext4 placed the folder). Default settings: no fsync (a reboot empties the"
            " cache), objects of up to 4 MiB appended to packs. An untimed `sync` before each round keeps one"
            " round's disk writes out of the next. The read-again row reads every object of a cache filled"
            " before the rounds, one after the other (as a second epoch does), once a round."
            " CPU: the process's CPU time. Result: " + goals + "."
        ),
        columns=["Reader", "Time per object", "Time vs boto3", "CPU per object"],
        rows=[
            [
                label,
                f"{wall[label] / reads * 1e3:.3f} ms",
                f"{wall[label] / baseline:.2f}x",
                f"{cpu[label] / reads * 1e3:.3f} ms",
            ]
            for label in wall
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
