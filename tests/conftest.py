"""Shared test helpers: paths of the repository and its examples; the property tests' profile."""

import os
from pathlib import Path

import pytest
import yaml
from hypothesis import settings

# `make test` draws the same examples on every run, so a result can be reproduced; to look for new
# counterexamples, run with HYPOTHESIS_PROFILE=explore (random draws, more of them).
settings.register_profile("default", derandomize=True, deadline=None)
settings.register_profile("explore", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def load_example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / name).read_text())


@pytest.fixture
def lora_cr() -> dict:
    """The smallest realistic InternVLFinetune: a LoRA run with the recipe's defaults."""
    return load_example("lora-internvl3-8b.yaml")


@pytest.fixture
def full_cr() -> dict:
    """A full fine-tune that sets most fields explicitly."""
    return load_example("full-internvl2_5-26b.yaml")
