"""The S3 client settings and credential hygiene, without a server."""

from __future__ import annotations

import logging
import os
import pickle

import pytest

from internvl_trainer.config import StorageConfig
from internvl_trainer.storage import Storage
from internvl_trainer.storage.client import RedactCredentials, botocore_config, install_redaction, redact_url

SECRET = "secret-" + os.urandom(6).hex()
TOKEN = "token-" + os.urandom(6).hex()
ACCESS = "AKIDUNIT" + os.urandom(4).hex().upper()


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


def test_client_follows_the_config(credentials):
    config = StorageConfig(endpoint="http://minio.local:9000", region="eu-west-1", addressing_style="path")
    client = Storage(config).client()
    assert client.meta.endpoint_url == "http://minio.local:9000"
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.s3["addressing_style"] == "path"
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 8}


def test_retry_settings_from_the_environment_win(credentials, monkeypatch):
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    assert botocore_config(StorageConfig()).retries is None
    client = Storage(StorageConfig()).client()
    assert client.meta.config.retries["mode"] == "adaptive"
    assert client.meta.config.retries["total_max_attempts"] == 3


def test_one_client_per_process_and_none_in_a_pickle(credentials):
    storage = Storage(StorageConfig(endpoint="http://127.0.0.1:1"))
    client = storage.client()
    assert storage.client() is client
    data = pickle.dumps(storage)
    for secret in (SECRET, TOKEN, ACCESS):
        assert secret.encode() not in data
    copy = pickle.loads(data)
    assert copy.client() is not client
    assert copy.config == storage.config


def test_repr_shows_no_credentials(credentials):
    # StorageConfig refuses such an endpoint; a client built from one anyway still never shows it.
    storage = Storage(StorageConfig.model_construct(endpoint="https://user:pa55word@s3.example.com"))
    storage.client()
    text = repr(storage) + repr(storage._clients)
    assert "pa55word" not in text and "user" not in text
    assert "***@s3.example.com" in text
    for secret in (SECRET, TOKEN, ACCESS):
        assert secret not in text


def test_redact_url():
    assert redact_url("http://a:b@host:9000/x") == "http://***@host:9000/x"
    assert redact_url("http://host:9000") == "http://host:9000"
    assert redact_url(None) is None


@pytest.mark.parametrize(
    "message",
    [
        f"x-amz-security-token:{TOKEN}\nhost:example",
        f"headers={{'X-Amz-Security-Token': b'{TOKEN}', 'Authorization': b'AWS4-HMAC-SHA256 Credential={ACCESS}/2026"
        "/us-east-1/s3/aws4_request'}",
        f"https://bkt.s3.amazonaws.com/k?X-Amz-Credential={ACCESS}%2F2026&X-Amz-Security-Token={TOKEN}&X-Amz-Date=1",
        f"<Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>{ACCESS}</AWSAccessKeyId></Error>",
    ],
)
def test_library_debug_records_are_redacted(message):
    record = logging.LogRecord("botocore.endpoint", logging.DEBUG, __file__, 1, "%s", (message,), None)
    assert RedactCredentials().filter(record)
    assert TOKEN not in record.getMessage() and ACCESS not in record.getMessage()
    assert "***" in record.getMessage()


def test_redaction_is_installed_on_boto_loggers(credentials, caplog):
    Storage(StorageConfig()).client()
    install_redaction()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("botocore.auth").debug("CanonicalRequest:\nx-amz-security-token:%s", TOKEN)
    assert TOKEN not in caplog.text
    assert "x-amz-security-token:***" in caplog.text
