"""How problems with user input are located and printed, and how every CLI reports them."""

import argparse
import json
import re

import pytest

from internvl_trainer.problems import (
    DEBUG_ENV,
    ERROR_FILE_ENV,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    BadInput,
    Problem,
    field_path,
    load_yaml_documents,
    render_text,
    run_command,
)
from tests.conftest import EXAMPLES


@pytest.mark.parametrize(
    ("location", "path"),
    [
        (("spec", "method", "lora", "rank"), "spec.method.lora.rank"),
        (("spec", "pod", "tolerations", 0, "effect"), "spec.pod.tolerations[0].effect"),
        (("spec", "pod", "nodeSelector", "zone", "[key]"), "spec.pod.nodeSelector.zone"),
        (("spec", "pod", "nodeSelector", "kubernetes.io/arch"), "spec.pod.nodeSelector[kubernetes.io/arch]"),
        ((), ""),
    ],
)
def test_field_path(location, path):
    assert field_path(location) == path


def test_render_text_is_one_problem_per_line():
    text = render_text([Problem("spec.a", "bad"), Problem("", "whole file is bad")])
    assert text == "spec.a: bad\nwhole file is bad\n"


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    source = tmp_path / "bad.yaml"
    source.write_text("spec:\n  model: {name: x\n  data: 1\n")
    with pytest.raises(BadInput) as caught:
        load_yaml_documents(str(source))
    [problem] = caught.value.problems
    assert problem.path == f"{source}:3:7"
    assert problem.message.startswith("invalid YAML: ")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(BadInput) as caught:
        load_yaml_documents(str(tmp_path / "absent.yaml"))
    assert str(caught.value.problems[0]) == f"{tmp_path / 'absent.yaml'}: No such file or directory"


def test_empty_documents_are_dropped(tmp_path):
    source = tmp_path / "two.yaml"
    source.write_text("---\na: 1\n---\n---\nb: 2\n")
    assert load_yaml_documents(str(source)) == [{"a": 1}, {"b": 2}]


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    source = tmp_path / "latin1.yaml"
    source.write_bytes("a: 1\nb: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(BadInput) as caught:
        load_yaml_documents(str(source))
    assert str(caught.value.problems[0]) == f"{source}:2: not UTF-8 text (byte 0xe9)"


# Every CLI, on input that the fuzzing found or that must be bounded: exit 2 and `file:line: reason`.


def _alias_bomb(levels: int) -> str:
    """A flow mapping whose anchors each hold nine aliases of the one before: 9**levels strings expanded."""
    entries = ["a0: &a0 [" + ", ".join(["lol"] * 9) + "]"]
    entries += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "{" + ", ".join(entries) + "}"


REFUSED = {
    "impossible !!timestamp": b"!!timestamp x",
    "!!int of a word": b"!!int eight",
    "deep flow nesting": b"[" * 10_001 + b"]" * 10_001,
    "bytes that are not UTF-8": b"caf\xe9",
    "!!binary in a free-form field": b"{nodeAffinity: !!binary aGVsbG8=}",
    "alias bomb": _alias_bomb(6).encode(),
}


def _cli_case(cli: str, tmp_path, value: bytes) -> tuple[int, str]:
    """Run ``cli`` on a file whose one string field holds ``value``: its exit code and the file."""
    from internvl_operator import cli as operator_cli
    from internvl_trainer import cli as train_cli
    from internvl_trainer import data_cli

    if cli == "internvl-operator":
        text = (EXAMPLES / "lora-internvl3-8b.yaml").read_bytes()
        text = text.replace(b"  namespace: ml\n", b"  namespace: ml\n  annotations:\n    note: " + value + b"\n")
        main, argv = operator_cli.main, ["validate"]
    elif cli == "internvl-train":
        text = (EXAMPLES / "train.yaml").read_bytes().replace(b"name: laptop", b"name: " + value)
        main, argv = train_cli.main, ["validate", "--config"]
    else:
        text = b"charts:\n  root: " + value + b"\n  annotation: train.jsonl\n"
        main, argv = data_cli.main, ["validate", "--meta-only"]
    path = tmp_path / "input.yaml"
    path.write_bytes(text)
    return main([*argv, str(path)]), str(path)


CLIS = ["internvl-operator", "internvl-train", "internvl-data"]


@pytest.mark.parametrize("cli", CLIS)
@pytest.mark.parametrize("value", REFUSED.values(), ids=REFUSED.keys())
def test_every_cli_refuses_unreadable_yaml_with_file_and_line(cli, value, tmp_path, capsys):
    code, path = _cli_case(cli, tmp_path, value)
    output = capsys.readouterr()
    assert code == 2
    assert re.match(rf"{re.escape(path)}:\d+(:\d+)?: \S", output.err), output.err
    assert "Traceback" not in output.out + output.err


@pytest.mark.parametrize("cli", CLIS)
def test_every_cli_reads_a_date_as_the_string_kubectl_sends(cli, tmp_path, capsys):
    for date in (b"2024-12-31", b"2024-13-45"):  # the second is no date at all: a string too
        code, _ = _cli_case(cli, tmp_path, date)
        assert code == 0, capsys.readouterr()


def _failing_parser(error: Exception) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--output", default="text")

    def handler(args: argparse.Namespace) -> int:
        raise error

    parser.set_defaults(handler=handler)
    return parser


def test_an_unexpected_error_is_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert run_command(_failing_parser(RuntimeError("disk\nfull")), []) == EXIT_FAILED
    output = capsys.readouterr()
    assert output.out == ""
    assert output.err == f"error: RuntimeError: disk full ({DEBUG_ENV}=1 shows the traceback)\n"


def test_the_debug_variable_lets_the_error_through(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(RecursionError):
        run_command(_failing_parser(RecursionError("too deep")), [])


def test_under_torchrun_the_reason_is_left_in_the_error_file(tmp_path, monkeypatch, capsys):
    """torchrun names a file per process; the launcher reads back what the process left there."""
    error_file = tmp_path / "error.json"
    monkeypatch.setenv(ERROR_FILE_ENV, str(error_file))
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    problems = [Problem("data.meta", "no such file"), Problem("batch.worldSize", "must be 2")]
    assert run_command(_failing_parser(BadInput(problems)), []) == EXIT_BAD_INPUT
    left = json.loads(error_file.read_text())
    assert left["message"] == "data.meta: no such file\nbatch.worldSize: must be 2" and left["timestamp"] > 0
    assert run_command(_failing_parser(RuntimeError("disk\nfull")), []) == EXIT_FAILED
    assert json.loads(error_file.read_text())["message"] == "RuntimeError: disk full"
