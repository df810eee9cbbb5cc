"""The operator image has no torch: importing the operator or the trainer's config must not load it."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


def operator_modules() -> list[str]:
    """Every module of the operator package, found on disk so that new ones are checked too."""
    package = REPO / "operator"
    return sorted(
        ".".join(path.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
        for path in (package / "internvl_operator").rglob("*.py")
    )


LIGHT_MODULES = [
    *operator_modules(),
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
