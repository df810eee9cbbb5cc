"""``internvl-train launch``: torchrun in a PyTorchJob's or TrainJob's pod, with the trainer's
exit codes kept.

torchrun itself exits 1 with a ``ChildFailedError`` traceback whatever its processes exited
with, so a refused input (exit 2, docs/contract.md §5) would look like a crash to the operator and
be retried. This launcher runs torchrun's own code (``torch.distributed.run``: its options from
the ``PET_*`` variables the training operator or Trainer's torch plugin sets, its rendezvous, its
monitoring of the processes) on ``internvl-train run --config FILE`` and, when a process fails,
exits as that process did: 2 with the problems it reported when any process refused its input,
else 1 with one line naming the rank and why. Each process leaves that text in the error file
torchrun gives it (``internvl_trainer.problems.tell_launcher``). The processes inherit the
launcher's environment, so they log as it does (``INTERNVL_LOG_FORMAT``, ``internvl_trainer.logs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from internvl_trainer.problems import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK


@dataclass(frozen=True)
class Outcome:
    """How the launcher ends: its exit code and what it says on standard error (nothing on success)."""

    exit_code: int
    message: str = ""


def torchrun_arguments(config: str) -> list[str]:
    """torchrun's command line; its other options come from the ``PET_<OPTION>`` variables."""
    return ["--module", "internvl_trainer.cli", "run", "--config", config]


def launch(config: str) -> Outcome:
    """Run every process of this node under torchrun and wait for them."""
    try:
        torchrun.run(torchrun.parse_args(torchrun_arguments(config)))
    except ChildFailedError as error:
        return outcome(error.failures)
    return Outcome(EXIT_OK)


def outcome(failures: Mapping[int, ProcessFailure]) -> Outcome:
    """The first process that refused its input decides, else the first that failed."""
    refused = {rank: failure for rank, failure in failures.items() if failure.exitcode == EXIT_BAD_INPUT}
    if refused:
        rank = min(refused, key=lambda rank: refused[rank].timestamp)
        return Outcome(EXIT_BAD_INPUT, _reason(refused[rank]))
    rank = min(failures, key=lambda rank: failures[rank].timestamp)
    failure = failures[rank]
    if failure.exitcode < 0:
        return Outcome(EXIT_FAILED, f"error: rank {rank} was killed by {failure.signal_name()}")
    return Outcome(EXIT_FAILED, f"error: rank {rank} exited with {failure.exitcode}: {_reason(failure)}")


def _reason(failure: ProcessFailure) -> str:
    # Without an error file (a hard crash) torch makes a message up that says nothing.
    if not Path(failure.error_file).is_file():
        return "it left no reason; its log above says why"
    return str(failure.message)
