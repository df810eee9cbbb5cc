"""The errors of the storage layer.

Every message names the URI or path involved and why, and nothing else: never an endpoint's user
info, an access key, a secret or a session token.
"""

from __future__ import annotations


class StorageError(Exception):
    """A storage operation failed; the message says on what and why."""


class ObjectNotFound(StorageError, FileNotFoundError):
    """The object or file does not exist."""


class UnsafeKeyError(StorageError, ValueError):
    """A key that should be relative to a dataset root escapes it (``..``, an absolute path, a URL)."""


class IntegrityError(StorageError):
    """A transferred file does not have the size or sha256 it should have."""


class CacheCapacityError(StorageError):
    """The cache cannot hold an object: it is larger than the cap, or in-flight downloads fill it."""
