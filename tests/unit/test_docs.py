"""Every command of README.md and docs/user-guide.md works as documented.

The documents are read as scripts, block by block, in order:

- A ```bash block holds commands (``\\`` continues a line). Each one is
  - excluded, for the reason ``EXCLUDED`` gives (``make demo`` and ``make test``);
  - a cluster command (``kubectl``, ``helm``, ``aws``: it needs a cluster or its object store),
    which must appear word for word (white space aside) in tests/e2e/, whose test runs it against
    the cluster of KUBECONFIG;
  - or an offline command, ``.venv/bin/internvl-operator|internvl-train|internvl-data ...``, run
    here in a working folder, which must exit with the code its comment names (``# exit 2``), 0
    without one. It runs in this process (the console script's ``main``, the same function), so
    the suite pays for importing torch once; such commands must hold no shell syntax.
  A command that is none of these fails the test: a new command is either runnable here or
  covered by the e2e suite.
- A block whose info string says ``file=PATH`` (```json file=my-dataset/meta.json) is written to
  PATH in the working folder, so the files the guide shows are the files its commands read.
- A ```text output block lists lines that the command before it must print, in order; the
  working folder shows as ``/home/me`` in them.
- A ```python block runs in the working folder.

Before that, the working folder holds what the documents say the reader has (``prepare_inputs``):
the repository's examples/, the media of ``my-dataset/``, a local base model ``InternVL3-8B-hf/``,
a downloaded fine-tuned model ``charts-lora-model/`` with its manifest, unmerged LoRA adapters
``charts-lora-adapters/`` and a picture ``chart.png``; the models are tiny random ones.

Relative links of both documents must lead to files that exist, and to headings that exist.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = ("README.md", "docs/user-guide.md")
E2E = REPO / "tests" / "e2e"

EXCLUDED = {
    "make demo": "the whole product end to end, minutes long: tests/integration/test_demo.py runs it",
    "make test": "the whole test suite, this test included",
}
CLUSTER_PROGRAMS = ("kubectl", "helm", "aws")
OFFLINE_PROGRAMS = ("internvl-operator", "internvl-train", "internvl-data")
SHOWN_HOME = "/home/me"
"""The reader's folder in the documents' output blocks."""
SHELL_SYNTAX = re.compile(r"[|&;<>$`*?(){}]")


# ---------------------------------------------------------------------------------------------
# reading the documents


@dataclass
class Block:
    """A fenced block: where it starts, its language, its attributes (``file=PATH``, ``output``)."""

    doc: str
    line: int
    lang: str
    attributes: dict[str, str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclass
class Command:
    """One command of a bash block, continuation lines joined, its comment split off."""

    doc: str
    line: int
    text: str
    exit_code: int = 0

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def program(self) -> str:
        return Path(shlex.split(self.text)[0]).name


def blocks(doc: str) -> list[Block]:
    found, current, lines = [], None, []
    for number, line in enumerate((REPO / doc).read_text().splitlines(), 1):
        if current is None and line.startswith("```") and line.strip() != "```":
            words = line[3:].split()
            attributes = dict(word.split("=", 1) if "=" in word else (word, "") for word in words[1:])
            current, lines = Block(doc, number, words[0], attributes, ""), []
        elif current is None and line.strip() == "```":
            current, lines = Block(doc, number, "", {}, ""), []
        elif current is not None and line.strip() == "```":
            current.text = "\n".join(lines) + "\n"
            found.append(current)
            current = None
        elif current is not None:
            lines.append(line)
    assert current is None, f"{doc}: a fenced block that starts at line {current.line} never ends"
    return found


def split_comment(line: str) -> tuple[str, str]:
    """The command and its comment: a ``#`` after white space, outside quotes."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip(), line[index + 1 :].strip()
    return line.rstrip(), ""


def commands(block: Block) -> list[Command]:
    found, pending, start = [], "", 0
    for number, line in enumerate(block.text.splitlines(), block.line + 1):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, comment = split_comment(pending + line)
        pending = ""
        if text.strip():
            exit_code = re.search(r"\bexit (\d+)\b", comment)
            found.append(Command(block.doc, start, " ".join(text.split()), int(exit_code[1]) if exit_code else 0))
    assert not pending, f"{block.where}: the last line ends in a backslash"
    return found


def all_commands() -> list[Command]:
    return [command for doc in DOCS for block in blocks(doc) if block.lang == "bash" for command in commands(block)]


def normalised(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


def kind_of(command: Command) -> str:
    if command.text in EXCLUDED:
        return "excluded"
    if command.program in CLUSTER_PROGRAMS:
        return "cluster"
    if command.program in OFFLINE_PROGRAMS:
        return "offline"
    return "unknown"


# ---------------------------------------------------------------------------------------------
# what the reader has


def _dataset_media(folder: Path) -> None:
    """my-dataset's images/ and videos/ (the demo's shapes), and frames/green-square/."""
    from PIL import Image

    from examples.demo_data import write_dataset

    with tempfile.TemporaryDirectory() as scratch:
        write_dataset(Path(scratch), ".")
        for name in ("images", "videos"):
            shutil.copytree(Path(scratch) / name, folder / "my-dataset" / name)
    frames = folder / "my-dataset" / "frames" / "green-square"
    frames.mkdir(parents=True)
    for index in range(1, 9):
        image = Image.new("RGB", (112, 112), (245, 245, 245))
        image.paste((40, 170, 60), (index * 10, 44, index * 10 + 24, 68))
        image.save(frames / f"frame_{index}.png")


def _models(folder: Path) -> None:
    """A tiny base model in the hf layout, the same exported with its manifest as a downloaded
    fine-tuned model, and LoRA adapters for it."""
    import torch

    from internvl_trainer.config import MethodConfig
    from internvl_trainer.model.export import export, save_hf
    from internvl_trainer.model.load import load
    from internvl_trainer.model.prepare import prepare_for_training
    from internvl_trainer.model.processor import build_processor
    from internvl_trainer.model.tiny import tiny_config, tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    processor = build_processor(tokenizer, image_size=56, image_seq_length=4, max_tiles=4)
    model = tiny_model(tiny_config(tokenizer, image_size=56, vision_layers=1, text_layers=2))
    save_hf(model, folder / "InternVL3-8B-hf", processor=processor)
    export(model, folder / "charts-lora-model", "hf", processor=processor)
    base = load(folder / "InternVL3-8B-hf", dtype=torch.float32)
    adapted = prepare_for_training(base.model, MethodConfig(type="lora"), gradient_checkpointing=False).model
    adapted.save_pretrained(str(folder / "charts-lora-adapters"))


def _picture(folder: Path) -> None:
    from examples.demo_data import _draw

    _draw("square", "blue").save(folder / "chart.png")


INPUTS: dict[str, Callable[[Path], None]] = {
    "examples/": lambda folder: (folder / "examples").symlink_to(REPO / "examples", target_is_directory=True),
    "my-dataset/ media": _dataset_media,
    "InternVL3-8B-hf/, charts-lora-model/, charts-lora-adapters/": _models,
    "chart.png": _picture,
}
"""What the documents assume the reader has, made in the working folder."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Iterator[Path]:
    import torch

    folder = tmp_path_factory.mktemp("reader").resolve()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run fastest on one thread
    try:
        for make in INPUTS.values():
            make(folder)
        yield folder
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# running them


def _programs() -> dict[str, Callable[[list[str]], int]]:
    from internvl_operator import cli as operator_cli
    from internvl_trainer import cli as train_cli
    from internvl_trainer import data_cli

    return {"internvl-operator": operator_cli.main, "internvl-train": train_cli.main, "internvl-data": data_cli.main}


@dataclass
class Reader:
    """Runs a document's blocks in the working folder, one after the other."""

    folder: Path
    capsys: pytest.CaptureFixture
    ran: list[str] = field(default_factory=list)
    last_output: str = ""

    def run(self, command: Command) -> None:
        argv = shlex.split(command.text)
        assert argv[0] == f".venv/bin/{command.program}", f"{command.where}: run {command.program} from .venv/bin"
        assert not SHELL_SYNTAX.search(command.text), f"{command.where}: offline commands take no shell syntax"
        try:
            code = _programs()[command.program](argv[1:])
        except SystemExit as error:  # argparse refusing the arguments
            code = error.code if isinstance(error.code, int) else 2
        captured = self.capsys.readouterr()
        self.last_output = captured.out
        assert code == command.exit_code, (
            f"{command.where}: `{command.text}` exited {code}, the document says {command.exit_code}\n"
            f"stdout:\n{captured.out}\nstderr:\n{captured.err}"
        )
        self.ran.append(command.text)

    def check_output(self, block: Block) -> None:
        wanted = [line for line in block.text.replace(SHOWN_HOME, str(self.folder)).splitlines() if line.strip()]
        printed = iter(self.last_output.splitlines())
        missing = next((line for line in wanted if line not in printed), None)
        assert missing is None, f"{block.where}: not printed (in this order): {missing!r}\nprinted:\n{self.last_output}"

    def write(self, block: Block) -> None:
        path = (self.folder / block.attributes["file"]).resolve()
        assert path.is_relative_to(self.folder), f"{block.where}: file= must name a path inside the working folder"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.text)

    def run_python(self, block: Block) -> None:
        exec(compile(block.text, block.where, "exec"), {"__name__": "__main__"})
        self.last_output = self.capsys.readouterr().out
        self.ran.append(f"python block at {block.where}")

    def read(self, doc: str) -> None:
        for block in blocks(doc):
            if "file" in block.attributes:
                self.write(block)
            elif block.lang == "bash":
                for command in commands(block):
                    if kind_of(command) == "offline":
                        self.run(command)
            elif block.lang == "text" and "output" in block.attributes:
                self.check_output(block)
            elif block.lang == "python":
                self.run_python(block)


# ---------------------------------------------------------------------------------------------
# the tests


def test_the_readme_starts_with_the_two_set_up_commands():
    text = (REPO / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert headings[0] == "Set-up"
    first = next(block for block in blocks("README.md") if block.lang == "bash")
    assert [command.text for command in commands(first)] == ["make demo", "make test"]
    # how long the demo takes, with and without the first install, as the issue asks the README to say
    assert re.search(r"took \d+ s after the install", text) and "about 3 minutes more" in text


def test_the_readme_shows_the_example_it_applies():
    import yaml

    shown = [yaml.safe_load(block.text) for block in blocks("README.md") if block.lang == "yaml"]
    assert shown == [yaml.safe_load((REPO / "examples" / "lora-internvl3-8b.yaml").read_text())]


def test_every_command_is_run_here_excluded_or_run_by_the_e2e_suite():
    found = all_commands()
    unknown = [f"{command.where}: {command.text}" for command in found if kind_of(command) == "unknown"]
    assert not unknown, "commands that are neither offline (internvl-*), cluster (kubectl, helm, aws) nor excluded"
    excluded = {command.text for command in found if kind_of(command) == "excluded"}
    assert excluded == set(EXCLUDED), "an exclusion no document needs any more"
    e2e = normalised("\n".join(path.read_text() for path in sorted(E2E.glob("*.py"))))
    missing = [
        f"{command.where}: {command.text}"
        for command in found
        if kind_of(command) == "cluster" and normalised(command.text) not in e2e
    ]
    assert not missing, "cluster commands of the documents that tests/e2e/ does not run"
    assert sum(kind_of(command) == "offline" for command in found) >= 20, "the parser lost commands"


@pytest.mark.parametrize("doc", DOCS)
def test_the_offline_commands_work_as_documented(doc, workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("INTERNVL_DATA_CACHE", str(workdir / ".cache" / "internvl-data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reader = Reader(workdir, capsys)
    reader.read(doc)
    expected = [command.text for command in all_commands() if command.doc == doc and kind_of(command) == "offline"]
    assert [text for text in reader.ran if not text.startswith("python block")] == expected


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_lead_somewhere(doc):
    source = REPO / doc
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.MULTILINE)
            if anchor not in {_anchor(heading) for heading in headings}:
                broken.append(target)
    assert not broken
