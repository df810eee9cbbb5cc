"""The storage layer stays light: importing it loads no torch (nor the other heavy libraries)."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize("module", ["internvl_trainer.storage", "internvl_trainer.storage.local_server"])
def test_storage_imports_without_torch(module):
    code = (
        f"import sys, {module}\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'deepspeed', 'peft', 'numpy') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "", f"{module} imported {result.stdout.strip()}"
