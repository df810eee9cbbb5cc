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
