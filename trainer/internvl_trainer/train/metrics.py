"""Progress of a run: ``metrics.jsonl``, TensorBoard event files, and the object's ``status.progress``.

Everything here runs on the main process only. One JSON object per logged step goes to
``metrics.jsonl`` (step, epoch, loss, learningRate, gradNorm, samplesPerSecond, evalLoss when
the held-out split was evaluated, and for a mixture-of-experts LLM whose recipe balances its
routers auxLoss, the unweighted load-balancing loss, and auxLossCoef, its weight in loss); the
same scalars go to a TensorBoard event file; both are
uploaded with every checkpoint (``runs/<uid>/metrics.jsonl`` and ``runs/<uid>/tensorboard/``), and
metrics.jsonl is saved in the checkpoint too, for a resumed attempt to continue.
Inside a cluster the ``StatusReporter`` patches ``status.progress`` (at most every 30 s, and at
the end). The progress bar is the HF Trainer's own (tqdm, main process only).

TensorBoard files are written by ``EventWriter``, a few dozen lines of the TFRecord format
(length, masked CRC-32C, an ``Event`` protocol buffer with a ``Summary`` of simple values), so the
trainer does not depend on the tensorboard package; TensorBoard reads them as any other run.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerControl, TrainerState, TrainingArguments

from internvl_trainer.train.trainer import TrainerAware

# ---------------------------------------------------------------------------------------------
# TensorBoard event files

_CRC32C_TABLE: list[int] = []
for _byte in range(256):
    _crc = _byte
    for _ in range(8):
        _crc = (_crc >> 1) ^ 0x82F63B78 if _crc & 1 else _crc >> 1
    _CRC32C_TABLE.append(_crc)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord files use."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def event_bytes(wall_time: float, step: int, *, file_version: str | None = None, scalars: dict | None = None) -> bytes:
    """An ``Event`` message: wall_time (1, double), step (2, int64), file_version (3) or summary (5)."""
    out = _field(1, 1) + struct.pack("<d", wall_time) + _field(2, 0) + _varint(step)
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalars:
        values = b"".join(
            _length_delimited(1, _length_delimited(1, tag.encode()) + _field(2, 5) + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        out += _length_delimited(5, values)
    return out


def record_bytes(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the data, its masked CRC."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc(header)) + data + struct.pack("<I", masked_crc(data))


def read_records(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """The records of a TFRecord file, their CRCs checked (for tests and tools)."""
    data = Path(path).read_bytes()
    position = 0
    while position < len(data):
        header = data[position : position + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[position + 8 : position + 12])
        if crc != masked_crc(header):
            raise ValueError(f"{path}: bad length CRC at byte {position}")
        body = data[position + 12 : position + 12 + length]
        (crc,) = struct.unpack("<I", data[position + 12 + length : position + 16 + length])
        if crc != masked_crc(body):
            raise ValueError(f"{path}: bad data CRC at byte {position}")
        yield body
        position += 16 + length


class EventWriter:
    """Appends scalar summaries to one TensorBoard event file in ``folder``."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
        self.path = self.folder / name
        self._write(event_bytes(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        with open(self.path, "ab") as handle:
            handle.write(record_bytes(event))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        finite = {tag: float(value) for tag, value in values.items() if value is not None and math.isfinite(value)}
        if finite:
            self._write(event_bytes(time.time(), step, scalars=finite))


# ---------------------------------------------------------------------------------------------
# metrics.jsonl


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# the callback

_RENAMED = {
    "learning_rate": "learningRate",
    "grad_norm": "gradNorm",
    "eval_loss": "evalLoss",
    "aux_loss": "auxLoss",
    "aux_loss_coef": "auxLossCoef",
}


class ProgressCallback(TrainerAware):
    """On the main process: every log of the Trainer → metrics.jsonl, TensorBoard and status.progress.

    The epoch is the samples trained on (``samples_before`` from earlier attempts, plus the
    trainer's, times the world size) over the draws per epoch."""

    def __init__(
        self,
        metrics: MetricsLog,
        events: EventWriter,
        *,
        samples_before: int,
        epoch_length: int,
        world_size: int,
        reporter: Any = None,
    ):
        self.metrics = metrics
        self.events = events
        self.samples_before = samples_before
        self.epoch_length = epoch_length
        self.world_size = world_size
        self.reporter = reporter
        self.started = time.monotonic()
        self.first_step: int | None = None
        self._last = (time.monotonic(), 0)
        self.last_loss: float | None = None
        self.eval_loss: float | None = None

    def samples(self) -> int:
        return self.samples_before + (self.trainer.samples_seen if self.trainer is not None else 0)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.first_step = state.global_step
        self.started = time.monotonic()
        self._last = (self.started, self.samples())

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ):
        if not state.is_world_process_zero or not logs:
            return
        if not any(key in logs for key in ("loss", "eval_loss")):
            return  # the end-of-training summary (train_runtime, …)
        now, samples = time.monotonic(), self.samples()
        then, before = self._last
        self._last = (now, samples)
        record: dict[str, Any] = {"step": state.global_step}
        seen = samples * self.world_size
        record["epoch"] = round(seen / self.epoch_length, 4) if self.epoch_length else None
        for key, value in logs.items():
            if key in ("loss", *_RENAMED):
                record[_RENAMED.get(key, key)] = float(value)
        if "loss" in logs:
            self.last_loss = float(logs["loss"])
            record["samplesPerSecond"] = round((samples - before) * self.world_size / max(now - then, 1e-9), 3)
        if "eval_loss" in logs:
            self.eval_loss = float(logs["eval_loss"])
        record["time"] = time.time()
        self.metrics.append(record)
        self.events.scalars(
            state.global_step,
            {
                "train/loss": record.get("loss"),
                "train/learning_rate": record.get("learningRate"),
                "train/grad_norm": record.get("gradNorm"),
                "train/aux_loss": record.get("auxLoss"),
                "train/samples_per_second": record.get("samplesPerSecond"),
                "eval/loss": record.get("evalLoss"),
            },
        )
        self._report(state, record, final=False)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if state.is_world_process_zero:
            self._report(state, {"loss": self.last_loss}, final=True)

    def _report(self, state: TrainerState, record: dict[str, Any], *, final: bool) -> None:
        if self.reporter is None:
            return
        done = state.global_step - (self.first_step or 0)
        elapsed = time.monotonic() - self.started
        eta = None
        if done > 0 and state.max_steps:
            eta = int(elapsed / done * max(0, state.max_steps - state.global_step))
        self.reporter.progress(
            step=state.global_step,
            total_steps=state.max_steps or None,
            epoch=record.get("epoch"),
            loss=record.get("loss", self.last_loss),
            samples_per_second=record.get("samplesPerSecond"),
            eta_seconds=eta,
            final=final,
        )
