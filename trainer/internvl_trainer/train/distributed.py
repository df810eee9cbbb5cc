"""Which process of which run this is: torchrun, OpenMPI, or a single process.

torchrun gives every process ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``. mpirun gives ``OMPI_COMM_WORLD_RANK``, ``OMPI_COMM_WORLD_LOCAL_RANK`` and
``OMPI_COMM_WORLD_SIZE``, and the MPIJob's launcher forwards ``MASTER_ADDR``/``MASTER_PORT``
(docs/contract.md §2). torch.distributed's ``env://`` initialisation reads torchrun's names, so an
MPI process gets them exported. The world must be the one train.yaml was planned for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Literal

from internvl_trainer.config import TrainConfig
from internvl_trainer.problems import BadInput, Problem

Launcher = Literal["torchrun", "mpi", "single"]


@dataclass(frozen=True)
class ProcessEnvironment:
    """This process's place in the run."""

    launcher: Launcher
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        """Only the main process writes shared outputs (checkpoints, the model, status)."""
        return self.rank == 0


def detect(environ: Mapping[str, str] = os.environ) -> ProcessEnvironment:
    """The environment of this process. Raises BadInput naming a variable that is malformed."""

    def number(name: str, default: int) -> int:
        value = environ.get(name)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise BadInput([Problem(name, f"must be an integer, got {value!r}")]) from None

    address = environ.get("MASTER_ADDR", "127.0.0.1")
    port = number("MASTER_PORT", 29500)
    if "RANK" in environ and "WORLD_SIZE" in environ and "LOCAL_RANK" in environ:
        ranks = number("RANK", 0), number("LOCAL_RANK", 0), number("WORLD_SIZE", 1)
        return ProcessEnvironment("torchrun", *ranks, address, port)
    if "OMPI_COMM_WORLD_RANK" in environ:
        ranks = (
            number("OMPI_COMM_WORLD_RANK", 0),
            number("OMPI_COMM_WORLD_LOCAL_RANK", 0),
            number("OMPI_COMM_WORLD_SIZE", 1),
        )
        return ProcessEnvironment("mpi", *ranks, address, port)
    return ProcessEnvironment("single", 0, 0, 1, address, port)


def check_world(environment: ProcessEnvironment, config: TrainConfig) -> None:
    """Refuse a world that differs from the one the batch layout was planned for."""
    if environment.world_size != config.batch.world_size:
        raise BadInput(
            [
                Problem(
                    "batch.worldSize",
                    f"train.yaml was planned for {config.batch.world_size} processes, "
                    f"but the {environment.launcher} launcher started {environment.world_size}",
                )
            ]
        )


def export_for_torch(environment: ProcessEnvironment, environ: MutableMapping[str, str] = os.environ) -> None:
    """Set torchrun's variable names, which torch.distributed's env:// initialisation reads."""
    environ.update(
        {
            "RANK": str(environment.rank),
            "LOCAL_RANK": str(environment.local_rank),
            "WORLD_SIZE": str(environment.world_size),
            "MASTER_ADDR": environment.master_addr,
            "MASTER_PORT": str(environment.master_port),
        }
    )
