"""Fixtures of the training tests: one thread for torch, a tiny model folder and 8 image-text
samples made once per session (see runs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.trainer.train.runs import write_data, write_model


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Tiny models run fastest on one thread (a second one only contends on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The meta file of 8 image-text samples."""
    return write_data(tmp_path_factory.mktemp("pictures"))
