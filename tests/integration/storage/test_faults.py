"""Streaming and uploading through a proxy that breaks 10 % of requests, and an upload killed mid-way."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from boto3.s3.transfer import TransferConfig

from internvl_trainer.storage import MANIFEST_NAME, Manifest, ObjectNotFound
from tests.conftest import REPO
from tests.integration.conftest import request_path
from tests.integration.faulty_proxy import Faults

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
SMALL_PARTS = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)


def random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def test_streaming_200mb_resumes_at_the_exact_next_byte(s3_server, storage, proxied_storage, proxy, base):
    size = 200 * MiB
    data = random_bytes(size, seed=1)
    expected = hashlib.sha256(data).hexdigest()
    uri = f"{base}/big.bin"
    s3_server.client().put_object(Bucket=base.split("/")[2], Key=uri.split("/", 3)[3], Body=data)
    del data

    proxy.faults = Faults(rate=0.10, forced_cuts=3, min_cut_body=1 * MiB)
    reader = proxied_storage()
    digest = hashlib.sha256()
    total = 0
    with reader.open(uri) as stream:
        assert stream.size == size
        while chunk := stream.read(1 * MiB):
            digest.update(chunk)
            total += len(chunk)
    assert total == size
    assert digest.hexdigest() == expected

    gets = proxy.entries(method="GET", key=request_path(uri))
    cuts = [entry for entry in gets if entry.cut]
    assert len(cuts) >= 3
    assert reader.stats.resumed_reads >= len(cuts)
    for cut in cuts:
        following = [entry for entry in gets if entry.number > cut.number]
        assert following, "a cut read was never resumed"
        assert following[0].range == f"bytes={cut.range_start + cut.response_bytes}-"
        assert 0 < cut.response_bytes < cut.body_length
    assert all(entry.range is None for entry in gets[:1])


def test_upload_300mb_folder_of_50_files_with_faults(s3_server, proxied_storage, proxy, base, tmp_path):
    source = tmp_path / "shards"
    rng = np.random.default_rng(7)
    sizes = rng.integers(1 * MiB, 11 * MiB, size=50)
    sizes = (sizes * (300 * MiB / sizes.sum())).astype(int)
    digests = {}
    for index, size in enumerate(sizes):
        relative = f"part-{index % 5}/shard-{index:03d}.bin"
        path = source / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        content = rng.bytes(int(size))
        path.write_bytes(content)
        digests[relative] = hashlib.sha256(content).hexdigest()
    assert abs(sum(sizes) - 300 * MiB) < 1024

    proxy.faults = Faults(rate=0.10)
    storage = proxied_storage(transfer=SMALL_PARTS, threads=4)
    manifest = storage.upload(source, f"{base}/upload", producer={"test": "faults"})

    assert {entry.path: entry.sha256 for entry in manifest.files} == digests
    client = s3_server.client()
    bucket, prefix = base.removeprefix("s3://").split("/", 1)
    published = Manifest.from_json(
        client.get_object(Bucket=bucket, Key=f"{prefix}/upload/{MANIFEST_NAME}")["Body"].read()
    )
    assert published.files == manifest.files
    assert published.producer == {"test": "faults"}
    for relative, digest in digests.items():
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/upload/{relative}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == digest, relative

    entries = proxy.entries()
    faulted = [entry for entry in entries if entry.fault in ("slowdown", "error", "drop")]
    assert len(faulted) >= 3, "the proxy injected too few faults"
    assert any("uploadId" in entry.query for entry in entries), "no multipart upload happened"
    manifest_puts = [e for e in entries if e.method == "PUT" and e.key.endswith(MANIFEST_NAME)]
    last_file_put = max(e.number for e in entries if e.method in ("PUT", "POST") and not e.key.endswith(MANIFEST_NAME))
    assert manifest_puts and all(put.number > last_file_put for put in manifest_puts), "manifest.json not last"


UPLOAD_CHILD = textwrap.dedent(
    """
    import sys
    from boto3.s3.transfer import TransferConfig
    from internvl_trainer.config import StorageConfig
    from internvl_trainer.storage import Storage

    endpoint, source, destination = sys.argv[1:]
    config = StorageConfig(endpoint=endpoint, addressing_style="path")
    transfer = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=5 << 20, max_concurrency=2)
    Storage(config, threads=2, transfer=transfer).upload(source, destination)
    print("finished")
    """
)


def test_upload_killed_midway_resumes_without_resending(s3_server, proxied_storage, proxy, base, tmp_path):
    source = tmp_path / "checkpoint"
    source.mkdir()
    rng = np.random.default_rng(3)
    files = {f"file-{index:02d}.bin": rng.bytes(512 * 1024) for index in range(24)}
    files["large.bin"] = rng.bytes(12 * MiB)  # multipart
    for name, content in files.items():
        (source / name).write_bytes(content)
    destination = f"{base}/ckpt"

    proxy.faults = Faults(put_delay=0.25)
    child = subprocess.Popen(
        [sys.executable, "-c", UPLOAD_CHILD, proxy.endpoint, str(source), destination],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = [e for e in proxy.entries(method="PUT") if e.status == 200 and e.finished]
        if len(done) >= 8 or child.poll() is not None:
            break
        time.sleep(0.02)
    assert child.poll() is None, f"the upload finished before it could be killed: {child.communicate()}"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    storage_direct = proxied_storage()
    with pytest.raises(ObjectNotFound):
        storage_direct.size(f"{destination}/{MANIFEST_NAME}")  # (through the proxy, which has no faults now)
    proxy.faults = Faults()
    present = {info.key for info in storage_direct.list(destination) if info.size == len(files[info.key])}
    assert 8 <= len(present) < len(files)

    start = proxy.mark()
    manifest = proxied_storage(transfer=SMALL_PARTS, threads=2).upload(source, destination)
    second_run_puts = proxy.entries(method="PUT", since=start)
    resent = {entry.key.rsplit("/", 1)[-1] for entry in second_run_puts}
    assert not resent & present, f"files already complete were sent again: {sorted(resent & present)}"
    assert resent == (set(files) - present) | {MANIFEST_NAME}
    assert second_run_puts[-1].key.endswith(MANIFEST_NAME)
    assert {entry.path for entry in manifest.files} == set(files)
    for name, content in files.items():
        assert storage_direct.read_bytes(f"{destination}/{name}") == content
