"""What the benchmark runs with: the packages it found, the attention and the optimizer it chose
from them, and the report's lines about them (the machine's own: ``benchmarks.__main__.machine``).

torch and transformers (with InternVL: 4.52 or later) are required. Everything else is
optional and only read: flash-attention gives varlen kernels (sdpa otherwise), DeepSpeed the real
ZeRO-1 optimizer (an equivalent step otherwise, ``zero.py``), pydantic the operator's memory model
(no estimate otherwise). A package that is missing is named in the report with what was done
instead; none is ever installed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.__main__ import installed

ATTENTIONS = ("auto", "flash_attention_2", "sdpa", "flex_attention", "eager")

OPTIONAL = {
    "flash_attn": ("varlen attention kernels", "sdpa, which attends over a packed row through a block-diagonal mask"),
    "deepspeed": ("DeepSpeed's ZeRO-1 optimizer", "the same memory layout without DeepSpeed (fp32 master AdamW)"),
    "pydantic": ("the operator's memory model (planner estimate)", "no estimate"),
}
"""Optional packages: what each gives, and what the benchmark does without it."""

VERSIONED = ("numpy", "flash-attn")
"""Versions the machine's description (``benchmarks.__main__.machine``) leaves out."""


@dataclass(frozen=True)
class Missing:
    """An optional package that is not installed."""

    package: str
    gives: str
    instead: str

    def line(self) -> str:
        return f"{self.package} (for {self.gives}): {self.instead}"


@dataclass(frozen=True)
class Environment:
    """The device, the attention and optimizer chosen, and what could not be used."""

    device: str
    gpu: str
    gpu_memory_gib: float | None
    cuda: str | None
    attention: str
    attention_reason: str
    deepspeed: bool
    optimizer_reason: str
    estimate: bool
    missing: list[Missing] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def dtype(self) -> torch.dtype:
        """bf16 on a GPU as the recipe trains; float32 on CPU, where the smoke run checks losses tightly."""
        return torch.bfloat16 if self.device == "cuda" else torch.float32

    def lines(self) -> list[str]:
        """The report's description of the run's software, below the machine's."""
        dtype = str(self.dtype).removeprefix("torch.")
        device = f"{self.gpu}, {self.gpu_memory_gib:.0f} GiB, CUDA {self.cuda}" if self.device == "cuda" else "CPU"
        lines = [
            f"- Device: {device}; {dtype}",
            f"- Attention: `{self.attention}` ({self.attention_reason})",
            f"- Optimizer: {'DeepSpeed ZeRO-1' if self.deepspeed else 'ZeRO-1 layout without DeepSpeed'}"
            f" ({self.optimizer_reason})",
            "- Also installed: " + ", ".join(f"{name} {number}" for name, number in self.versions.items()),
        ]
        if self.missing:
            lines.append("- Not installed, and what was done instead: " + "; ".join(m.line() for m in self.missing))
        return lines


def _attention(requested: str, device: str, flash: bool) -> tuple[str, str]:
    if requested != "auto":
        return requested, "chosen with --attention"
    if flash:
        return (
            "flash_attention_2",
            "flash-attention is installed: varlen kernels, packed samples attend only within themselves",
        )
    if device != "cuda":
        return "sdpa", "CPU"
    return "sdpa", (
        "flash-attention is not installed; sdpa computes a packed row's whole causal square under a"
        " block-diagonal mask, so packing saves less attention work than it would with flash-attention"
    )


def probe(
    *,
    device: str,
    attention: str = "auto",
    use_deepspeed: bool = True,
    find: Callable[[str], Any] = importlib.util.find_spec,
) -> Environment:
    """What this machine offers for a run on ``device`` (cuda or cpu). ``find`` tells whether a
    package is importable (``importlib.util.find_spec``)."""
    import transformers

    if not hasattr(transformers, "InternVLForConditionalGeneration"):
        raise SystemExit(f"transformers {transformers.__version__} has no InternVL models; 4.52 or later is needed")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"no CUDA device for torch {torch.__version__} in {sys.executable}: on a GPU machine, name a Python"
            " whose torch has CUDA (make bench-gpu BENCH_PYTHON=...); elsewhere, --smoke runs the CPU check"
        )
    present = {package: find(package) is not None for package in OPTIONAL}
    missing = [Missing(package, *OPTIONAL[package]) for package, found in present.items() if not found]
    flash = device == "cuda" and present["flash_attn"] and transformers.utils.is_flash_attn_2_available()
    chosen, reason = _attention(attention, device, flash)
    deepspeed = device == "cuda" and present["deepspeed"] and use_deepspeed
    if deepspeed:
        optimizer_reason = "on one GPU ZeRO-1 shards the optimizer state over one rank: plain mixed-precision memory"
    elif not present["deepspeed"]:
        optimizer_reason = "DeepSpeed is not installed"
    elif device != "cuda":
        optimizer_reason = "DeepSpeed is not used on CPU"
    else:
        optimizer_reason = "DeepSpeed turned off with --no-deepspeed"
    gpu, memory, cuda = "none", None, None
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        gpu, memory, cuda = properties.name, properties.total_memory / 2**30, torch.version.cuda
    return Environment(
        device=device,
        gpu=gpu,
        gpu_memory_gib=memory,
        cuda=cuda,
        attention=chosen,
        attention_reason=reason,
        deepspeed=deepspeed,
        optimizer_reason=optimizer_reason,
        estimate=present["pydantic"],
        missing=missing,
        versions=installed(VERSIONED),
    )
