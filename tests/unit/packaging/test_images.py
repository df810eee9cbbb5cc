"""The Dockerfiles, which cannot be built here: hadolint, non-root users, pinned bases, entrypoints
that are console scripts, and the trainer's SSH set-up matching the operator's settings."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from internvl_operator.settings import OperatorSettings
from tests.conftest import REPO

IMAGES = REPO / "images"
DOCKERFILES = {name: IMAGES / name / "Dockerfile" for name in ("operator", "trainer")}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSTRAINTS = {
    name.strip().lower(): version.strip()
    for name, version in (
        line.split("==", 1)
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in logical]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    start = max(index for index, (name, _) in enumerate(steps) if name == "FROM")
    return steps[start:]


def last(steps, name: str) -> str:
    return [arguments for instruction, arguments in steps if instruction == name][-1]


def hadolint() -> Path:
    path = Path(sys.executable).parent / "hadolint"
    if not path.is_file():
        pytest.fail(f"hadolint is not at {path}: install the dev extra (`make install`)")
    return path


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_hadolint(image):
    result = subprocess.run(
        [str(hadolint()), "--no-color", str(DOCKERFILES[image])], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_final_user_is_not_root_and_numeric(image):
    user = last(final_stage(DOCKERFILES[image]), "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{image}: USER {user} (numeric, so the kubelet can check runAsNonRoot)"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_bases_are_pinned_versions(image):
    steps = instructions(DOCKERFILES[image])
    stages = {arguments.split()[-1] for name, arguments in steps if name == "FROM" and " AS " in arguments.upper()}
    for name, arguments in steps:
        if name != "FROM":
            continue
        base = [word for word in arguments.split() if not word.startswith("--")][0]
        if base in stages:
            continue
        assert "$" not in base, f"{image}: base {base} comes from a build argument"
        repository, _, tag = base.partition("@")[0].rpartition(":")
        assert repository and re.search(r"\d+\.\d+\.\d+", tag), f"{image}: base {base} is not a pinned version"
        assert "latest" not in tag


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_entrypoint_is_a_console_script(image):
    entrypoint = json.loads(last(final_stage(DOCKERFILES[image]), "ENTRYPOINT"))
    assert entrypoint[0] in PYPROJECT["project"]["scripts"], entrypoint


@pytest.mark.parametrize(("image", "extras"), [("operator", "operator"), ("trainer", "trainer,gpu,tracking")])
def test_installs_its_extras_with_the_constraints_file(image, extras):
    runs = " ".join(arguments for name, arguments in instructions(DOCKERFILES[image]) if name == "RUN")
    assert f'-c constraints.txt ".[{extras}]"' in runs
    assert re.findall(r'"\.\[([^\]]*)\]"', runs) == [extras]
    copied = " ".join(arguments for name, arguments in instructions(DOCKERFILES[image]) if name == "COPY")
    assert "constraints.txt" in copied
    for extra in extras.split(","):
        assert extra in PYPROJECT["project"]["optional-dependencies"]


def test_operator_image_user_is_the_charts():
    user = last(final_stage(DOCKERFILES["operator"]), "USER")
    values = yaml.safe_load((REPO / "charts" / "internvl-operator" / "values.yaml").read_text())
    assert user == f"{values['podSecurityContext']['runAsUser']}:{values['podSecurityContext']['runAsGroup']}"


def test_trainer_base_carries_the_pinned_torch():
    base = instructions(DOCKERFILES["trainer"])[0][1]
    match = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-devel", base)
    assert match, base
    assert match.group(1) == CONSTRAINTS["torch"], "change the trainer's FROM and constraints.txt's torch together"


def test_trainer_allocates_large_tensors_on_huge_pages():
    env = [shlex.split(arguments) for name, arguments in instructions(DOCKERFILES["trainer"]) if name == "ENV"]
    assert "THP_MEM_ALLOC_ENABLE=1" in [word for words in env for word in words]  # as `make bench` measures


def test_trainer_user_home_is_where_mpijob_mounts_ssh_keys():
    steps = instructions(DOCKERFILES["trainer"])
    useradd = next(shlex.split(arguments) for name, arguments in steps if name == "RUN" and "useradd" in arguments)
    words = useradd[useradd.index("useradd") : useradd.index("&&", useradd.index("useradd"))]
    home = words[words.index("--home-dir") + 1]
    uid = words[words.index("--uid") + 1]
    assert words[-1] == "trainer" and home == "/home/trainer", words
    mount = OperatorSettings().ssh_auth_mount_path
    assert Path(mount).parent == Path(home)
    assert last(final_stage(DOCKERFILES["trainer"]), "USER").split(":")[0] == uid

    lines = (IMAGES / "trainer" / "sshd_config").read_text().splitlines()
    sshd = dict(line.split(None, 1) for line in lines if line and not line.startswith("#"))
    assert Path(sshd["HostKey"]).parent == Path(mount)
    assert Path(sshd["AuthorizedKeysFile"]).parent == Path(mount)
    assert sshd["AllowUsers"] == "trainer" and sshd["UsePAM"] == "no" and sshd["PasswordAuthentication"] == "no"
    client = (IMAGES / "trainer" / "ssh_config").read_text()
    assert re.search(rf"^\s+Port {sshd['Port']}$", client, re.MULTILINE)
    assert int(sshd["Port"]) > 1024, "a non-root sshd cannot bind a privileged port"
    expose = last(final_stage(DOCKERFILES["trainer"]), "EXPOSE")
    assert expose == sshd["Port"]


def apt_installed(path: Path) -> set[str]:
    """The packages that a Dockerfile's RUN steps leave installed with apt-get: those an
    ``apt-get install`` names, less those a later ``apt-get remove``, ``purge`` or ``autoremove`` names."""
    installed: set[str] = set()
    for name, arguments in instructions(path):
        if name != "RUN":
            continue
        command: list[str] = []
        for word in [*shlex.split(arguments), "&&"]:
            if word not in ("&&", "||", ";"):
                command.append(word)
                continue
            if command[:1] == ["apt-get"]:
                action, *packages = [word for word in command[1:] if not word.startswith("-")] or [""]
                if action == "install":
                    installed |= set(packages)
                elif action in ("remove", "purge", "autoremove"):
                    installed -= set(packages)
            command = []
    return installed


def test_apt_installed_reads_commands_not_substrings(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM ubuntu:24.04.1\n"
        "RUN apt-get update \\\n    && apt-get install -y --no-install-recommends openmpi-bin curl\n"
        "RUN apt-get remove -y openmpi-bin && echo 'apt-get install openssh-server'\n"
    )
    assert apt_installed(dockerfile) == {"curl"}


def test_trainer_image_installs_openmpi_and_an_ssh_server():
    assert {"openmpi-bin", "openssh-server", "openssh-client"} <= apt_installed(DOCKERFILES["trainer"])


# .dockerignore ------------------------------------------------------------------------------


def dockerignore_includes(path: str) -> bool:
    """Whether the build context holds ``path``, by .dockerignore's rules: the last pattern that
    matches the path or one of its parent folders decides; ``!`` lets back in."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            included = negated
    return included


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_build_context_has_what_the_build_copies(image):
    for name, arguments in instructions(DOCKERFILES[image]):
        if name != "COPY" or arguments.startswith("--from"):
            continue
        for source in arguments.split()[:-1]:
            assert (REPO / source).exists(), source
            assert dockerignore_includes(source.rstrip("/")), f"{source} is left out by .dockerignore"


def test_build_context_leaves_out_the_rest():
    for path in (".git", ".venv", ".cache", "tests/unit", "docs/api.md", "charts/internvl-operator", "demo-out"):
        assert not dockerignore_includes(path), path
    assert not dockerignore_includes("operator/internvl_operator/__pycache__/cli.cpython-311.pyc")
    assert dockerignore_includes("operator/internvl_operator/cli.py")
