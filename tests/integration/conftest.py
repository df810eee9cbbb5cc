"""Integration fixtures: one real S3 server (SeaweedFS) per session, a fault-injecting proxy per test,
and a real MLflow tracking server (SQLite backend, a local artifact folder) for the tracking tests.

The server requires signed requests with a random identity; the credentials reach clients the
standard way, through ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in the environment (set for
the whole session, inherited by subprocesses). No other AWS configuration is read.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from internvl_trainer.config import StorageConfig
from internvl_trainer.storage import Storage
from internvl_trainer.storage.local_server import REGION, LocalS3Server, free_port
from tests.integration.faulty_proxy import Faults, FaultyProxy

_AWS_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_RETRY_MODE",
    "AWS_MAX_ATTEMPTS",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CA_BUNDLE",
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Server]:
    """SeaweedFS on free ports in a fresh folder, force-killed at the end of the session."""
    access_key = "AKIDTEST" + secrets.token_hex(6).upper()
    secret_key = secrets.token_urlsafe(30)
    server = LocalS3Server(tmp_path_factory.mktemp("seaweedfs"), access_key=access_key, secret_key=secret_key)
    with pytest.MonkeyPatch.context() as patch:
        for name in _AWS_VARIABLES:
            patch.delenv(name, raising=False)
        nowhere = str(tmp_path_factory.mktemp("aws") / "absent")
        patch.setenv("AWS_CONFIG_FILE", nowhere)
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", nowhere)
        for name, value in server.client_environment().items():
            patch.setenv(name, value)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    assert not server.running


@pytest.fixture(scope="session")
def bucket(s3_server: LocalS3Server) -> str:
    """The session's bucket (SeaweedFS grows volumes for every new bucket, which takes a while)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def base(bucket: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty prefix of the session's bucket for one test: ``s3://bucket/<test>-<random>``."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return f"s3://{bucket}/{name}-{uuid.uuid4().hex[:6]}"


def request_path(uri: str) -> str:
    """How a request for ``uri`` appears in the proxy log (path-style): ``/bucket/key``."""
    return "/" + uri.removeprefix("s3://")


@pytest.fixture
def storage(s3_server: LocalS3Server) -> Storage:
    """Storage talking to the server directly."""
    return Storage(s3_server.storage_config())


@pytest.fixture
def proxy(s3_server: LocalS3Server, tmp_path: Path) -> Iterator[FaultyProxy]:
    """A fault-injecting proxy in front of the server (no faults until a test sets them); its
    request log is written to the test's tmp_path/proxy.log.jsonl."""
    faulty = FaultyProxy(s3_server.endpoint, faults=Faults(), seed=1234)
    try:
        yield faulty
    finally:
        faulty.close()
        faulty.dump(tmp_path / "proxy.log.jsonl")


@pytest.fixture
def proxied_config(proxy: FaultyProxy) -> StorageConfig:
    return StorageConfig(endpoint=proxy.endpoint, region=REGION, addressing_style="path")


@pytest.fixture
def proxied_storage(proxied_config: StorageConfig) -> Callable[..., Storage]:
    """Makes Storage objects that go through the proxy."""

    def make(**options) -> Storage:
        return Storage(proxied_config, **options)

    return make


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on a free loopback port (SQLite backend, artifacts in a local folder),
    ready once GET /health answers; yields its URL and is killed at the end of the session."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    url = f"http://127.0.0.1:{port}"
    with open(folder / "server.log", "wb") as output:
        # A session of its own: the CLI runs the web server as a child, killed with it as a group.
        server = subprocess.Popen(command, cwd=folder, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _answers(f"{url}/health"):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def one_thread():
    """torch on one thread while a test trains: the same numbers on any machine, and the S3 server keeps a core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
