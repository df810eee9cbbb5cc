"""docs/sizing.md: the catalog, the memory model, its check against published figures, and plans.

``python -m internvl_operator.generators.sizing --output docs/sizing.md`` writes it (``make
docs`` runs that); a test fails when the committed file is stale. ``PUBLISHED`` holds the 17
per-GPU memory figures of InternVL 2.5's fine-tuning guide; ``compare`` puts the memory model's
estimate beside each, and the benchmarks print the same comparison.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from internvl_operator import memory
from internvl_operator.api import InternVLFinetuneSpec
from internvl_operator.catalog import (
    CATALOG,
    LLM_TOKENS_PER_TILE,
    VISION_TOKENS_PER_TILE,
    MoELanguageModel,
    VisionTower,
)
from internvl_operator.deepspeed import ZERO_VARIANTS, deepspeed_config
from internvl_operator.memory import MemoryEstimate, Trainable, estimate
from internvl_operator.planner import Plan, plan
from internvl_operator.recipes import RECIPES, recipe_for
from internvl_trainer.config import MODEL_NAMES

GUIDE = "https://internvl.readthedocs.io/en/latest/internvl2.5/finetune.html"
GUIDE_SEQ_LENGTH = 8192
GUIDE_MAX_TILES = 6
TOLERANCE = 0.30
GPU_SIZES_GIB = (40, 80, 141)

_RESERVED = (
    "LoRA runs stay far below the 80 GB of the card, and nvidia-smi shows what PyTorch's caching allocator has "
    "reserved, not the peak in use that the estimate models: with group_by_length the batch shape changes every "
    "step, and freed blocks of other shapes stay cached. Full fine-tuning runs close to the card's limit, where "
    "the allocator releases its cache, so their figures stay near the peak."
)


class PublishedFigure(BaseModel):
    """One per-GPU memory figure of InternVL 2.5's fine-tuning guide (ViT frozen, 8192 tokens,
    6 tiles, gradient checkpointing, the script's DeepSpeed config)."""

    model_config = ConfigDict(frozen=True)

    model: str
    method: Literal["full", "lora"]
    gpus: int
    per_device_batch_size: int
    published_gib: float
    remark: str | None = None
    """Why the estimate cannot meet this figure, where the figure itself is in doubt."""


def _row(size: str, method: Literal["full", "lora"], gpus: int, batch: int, gib: float, remark: str | None = None):
    return PublishedFigure(
        model=f"InternVL2_5-{size}",
        method=method,
        gpus=gpus,
        per_device_batch_size=batch,
        published_gib=gib,
        remark=remark,
    )


PUBLISHED = [
    _row("1B", "full", 8, 1, 30),
    _row("1B", "lora", 2, 1, 27),
    _row("2B", "full", 8, 1, 30),
    _row("2B", "lora", 2, 1, 27),
    _row("4B", "full", 8, 1, 40),
    _row(
        "4B",
        "lora",
        2,
        1,
        19,
        "19 GB is less than the frozen weights (7.0 GiB) and the fp32 logits of one 8192-token sequence over the "
        "151,674-entry vocabulary (13.9 GiB) need together, and the guide gives 27 GB for 1B LoRA, which has the "
        "same vocabulary and smaller weights: the figure cannot hold for full-length sequences.",
    ),
    _row("8B", "full", 8, 2, 77),
    _row(
        "8B",
        "lora",
        2,
        2,
        79,
        "Under ZeRO-1 the only state LoRA shards is the adapters' (under 0.3 GiB), so 2 and 8 GPUs cannot differ "
        "by 19 GB; the pair 79/60 repeats the 26B tab, where ZeRO-3 shards the frozen weights and the estimates "
        "differ by the same 18 GiB.",
    ),
    _row("8B", "lora", 8, 2, 60, _RESERVED),
    _row("26B", "full", 8, 2, 77),
    _row("26B", "lora", 2, 2, 79),
    _row("26B", "lora", 8, 2, 60, _RESERVED),
    _row("38B", "full", 16, 2, 77),
    _row("38B", "lora", 2, 2, 74),
    _row("38B", "lora", 8, 2, 74),
    _row("78B", "full", 32, 1, 77),
    _row("78B", "lora", 8, 1, 74, _RESERVED),
]


class Comparison(BaseModel):
    """A published figure and the estimate for the same setup."""

    figure: PublishedFigure
    deepspeed_variant: str
    estimate: MemoryEstimate

    @property
    def deviation(self) -> float:
        return self.estimate.total_gib / self.figure.published_gib - 1

    @property
    def within(self) -> bool:
        return abs(self.deviation) <= TOLERANCE


def compare(figure: PublishedFigure) -> Comparison:
    """The estimate for a published figure's setup: the guide's GPUs and per-device batch, the
    script's DeepSpeed config, the recipe's trained parts."""
    recipe, _ = recipe_for(figure.model, figure.method)
    if figure.method == "full":
        trainable = Trainable(projector=True, llm=True)
    else:
        trainable = Trainable(lora_rank=recipe.lora_rank, lora_llm=True)
    result = estimate(
        CATALOG[figure.model],
        trainable,
        gpus=figure.gpus,
        deepspeed=deepspeed_config(recipe.deepspeed_variant),
        per_device_batch_size=figure.per_device_batch_size,
        max_seq_length=GUIDE_SEQ_LENGTH,
        tiles_per_sequence=GUIDE_MAX_TILES + 1,
        loss_chunk_tokens=None,  # the figures are InternVL's trainer's: the logits of every token
    )
    return Comparison(figure=figure, deepspeed_variant=recipe.deepspeed_variant, estimate=result)


def comparisons() -> list[Comparison]:
    return [compare(figure) for figure in PUBLISHED]


def example_spec(name: str, method: str, policy: str, gpu_memory_gib: int) -> InternVLFinetuneSpec:
    """The smallest spec for a model and method: everything else from the recipe and the planner."""
    return InternVLFinetuneSpec.model_validate(
        {
            "model": {"name": name, "weights": f"s3://models/{name}"},
            "method": {"type": method},
            "data": {"meta": "s3://data/meta.json"},
            "output": {"uri": f"s3://models/out/{name}"},
            "resources": {"policy": policy, "gpuMemoryGiB": gpu_memory_gib},
        }
    )


def constants() -> list[tuple[str, str, str]]:
    """(name, value, derivation) of every constant of the memory model, read from its source."""
    tree = ast.parse(Path(memory.__file__).read_text())
    found = []
    body = tree.body
    for index, node in enumerate(body):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if not name.isupper():
            continue
        following = body[index + 1] if index + 1 < len(body) else None
        doc = ""
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            doc = " ".join(str(following.value.value).split())
        found.append((name, ast.unparse(node.value), doc))
    return found


# ---------------------------------------------------------------------------------------------
# the document


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _params(count: int) -> str:
    return f"{count / 1e9:.3f} B"


def _vision_row(tower: VisionTower) -> list[str]:
    return [
        f"[{tower.name}](https://huggingface.co/OpenGVLab/{tower.name})",
        str(tower.hidden_size),
        str(tower.layers),
        str(tower.heads),
        str(tower.intermediate_size),
        tower.norm,
        "yes" if tower.qk_norm else "no",
        _params(tower.params),
        tower.card_params,
    ]


def _catalog_section() -> list[str]:
    lines = [
        "## Model catalog",
        "",
        "The vision and language parts are those each model card lists; every dimension comes from the",
        "model's `config.json` (`vision_config`, `llm_config`) on Hugging Face, linked per row. Parameter counts",
        "are computed from the dimensions, layer by layer (`internvl_operator.catalog`), and agree with the",
        "totals the model pages report within 0.5 %. InternVL unties the LM head from the input embeddings for",
        "every size, so the LLM counts hold both. A mixture-of-experts LLM keeps all its experts (Total) but",
        "routes each token to a few (Active: all parameters but the experts a token is not routed to).",
        "InternVL3.5-GPT-OSS is trained and released in bf16, not GPT-OSS's MXFP4",
        "([InternVL#1134](https://github.com/OpenGVLab/InternVL/issues/1134)), so no checkpoint is refused for",
        "its weight format. A 448-pixel tile is",
        f"{VISION_TOKENS_PER_TILE} tokens in the vision tower and {LLM_TOKENS_PER_TILE} in the LLM.",
        "",
    ]
    rows = []
    for spec in CATALOG.values():
        llm = spec.llm
        rows.append(
            [
                f"[{spec.name}]({spec.source})",
                spec.vision.name.removesuffix("-448px-V2_5"),
                f"[{llm.name.split('/')[1]}](https://huggingface.co/{llm.name})",
                llm.family,
                str(llm.hidden_size),
                str(llm.layers),
                f"{llm.heads} / {llm.kv_heads} x {llm.head_dim}",
                str(llm.intermediate_size),
                f"{llm.vocab_size:,}",
                f"`{llm.bos_token}`" if llm.bos_token else "none",
                _params(spec.vision.params),
                _params(spec.projector_params),
                _params(llm.params),
                _params(spec.total_params),
                spec.card_total,
                f"{llm.experts} ({llm.experts_per_token})" if isinstance(llm, MoELanguageModel) else "dense",
                _params(spec.active_params),
            ]
        )
    columns = [
        "Model",
        "Vision",
        "LLM",
        "Family",
        "Hidden",
        "Layers",
        "Heads / KV x head dim",
        "Intermediate",
        "Vocabulary",
        "BOS",
        "Vision params",
        "Projector",
        "LLM params",
        "Total",
        "Model page",
        "Experts (routed)",
        "Active",
    ]
    lines += _table(columns, rows)
    lines += ["", "Vision towers:", ""]
    towers = {spec.vision.name: spec.vision for spec in CATALOG.values()}
    lines += _table(
        ["Tower", "Width", "Layers", "Heads", "Intermediate", "Norm", "QK norm", "Params", "Card"],
        [_vision_row(tower) for tower in towers.values()],
    )
    return lines + [""]


def _memory_section() -> list[str]:
    doc = memory.__doc__ or ""
    body = doc.split("\n", 2)[2].strip() if doc.count("\n") >= 2 else doc
    lines = [
        "## Memory model",
        "",
        "`internvl_operator.memory`, in its own words:",
        "",
        *[line.replace("``", "`") for line in body.splitlines()],
        "",
        "Every constant, with its derivation:",
        "",
    ]
    lines += _table(
        ["Constant", "Value", "Derivation"],
        [[f"`{name}`", f"`{value}`", doc.replace("|", "\\|")] for name, value, doc in constants()],
    )
    variants = [
        [
            f"`{name}`",
            str(zero["stage"]),
            f"{zero['reduce_bucket_size']:.0e}",
            "yes" if zero.get("overlap_comm") else "no",
            f"{zero['stage3_param_persistence_threshold']:.0e}" if "stage3_param_persistence_threshold" in zero else "",
            f"{zero['stage3_max_live_parameters']:.0e}" if "stage3_max_live_parameters" in zero else "",
            "parameters + optimizer" if "offload_param" in zero else "",
        ]
        for name, zero in ZERO_VARIANTS.items()
    ]
    lines += [
        "",
        "The DeepSpeed configs (`internvl_operator.deepspeed`, InternVL's files of the same names) set the",
        "buckets and ZeRO-3 sizes the estimate reads:",
        "",
    ]
    lines += _table(["Config", "Stage", "Reduce bucket", "Overlap", "Persistence", "Max live", "Offload"], variants)
    return lines + [""]


def _comparison_section() -> list[str]:
    results = comparisons()
    within = sum(result.within for result in results)
    lines = [
        "## Estimates against published figures",
        "",
        f"InternVL 2.5's [fine-tuning guide]({GUIDE}) gives the memory per GPU of its commands: ViT frozen,",
        f"at most {GUIDE_SEQ_LENGTH} tokens and {GUIDE_MAX_TILES} tiles, gradient checkpointing, the script's",
        "DeepSpeed config, `PER_DEVICE_BATCH_SIZE` as in the command. The guide writes G for the GPUs' own unit (an",
        "80G A100 holds 80 GiB), so figures compare with GiB. The estimate is the memory model's for the",
        "same setup at full-length sequences, with InternVL's loss, which holds the logits of every token (this",
        "trainer's holds one chunk of them, so its plans below are lower).",
        f"**{within} of {len(results)} are within ±{TOLERANCE:.0%}.**",
        "",
        "There are no InternVL3.5 rows: neither InternVL's InternVL3.5 scripts and documents nor the peers",
        "consulted (ms-swift, NeMo AutoModel, MindSpeed-MM) give per-GPU memory figures for fine-tuning it.",
        "",
    ]
    rows = []
    for result in results:
        figure = result.figure
        rows.append(
            [
                figure.model.removeprefix("InternVL2_5-"),
                figure.method,
                str(figure.gpus),
                str(figure.per_device_batch_size),
                f"`{result.deepspeed_variant}`",
                f"{figure.published_gib:g}",
                f"{result.estimate.total_gib:.1f}",
                f"{result.deviation:+.0%}",
                "yes" if result.within else "**no**",
                ", ".join(f"{part.name} {part.gib:.1f}" for part in result.estimate.largest(3)),
            ]
        )
    lines += _table(
        [
            "Size",
            "Method",
            "GPUs",
            "Batch",
            "DeepSpeed",
            "Published",
            "Estimate",
            "Deviation",
            "±30 %",
            "Largest parts",
        ],
        rows,
    )
    misses = [result for result in results if not result.within]
    lines += ["", "Rows outside ±30 % and why:", ""]
    for result in misses:
        figure = result.figure
        lines.append(
            f"- {figure.model} {figure.method}, {figure.gpus} GPUs, batch {figure.per_device_batch_size} "
            f"({figure.published_gib:g} published, {result.estimate.total_gib:.1f} estimated): {figure.remark}"
        )
    return lines + [""]


def _plan_row(name: str, method: str, result: Plan, with_recipe: bool) -> list[str]:
    row = [name, method]
    if with_recipe:
        row.append(f"`{result.recipe.rsplit('/', 1)[1]}`" if result.recipe else "")
    row += [
        f"{result.nodes} x {result.gpus_per_node}",
        f"`{result.deepspeed_variant}`",
        f"{result.per_device_batch_size} x {result.gradient_accumulation_steps}",
        str(result.global_batch_size),
    ]
    if with_recipe:
        row += [
            f"{result.learning_rate:g}",
            f"{result.weight_decay:g}",
            f"{result.drop_path_rate:g}",
            f"{result.max_seq_length} / {result.max_tiles}",
        ]
    row += [f"{result.memory.total_gib:.1f}", result.verdict]
    return row


def _plans_section() -> list[str]:
    lines = [
        "## Plans",
        "",
        "What `internvl-operator plan` gives for the smallest spec of each model and method (all else unset).",
        "",
        "### Policy recipe, 80 GiB GPUs",
        "",
        "InternVL's scripts reproduced exactly (InternVL3 and InternVL3.5 LoRA follow the rule in",
        "`internvl_operator.recipes`, marked derived; InternVL3.5's SFT scripts run one node of 8 GPUs here). The",
        "estimate assumes full-length sequences; where it exceeds the budget, InternVL's scripts rely on most",
        "batches being shorter, and the plan says so.",
        "",
    ]
    rows = []
    for name in MODEL_NAMES:
        for method in ("full", "lora"):
            result = plan(example_spec(name, method, "recipe", 80))
            row = _plan_row(name, method, result, with_recipe=True)
            if RECIPES.get((name, method)) is None:
                row[2] += " (derived)"
            rows.append(row)
    lines += _table(
        [
            "Model",
            "Method",
            "Script",
            "Nodes x GPUs",
            "DeepSpeed",
            "Batch x accum.",
            "Global",
            "LR",
            "WD",
            "Drop path",
            "Tokens / tiles",
            "GiB per GPU",
            "Verdict",
        ],
        rows,
    )
    for size in GPU_SIZES_GIB:
        lines += [
            "",
            f"### Policy minimal, {size} GiB GPUs",
            "",
            "The fewest GPUs (whole 8-GPU nodes beyond one), then the lowest ZeRO stage, then the largest",
            f"per-device batch within {memory.GPU_BUDGET_FRACTION:.0%} of the GPU, keeping the recipe's global",
            "batch and limits; CPU offload only where nothing fits without it.",
            "",
        ]
        rows = [
            _plan_row(name, method, plan(example_spec(name, method, "minimal", size)), with_recipe=False)
            for name in MODEL_NAMES
            for method in ("full", "lora")
        ]
        lines += _table(
            ["Model", "Method", "Nodes x GPUs", "DeepSpeed", "Batch x accum.", "Global", "GiB per GPU", "Verdict"],
            rows,
        )
    return lines + [""]


HEADER = """\
# Sizing

Generated from the code by `make docs` (`python -m internvl_operator.generators.sizing --output docs/sizing.md`);
do not edit. `internvl-operator plan FILE` prints the plan of one InternVLFinetune.
"""


def sizing_markdown() -> str:
    """The whole docs/sizing.md."""
    sections = [_catalog_section(), _memory_section(), _comparison_section(), _plans_section()]
    return HEADER + "\n" + "\n".join("\n".join(section) for section in sections)


def main() -> None:
    parser = argparse.ArgumentParser(description="write the sizing reference")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    args.output.write_text(sizing_markdown())


if __name__ == "__main__":
    main()
