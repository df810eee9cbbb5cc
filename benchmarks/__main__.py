"""Run every benchmark and write one report: ``python -m benchmarks --output docs/benchmarks.md``."""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# Later benchmarks append their module here; the report keeps this order.
BENCHMARKS = [
    "benchmarks.validation",
    "benchmarks.sizing",
    "benchmarks.operator",
    "benchmarks.tiling",
    "benchmarks.storage",
    "benchmarks.packing",
    "benchmarks.index",
    "benchmarks.gpu",
    "benchmarks.cli",
]
PACKAGES = [
    "torch",
    "transformers",
    "peft",
    "deepspeed",
    "pydantic",
    "kopf",
    "common-expression-language",
    "jsonschema",
]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        total_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return "unknown"
    return f"{total_kib / 2**20:.0f} GiB"


def _cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def _huge_pages() -> str:
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        mode = "unknown"
    asked = "on" if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else "off"
    return (
        f"transparent huge pages for tensors of 2 MiB and more {asked} (`THP_MEM_ALLOC_ENABLE`, as the trainer"
        f" image sets it); the kernel's mode: {mode}"
    )


def _gpus() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return ", ".join(names)


def installed(packages: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The version of each of ``packages`` that is installed."""
    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def _versions() -> str:
    return ", ".join(f"{package} {number}" for package, number in installed(PACKAGES).items())


def machine() -> str:
    return "\n".join(
        [
            f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            f"- CPU: {_cpu_model()}, {os.cpu_count()} cores; memory {_memory_gib()}; GPU: {_gpus()}",
            f"- torch's CPU capability: {_cpu_capability()} (which kernels torch runs, the image resampler's choice)",
            f"- torch's CPU allocator: {_huge_pages()}",
            f"- Load average when the run started: {os.getloadavg()[0]:.1f} (other work slows every row)",
            f"- Python {platform.python_version()} on {platform.system()} {platform.release()}",
            f"- Packages: {_versions()}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--output", type=Path, help="write the report here instead of printing it")
    args = parser.parse_args()
    sections = []
    for name in BENCHMARKS:
        print(f"running {name} ...", flush=True)
        sections += [table.markdown() for table in importlib.import_module(name).run()]
    report = "\n".join(
        [
            "# Benchmarks",
            "",
            "Written by `make bench` from one run on the machine below; every table compares its rows",
            "within that run. Numbers from another machine are not comparable. Where a table says its rows",
            "ran in interleaved rounds, each round timed every row in turn (A, B, C, A, B, C, ...) and the",
            "best round counts, so a change in the machine's load hits every row alike. The headline row of",
            "each table is what a user gets by default on this machine.",
            "",
            machine(),
            "",
            *sections,
        ]
    )
    if args.output:
        args.output.write_text(report)
        print(f"wrote {args.output}")
    else:
        print(report)


if __name__ == "__main__":
    main()
