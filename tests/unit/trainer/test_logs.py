"""The trainer's logging: JSON lines, INTERNVL_LOG_FORMAT checked, each harmless warning silenced
alone, and a process set up as a command sets it up (warnings, transformers and DeepSpeed in the
same lines)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings

import pytest

from internvl_trainer import logs
from internvl_trainer.cli import main
from internvl_trainer.problems import BadInput


def record(message: str, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("internvl_trainer.x", logging.WARNING, "x.py", 3, message, (), exc_info)


def test_a_json_line_carries_time_level_logger_message_and_the_exception():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        line = logs.JsonFormatter().format(record("two\nlines", sys.exc_info()))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry.keys() == {"time", "level", "logger", "message", "exception"}
    assert (entry["level"], entry["logger"], entry["message"]) == ("WARNING", "internvl_trainer.x", "two\nlines")
    assert entry["time"].endswith("+00:00")
    assert entry["exception"].startswith("Traceback") and entry["exception"].endswith("ValueError: bad\nvalue")
    assert "exception" not in json.loads(logs.JsonFormatter().format(record("plain")))


def test_the_log_format_is_plain_unless_json_is_named():
    assert logs.log_format({}) == "plain"
    assert logs.log_format({"INTERNVL_LOG_FORMAT": "json"}) == "json"
    with pytest.raises(BadInput) as refused:
        logs.log_format({"INTERNVL_LOG_FORMAT": "full"})
    assert str(refused.value.problems[0]) == "INTERNVL_LOG_FORMAT: expected one of plain, json, got 'full'"


@pytest.mark.parametrize("command", ["run", "launch"])
def test_a_bad_log_format_is_bad_input_before_anything_runs(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("INTERNVL_LOG_FORMAT", "JSON")
    assert main([command, "--config", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err == "INTERNVL_LOG_FORMAT: expected one of plain, json, got 'JSON'\n"


# A warning each entry of HARMLESS_WARNINGS silences: (message, category, module)
SILENCED = {
    logs.HARMLESS_WARNINGS[0]: (
        "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use `is_activation_checkpointing` "
        "instead.",
        FutureWarning,
        "transformers.modeling_utils",
    ),
}


def shown(message: str, category: type[Warning], module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logs.silence_harmless_warnings()
        warnings.warn_explicit(message, category, "somewhere.py", 1, module=module)
    return bool(caught)


def test_every_harmless_warning_has_an_example_here():
    assert set(SILENCED) == set(logs.HARMLESS_WARNINGS)


@pytest.mark.parametrize("harmless", logs.HARMLESS_WARNINGS)
def test_a_harmless_warning_is_silenced_and_its_neighbours_are_not(harmless):
    message, category, module = SILENCED[harmless]
    assert not shown(message, category, module)
    assert shown(message, category, "peft.peft_model")  # raised elsewhere
    assert shown(message, UserWarning, module)  # another category
    assert shown(f"`other_attribute` {message}", category, module)  # another message
    assert shown(message, category, f"{module}_extra")  # the module's name matched whole


SCRIPT = """
import logging, warnings
from internvl_trainer import logs
logs.configure()
logging.getLogger("internvl_trainer.run").info("started")
logging.getLogger("botocore.credentials").info("found credentials")
warnings.warn_explicit("kept", UserWarning, "lib.py", 7, module="lib")
warnings.warn_explicit(
    "`is_gradient_checkpointing` is deprecated", FutureWarning, "m.py", 1, module="transformers.modeling_utils"
)
from transformers.utils import logging as transformers_logging
transformers_logging.get_logger("transformers.trainer").warning("from transformers")
deepspeed = logging.getLogger("DeepSpeed")  # as DeepSpeed sets its logger up when it is imported
deepspeed.propagate = False
deepspeed.addHandler(logging.StreamHandler())
deepspeed.warning("from deepspeed")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("internvl_trainer").exception("the run failed")
"""


def configured_process(environment: dict[str, str]) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=environment, capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout == ""
    return result.stderr.splitlines()


def test_a_configured_process_logs_json_lines_only():
    lines = configured_process({**os.environ, "INTERNVL_LOG_FORMAT": "json"})
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [(entry["level"], entry["logger"], entry["message"]) for entry in entries] == [
        ("INFO", "internvl_trainer.run", "started"),
        ("WARNING", "py.warnings", "lib.py:7: UserWarning: kept"),
        ("WARNING", "transformers.trainer", "from transformers"),
        ("WARNING", "DeepSpeed", "from deepspeed"),
        ("ERROR", "internvl_trainer", "the run failed"),
    ]
    assert entries[-1]["exception"].endswith("ZeroDivisionError: division by zero")


def test_a_configured_process_logs_plain_lines_by_default():
    environment = {name: value for name, value in os.environ.items() if name != "INTERNVL_LOG_FORMAT"}
    lines = configured_process(environment)
    assert [line.split(" ", 2)[2] for line in lines[:4]] == [
        "INFO internvl_trainer.run: started",
        "WARNING py.warnings: lib.py:7: UserWarning: kept",
        "WARNING transformers.trainer: from transformers",
        "WARNING DeepSpeed: from deepspeed",
    ]
    assert (
        lines[4].endswith("ERROR internvl_trainer: the run failed")
        and lines[-1] == "ZeroDivisionError: division by zero"
    )
