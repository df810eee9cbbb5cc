"""The storage checks before a run trains, on local paths and on S3 answers given by the test (a
real server's refusals, credentials included, are in tests/integration/test_preflight_s3.py): an
output URI that cannot be written is bad input naming ``output.uri``; a writable one keeps
nothing of the probe; an answer a retry may change stays a failure."""

from __future__ import annotations

import pytest
from botocore.stub import Stubber

from internvl_trainer.config import StorageConfig
from internvl_trainer.problems import BadInput
from internvl_trainer.storage import Storage, StorageError
from internvl_trainer.train.preflight import check_storage
from tests.unit.trainer.train.runs import train_config


def test_an_output_uri_that_cannot_be_written_names_output_uri(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    config = train_config(str(tmp_path / "model"), str(tmp_path / "meta.json"), str(tmp_path / "file/out"))
    with pytest.raises(BadInput) as refused:
        check_storage(config, Storage(), rank=0)
    assert [str(problem) for problem in refused.value.problems] == [f"output.uri: {tmp_path}/file/out: Not a directory"]


def test_a_writable_output_keeps_nothing_of_the_probe(tmp_path):
    config = train_config(str(tmp_path / "model"), str(tmp_path / "meta.json"), str(tmp_path / "out"))
    check_storage(config, Storage(), rank=3)
    assert [path for path in (tmp_path / "out").rglob("*") if path.is_file()] == []


@pytest.fixture
def answers(monkeypatch):
    """Storage on an S3 endpoint whose answers the test gives (botocore's Stubber), in order."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    storage = Storage(StorageConfig(endpoint="http://127.0.0.1:9", addressing_style="path"))
    with Stubber(storage.client()) as stubber:
        yield storage, stubber
        stubber.assert_no_pending_responses()


def s3_config():
    return train_config("s3://models/base", "s3://data/meta.json", "s3://results/out")


def test_an_output_without_write_permission_names_output_uri(answers):
    storage, stubber = answers
    stubber.add_response("list_objects_v2", {"KeyCount": 1, "Contents": [{"Key": "base/config.json", "Size": 2}]})
    stubber.add_response("list_objects_v2", {"KeyCount": 0})
    stubber.add_client_error("put_object", "AccessDenied", "Access Denied", http_status_code=403)
    with pytest.raises(BadInput) as refused:
        check_storage(s3_config(), storage, rank=0)
    assert [str(problem) for problem in refused.value.problems] == [
        "output.uri: s3://results/out: Access Denied (AccessDenied)"
    ]


def test_an_answer_a_retry_may_change_is_not_bad_input(answers):
    """A 503 (after botocore's own retries) fails the attempt (exit 1), which the operator retries."""
    storage, stubber = answers
    stubber.add_client_error("list_objects_v2", "ServiceUnavailable", "Please retry", http_status_code=503)
    with pytest.raises(StorageError, match="ServiceUnavailable"):
        check_storage(s3_config(), storage, rank=0)
