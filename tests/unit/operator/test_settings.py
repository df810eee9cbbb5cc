"""Operator settings come from INTERNVL_OPERATOR_* variables, checked like any other input."""

import pytest
from pydantic import ValidationError

from internvl_operator.settings import OperatorSettings


def test_defaults_without_environment():
    settings = OperatorSettings()
    assert settings.image_pull_policy == "IfNotPresent"
    assert settings.trainer_image.startswith("ghcr.io/internvl-finetune/trainer:")
    assert settings.default_credentials_secret is None


def test_environment_overrides_fields(monkeypatch):
    monkeypatch.setenv("INTERNVL_OPERATOR_TRAINER_IMAGE", "registry.local/trainer:dev")
    monkeypatch.setenv("INTERNVL_OPERATOR_CPU_PER_GPU", "12")
    settings = OperatorSettings()
    assert (settings.trainer_image, settings.cpu_per_gpu) == ("registry.local/trainer:dev", 12)
    assert OperatorSettings(cpu_per_gpu=4).cpu_per_gpu == 4, "explicit values (flags) win"


def test_a_bad_value_names_the_field(monkeypatch):
    monkeypatch.setenv("INTERNVL_OPERATOR_IMAGE_PULL_POLICY", "Sometimes")
    with pytest.raises(ValidationError, match="image_pull_policy"):
        OperatorSettings()
