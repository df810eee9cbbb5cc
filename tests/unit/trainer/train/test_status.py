"""Progress reaches the object's status as rate-limited merge patches; never the token in logs."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from internvl_trainer.train.status import StatusReporter


class Recorder(BaseHTTPRequestHandler):
    requests: list = []

    def do_PATCH(self):  # noqa: N802 - the http.server convention
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Recorder.requests.append((self.path, dict(self.headers), json.loads(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def api_server():
    Recorder.requests = []
    server = HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


PATH = "/apis/internvl.dev/v1alpha1/namespaces/ml/internvlfinetunes/charts/status"


def test_progress_is_a_merge_patch_with_the_token(api_server):
    reporter = StatusReporter(api_server + PATH, "secret-token", None)
    assert reporter.progress(step=50, total_steps=200, epoch=0.25, loss=1.5, samples_per_second=12.0, eta_seconds=600)
    [(path, headers, body)] = Recorder.requests
    assert path == PATH
    assert headers["Authorization"] == "Bearer secret-token"
    assert headers["Content-Type"] == "application/merge-patch+json"
    progress = body["status"]["progress"]
    assert {k: v for k, v in progress.items() if k != "updatedAt"} == {
        "step": 50,
        "totalSteps": 200,
        "percent": 25,
        "epoch": 0.25,
        "loss": 1.5,
        "samplesPerSecond": 12.0,
        "etaSeconds": 600,
    }
    assert "secret-token" not in repr(reporter)


def test_progress_is_rate_limited_but_the_final_report_always_goes(api_server):
    now = [0.0]
    reporter = StatusReporter(api_server + PATH, "t", None, interval=30, clock=lambda: now[0])
    assert reporter.progress(step=1, total_steps=10)
    now[0] = 10.0
    assert not reporter.progress(step=2, total_steps=10)
    now[0] = 31.0
    assert reporter.progress(step=3, total_steps=10)
    now[0] = 32.0
    assert reporter.progress(step=10, total_steps=10, final=True)
    assert [body["status"]["progress"]["step"] for _, _, body in Recorder.requests] == [1, 3, 10]


def test_checkpoints_and_the_held_out_loss_go_into_progress_only(api_server):
    # The rest of the status is the operator's: it derives status.output and reverts anything else.
    now = [0.0]
    reporter = StatusReporter(api_server + PATH, "t", None, interval=30, clock=lambda: now[0])
    assert reporter.progress(step=1, total_steps=10)
    uri = "s3://m/out/runs/u/checkpoints/checkpoint-100"
    assert reporter.results(latest_checkpoint_uri=uri, eval_loss=0.75), "never held back by the interval"
    assert reporter.results(eval_loss=0.5)
    assert [body for _, _, body in Recorder.requests[1:]] == [
        {"status": {"progress": {"latestCheckpointUri": uri, "evalLoss": 0.75}}},
        {"status": {"progress": {"evalLoss": 0.5}}},
    ]
    assert all(set(body["status"]) == {"progress"} for _, _, body in Recorder.requests)


def test_an_unreachable_api_server_never_fails_the_run():
    reporter = StatusReporter("http://127.0.0.1:9" + PATH, "t", None)
    assert reporter.progress(step=1, total_steps=2) is False


def test_from_environment(tmp_path):
    (tmp_path / "token").write_text("tok\n")
    env = {
        "INTERNVL_NAME": "charts",
        "INTERNVL_NAMESPACE": "ml",
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
    }
    reporter = StatusReporter.from_environment(env, tmp_path)
    assert repr(reporter) == f"StatusReporter('https://10.96.0.1:443{PATH}')"
    assert StatusReporter.from_environment({}, tmp_path) is None, "a laptop run has no reporter"
    assert StatusReporter.from_environment(env, tmp_path / "missing") is None
