"""How close the memory model comes to InternVL's published per-GPU figures, and what planning costs.

The 17 figures of InternVL 2.5's fine-tuning guide
(``internvl_operator.generators.sizing.PUBLISHED``) beside the estimate for the same setup; then
the time ``plan`` takes, since the operator plans every object it reconciles.
"""

from __future__ import annotations

from benchmarks import Table, seconds_per_call
from internvl_operator.generators.sizing import GUIDE, TOLERANCE, comparisons, example_spec
from internvl_operator.planner import plan


def run() -> list[Table]:
    results = comparisons()
    within = sum(result.within for result in results)
    accuracy = Table(
        title="Estimated against published memory per GPU (InternVL 2.5 fine-tuning guide)",
        method=(
            f"The memory model's estimate for each command of the [guide]({GUIDE}): its GPUs and per-device batch, "
            "the script's DeepSpeed config, 8192 tokens, 6 tiles plus a thumbnail, ViT frozen, gradient "
            f"checkpointing. {within} of {len(results)} within ±{TOLERANCE:.0%}; docs/sizing.md says why the "
            "others miss."
        ),
        columns=["Model", "Method", "GPUs", "Batch", "Published GiB", "Estimated GiB", "Deviation", "Within ±30 %"],
        rows=[
            [
                result.figure.model,
                result.figure.method,
                str(result.figure.gpus),
                str(result.figure.per_device_batch_size),
                f"{result.figure.published_gib:g}",
                f"{result.estimate.total_gib:.1f}",
                f"{result.deviation:+.1%}",
                "yes" if result.within else "no",
            ]
            for result in results
        ],
    )
    cases = [
        ("InternVL3-8B", "lora", "recipe"),
        ("InternVL2_5-78B", "full", "recipe"),
        ("InternVL3-8B", "lora", "minimal"),
        ("InternVL2_5-78B", "full", "minimal"),
    ]
    timings = []
    for name, method, policy in cases:
        spec = example_spec(name, method, policy, 80)
        timings.append((f"{name} {method}, policy {policy}", seconds_per_call(lambda spec=spec: plan(spec))))
    speed = Table(
        title="Planning time",
        method="`plan(spec)` for the smallest spec on 80 GiB GPUs, in one process; best of 5 timings.",
        columns=["Spec", "Time per plan"],
        rows=[[label, f"{seconds * 1e3:.2f} ms"] for label, seconds in timings],
    )
    return [accuracy, speed]
