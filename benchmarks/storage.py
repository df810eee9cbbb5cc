"""S3 throughput of the trainer's storage layer against plain boto3, on a local SeaweedFS server.

The storage layer adds resumable streaming, sha256 per file, a manifest and skip-what-is-there
logic on top of boto3; these tables show what that costs. Both sides talk to the same server
(started here, on this machine) and read or write the same bytes, so the server's and the
loopback network's speed cancel out of the ratios.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks import Table
from internvl_trainer.storage import Storage
from internvl_trainer.storage.local_server import LocalS3Server

MiB = 1024 * 1024
BUCKET = "bench"
READ_OBJECTS = 4
READ_OBJECT_SIZE = 128 * MiB
SHARDS = 8
SHARD_SIZE = 128 * MiB
ROUNDS = 3
UPLOAD_ROUNDS = 2


def _best(function: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def _streaming(server: LocalS3Server, storage: Storage) -> Table:
    client = server.client()
    rng = np.random.default_rng(0)
    keys = []
    for index in range(READ_OBJECTS):
        key = f"read/object-{index}.bin"
        client.put_object(Bucket=BUCKET, Key=key, Body=rng.bytes(READ_OBJECT_SIZE))
        keys.append(key)
    total = READ_OBJECTS * READ_OBJECT_SIZE

    def plain() -> None:
        for key in keys:
            assert len(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()) == READ_OBJECT_SIZE

    def stream_chunks() -> None:
        for key in keys:
            received = 0
            with storage.open(f"s3://{BUCKET}/{key}") as stream:
                while chunk := stream.read(1 * MiB):
                    received += len(chunk)
            assert received == READ_OBJECT_SIZE

    def read_whole() -> None:
        for key in keys:
            assert len(storage.read_bytes(f"s3://{BUCKET}/{key}")) == READ_OBJECT_SIZE

    alternatives = [
        ("boto3 `get_object()['Body'].read()`", plain),
        ("`Storage.open()`, read in 1 MiB chunks (resumable)", stream_chunks),
        ("`Storage.read_bytes()` (resumable)", read_whole),
    ]
    timings = {label: float("inf") for label, _ in alternatives}
    for _ in range(ROUNDS):  # interleaved, so drift in the machine's load hits every row alike
        for label, function in alternatives:
            timings[label] = min(timings[label], _best(function, 1))
    baseline = timings[alternatives[0][0]]
    return Table(
        title="Streaming reads from S3",
        method=(
            f"{READ_OBJECTS} objects of {READ_OBJECT_SIZE // MiB} MiB on a local SeaweedFS (`weed server -s3`),"
            f" read whole, one after the other, in one process; best of {ROUNDS} interleaved rounds. Goal for the"
            " storage layer: at least 0.9x the throughput of plain boto3."
        ),
        columns=["Reader", f"Time for {total // MiB} MiB", "MiB/s", "Throughput vs boto3"],
        rows=[
            [label, f"{seconds:.2f} s", f"{total / MiB / seconds:,.0f}", f"{baseline / seconds:.2f}x"]
            for label, seconds in timings.items()
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
    timings = {label: float("inf") for label, _ in alternatives}
    for _ in range(UPLOAD_ROUNDS):
        for label, function in alternatives:
            timings[label] = min(timings[label], _best(function, 1))
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
    try:
        with tempfile.TemporaryDirectory(prefix="storage-bench-") as scratch:
            workdir = Path(scratch)
            with LocalS3Server(workdir / "seaweedfs") as server:
                os.environ.update(server.client_environment())
                server.create_bucket(BUCKET)
                storage = Storage(server.storage_config())
                return [_streaming(server, storage), _upload(server, storage, workdir)]
    finally:
        os.environ.clear()
        os.environ.update(saved)


if __name__ == "__main__":
    for table in run():
        print(table.markdown())
