"""Where an object is: ``s3://bucket/key`` URIs, local paths, and keys relative to a dataset root.

``parse`` turns a URI or path into a ``Location``. ``DatasetRoot.resolve`` joins a key taken from
data (an annotation's image path, a manifest entry) to its root, and refuses, counts and logs any
key that could reach outside the root: ``..`` segments (also percent-encoded or written with
full-width dots), absolute paths, URLs of any scheme, backslashes and control characters, and,
below a local root, a path that a symlink inside the root leads outside it. A refused key is
never read.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

from internvl_trainer.storage.errors import StorageError, UnsafeKeyError

log = logging.getLogger(__name__)

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_KNOWN_SCHEMES = re.compile(r"^(file|s3|s3a|s3n|gs|az|abfss?|hdfs|https?|ftp|data|javascript):", re.IGNORECASE)
_DRIVE = re.compile(r"^[A-Za-z]:")
_MAX_KEY = 1024


@dataclass(frozen=True)
class Location:
    """A parsed URI: an S3 object (bucket and key) or a local path (absolute)."""

    scheme: Literal["s3", "file"]
    bucket: str
    key: str
    """The S3 key (no leading slash), or the absolute local path."""

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    @property
    def path(self) -> Path:
        """The local path; only for local locations."""
        if self.is_s3:
            raise StorageError(f"{self} is not a local path")
        return Path(self.key)

    @property
    def name(self) -> str:
        """The last segment of the key or path."""
        return self.key.rstrip("/").rsplit("/", 1)[-1]

    def child(self, relative: str) -> Location:
        """The location ``relative`` below this one, taken as a folder. ``relative`` must already be
        a checked key (``check_key``); use ``DatasetRoot.resolve`` for keys from data."""
        relative = relative.lstrip("/")
        if not relative:
            return self
        if self.is_s3:
            base = self.key.rstrip("/")
            return Location("s3", self.bucket, f"{base}/{relative}" if base else relative)
        return Location("file", "", os.path.join(self.key, relative))

    def folder_prefix(self) -> str:
        """The key prefix of everything below this location taken as a folder (ends with ``/``)."""
        if self.is_s3:
            base = self.key.rstrip("/")
            return f"{base}/" if base else ""
        return self.key.rstrip("/") + "/"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.is_s3 else self.key


def parse(uri: str | os.PathLike[str] | Location) -> Location:
    """Parse ``s3://bucket/key``, ``file:///absolute/path`` or a plain local path (made absolute).

    Raises StorageError for other schemes and malformed URIs."""
    if isinstance(uri, Location):
        return uri
    text = os.fspath(uri)
    if not isinstance(text, str) or not text:
        raise StorageError("empty URI")
    if "\x00" in text:
        raise StorageError(f"URI {text!r} contains a NUL character")
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://") :].partition("/")
        if not _BUCKET.match(bucket):
            raise StorageError(
                f"{text}: bucket {bucket!r} is not a valid bucket name (3 to 63 lowercase letters, digits, '.', '-')"
            )
        return Location("s3", bucket, key)
    if text.startswith("file:"):
        rest = text[len("file:") :]
        if rest.startswith("//localhost/"):
            rest = rest[len("//localhost") :]
        elif rest.startswith("///"):
            rest = rest[2:]
        else:
            raise StorageError(f"{text}: a file URI must be file:///absolute/path")
        return Location("file", "", os.path.abspath(unquote(rest)))
    if _URL_SCHEME.match(text):
        raise StorageError(f"{text}: unsupported scheme; use s3://bucket/key or a local path")
    return Location("file", "", os.path.abspath(text))


def check_key(key: str) -> str:
    """The normalised form of a key relative to a root (``.`` and empty segments dropped).

    Raises UnsafeKeyError, with the reason, for a key that could reach outside its root."""
    if not isinstance(key, str):
        raise UnsafeKeyError(f"key {key!r} is not a string")
    shown = key if len(key) <= 200 else key[:200] + "..."
    if not key:
        raise UnsafeKeyError("empty key")
    if len(key) > _MAX_KEY:
        raise UnsafeKeyError(f"key {shown!r} is longer than {_MAX_KEY} characters")
    for form in _decoded_forms(key):
        reason = _escape_reason(form)
        if reason:
            if form != key:
                reason = f"{reason} once decoded ({form[:200]!r})"
            raise UnsafeKeyError(f"key {shown!r} escapes the dataset root: {reason}")
    segments = [segment for segment in key.split("/") if segment not in ("", ".")]
    if not segments:
        raise UnsafeKeyError(f"key {shown!r} names the dataset root itself, not a file in it")
    return "/".join(segments)


def _decoded_forms(key: str) -> list[str]:
    """The key, its percent-decodings (repeated until stable) and their NFKC forms."""
    forms = [key]
    current = key
    for _ in range(3):
        decoded = unquote(current)
        if decoded == current:
            break
        forms.append(decoded)
        current = decoded
    forms += [unicodedata.normalize("NFKC", form) for form in list(forms)]
    return forms


def _escape_reason(form: str) -> str | None:
    if any(ord(char) < 32 or ord(char) == 127 for char in form):
        return "control character"
    if "\\" in form:
        return "backslash (use '/' between folders)"
    if _URL_SCHEME.match(form) or _KNOWN_SCHEMES.match(form):
        return "a URL, not a key relative to the root"
    if _DRIVE.match(form):
        return "a drive-letter path"
    if form.startswith("/"):
        return "an absolute path"
    if ".." in form.split("/"):
        return "a '..' segment"
    return None


def _check_no_symlink_escape(root: str, path: str, key: str) -> None:
    """Raise UnsafeKeyError when symlinks take ``path`` (below the local folder ``root``) outside
    ``root``. Links within the root, and a root that is itself a link, are followed freely."""
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise UnsafeKeyError(f"key {key[:200]!r} escapes the dataset root: a symlink leads outside it")


class DatasetRoot:
    """A dataset's root (S3 prefix or local folder) and the keys below it.

    ``resolve(key)`` returns the key's location; a key that escapes the root raises UnsafeKeyError
    and is counted in ``refused`` (thread-safe), so a data report can say how many were refused."""

    def __init__(self, root: str | os.PathLike[str] | Location):
        self.location = parse(root)
        self._lock = threading.Lock()
        self._refused = 0

    @property
    def refused(self) -> int:
        """How many keys this root has refused."""
        return self._refused

    def resolve(self, key: str) -> Location:
        try:
            location = self.location.child(check_key(key))
            if not location.is_s3:
                _check_no_symlink_escape(self.location.key, location.key, key)
        except UnsafeKeyError as error:
            with self._lock:
                self._refused += 1
            log.warning("refused key under %s: %s", self.location, error)
            raise UnsafeKeyError(f"{error} (root {self.location})") from None
        return location

    def uri(self, key: str) -> str:
        """``resolve(key)`` as a URI string."""
        return str(self.resolve(key))

    def __repr__(self) -> str:
        return f"DatasetRoot({str(self.location)!r}, refused={self._refused})"
