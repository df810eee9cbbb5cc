"""The experiment trackers without a server: train.yaml's tracking section and its errors, the run's
name and parameters, the checks before training, a tracker that fails after them (a
warning, never the run), and no tracker library imported when the section is unset. The whole run
against a real MLflow server and W&B offline is tests/integration/test_tracking.py."""

from __future__ import annotations

import http.server
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from internvl_trainer.config import TrainConfig
from internvl_trainer.problems import BadInput
from internvl_trainer.storage import Storage
from internvl_trainer.train.preflight import check_tracking
from internvl_trainer.train.publish import Published
from internvl_trainer.train.tracking import MlflowTracker, flat_parameters, open_trackers, run_name
from tests.conftest import REPO
from tests.unit.trainer.train.runs import train_config


def config_with(tracking: dict | None, **sections) -> TrainConfig:
    extra = {"tracking": tracking} if tracking is not None else {}
    return train_config("/models/base", "/data/meta.json", "/out", method="lora", **extra, **sections)


# ---------------------------------------------------------------------------------------------
# train.yaml


@pytest.mark.parametrize(
    ("tracking", "location"),
    [
        ({"mlflow": {"trackingUri": "http://u:p@mlflow:5000", "experiment": "x"}}, ("mlflow", "trackingUri")),
        ({"mlflow": {"trackingUri": "http://mlflow:5000"}}, ("mlflow", "experiment")),
        ({"mlflow": {"trackingUri": "http://mlflow:5000", "experiment": "x", "credentialsSecret": "s"}}, ("mlflow",)),
        ({"wandb": {"project": "a:b"}}, ("wandb", "project")),
        ({"wandb": {"project": "vlm", "apiKeySecret": "wandb"}}, ("wandb",)),
    ],
)
def test_a_bad_tracking_section_names_its_field(tracking, location):
    with pytest.raises(ValidationError) as refused:
        config_with(tracking)
    [error] = refused.value.errors()
    assert error["loc"][: len(location) + 1] == ("tracking", *location), error


def test_the_run_is_named_after_the_object_and_attempt():
    config = config_with(None)
    assert run_name(config, {"INTERNVL_ATTEMPT": "3"}) == "tiny-attempt-3"
    assert run_name(config, {}) == "tiny"


def test_parameters_are_train_yaml_flattened():
    config = config_with(None, deepspeed={"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}})
    flat = flat_parameters(config)
    assert flat["training.learningRate"] == "0.002" and flat["training.maxSteps"] == "40"
    assert flat["method.type"] == "lora" and flat["method.lora.rank"] == "8"
    assert flat["data.packing"] == "false" and flat["output.layouts"] == '["hf"]'
    assert flat["deepspeed.zero_optimization.offload_param.device"] == "cpu"
    assert flat["batch.perDeviceBatchSize"] == "4" and flat["run.uid"] == "uid-1"
    assert all(isinstance(value, str) for value in flat.values())


# ---------------------------------------------------------------------------------------------
# preflight


@pytest.fixture
def no_retries(monkeypatch):
    """MLflow's client asks once (its default retries ride out a restarting server for minutes)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


@pytest.fixture
def refusing_server() -> Iterator[str]:
    """A loopback HTTP server that answers every request 401, as a server with authentication
    answers a client without credentials."""

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"error_code": "UNAUTHENTICATED", "message": "credentials required"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def refusal(config: TrainConfig) -> list[str]:
    with pytest.raises(BadInput) as refused:
        check_tracking(config)
    return [str(problem) for problem in refused.value.problems]


def test_an_mlflow_server_that_does_not_answer_names_the_tracking_uri(no_retries):
    from internvl_trainer.storage.local_server import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    [problem] = refusal(config_with({"mlflow": {"trackingUri": uri, "experiment": "x"}}))
    assert problem.startswith(f"tracking.mlflow.trackingUri: {uri}: API request to {uri}/api/"), problem


def test_an_mlflow_server_refusing_the_credentials_names_them(no_retries, refusing_server):
    [problem] = refusal(config_with({"mlflow": {"trackingUri": refusing_server, "experiment": "x"}}))
    assert problem.startswith("tracking.mlflow.credentials: the MLflow server refused the credentials"), problem


def test_an_mlflow_server_that_answers_passes(tmp_path):
    check_tracking(config_with({"mlflow": {"trackingUri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "x"}}))


def test_wandb_online_needs_an_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    config = config_with({"wandb": {"project": "vlm"}})
    assert refusal(config) == [
        "tracking.wandb.credentials: no WANDB_API_KEY in the environment"
        " (in a cluster: the Secret tracking.wandb.apiKeySecret)"
    ]
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_tracking(config)
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    check_tracking(config)
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / "netrc").write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    check_tracking(config)  # the key `wandb login` saved


# ---------------------------------------------------------------------------------------------
# failures after the checks


def test_an_mlflow_server_lost_during_the_run_costs_its_records_only(tmp_path, no_retries, caplog):
    from mlflow import MlflowClient

    from internvl_trainer.storage.local_server import free_port

    config = config_with({"mlflow": {"trackingUri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "x"}})
    [tracker] = open_trackers(config, {"INTERNVL_ATTEMPT": "1"}, Storage())
    assert isinstance(tracker, MlflowTracker)
    stored = tracker.client
    tracker.client = MlflowClient(f"http://127.0.0.1:{free_port()}")  # the server went away
    state = type("State", (), {"global_step": 1})()
    with caplog.at_level(logging.WARNING, logger="internvl_trainer.train.tracking"):
        tracker.on_log(None, state, None, logs={"loss": 2.5})
        tracker.finish(Published("/out/model", "/out/manifest.json", {}, {}))
    warnings = [record.getMessage() for record in caplog.records if record.name == "internvl_trainer.train.tracking"]
    assert [warning.split(": ")[1] for warning in warnings] == [
        "metrics not recorded",
        "the published model not recorded",
        "the end of the run not recorded",
    ]
    assert stored.get_run(tracker.run_id).info.run_name == "tiny-attempt-1"


def test_an_mlflow_server_that_starts_no_run_leaves_the_run_without_it(no_retries, caplog):
    from internvl_trainer.storage.local_server import free_port

    config = config_with({"mlflow": {"trackingUri": f"http://127.0.0.1:{free_port()}", "experiment": "x"}})
    with caplog.at_level(logging.WARNING, logger="internvl_trainer.train.tracking"):
        assert open_trackers(config, {}, Storage()) == []
    assert "MLflow did not start a run, the run goes on without it" in caplog.text


def test_a_finished_mlflow_run_carries_the_model_and_no_failure(tmp_path):
    config = config_with({"mlflow": {"trackingUri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "x"}})
    [tracker] = open_trackers(config, {}, Storage())
    tracker.finish(Published("/out/model", "/out/manifest.json", {}, {}))
    run = tracker.client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["internvl.modelUri"] == "/out/model"
    assert run.data.tags["internvl.manifestUri"] == "/out/manifest.json"
    assert len(run.data.params) == len(flat_parameters(config))


UNFINISHED = """
import sys
from internvl_trainer.storage import Storage
from internvl_trainer.train.tracking import open_trackers
from tests.unit.trainer.train.runs import train_config
tracking = {"mlflow": {"trackingUri": sys.argv[1], "experiment": "x"}}
config = train_config("/models/base", "/data/meta.json", "/out", tracking=tracking)
[tracker] = open_trackers(config, {}, Storage())
print(tracker.run_id)
raise SystemExit(1)
"""


def test_a_run_the_process_left_unfinished_is_failed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = subprocess.run(
        [sys.executable, "-c", UNFINISHED, uri], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr[-3000:]
    from mlflow import MlflowClient

    assert MlflowClient(uri).get_run(done.stdout.split()[-1]).info.status == "FAILED"


# ---------------------------------------------------------------------------------------------
# imports


# Records which module first imports each tracker library: an audit hook sees every import
# statement, and the importer is the first frame outside the import machinery.
NO_TRACKER_IMPORTED = """
import json
import sys
from pathlib import Path

importers = {}


def record(event, args):
    if event == "import" and args[0] in ("mlflow", "wandb") and args[0] not in importers:
        frame = sys._getframe(1)
        while frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        importers[args[0]] = frame.f_code.co_filename


sys.addaudithook(record)
from internvl_trainer.train.run import run
from tests.unit.trainer.train.runs import train_config

model, meta, out = sys.argv[1:4]
config = train_config(model, meta, out, method="lora", steps=2)
assert config.tracking is None
run(config, environ={}, scratch=Path(out).parent / "scratch")
print(json.dumps(importers))
"""


def test_a_run_without_tracking_imports_no_tracker(tmp_path, tiny_model_dir, pictures):
    arguments = [str(tiny_model_dir), str(pictures), str(tmp_path / "out")]
    done = subprocess.run(
        [sys.executable, "-c", NO_TRACKER_IMPORTED, *arguments], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out/manifest.json").is_file()
    importers = json.loads(done.stdout.splitlines()[-1])
    # DeepSpeed's autotuner imports MLflow wherever it is installed, whatever the run asks; nothing
    # else may, W&B not at all.
    assert set(importers) <= {"mlflow"}, importers
    assert all("/deepspeed/" in importer for importer in importers.values()), importers


def test_a_wandb_run_that_fails_to_finish_costs_only_its_records(monkeypatch, caplog):
    import wandb

    from internvl_trainer.train.tracking import WandbTracker

    tracker = WandbTracker.__new__(WandbTracker)  # the callback's own set-up needs a live run
    tracker._wandb = wandb

    class Run:
        summary: dict = {}

    def unreachable():
        raise wandb.Error("the W&B service is gone")

    monkeypatch.setattr(wandb, "run", Run())
    monkeypatch.setattr(wandb, "finish", unreachable)
    with caplog.at_level(logging.WARNING, "internvl_trainer.train.tracking"):
        tracker.finish(Published("s3://b/model", "s3://b/model/manifest.json", {}, {}))
    assert "W&B did not record the end of the run: the W&B service is gone" in caplog.text
    assert Run.summary == {"modelUri": "s3://b/model", "manifestUri": "s3://b/model/manifest.json"}
