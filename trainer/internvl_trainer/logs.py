"""The trainer's logging: one line per event on standard error, plain or JSON, and the
third-party noise it knows to be harmless.

``INTERNVL_LOG_FORMAT`` picks the format: ``plain`` (the default; ``time LEVEL logger: message``)
or ``json`` (one JSON object a line: ``time``, ``level``, ``logger``, ``message``, and
``exception`` when there is one), the operator's ``--log-format`` values that a trainer can use.
Python's warnings become log records (``py.warnings``, one line: ``file:line: Category: message``),
so the warnings kept are lines like any other. The libraries that print on their own are brought
into the same lines: transformers' logger propagates and its progress bars are off, DeepSpeed's
records are handed to the root logger's handler instead of its own.

Only what the trainer knows to be harmless is silenced, each warning by its message, category and
the module that raises it (``HARMLESS_WARNINGS``); everything else stays visible.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from internvl_trainer.problems import BadInput, Problem

LOG_FORMAT_ENV = "INTERNVL_LOG_FORMAT"
LOG_FORMATS = ("plain", "json")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PROJECT_LOGGER = "internvl_trainer"
DEEPSPEED_LOGGER = "DeepSpeed"
"""DeepSpeed's one logger: it has its own handler and format and does not propagate."""


@dataclass(frozen=True)
class HarmlessWarning:
    """A third-party warning silenced by its message (a regex matched at its start), its category
    and the module it is raised in (a regex matched against the whole module name)."""

    message: str
    category: type[Warning]
    module: str


HARMLESS_WARNINGS = (
    # PEFT reads this deprecated alias whenever it wraps a model (training, merge); transformers
    # answers from is_activation_checkpointing, the same value. The trainer never reads it.
    HarmlessWarning(r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
)


def log_format(environ: Mapping[str, str] = os.environ) -> str:
    """The format ``INTERNVL_LOG_FORMAT`` names; anything else is bad input naming it."""
    chosen = environ.get(LOG_FORMAT_ENV, "plain")
    if chosen not in LOG_FORMATS:
        raise BadInput([Problem(LOG_FORMAT_ENV, f"expected one of {', '.join(LOG_FORMATS)}, got {chosen!r}")])
    return chosen


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, and the exception's
    traceback when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False)


def formatter(chosen: str) -> logging.Formatter:
    return JsonFormatter() if chosen == "json" else logging.Formatter(PLAIN_FORMAT)


def silence_harmless_warnings() -> None:
    for harmless in HARMLESS_WARNINGS:
        module = rf"(?:{harmless.module})\Z"  # filterwarnings matches the start of the name only
        warnings.filterwarnings("ignore", message=harmless.message, category=harmless.category, module=module)


def _log_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # logging.captureWarnings would add the warning's source line: a second line per warning.
    logging.getLogger("py.warnings").warning("%s:%d: %s: %s", filename, lineno, category.__name__, message)


class HandToRoot(logging.Filter):
    """On a logger with a handler of its own: its records go to the root logger's handlers instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        logging.getLogger().handle(record)
        return False


def _bring_in_libraries() -> None:
    # A logger-level filter outlives DeepSpeed's setup of its logger, whenever deepspeed is imported.
    logging.getLogger(DEEPSPEED_LOGGER).addFilter(HandToRoot())
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    # Progress bars redraw one line in place: in a pod's log, a line of carriage returns.
    transformers_logging.disable_progress_bar()


def configure(environ: Mapping[str, str] = os.environ) -> None:
    """Set the process's logging up as every command of the trainer does: the format
    ``INTERNVL_LOG_FORMAT`` names on standard error, the project's records from
    INFO, the others' from WARNING, warnings as records, the harmless ones silenced. A process
    whose logging is set up already (a program that calls a command in-process) keeps its own."""
    chosen = log_format(environ)
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(chosen))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    project = logging.getLogger(PROJECT_LOGGER)
    if project.level == logging.NOTSET:  # internvl-data keeps it at ERROR: its summary says it all
        project.setLevel(logging.INFO)
    silence_harmless_warnings()
    warnings.showwarning = _log_warning
    _bring_in_libraries()
