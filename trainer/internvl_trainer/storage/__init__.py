"""The trainer's storage layer: S3 (through boto3) and local paths behind one interface.

Modules, one concept each:

- ``uri``: parsing ``s3://bucket/key``, ``file://`` and plain paths; ``DatasetRoot`` refuses and
  counts keys that escape a dataset's root.
- ``client``: the boto3 client from ``StorageConfig`` and the standard AWS environment.
- ``stream``: ``S3Reader``, a seekable stream that resumes a broken body at the next byte.
- ``store``: ``Storage``, the interface (exists, size, list, open, read_range, download, upload).
- ``manifest``: ``manifest.json`` (files, sizes, sha256, time, producer), written last, and read.
- ``atomic``: file writes a reader sees whole or not at all (temporary sibling, then rename).
- ``upload`` / ``download``: folder transfers that resume, publish atomically and verify.
- ``cache``: a size-capped LRU disk cache shared by the workers and ranks of a node.
- ``packs``: the cache's small objects, appended to pack files instead of a file each.
- ``catalog``: where the cache keeps each object, a table in shared memory under the key locks.
- ``prefetch``: fetching the next N keys on a bounded thread pool.
- ``local_server``: a local SeaweedFS S3 server for tests, benchmarks and the demo.

Nothing here imports torch.
"""

from internvl_trainer.storage.cache import Cache
from internvl_trainer.storage.errors import (
    CacheCapacityError,
    IntegrityError,
    ObjectNotFound,
    StorageError,
    UnsafeKeyError,
)
from internvl_trainer.storage.manifest import MANIFEST_NAME, FileEntry, Manifest, sha256_file
from internvl_trainer.storage.prefetch import Prefetcher
from internvl_trainer.storage.store import ObjectInfo, ObjectStream, Storage, default_transfer_config
from internvl_trainer.storage.uri import DatasetRoot, Location, check_key, parse

__all__ = [
    "MANIFEST_NAME",
    "Cache",
    "CacheCapacityError",
    "DatasetRoot",
    "FileEntry",
    "IntegrityError",
    "Location",
    "Manifest",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStream",
    "Prefetcher",
    "Storage",
    "StorageError",
    "UnsafeKeyError",
    "check_key",
    "default_transfer_config",
    "parse",
    "sha256_file",
]
