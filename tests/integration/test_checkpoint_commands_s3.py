"""``internvl-train merge`` and ``export`` on S3 checkpoints: a checkpoint without its manifest.json
(an upload that did not finish) is refused with exit 2 naming it, as resume refuses it; one with
its manifest goes on to the command's own checks."""

from __future__ import annotations

import pytest

from internvl_trainer.cli import main
from internvl_trainer.config import dump_train_config
from tests.unit.trainer.train.runs import train_config

pytestmark = pytest.mark.integration


@pytest.fixture
def config_file(s3_server, base, tmp_path):
    """A train.yaml naming the server (the commands take the object store from it)."""
    config = train_config(
        f"{base}/base", f"{base}/meta.json", f"{base}/out", storage=s3_server.storage_config().model_dump()
    )
    path = tmp_path / "train.yaml"
    path.write_text(dump_train_config(config))
    return str(path)


@pytest.mark.parametrize("command", ["merge", "export"])
def test_a_checkpoint_without_its_manifest_is_refused(command, storage, base, tmp_path, config_file, capsys):
    checkpoint = f"{base}/runs/uid-1/checkpoints/checkpoint-4"
    storage.write_bytes(f"{checkpoint}/adapter_config.json", b"{}")  # the rest never arrived
    assert main([command, "--checkpoint", checkpoint, "--hf", str(tmp_path / "out"), "--config", config_file]) == 2
    assert capsys.readouterr().err == (
        f"--checkpoint: {checkpoint}: incomplete, no manifest.json"
        " (written last by every upload: this one did not finish)\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_complete_checkpoint_goes_on_to_the_commands_own_checks(storage, base, tmp_path, config_file, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full/config.json").write_text("{}")
    storage.upload(tmp_path / "full", f"{base}/full")  # with its manifest, written last
    assert main(["merge", "--checkpoint", f"{base}/full", "--hf", str(tmp_path / "out"), "--config", config_file]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
