"""InternVL's official fine-tuning recipes, one row per script: the 2nd-finetune scripts of
InternVL 2.5 and 3 (reference/internvl-recipe.md §8.2, §8.3) and InternVL3.5's SFT scripts.

``RECIPES`` holds the scripts' numbers as published: GPUs, global and per-device batch,
accumulation, learning rate, weight decay, sequence and tile limits, the DeepSpeed config file
and the drop-path rate. ``recipe_for`` answers for any catalog model and method: the script's
row where one exists, otherwise a row derived by a documented rule, with notes saying which.

InternVL3.5's full recipes are its SFT scripts under InternVL's internvl_chat_gpt_oss/shell/
(``internvl3_5_qwen3/internvl3_5_<size>_sft.sh``, and ``internvl3_5_gpt_oss/..._stage2_sft.sh`` for
GPT-OSS): 512 samples a step at 1 per device, ZeRO-3 (``zero_stage3_config.json``), 32768 tokens,
12 tiles, weight decay 0.05, the vision tower trained (``--freeze_backbone False``), and per size
the learning rate and drop path below. The scripts take their node count from the launcher
(``--nnodes=$WORLD_SIZE``) and run 8 processes a node (``NPROC_PER_NODE``); the recipe takes one
node, so the 512 samples are 64 accumulation steps.

InternVL3 and InternVL3.5 LoRA have no script. Their layout, learning rate and weight decay come
from the InternVL 2.5 LoRA script of the nearest size (nearest by the ratio of total parameters,
so 14B takes 26B's and 9B takes 8B's), and their sequence and tile limits from the family's own
full recipes, which is what the API promises for unset limits.

The sequence and tile limits of each family and the LoRA rank are ``RECIPE_LIMITS`` and
``LORA_RANK`` of the trainer's config, which the trainer's own defaults read too.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from internvl_operator.catalog import CATALOG, parse_size
from internvl_operator.deepspeed import ZeroVariant
from internvl_trainer.config import LORA_RANK, RECIPE_LIMITS

Method = Literal["full", "lora"]


class Recipe(BaseModel):
    """One fine-tuning recipe: the numbers of one InternVL script."""

    model_config = ConfigDict(frozen=True)

    script: str
    """The shell script the numbers come from: under internvl_chat/shell/ of InternVL's repository
    for InternVL 2.5 and 3, from the repository's root for InternVL3.5."""
    gpus: int
    global_batch_size: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    weight_decay: float
    max_seq_length: int
    max_tiles: int
    deepspeed_variant: str
    drop_path_rate: float
    lora_rank: int | None = None
    trains_vision: bool = False
    """Whether the script trains the vision tower too (``--freeze_backbone False``)."""
    derived: bool = False
    """True when no script exists for the model and method and the row follows the rule above."""

    @property
    def zero(self) -> ZeroVariant:
        """The DeepSpeed config file the script names."""
        return ZeroVariant.named(self.deepspeed_variant)


_V3 = "internvl3.0/2nd_finetune/internvl3_{size}_dynamic_res_2nd_finetune_full.sh"
_V25 = "internvl2.5/2nd_finetune/internvl2_5_{size}_dynamic_res_2nd_finetune_{method}.sh"


def _v3(size: str, gpus: int, per_device: int, accumulation: int, lr: float, variant: str, drop: float) -> Recipe:
    return Recipe(
        script=_V3.format(size=size.lower()),
        gpus=gpus,
        global_batch_size=128,
        per_device_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=lr,
        weight_decay=0.05,
        max_seq_length=RECIPE_LIMITS["InternVL3"].max_seq_length,
        max_tiles=RECIPE_LIMITS["InternVL3"].max_tiles,
        deepspeed_variant=variant,
        drop_path_rate=drop,
    )


def _v25(size: str, method: Method, gpus: int, per_device: int, accumulation: int, lr: float, wd: float, variant: str,
         drop: float) -> Recipe:  # fmt: skip
    return Recipe(
        script=_V25.format(size=size.lower(), method=method),
        gpus=gpus,
        global_batch_size=128 if method == "full" else 16,
        per_device_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        learning_rate=lr,
        weight_decay=wd,
        max_seq_length=RECIPE_LIMITS["InternVL2_5"].max_seq_length,
        max_tiles=RECIPE_LIMITS["InternVL2_5"].max_tiles,
        deepspeed_variant=variant,
        drop_path_rate=drop,
        lora_rank=LORA_RANK if method == "lora" else None,
    )


_V35 = "internvl_chat_gpt_oss/shell/internvl3_5_qwen3/internvl3_5_{size}_sft.sh"
_V35_GPT_OSS = "internvl_chat_gpt_oss/shell/internvl3_5_gpt_oss/internvl3_5_gpt_oss_20b_stage2_sft.sh"


def _v35(script: str, lr: float, drop: float) -> Recipe:
    return Recipe(
        script=script,
        gpus=8,
        global_batch_size=512,
        per_device_batch_size=1,
        gradient_accumulation_steps=64,
        learning_rate=lr,
        weight_decay=0.05,
        max_seq_length=RECIPE_LIMITS["InternVL3_5"].max_seq_length,
        max_tiles=RECIPE_LIMITS["InternVL3_5"].max_tiles,
        deepspeed_variant=Z3,
        drop_path_rate=drop,
        trains_vision=True,
    )


Z1, Z3, Z3_34B, Z3_100B = (
    "zero_stage1_config",
    "zero_stage3_config",
    "zero_stage3_config_34b",
    "zero_stage3_config_100b",
)

RECIPES: dict[tuple[str, Method], Recipe] = {
    # §8.2 InternVL3: full fine-tuning only.
    ("InternVL3-1B", "full"): _v3("1B", 8, 4, 4, 1e-5, Z1, 0.0),
    ("InternVL3-2B", "full"): _v3("2B", 8, 4, 4, 2e-5, Z1, 0.0),
    ("InternVL3-8B", "full"): _v3("8B", 8, 4, 4, 2e-5, Z1, 0.0),
    ("InternVL3-9B", "full"): _v3("9B", 8, 4, 4, 2e-5, Z1, 0.0),
    ("InternVL3-14B", "full"): _v3("14B", 8, 4, 4, 2e-5, Z1, 0.1),
    ("InternVL3-38B", "full"): _v3("38B", 16, 2, 4, 2e-5, Z3_34B, 0.2),
    ("InternVL3-78B", "full"): _v3("78B", 32, 2, 2, 2e-5, Z3_100B, 0.4),
    # InternVL3.5: its SFT scripts' --learning_rate and --drop_path_rate.
    ("InternVL3_5-1B", "full"): _v35(_V35.format(size="1b"), 8e-5, 0.0),
    ("InternVL3_5-2B", "full"): _v35(_V35.format(size="2b"), 8e-5, 0.0),
    ("InternVL3_5-4B", "full"): _v35(_V35.format(size="4b"), 8e-5, 0.0),
    ("InternVL3_5-8B", "full"): _v35(_V35.format(size="8b"), 8e-5, 0.1),
    ("InternVL3_5-14B", "full"): _v35(_V35.format(size="14b"), 8e-5, 0.1),
    ("InternVL3_5-38B", "full"): _v35(_V35.format(size="38b"), 8e-5, 0.4),
    ("InternVL3_5-30B-A3B", "full"): _v35(_V35.format(size="30b"), 8e-5, 0.1),
    ("InternVL3_5-241B-A28B", "full"): _v35(_V35.format(size="241b"), 2e-5, 0.4),
    ("InternVL3_5-GPT-OSS-20B-A4B-Preview", "full"): _v35(_V35_GPT_OSS, 8e-5, 0.1),
    # §8.3 InternVL 2.5: full and LoRA (rank 16 on the LLM).
    ("InternVL2_5-1B", "full"): _v25("1B", "full", 8, 4, 4, 4e-5, 0.01, Z1, 0.1),
    ("InternVL2_5-1B", "lora"): _v25("1B", "lora", 2, 4, 2, 4e-5, 0.01, Z1, 0.0),
    ("InternVL2_5-2B", "full"): _v25("2B", "full", 8, 4, 4, 4e-5, 0.01, Z1, 0.1),
    ("InternVL2_5-2B", "lora"): _v25("2B", "lora", 2, 4, 2, 4e-5, 0.01, Z1, 0.0),
    ("InternVL2_5-4B", "full"): _v25("4B", "full", 8, 4, 4, 4e-5, 0.01, Z1, 0.1),
    ("InternVL2_5-4B", "lora"): _v25("4B", "lora", 2, 4, 2, 4e-5, 0.01, Z1, 0.0),
    ("InternVL2_5-8B", "full"): _v25("8B", "full", 8, 4, 4, 4e-5, 0.05, Z1, 0.1),
    ("InternVL2_5-8B", "lora"): _v25("8B", "lora", 2, 4, 2, 4e-5, 0.05, Z1, 0.0),
    ("InternVL2_5-26B", "full"): _v25("26B", "full", 8, 2, 8, 2e-5, 0.05, Z3, 0.4),
    ("InternVL2_5-26B", "lora"): _v25("26B", "lora", 2, 2, 4, 2e-5, 0.05, Z3, 0.0),
    ("InternVL2_5-38B", "full"): _v25("38B", "full", 16, 2, 4, 2e-5, 0.05, Z3_34B, 0.4),
    ("InternVL2_5-38B", "lora"): _v25("38B", "lora", 2, 2, 4, 2e-5, 0.05, Z3_34B, 0.0),
    ("InternVL2_5-78B", "full"): _v25("78B", "full", 32, 1, 4, 2e-5, 0.05, Z3_100B, 0.4),
    ("InternVL2_5-78B", "lora"): _v25("78B", "lora", 8, 1, 2, 2e-5, 0.05, Z3_100B, 0.0),
}


def nearest_lora_recipe(model_name: str) -> str:
    """The InternVL 2.5 model whose LoRA script is nearest in size (by the ratio of totals)."""
    size = parse_size(CATALOG[model_name].card_total)
    candidates = [name for (name, method) in RECIPES if method == "lora"]
    return min(candidates, key=lambda name: abs(math.log(parse_size(CATALOG[name].card_total) / size)))


def recipe_for(model_name: str, method: Method) -> tuple[Recipe, list[str]]:
    """The recipe for a model and method, and notes when it is derived rather than published."""
    if (model_name, method) in RECIPES:
        return RECIPES[(model_name, method)], []
    source_name = nearest_lora_recipe(model_name)
    source = RECIPES[(source_name, "lora")]
    full = RECIPES[(model_name, "full")]
    derived = source.model_copy(
        update={"max_seq_length": full.max_seq_length, "max_tiles": full.max_tiles, "derived": True}
    )
    note = (
        f"{model_name} has no LoRA recipe: GPUs, batch layout, DeepSpeed config, learning rate and weight decay "
        f"follow {source_name}'s LoRA script ({source.script}); sequence and tile limits "
        f"({full.max_seq_length} tokens, {full.max_tiles} tiles) follow {model_name}'s full recipe"
    )
    return derived, [note]
