"""The cluster commands of README.md and docs/user-guide.md, word for word, against the cluster of
KUBECONFIG; tests/unit/test_docs.py checks that every one of them is here.

The README installs the operator with Helm and fine-tunes examples/lora-internvl3-8b.yaml in the
namespace ``ml``, so the walkthrough runs only

- with ``E2E_OPERATOR=installed``: an operator installed by Helm as the release
  ``internvl-operator`` in ``internvl-system``, as hack/kind-e2e.sh installs it. The README's
  ``helm upgrade --install`` then changes that release, keeping the values it was installed with
  (``--reuse-values``: its image) and waiting for the rollout;
- and when the namespace ``ml`` does not exist yet: the walkthrough creates it and deletes it at
  the end, and must not touch objects that are not its own.

A real training run needs GPUs and the trainer image. As the other e2e tests do, the walkthrough
plays the end of training (it marks the job Succeeded), and the bucket the README downloads from
is a local S3 server on port 9000, where the README's port-forward would put the cluster's MinIO,
holding what a run publishes: the model with its manifests, and the run's data report. That part
needs the aws CLI and a free port 9000.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from internvl_operator.launchers import LAUNCHERS
from tests.conftest import REPO
from tests.e2e.conftest import TIMEOUT, E2ECluster, played_status

pytestmark = pytest.mark.e2e

FINETUNE = "internvl.dev/v1alpha1"
NAMESPACE = "ml"  # the examples' namespace
NAME = "charts-lora"

# README: install on a cluster
INSTALL = r"""
helm upgrade --install internvl-operator charts/internvl-operator -n internvl-system --create-namespace \
  --set settings.defaultStorageEndpoint=http://minio.minio.svc:9000
"""
# README: fine-tune
CREATE_NAMESPACE = "kubectl create namespace ml"
CREATE_SECRET = r"""
kubectl -n ml create secret generic s3-credentials \
  --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"
"""
APPLY = "kubectl apply -f examples/lora-internvl3-8b.yaml"
# README: watch it
WATCH = "kubectl -n ml get ivft -w"
WAIT = "kubectl -n ml wait --for=condition=Succeeded ivft/charts-lora --timeout=24h"
DESCRIBE = "kubectl -n ml describe ivft charts-lora"
# README: troubleshooting
PODS = "kubectl -n ml get pods -l app.kubernetes.io/instance=charts-lora"
LOGS = "kubectl -n ml logs -l app.kubernetes.io/instance=charts-lora --tail=100"
# user guide: planning; restarts, suspend and resume; outputs
PLAN = "kubectl -n ml get ivft charts-lora -o jsonpath='{.status.plan}'"
EXPLAIN = "kubectl explain internvlfinetune.spec.resources"
SUSPEND = """kubectl -n ml patch ivft charts-lora --type merge -p '{"spec":{"suspend":true}}'"""
RESUME = """kubectl -n ml patch ivft charts-lora --type merge -p '{"spec":{"suspend":false}}'"""
OUTPUT = "kubectl -n ml get ivft charts-lora -o jsonpath='{.status.output}'"
# README: get the model; the data report
MANIFEST = "aws --endpoint-url http://localhost:9000 s3 cp s3://models/finetuned/charts-lora/manifest.json -"
DOWNLOAD = r"""
aws --endpoint-url http://localhost:9000 s3 cp --recursive s3://models/finetuned/charts-lora/model charts-lora-model
"""
DATA_REPORT = r"""
aws --endpoint-url http://localhost:9000 s3 cp \
  "s3://models/finetuned/charts-lora/runs/$(kubectl -n ml get ivft charts-lora \
  -o jsonpath='{.metadata.uid}')/data-report.json" -
"""

# Pods that exist but have not started give no logs yet; that is what the README's pods show here.
NOT_STARTED = ("waiting to start", "does not have a host assigned", "PodInitializing", "ContainerCreating")


@dataclass
class Walkthrough:
    e2e: E2ECluster
    env: dict[str, str]
    created_namespace: bool = False
    uid: str | None = None

    def run(self, command: str, *, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = TIMEOUT):
        """Run a documented command in bash (the reader's shell); fail unless it exits 0."""
        result = self.run_any(command, cwd=cwd, env=env, timeout=timeout)
        assert result.returncode == 0, f"`{command.strip()}` exited {result.returncode}: {result.stderr}"
        return result

    def run_any(self, command: str, *, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = TIMEOUT):
        return subprocess.run(
            ["bash", "-c", command], cwd=cwd, env=env or self.env, capture_output=True, text=True, timeout=timeout
        )

    def conditions(self) -> dict[str, dict]:
        obj = self.e2e.client.get(FINETUNE, "InternVLFinetune", NAMESPACE, NAME) or {}
        return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}

    def wait_condition(self, type_: str, status: str) -> None:
        self.e2e.wait_for(lambda: self.conditions().get(type_, {}).get("status") == status, f"{type_}={status}")


@pytest.fixture(scope="module")
def walkthrough(e2e: E2ECluster) -> Iterator[Walkthrough]:
    if os.environ.get("E2E_OPERATOR", "inprocess") != "installed":
        pytest.skip("the README installs the operator with Helm: run with E2E_OPERATOR=installed (hack/kind-e2e.sh)")
    for tool in ("kubectl", "helm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH")
    if e2e.client.get("v1", "Namespace", None, NAMESPACE) is not None:
        pytest.skip(f"the namespace {NAMESPACE} exists: the README's commands would act on objects not the suite's")
    credentials = {
        "AWS_ACCESS_KEY_ID": "AKIDREADME" + secrets.token_hex(5).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
    }
    state = Walkthrough(e2e, {**os.environ, **credentials})
    try:
        yield state
    finally:
        if state.created_namespace:
            e2e.client.delete("v1", "Namespace", None, NAMESPACE)


def test_the_readme_installs_the_operator_with_helm(walkthrough: Walkthrough):
    status = walkthrough.run_any("helm status internvl-operator -n internvl-system")
    if status.returncode != 0:
        pytest.skip("no Helm release internvl-operator in internvl-system to upgrade")
    walkthrough.run(INSTALL.strip() + " --reuse-values --wait --timeout 300s", timeout=360)
    deployments = walkthrough.run("kubectl -n internvl-system get deployments -o yaml").stdout
    assert "http://minio.minio.svc:9000" in deployments


def _watch_until(walkthrough: Walkthrough, command: str, text: str, log: Path) -> str:
    """Start a command that never ends by itself (``get -w``), read until ``text`` shows, stop it."""
    with log.open("w") as handle:
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=REPO,
            env=walkthrough.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while text not in log.read_text():
            assert process.poll() is None, f"`{command}` ended: {log.read_text()}"
            assert time.monotonic() < deadline, f"`{command}` never printed {text!r}: {log.read_text()}"
            time.sleep(0.5)
        return log.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(TIMEOUT)


def test_the_readme_fine_tunes_the_example(walkthrough: Walkthrough, tmp_path):
    e2e = walkthrough.e2e
    walkthrough.run(CREATE_NAMESPACE)
    walkthrough.created_namespace = True
    walkthrough.run(CREATE_SECRET)
    secret = json.loads(walkthrough.run("kubectl -n ml get secret s3-credentials -o json").stdout)
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert "charts-lora created" in walkthrough.run(APPLY).stdout
    walkthrough.wait_condition("JobCreated", "True")
    walkthrough.uid = e2e.client.get(FINETUNE, "InternVLFinetune", NAMESPACE, NAME)["metadata"]["uid"]

    listing = _watch_until(walkthrough, WATCH, NAME, tmp_path / "watch.log")
    assert "MODEL" in listing and "InternVL3-8B" in listing
    assert "Planned" in walkthrough.run(DESCRIBE).stdout
    walkthrough.run(PODS)
    logs = walkthrough.run_any(LOGS)
    assert logs.returncode == 0 or any(cause in logs.stderr for cause in NOT_STARTED), logs.stderr
    assert json.loads(walkthrough.run(PLAN).stdout)["gpus"] == 2
    assert "gpuMemoryGiB" in walkthrough.run(EXPLAIN).stdout

    walkthrough.run(SUSPEND)
    walkthrough.wait_condition("Suspended", "True")
    walkthrough.run(RESUME)
    walkthrough.wait_condition("Suspended", "False")

    # The end of training, played: the job succeeds (a real one needs GPUs and the trainer image).
    job = e2e.client.get(FINETUNE, "InternVLFinetune", NAMESPACE, NAME)["status"]["job"]
    [launcher] = [launcher for launcher in LAUNCHERS.values() if launcher.kind == job["kind"]]
    if launcher.name not in e2e.played:
        pytest.skip(f"a real {launcher.kind} controller runs here: the end of training needs GPUs and the trainer")
    e2e.client.patch(
        launcher.api_version,
        launcher.kind,
        NAMESPACE,
        job["name"],
        {"status": played_status(launcher, "succeeded")},
        subresource="status",
    )
    walkthrough.run(WAIT)
    # Set by the operator from spec.output once the job succeeded (docs/contract.md §4).
    output = json.loads(walkthrough.run(OUTPUT).stdout)
    assert output == {
        "modelUri": "s3://models/finetuned/charts-lora/model",
        "manifestUri": "s3://models/finetuned/charts-lora/manifest.json",
    }


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _publish(storage, uid: str, folder: Path) -> None:
    """What a run publishes under the output URI: the model with its manifest, the root manifest
    last, and the run's data report."""
    from internvl_trainer.storage import FileEntry, Manifest

    output = "s3://models/finetuned/charts-lora"
    (folder / "config.json").write_text(json.dumps({"model_type": "internvl"}))
    (folder / "model.safetensors").write_bytes(os.urandom(4096))
    storage.write_bytes(f"{output}/runs/{uid}/data-report.json", json.dumps({"badSamples": {"skipped": 0}}).encode())
    model = storage.upload(folder, f"{output}/model")
    entries = [FileEntry(path=f"model/{e.path}", size=e.size, sha256=e.sha256) for e in model.files]
    storage.write_bytes(f"{output}/manifest.json", Manifest(files=entries).to_json())


def test_the_readme_downloads_the_model(walkthrough: Walkthrough, tmp_path, monkeypatch):
    if walkthrough.uid is None:
        pytest.skip("the walkthrough did not get as far as a finished run")
    if shutil.which("aws") is None:
        pytest.skip("the aws CLI is not on PATH")
    if not _port_free(9000):
        pytest.skip("port 9000 is taken (the README's port-forward would use it)")
    from internvl_trainer.storage import Storage
    from internvl_trainer.storage.local_server import LocalS3Server

    env = {
        **walkthrough.env,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "absent"),
    }
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.setenv(name, env[name])
    server = LocalS3Server(
        tmp_path / "s3",
        port=9000,
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    with server:
        server.create_bucket("models")
        (tmp_path / "published").mkdir()
        _publish(Storage(server.storage_config()), walkthrough.uid, tmp_path / "published")
        download = tmp_path / "reader"
        download.mkdir()

        manifest = json.loads(walkthrough.run(MANIFEST, cwd=download, env=env).stdout)
        assert {entry["path"] for entry in manifest["files"]} == {"model/config.json", "model/model.safetensors"}
        walkthrough.run(DOWNLOAD, cwd=download, env=env)
        model = download / "charts-lora-model"
        for entry in json.loads((model / "manifest.json").read_text())["files"]:
            assert hashlib.sha256((model / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
        report = json.loads(walkthrough.run(DATA_REPORT, cwd=download, env=env).stdout)
        assert report["badSamples"]["skipped"] == 0
