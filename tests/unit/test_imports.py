"""The operator image has no torch: importing the operator or the trainer's config must not load it."""

import subprocess
import sys

import pytest

from tests.conftest import REPO

LIGHT_MODULES = [
    "internvl_operator.api",
    "internvl_operator.crd",
    "internvl_operator.validation",
    "internvl_operator.cli",
    "internvl_operator.apidocs",
    "internvl_trainer.config",
    "internvl_trainer.problems",
    "internvl_trainer.cli",
]


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_module_imports_without_torch(module):
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'deepspeed', 'peft') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "", f"{module} imported {result.stdout.strip()}"


def test_torch_is_installed_so_the_import_check_means_something():
    result = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    assert result.returncode == 0
