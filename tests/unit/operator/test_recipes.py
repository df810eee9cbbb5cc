"""The recipes' defaults that the trainer applies too come from one place."""

from __future__ import annotations

import pytest

from internvl_operator.recipes import recipe_for
from internvl_trainer.config import MODEL_NAMES, LoraConfig, recipe_limits


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("method", ["full", "lora"])
def test_every_recipe_has_the_limits_and_rank_the_trainer_defaults_to(name, method):
    recipe, _ = recipe_for(name, method)
    assert (recipe.max_seq_length, recipe.max_tiles) == recipe_limits(name)
    assert recipe.lora_rank == (LoraConfig().rank if method == "lora" else None)


def test_the_families_limits_are_internvls():
    assert recipe_limits("InternVL2_5-26B") == (8192, 6)
    assert recipe_limits("InternVL3-14B") == (16384, 12)
    assert recipe_limits("InternVL3_5-14B") == (32768, 12)  # the SFT scripts' --max_seq_length 32768
    assert recipe_limits("InternVL3_5-GPT-OSS-20B-A4B-Preview") == (32768, 12)


def test_internvl3_5_lora_follows_the_nearest_internvl2_5_lora_script_with_its_familys_limits():
    recipe, [note] = recipe_for("InternVL3_5-30B-A3B", "lora")
    assert recipe.script == "internvl2.5/2nd_finetune/internvl2_5_26b_dynamic_res_2nd_finetune_lora.sh"
    assert (recipe.derived, recipe.trains_vision, recipe.max_seq_length) == (True, False, 32768)
    assert note.startswith("InternVL3_5-30B-A3B has no LoRA recipe")
    largest, _ = recipe_for("InternVL3_5-241B-A28B", "lora")
    assert largest.script.endswith("internvl2_5_78b_dynamic_res_2nd_finetune_lora.sh")
