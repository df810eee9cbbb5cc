"""The boto3 S3 client: endpoint, region and addressing style from ``StorageConfig``; credentials,
retry mode and attempts from the standard AWS environment.

Credentials are resolved by boto3's default chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, profiles, web identity, instance metadata) inside
botocore; this module never reads, stores or prints them, and masks the ones botocore itself
prints at DEBUG level (``RedactCredentials``). Retries are botocore's: mode
``standard`` with 8 attempts unless ``AWS_RETRY_MODE`` or ``AWS_MAX_ATTEMPTS`` say otherwise
(``adaptive`` adds client-side rate limiting when the server throttles). A client is made per
process, because a boto3 client must not cross a fork (data-loader workers).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config

from internvl_trainer.config import StorageConfig

DEFAULT_RETRY_MODE = "standard"
DEFAULT_MAX_ATTEMPTS = 8
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60


_SECRETS = (
    # x-amz-security-token in a canonical request, a header dict or a presigned query string
    re.compile(r"(?i)(x-amz-security-token['\"]?\s*[:=]\s*b?['\"]?)[^'\"\s,}&]+"),
    # the access key id in an Authorization header or a presigned URL
    re.compile(r"(?i)(credential=)[^/\s'\"&,]+"),
    # the access key id echoed in an S3 error body (SignatureDoesNotMatch)
    re.compile(r"(?i)(<AWSAccessKeyId>)[^<]*"),
)
_LIBRARY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


class RedactCredentials(logging.Filter):
    """Masks session tokens and access key ids in the records of boto3's libraries, which print
    request headers and canonical requests at DEBUG level (secret keys are never printed)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is not ours to fix
            return True
        redacted = message
        for pattern in _SECRETS:
            redacted = pattern.sub(r"\1***", redacted)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


_REDACTOR = RedactCredentials()


def install_redaction() -> None:
    """Put the redacting filter on every logger of boto3's libraries that exists now (they are
    made at import, before the first client), so their DEBUG output carries no credentials."""
    names = [name for name in list(logging.root.manager.loggerDict) if name.split(".", 1)[0] in _LIBRARY_LOGGERS]
    for name in [*_LIBRARY_LOGGERS, *names]:
        logger = logging.getLogger(name)
        if _REDACTOR not in logger.filters:
            logger.addFilter(_REDACTOR)


def redact_url(url: str | None) -> str | None:
    """The URL without user info (``http://user:secret@host`` becomes ``http://***@host``)."""
    if not url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def botocore_config(config: StorageConfig, *, max_pool_connections: int = 32) -> Config:
    """The botocore Config for a storage config: addressing style, timeouts, pool size, and retries
    (ours only when the environment does not choose them)."""
    options: dict[str, Any] = {
        "region_name": config.region,
        "s3": {"addressing_style": config.addressing_style},
        "connect_timeout": CONNECT_TIMEOUT_S,
        "read_timeout": READ_TIMEOUT_S,
        "max_pool_connections": max_pool_connections,
        "tcp_keepalive": True,
    }
    if "AWS_RETRY_MODE" not in os.environ and "AWS_MAX_ATTEMPTS" not in os.environ:
        options["retries"] = {"mode": DEFAULT_RETRY_MODE, "total_max_attempts": DEFAULT_MAX_ATTEMPTS}
    return Config(**options)


def make_client(config: StorageConfig, *, max_pool_connections: int = 32) -> Any:
    """A new S3 client (a fresh boto3 session, so it is safe to call from any thread)."""
    session = boto3.session.Session()
    client = session.client(
        "s3",
        endpoint_url=config.endpoint,
        config=botocore_config(config, max_pool_connections=max_pool_connections),
    )
    install_redaction()
    return client


class ClientHolder:
    """One S3 client per process, made on first use. Pickles without the client (and so without
    anything credential-bearing), so it can travel to data-loader workers."""

    def __init__(self, config: StorageConfig, *, max_pool_connections: int = 32):
        self.config = config
        self.max_pool_connections = max_pool_connections
        self._client: Any = None
        self._pid = -1
        self._lock = threading.Lock()

    def get(self) -> Any:
        pid = os.getpid()
        if self._client is None or self._pid != pid:
            with self._lock:
                if self._client is None or self._pid != pid:
                    self._client = make_client(self.config, max_pool_connections=self.max_pool_connections)
                    self._pid = pid
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "max_pool_connections": self.max_pool_connections}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"], max_pool_connections=state["max_pool_connections"])

    def __repr__(self) -> str:
        return (
            f"ClientHolder(endpoint={redact_url(self.config.endpoint)!r}, region={self.config.region!r},"
            f" addressing_style={self.config.addressing_style!r})"
        )
