"""How long the command lines take on a large object, and how fast they refuse an alias bomb.

Every CLI reads YAML as kubectl does (``internvl_trainer.kube_yaml``: libyaml's parser, go-yaml's
resolution rules, go-yaml's limits). The object is an example with a node affinity as large as the
schema allows, about 1 MB of YAML; it is valid, so every check runs on all of it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import Table, seconds_per_call
from internvl_operator.validation import validate
from internvl_trainer.kube_yaml import YamlError, load_all

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lora-internvl3-8b.yaml"


def large_object_yaml() -> str:
    """The example with 16 node selector terms of 32 expressions of 48 values each (about 1 MB)."""
    obj = yaml.safe_load(EXAMPLE.read_text())
    terms = [
        {
            "matchExpressions": [
                {
                    "key": f"example.com/zone-{expression}",
                    "operator": "In",
                    "values": [f"gpu-node-{term:02d}-{expression:02d}-{value:02d}.cluster" for value in range(48)],
                }
                for expression in range(32)
            ]
        }
        for term in range(16)
    ]
    required = {"nodeSelectorTerms": terms}
    obj["spec"]["pod"] = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}}
    return yaml.safe_dump(obj, sort_keys=False)


def alias_bomb(levels: int = 10) -> str:
    """Each anchor nine aliases of the one before: 9**levels strings once expanded."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _refuse(text: str) -> None:
    try:
        load_all(text)
    except YamlError:
        return
    raise AssertionError("the alias bomb was read")


def _end_to_end(path: Path) -> float:
    """Best of three runs of ``internvl-operator validate`` on the file, interpreter start included."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "internvl_operator.cli", "validate", str(path)], capture_output=True, text=True
        )
        best = min(best, time.perf_counter() - start)
        if result.returncode != 0:
            raise RuntimeError(f"the large object is not valid:\n{result.stdout}{result.stderr}")
    return best


def run() -> list[Table]:
    text = large_object_yaml()
    [obj] = load_all(text)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "large.yaml"
        path.write_text(text)
        end_to_end = _end_to_end(path)
    rows = [
        (
            "read: PyYAML `safe_load` (pure Python, what the CLIs used before)",
            seconds_per_call(lambda: yaml.safe_load(text)),
        ),
        ("read: `kube_yaml.load_all` (libyaml events, go-yaml rules)", seconds_per_call(lambda: load_all(text))),
        ("`validate` (models and CEL rules) of the object read", seconds_per_call(lambda: validate(obj))),
        ("`internvl-operator validate FILE`, end to end in a new process", end_to_end),
        ("`kube_yaml.load_all` refusing a 9**10 alias bomb", seconds_per_call(lambda: _refuse(alias_bomb()))),
    ]
    return [
        Table(
            title=f"Command lines: reading and validating a {len(text) / 1e6:.1f} MB InternVLFinetune",
            method=(
                f"`{EXAMPLE.name}` with a node affinity of 16 terms x 32 expressions x 48 values ({len(text):,} bytes "
                "of YAML, valid). In-process rows: best of 5 timings; the end-to-end row: best of 3 runs, Python's "
                "start-up and imports included. The alias bomb is ten anchors of nine aliases each (3.5 billion "
                "strings expanded), refused as go-yaml refuses it before anything is expanded."
            ),
            columns=["Step", "Time"],
            rows=[[label, f"{seconds * 1e3:,.1f} ms"] for label, seconds in rows],
        )
    ]
