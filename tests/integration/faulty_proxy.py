"""A fault-injecting HTTP/1.1 proxy between an S3 client and a real S3 server, for tests.

It forwards requests unchanged (so SigV4 signatures stay valid) and, for a share of them
(``Faults.rate``), does one of:

- ``slowdown``: answers ``503 SlowDown`` itself, as S3 does when throttling;
- ``error``: answers ``500 InternalError`` itself;
- ``delay``: waits a moment, then forwards;
- ``drop``: breaks the connection: mid-body for responses with a body (the client has received
  exactly the bytes sent before the close), while receiving the body of an upload, or before
  answering otherwise.

``forced_cuts`` cuts the next N GET bodies of at least ``min_cut_body`` bytes at a random byte,
whatever ``rate`` says, so resumption is exercised on every run. ``put_delay`` slows every
upload request and ``bandwidth`` throttles response bodies (for tests that kill a client
mid-way). Every request is logged as an ``Entry``: method, key, Range, fault, status, bytes.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

MiB = 1024 * 1024
_RELAY_CHUNK = 1 * MiB


@dataclass
class Faults:
    rate: float = 0.0
    kinds: tuple[str, ...] = ("slowdown", "error", "delay", "drop")
    delay: tuple[float, float] = (0.02, 0.3)
    forced_cuts: int = 0
    min_cut_body: int = 1 * MiB
    put_delay: float = 0.0
    bandwidth: float | None = None


@dataclass
class Entry:
    number: int
    started: float
    method: str
    key: str
    """The request path, unquoted: ``/bucket/key``."""
    query: str
    range: str | None
    fault: str | None = None
    status: int | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    """Response body bytes relayed to the client."""
    body_length: int | None = None
    """The response body's announced length."""
    cut: bool = False
    finished: float | None = None

    @property
    def range_start(self) -> int:
        if not self.range:
            return 0
        return int(self.range.split("=", 1)[1].split("-", 1)[0])

    @property
    def complete(self) -> bool:
        """The whole response reached the client."""
        return self.finished is not None and not self.cut and self.fault not in ("drop", "slowdown", "error")


class _Closed(Exception):
    """The connection is done (EOF, a fault, or a framing we do not keep alive)."""


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


class FaultyProxy:
    """A threaded TCP proxy that speaks enough HTTP/1.1 to inject faults per request."""

    def __init__(self, upstream: str, *, faults: Faults | None = None, seed: int = 0, host: str = "127.0.0.1"):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults = faults or Faults()
        self._random = random.Random(seed)
        self._random_lock = threading.Lock()
        self._log: list[Entry] = []
        self._log_lock = threading.Lock()
        self._listener = socket.create_server((host, 0))
        self.host = host
        self.port = self._listener.getsockname()[1]
        self._stopping = False
        self._connections: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name="faulty-proxy", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- log ----------------------------------------------------------------------------------

    def entries(self, method: str | None = None, key: str | None = None, since: int = 0) -> list[Entry]:
        with self._log_lock:
            found = list(self._log[since:])
        return [
            entry for entry in found if (method is None or entry.method == method) and (key is None or entry.key == key)
        ]

    def mark(self) -> int:
        """The log position now, for ``entries(since=...)``."""
        with self._log_lock:
            return len(self._log)

    def dump(self, path: Path) -> None:
        with open(path, "w") as handle:
            for entry in self.entries():
                handle.write(json.dumps(asdict(entry)) + "\n")

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self._stopping = True
        self._listener.close()
        for connection in list(self._connections):
            try:
                connection.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connections.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        reader = client.makefile("rb")
        try:
            while True:
                request = _read_head(reader)
                if request is None:
                    return
                self._handle(client, reader, request)
        except (_Closed, OSError, ValueError):
            pass
        finally:
            self._connections.discard(client)
            try:
                reader.close()
                client.close()
            except OSError:
                pass

    # -- one request ---------------------------------------------------------------------------

    def _choose(self, method: str) -> tuple[str | None, float]:
        faults = self.faults
        with self._random_lock:
            fault = None
            if self._random.random() < faults.rate:
                fault = self._random.choice(faults.kinds)
            delay = self._random.uniform(*faults.delay)
            return fault, delay

    def _cut_at(self, length: int, *, forced_only: bool) -> int | None:
        """Where to cut a response body: a forced cut while any are left, else a drop fault's."""
        with self._random_lock:
            if self.faults.forced_cuts > 0:
                self.faults.forced_cuts -= 1
            elif forced_only:
                return None
            return self._random.randint(1, length - 1)

    def _handle(self, client: socket.socket, reader, request: _Request) -> None:
        path, _, query = request.target.partition("?")
        entry = Entry(
            number=0,
            started=time.time(),
            method=request.method,
            key=unquote(path),
            query=query,
            range=request.header("range"),
        )
        with self._log_lock:
            entry.number = len(self._log)
            self._log.append(entry)
        fault, delay = self._choose(request.method)
        entry.fault = fault
        expect = (request.header("expect") or "").lower() == "100-continue"
        has_body = _has_body(request)

        if fault in ("slowdown", "error"):
            if has_body and not expect:
                entry.request_bytes = len(_read_body(reader, request))
            code, status, reason = (
                ("SlowDown", 503, "Slow Down")
                if fault == "slowdown"
                else ("InternalError", 500, "Internal Server Error")
            )
            _send_error(client, request.method, status, reason, code, entry.number)
            entry.status = status
            entry.finished = time.time()
            raise _Closed
        if fault == "delay":
            time.sleep(delay)
        if self.faults.put_delay and request.method in ("PUT", "POST"):
            time.sleep(self.faults.put_delay)
        if expect:
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if fault == "drop" and has_body:
            length = int(request.header("content-length") or 0)
            partial = reader.read(max(0, length // 2)) if length else reader.read1(64 * 1024)
            entry.request_bytes = len(partial or b"")
            entry.finished = time.time()
            raise _Closed
        body = _read_body(reader, request) if has_body else b""
        entry.request_bytes = len(body)

        upstream = socket.create_connection(self.upstream, timeout=120)
        try:
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            head = f"{request.method} {request.target} {request.version}\r\n"
            for name, value in request.headers:
                if name.lower() not in ("expect", "connection", "keep-alive"):
                    head += f"{name}: {value}\r\n"
            head += "Connection: close\r\n\r\n"
            upstream.sendall(head.encode("latin-1") + body)
            upstream_reader = upstream.makefile("rb")
            status_line, response_headers = _read_response_head(upstream_reader)
            status = int(status_line.split(" ", 2)[1])
            entry.status = status
            length = _response_length(request.method, status, response_headers)
            entry.body_length = length
            chunked = "chunked" in (_get(response_headers, "transfer-encoding") or "").lower()
            client_keep = (request.header("connection") or "").lower() != "close" and (length is not None or chunked)

            cut_at = None
            if request.method == "GET" and length is not None and length >= max(2, self.faults.min_cut_body):
                cut_at = self._cut_at(length, forced_only=fault != "drop")
            if fault == "drop" and cut_at is None:
                entry.finished = time.time()
                raise _Closed  # drop before answering

            out_head = status_line + "\r\n"
            for name, value in response_headers:
                if name.lower() in ("connection", "keep-alive"):
                    continue
                out_head += f"{name}: {value}\r\n"
            out_head += (
                "Connection: keep-alive" if client_keep and cut_at is None else "Connection: close"
            ) + "\r\n\r\n"
            client.sendall(out_head.encode("latin-1"))

            if chunked:
                entry.response_bytes = _relay_chunked(upstream_reader, client)
            elif length is None:
                entry.response_bytes = self._relay(upstream_reader, client, None)
                client_keep = False
            else:
                entry.response_bytes = self._relay(upstream_reader, client, length if cut_at is None else cut_at)
            if cut_at is not None:
                entry.cut = True
                entry.finished = time.time()
                client.shutdown(socket.SHUT_WR)
                raise _Closed
            entry.finished = time.time()
            if not client_keep:
                raise _Closed
        finally:
            upstream.close()

    def _relay(self, source, client: socket.socket, count: int | None) -> int:
        sent = 0
        started = time.monotonic()
        bandwidth = self.faults.bandwidth
        while count is None or sent < count:
            want = _RELAY_CHUNK if count is None else min(_RELAY_CHUNK, count - sent)
            if bandwidth:
                want = min(want, max(1, int(bandwidth / 20)))
            data = source.read1(want)
            if not data:
                if count is not None:
                    raise _Closed  # upstream ended early
                break
            client.sendall(data)
            sent += len(data)
            if bandwidth:
                ahead = sent / bandwidth - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        return sent


def _read_head(reader) -> _Request | None:
    line = reader.readline(65537)
    if not line:
        return None
    while line in (b"\r\n", b"\n"):
        line = reader.readline(65537)
        if not line:
            return None
    method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    request = _Request(method, target, version)
    while True:
        line = reader.readline(65537)
        if not line:
            raise _Closed
        if line in (b"\r\n", b"\n"):
            return request
        name, _, value = line.decode("latin-1").partition(":")
        request.headers.append((name.strip(), value.strip()))


def _read_response_head(reader) -> tuple[str, list[tuple[str, str]]]:
    status_line = reader.readline(65537).decode("latin-1").rstrip("\r\n")
    if not status_line:
        raise _Closed
    headers = []
    while True:
        line = reader.readline(65537)
        if not line:
            raise _Closed
        if line in (b"\r\n", b"\n"):
            return status_line, headers
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _has_body(request: _Request) -> bool:
    if "chunked" in (request.header("transfer-encoding") or "").lower():
        return True
    return int(request.header("content-length") or 0) > 0


def _read_body(reader, request: _Request) -> bytes:
    """The request body as sent (chunked bodies raw, with their framing)."""
    if "chunked" in (request.header("transfer-encoding") or "").lower():
        parts = []
        while True:
            size_line = reader.readline(65537)
            if not size_line:
                raise _Closed
            parts.append(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = reader.readline(65537)
                    if not trailer:
                        raise _Closed
                    parts.append(trailer)
                    if trailer in (b"\r\n", b"\n"):
                        return b"".join(parts)
            data = reader.read(size + 2)
            if len(data) < size + 2:
                raise _Closed
            parts.append(data)
    length = int(request.header("content-length") or 0)
    data = reader.read(length)
    if len(data) < length:
        raise _Closed
    return data


def _response_length(method: str, status: int, headers: list[tuple[str, str]]) -> int | None:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return 0
    if "chunked" in (_get(headers, "transfer-encoding") or "").lower():
        return None
    value = _get(headers, "content-length")
    return int(value) if value is not None else None


def _relay_chunked(source, client: socket.socket) -> int:
    sent = 0
    while True:
        size_line = source.readline(65537)
        if not size_line:
            raise _Closed
        client.sendall(size_line)
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while True:
                trailer = source.readline(65537)
                if not trailer:
                    raise _Closed
                client.sendall(trailer)
                if trailer in (b"\r\n", b"\n"):
                    return sent
        data = source.read(size + 2)
        if len(data) < size + 2:
            raise _Closed
        client.sendall(data)
        sent += size


def _send_error(client: socket.socket, method: str, status: int, reason: str, code: str, number: int) -> None:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>injected by the test proxy</Message>"
        f"<RequestId>proxy-{number}</RequestId></Error>"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}\r\n"
        f"x-amz-request-id: proxy-{number}\r\nConnection: close\r\n\r\n"
    ).encode()
    client.sendall(head if method == "HEAD" else head + body)
