"""Checkpoints in the run's folder: ``runs/<uid>/checkpoints/checkpoint-<step>/`` (docs/contract.md §3).

A checkpoint is the HF Trainer's checkpoint folder (the model, or only the adapters and the parts
trained in full with LoRA; the optimizer, scheduler and RNG states; DeepSpeed's shards under
DeepSpeed) plus ``data-state-rank<r>.json``, each rank's data-loader position, and
``metrics.jsonl`` as it was at that step (a resumed attempt continues it, so nothing a dead attempt
logged after the checkpoint is kept twice). It is complete when its own ``manifest.json`` exists,
which is written last; one without it (a partial upload) is never resumed from, nor merged or
exported from S3.

Publishing works for any number of nodes: every node's first process uploads the files its node
wrote (a file already there with the same sha256 is not sent again), the entries are gathered,
and rank 0 writes the manifest. Rank 0 then keeps the newest ``checkpointsKept`` complete
checkpoints: an older one loses its manifest first, then its files, so it never looks complete
half-deleted; folders without a manifest older than the newest complete one (left by a process
that died while uploading) are removed too.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from internvl_trainer.config import OutputLayout
from internvl_trainer.problems import BadInput, Problem
from internvl_trainer.storage import MANIFEST_NAME, FileEntry, Manifest, Storage, parse
from internvl_trainer.storage.upload import local_files, upload_file

log = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)/(.*)$")
DATA_STATE = "data-state-rank{rank}.json"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    uri: str
    complete: bool


def checkpoint_uri(layout: OutputLayout, step: int) -> str:
    return f"{layout.checkpoints}/checkpoint-{step}"


def find(storage: Storage, layout: OutputLayout) -> list[Checkpoint]:
    """Every checkpoint folder of the run, oldest first."""
    steps: dict[int, bool] = {}
    for info in storage.list(layout.checkpoints):
        match = CHECKPOINT.match(info.key)
        if match:
            step = int(match.group(1))
            steps[step] = steps.get(step, False) or match.group(2) == MANIFEST_NAME
    return [Checkpoint(step, checkpoint_uri(layout, step), complete) for step, complete in sorted(steps.items())]


def latest(storage: Storage, layout: OutputLayout) -> Checkpoint | None:
    """The newest complete checkpoint of the run, if any."""
    complete = [checkpoint for checkpoint in find(storage, layout) if checkpoint.complete]
    return complete[-1] if complete else None


def check_complete(storage: Storage, uri: str) -> None:
    """Refuse an S3 checkpoint without its manifest.json: every folder the trainer uploads (a
    checkpoint, a published model) gets it last, so one without it is a partial upload. A local
    folder is taken as it is (a PEFT or Trainer save has no manifest). Raises BadInput."""
    root = parse(uri)
    if root.is_s3 and not storage.exists(root.child(MANIFEST_NAME)):
        reason = f"{uri}: incomplete, no {MANIFEST_NAME} (written last by every upload: this one did not finish)"
        raise BadInput([Problem("--checkpoint", reason)])


def download(storage: Storage, checkpoint: Checkpoint, folder: Path) -> Path:
    """A verified local copy of a checkpoint (files checked against its manifest)."""
    destination = folder / f"checkpoint-{checkpoint.step}"
    storage.download(checkpoint.uri, destination)
    return destination


def write_data_state(folder: Path, rank: int, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / DATA_STATE.format(rank=rank)).write_text(json.dumps(state))


def read_data_states(folder: Path, rank: int) -> dict[str, Any] | list[dict[str, Any]] | None:
    """This rank's data state, or every rank's when this rank's is absent (another world size)."""
    own = folder / DATA_STATE.format(rank=rank)
    if own.is_file():
        state = json.loads(own.read_text())
        return state
    states = [json.loads(path.read_text()) for path in sorted(folder.glob("data-state-rank*.json"))]
    return states or None


def write_metrics(folder: Path, metrics: Path) -> None:
    """The run's metrics.jsonl so far, into the checkpoint (main process)."""
    if metrics.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(metrics, folder / METRICS)


def read_metrics(folder: Path, metrics: Path) -> None:
    """The metrics.jsonl of a downloaded checkpoint, as the resumed attempt's to continue."""
    if (folder / METRICS).is_file():
        shutil.copyfile(folder / METRICS, metrics)


def _gather(entries: list[FileEntry]) -> list[FileEntry]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return entries
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, [entry.model_dump() for entry in entries])
    unique = {entry["path"]: FileEntry(**entry) for part in gathered for entry in part}
    return list(unique.values())


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def publish(
    storage: Storage,
    folder: Path,
    uri: str,
    *,
    rank: int,
    local_rank: int,
    producer: dict[str, Any] | None = None,
    threads: int = 4,
) -> Manifest | None:
    """Upload a local checkpoint folder (every process calls this; see the module docstring).
    Returns the manifest on rank 0."""
    root = parse(uri)
    if rank == 0:
        storage.delete(root.child(MANIFEST_NAME))  # a re-save of the same step is incomplete until done
    barrier()
    entries: list[FileEntry] = []
    if local_rank == 0:

        def send(item: tuple[str, Path]) -> FileEntry:
            relative, path = item
            entry = upload_file(storage, path, root.child(relative))
            return FileEntry(path=relative, size=entry.size, sha256=entry.sha256)

        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="checkpoint-upload") as pool:
            entries = list(pool.map(send, local_files(folder)))
    entries = _gather(entries)
    manifest = None
    if rank == 0:
        manifest = Manifest(files=entries, producer=producer)
        storage.write_bytes(root.child(MANIFEST_NAME), manifest.to_json())
        log.info("published %s (%d files, %d bytes)", root, len(entries), manifest.total_size)
    barrier()
    return manifest


def delete_folder(storage: Storage, uri: str) -> None:
    """Delete a checkpoint folder, its manifest first."""
    root = parse(uri)
    storage.delete(root.child(MANIFEST_NAME))
    for info in list(storage.list(root)):
        storage.delete(info.uri)
    if not root.is_s3 and root.path.is_dir():
        shutil.rmtree(root.path, ignore_errors=True)


def prune(storage: Storage, layout: OutputLayout, keep: int) -> list[int]:
    """Keep the newest ``keep`` complete checkpoints; returns the steps deleted."""
    checkpoints = find(storage, layout)
    complete = [checkpoint for checkpoint in checkpoints if checkpoint.complete]
    kept = {checkpoint.step for checkpoint in complete[-keep:]} if keep > 0 else set()
    newest = complete[-1].step if complete else None
    deleted = []
    for checkpoint in checkpoints:
        stale = checkpoint.complete and checkpoint.step not in kept
        abandoned = not checkpoint.complete and newest is not None and checkpoint.step < newest
        if stale or abandoned:
            delete_folder(storage, checkpoint.uri)
            deleted.append(checkpoint.step)
    if deleted:
        log.info("deleted checkpoints %s (keeping %d)", deleted, keep)
    return deleted
