"""Problems with user input, and how every command line tool reports them.

A problem names where it is (a dotted field path such as ``spec.method.lora.rank``, or a file
and line) and why. Every CLI of the project prints problems one per line as ``where: why`` (or
as JSON with ``--output json``) and exits with ``EXIT_BAD_INPUT``; a run that fails for any
other reason exits with ``EXIT_FAILED``, saying why in one line (``INTERNVL_DEBUG=1`` shows the
traceback). Under torchrun the same text also goes to the process's error file, where the
launcher (``internvl_trainer.train.launch``) reads why a process failed. Every YAML file is read
here, as Kubernetes reads YAML (``kube_yaml``). This module imports no torch.
"""

from __future__ import annotations

import argparse
import json
import os
import reprlib
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from internvl_trainer.kube_yaml import YamlError, load_all

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

DEBUG_ENV = "INTERNVL_DEBUG"
"""Set (to anything) in the environment, a CLI lets an unexpected error through with its traceback."""

ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"
"""Where torchrun asks each process it starts to write why it failed (torch.distributed.elastic)."""


_PATTERN_MEANINGS: dict[str, str] = {}


def described_pattern(pattern: str, meaning: str) -> str:
    """Register what a field pattern means, so a mismatch says that instead of the regex."""
    _PATTERN_MEANINGS[pattern] = meaning
    return pattern


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is and why."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def field_path(location: Sequence[str | int]) -> str:
    """A dotted path with list indices, and map keys that hold dots, in brackets, as kubectl
    writes them: ``spec.pod.tolerations[0].effect``, ``spec.pod.nodeSelector[kubernetes.io/arch]``."""
    path = ""
    for part in location:
        if isinstance(part, int) or "." in part:
            path += f"[{part}]"
        elif part != "[key]":
            path += f".{part}" if path else part
    return path


# Inputs quoted in a message are cut short: an input may be megabytes long or nested deeper than
# the interpreter can print.
_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 80


def _reason(error: dict) -> str:
    message = error["msg"]
    if error["type"] == "value_error":
        message = message.removeprefix("Value error, ")
    elif error["type"] == "literal_error" or error["type"] == "enum":
        message = f"{message}, got {_BRIEF.repr(error['input'])}"
    elif error["type"] == "string_pattern_mismatch" and error["ctx"]["pattern"] in _PATTERN_MEANINGS:
        message = f"must be {_PATTERN_MEANINGS[error['ctx']['pattern']]}, got {_BRIEF.repr(error['input'])}"
    elif error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "required field is missing"
    return message


def problems_from(error: ValidationError, prefix: Sequence[str | int] = ()) -> list[Problem]:
    """The problems of a pydantic validation error, with paths in the input's own (camelCase)
    spelling, under ``prefix``."""
    return [Problem(field_path([*prefix, *e["loc"]]), _reason(e)) for e in error.errors()]


class BadInput(Exception):
    """Input that cannot be used, with every problem found in it."""

    def __init__(self, problems: Sequence[Problem]):
        super().__init__("; ".join(map(str, problems)))
        self.problems = list(problems)


def read_text(source: str) -> str:
    """The text of a file (``-`` for standard input). Raises BadInput naming a file that cannot
    be read or is not UTF-8 text."""
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as error:
        raise BadInput([Problem(source, error.strerror or str(error))]) from error
    return decode_text(data, source)


def decode_text(data: bytes, source: str) -> str:
    """``data`` as UTF-8 text, a leading byte order mark dropped. Raises BadInput naming the line
    of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = error.object.count(b"\n", 0, error.start) + 1
        byte = error.object[error.start]
        raise BadInput([Problem(f"{source}:{line}", f"not UTF-8 text (byte 0x{byte:02x})")]) from None


def parse_yaml_documents(text: str, source: str) -> list[Any]:
    """The YAML documents in ``text`` as JSON values, read as kubectl reads them (empty documents
    left out). Raises BadInput naming ``source``, line and column of what cannot be read."""
    try:
        return [document for document in load_all(text) if document is not None]
    except YamlError as error:
        where = ":".join(str(part) for part in (source, error.line, error.column) if part is not None)
        raise BadInput([Problem(where, f"invalid YAML: {error.reason}")]) from None


def load_yaml_documents(source: str) -> list[Any]:
    """The YAML documents of a file (``-`` for standard input). Raises BadInput."""
    return parse_yaml_documents(read_text(source), source)


def render_text(problems: Iterable[Problem]) -> str:
    return "".join(f"{p}\n" for p in problems)


def as_json(problems: Iterable[Problem]) -> list[dict[str, str]]:
    return [asdict(p) for p in problems]


def dumps_json(document: Any) -> str:
    return json.dumps(document, indent=2) + "\n"


def one_line(error: BaseException) -> str:
    """``<type>: <message>`` on one line, however long or multi-line the message."""
    what = " ".join(f"{type(error).__name__}: {error}".split())
    return what[:500] + "..." if len(what) > 500 else what


def tell_launcher(text: str) -> None:
    """Leave why this process failed in the error file torchrun gave it, if any: torchrun reads
    it back (``ProcessFailure.message``) when the process has exited."""
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        Path(path).write_text(json.dumps({"message": text.rstrip("\n"), "timestamp": int(time.time())}))


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Run the subcommand that ``argv`` names (its ``handler`` default) and report bad input the
    way every CLI of the project does: on standard error, or as JSON with ``--output json``. Any
    other error is one line ``error: ...`` on standard error and exit 1, never a traceback unless
    ``INTERNVL_DEBUG`` is set."""
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except BadInput as error:
        text = render_text(error.problems)
        if getattr(args, "output", None) == "json":
            sys.stdout.write(dumps_json({"valid": False, "problems": as_json(error.problems)}))
        else:
            sys.stderr.write(text)
        tell_launcher(text)
        return EXIT_BAD_INPUT
    except Exception as error:
        if os.environ.get(DEBUG_ENV):
            raise
        tell_launcher(one_line(error))
        sys.stderr.write(f"error: {one_line(error)} ({DEBUG_ENV}=1 shows the traceback)\n")
        return EXIT_FAILED
