"""Storage that can never work is bad input, found before anything is downloaded or trained, on a
real S3 server: refused credentials name ``storage.credentials``, a missing bucket or an empty
base-model prefix the field that points there; ``internvl-train run`` exits 2 with that one line."""

from __future__ import annotations

import pytest

from internvl_trainer.cli import main
from internvl_trainer.config import dump_train_config
from tests.unit.trainer.train.runs import train_config

pytestmark = pytest.mark.integration


@pytest.fixture
def run_with(s3_server, base, tmp_path, capsys, monkeypatch):
    """``internvl-train run`` on a train.yaml with these weights and output; returns the exit
    code and standard error."""
    monkeypatch.setenv("INTERNVL_SCRATCH", str(tmp_path / "scratch"))

    def run(weights: str, output: str) -> tuple[int, str]:
        config = train_config(
            weights, f"{base}/data/meta.json", output, storage=s3_server.storage_config().model_dump()
        )
        path = tmp_path / "train.yaml"
        path.write_text(dump_train_config(config))
        capsys.readouterr()
        code = main(["run", "--config", str(path)])
        return code, capsys.readouterr().err

    return run


@pytest.mark.parametrize(
    ("variable", "value", "code"),
    [
        ("AWS_SECRET_ACCESS_KEY", "not-the-secret", "SignatureDoesNotMatch"),
        ("AWS_ACCESS_KEY_ID", "AKIDUNKNOWN", "InvalidAccessKeyId"),
    ],
)
def test_refused_credentials_name_storage_credentials(run_with, storage, base, monkeypatch, variable, value, code):
    storage.write_bytes(f"{base}/model/config.json", b"{}")
    monkeypatch.setenv(variable, value)
    assert run_with(f"{base}/model", f"{base}/out") == (
        2,
        f"storage.credentials: the object store refused the credentials of the environment ({code})\n",
    )


def test_an_empty_base_model_prefix_names_model_weights(run_with, base):
    assert run_with(f"{base}/model", f"{base}/out") == (
        2,
        f"model.weights: {base}/model: no objects under this prefix\n",
    )


def test_a_missing_bucket_names_the_field_that_points_there(run_with, storage, base):
    assert run_with("s3://no-such-bucket-0/model", f"{base}/out") == (
        2,
        "model.weights: s3://no-such-bucket-0/model: The specified bucket does not exist (NoSuchBucket)\n",
    )
    storage.write_bytes(f"{base}/model/config.json", b"{}")
    assert run_with(f"{base}/model", "s3://no-such-bucket-0/out") == (
        2,
        "output.uri: s3://no-such-bucket-0/out: The specified bucket does not exist (NoSuchBucket)\n",
    )


def test_the_write_probe_leaves_nothing_behind(run_with, storage, base):
    """A run that passes the checks goes on (here to a base model that is not one), with nothing
    left of the probe."""
    storage.write_bytes(f"{base}/model/config.json", b"{}")
    code, err = run_with(f"{base}/model", f"{base}/out")
    assert code == 2 and err.startswith("model.weights: ") and "config.json" in err
    assert list(storage.list(f"{base}/out")) == []
