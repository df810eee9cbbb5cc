"""TensorBoard event files written without the tensorboard package, metrics.jsonl, and the progress
that reaches the object's status."""

from __future__ import annotations

import struct
from types import SimpleNamespace

from internvl_trainer.train.metrics import EventWriter, MetricsLog, ProgressCallback, crc32c, read_records


def parse(message: bytes) -> list[tuple[int, int, object]]:
    """(field, wire type, value) of a protocol buffer message, one level deep."""
    fields, position = [], 0
    while position < len(message):
        key, position = varint(message, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = varint(message, position)
        elif wire == 1:
            value, position = struct.unpack("<d", message[position : position + 8])[0], position + 8
        elif wire == 5:
            value, position = struct.unpack("<f", message[position : position + 4])[0], position + 4
        else:
            length, position = varint(message, position)
            value, position = message[position : position + length], position + length
        fields.append((number, wire, value))
    return fields


def varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283


def test_event_file(tmp_path):
    writer = EventWriter(tmp_path / "tb")
    writer.scalars(3, {"train/loss": 1.5, "train/grad_norm": float("nan"), "eval/loss": None})
    first, second = list(read_records(writer.path))
    assert (3, 2, b"brain.Event:2") in parse(first)
    event = {number: value for number, _, value in parse(second)}
    assert event[2] == 3 and event[1] > 1.7e9
    (value,) = [value for number, _, value in parse(event[5]) if number == 1]
    assert {number: value for number, _, value in parse(value)} == {1: b"train/loss", 2: 1.5}


class Reporter:
    def __init__(self):
        self.calls = []

    def progress(self, **fields):
        self.calls.append(fields)


def test_progress_reaches_metrics_tensorboard_and_status(tmp_path):
    reporter = Reporter()
    callback = ProgressCallback(
        MetricsLog(tmp_path / "m.jsonl"),
        EventWriter(tmp_path / "tb"),
        samples_before=16,
        epoch_length=8,
        world_size=2,
        reporter=reporter,
    )
    callback.trainer = SimpleNamespace(samples_seen=0)
    state = SimpleNamespace(is_world_process_zero=True, global_step=2, max_steps=10)
    callback.on_train_begin(None, state, None)
    callback.trainer.samples_seen = 8
    state.global_step = 3
    callback.on_log(None, state, None, logs={"loss": 0.5, "learning_rate": 1e-4, "grad_norm": 2.0})
    callback.on_log(None, state, None, logs={"train_runtime": 3.0})  # the end-of-run summary is not a step
    callback.on_train_end(None, state, None)

    (record,) = MetricsLog(tmp_path / "m.jsonl").read()
    assert {key: record[key] for key in ("step", "epoch", "loss", "learningRate", "gradNorm")} == {
        "step": 3,
        "epoch": 6.0,
        "loss": 0.5,
        "learningRate": 1e-4,
        "gradNorm": 2.0,
    }
    assert record["samplesPerSecond"] > 0
    first, final = reporter.calls
    assert (first["step"], first["total_steps"], first["epoch"], first["loss"], first["final"]) == (
        3,
        10,
        6.0,
        0.5,
        False,
    )
    assert final["final"] is True and final["loss"] == 0.5 and final["eta_seconds"] >= 0
    assert len(list(read_records(next((tmp_path / "tb").iterdir())))) == 2


def test_the_load_balancing_loss_reaches_metrics_and_tensorboard(tmp_path):
    callback = ProgressCallback(
        MetricsLog(tmp_path / "m.jsonl"), EventWriter(tmp_path / "tb"), samples_before=0, epoch_length=8, world_size=1
    )
    callback.trainer = SimpleNamespace(samples_seen=4)
    state = SimpleNamespace(is_world_process_zero=True, global_step=1, max_steps=10)
    callback.on_log(None, state, None, logs={"loss": 0.52, "aux_loss": 2.0, "aux_loss_coef": 0.01})
    (record,) = MetricsLog(tmp_path / "m.jsonl").read()
    assert (record["loss"], record["auxLoss"], record["auxLossCoef"]) == (0.52, 2.0, 0.01)
    assert b"train/aux_loss" in list(read_records(next((tmp_path / "tb").iterdir())))[-1]
