"""Experiment trackers: the run reported to the MLflow server or the Weights & Biases project a
team already runs, besides metrics.jsonl and TensorBoard.

train.yaml's ``tracking`` section names them; a tracker's library is imported only when its
section is set, and only the main process reports. Each attempt is one tracker run, named
``<run.name>-attempt-<n>`` (``INTERNVL_ATTEMPT``; plain ``<run.name>`` outside a cluster). Its
parameters are train.yaml, the plan's batch layout and DeepSpeed config included; its metrics are
what the Trainer logs at each logging step (loss, learning rate, gradient norm, held-out loss),
the numbers metrics.jsonl gets, at the same optimizer step; once the model is published, the run
carries the model's and the manifest's URIs.

- MLflow, through its own client (``MlflowClient``): parameters are train.yaml flattened to
  dotted keys (``training.learningRate``), values cut to MLflow's limit; the URIs are the tags
  ``internvl.modelUri`` and ``internvl.manifestUri``; with ``logArtifacts`` the model and its
  manifest are copied into the run's artifacts as well. transformers' ``MLflowCallback`` does not
  fit: it logs the Trainer's arguments and the model's config as the parameters (warning for each
  long value it drops), and it ends the run with training, before the model is published.
- Weights & Biases, through transformers' ``WandbCallback`` (metrics under ``train/`` and
  ``eval/`` against ``train/global_step``), on a run this module starts: named as above, grouped
  by the run's uid, train.yaml as its config; the URIs go to the run's summary.

What can be checked before any GPU time is spent (the MLflow server answers and takes the
credentials; W&B has an API key) is checked by ``train.preflight``. A tracker that fails after
that, starting its run included, costs its own records (a warning), never the run: the
checkpoints, metrics.jsonl and TensorBoard hold everything. An MLflow run still open when the
process exits (the attempt failed) is marked FAILED.
"""

from __future__ import annotations

import atexit
import json
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import WandbCallback
from transformers.utils import flatten_dict

from internvl_trainer.config import MlflowConfig, TrainConfig, WandbConfig
from internvl_trainer.storage import Storage
from internvl_trainer.train.publish import Published

log = logging.getLogger(__name__)

ATTEMPT_ENV = "INTERNVL_ATTEMPT"
MODEL_URI_TAG = "internvl.modelUri"
MANIFEST_URI_TAG = "internvl.manifestUri"


class Tracker(TrainerCallback):
    """One tracker's run of this attempt: a Trainer callback for the metrics, finished with the
    published model."""

    def finish(self, published: Published) -> None:
        raise NotImplementedError


def run_name(config: TrainConfig, environ: Mapping[str, str]) -> str:
    """The tracker run's name: the run's, with the attempt when the operator numbers them."""
    attempt = environ.get(ATTEMPT_ENV)
    return f"{config.run.name}-attempt-{attempt}" if attempt else config.run.name


def flat_parameters(config: TrainConfig) -> dict[str, str]:
    """train.yaml as dotted keys and text values (``training.learningRate: 0.0002``); lists and
    numbers as JSON writes them."""
    flat = flatten_dict(config.to_wire())
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in flat.items()}


def open_trackers(config: TrainConfig, environ: Mapping[str, str], storage: Storage) -> list[Tracker]:
    """Start a run in every tracker train.yaml names (call on the main process only)."""
    tracking = config.tracking
    started = [
        start_mlflow(tracking.mlflow, config, environ, storage) if tracking and tracking.mlflow else None,
        start_wandb(tracking.wandb, config, environ) if tracking and tracking.wandb else None,
    ]
    return [tracker for tracker in started if tracker is not None]


# ---------------------------------------------------------------------------------------------
# MLflow


class MlflowTracker(Tracker):
    """An MLflow run of this attempt, through MLflow's client."""

    def __init__(self, settings: MlflowConfig, config: TrainConfig, environ: Mapping[str, str], storage: Storage):
        from mlflow import MlflowClient
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        self.settings = settings
        self.storage = storage
        self.client = MlflowClient(settings.tracking_uri)
        experiment = self.client.get_experiment_by_name(settings.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(settings.experiment)
        attempt = environ.get(ATTEMPT_ENV)
        tags = {"internvl.uid": config.run.uid, **({"internvl.attempt": attempt} if attempt else {})}
        run = self.client.create_run(experiment_id, run_name=run_name(config, environ), tags=tags)
        self.run_id = run.info.run_id
        atexit.register(self._failed)
        params = [Param(key, value[:MAX_PARAM_VAL_LENGTH]) for key, value in flat_parameters(config).items()]
        self.client.log_batch(self.run_id, params=params)  # in batches of MLflow's size
        log.info("MLflow run %s in experiment %r at %s", self.run_id, settings.experiment, settings.tracking_uri)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, state.global_step)
            for key, value in (logs or {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
        if metrics:
            self._warn_on_failure("metrics", lambda: self.client.log_batch(self.run_id, metrics=metrics))

    def finish(self, published: Published) -> None:
        self._warn_on_failure("the published model", lambda: self._published(published))
        self._warn_on_failure("the end of the run", lambda: self.client.set_terminated(self.run_id, "FINISHED"))
        atexit.unregister(self._failed)

    def _published(self, published: Published) -> None:
        self.client.set_tag(self.run_id, MODEL_URI_TAG, published.model_uri)
        self.client.set_tag(self.run_id, MANIFEST_URI_TAG, published.manifest_uri)
        if not self.settings.log_artifacts:
            return
        with tempfile.TemporaryDirectory(prefix="mlflow-artifacts-") as folder:
            model = Path(folder) / "model"
            self.storage.download(published.model_uri, model)
            self.client.log_artifacts(self.run_id, str(model), "model")
            manifest = self.storage.read_bytes(published.manifest_uri).decode()
            self.client.log_text(self.run_id, manifest, "manifest.json")

    def _failed(self) -> None:
        """At exit, a run not finished: the attempt failed."""
        self._warn_on_failure("the failed run", lambda: self.client.set_terminated(self.run_id, "FAILED"))

    def _warn_on_failure(self, what: str, action: Callable[[], object]) -> None:
        from mlflow.exceptions import MlflowException

        try:
            action()
        except (MlflowException, OSError) as error:
            log.warning("MLflow run %s: %s not recorded: %s", self.run_id, what, error)


def start_mlflow(
    settings: MlflowConfig, config: TrainConfig, environ: Mapping[str, str], storage: Storage
) -> Tracker | None:
    """An MLflow run of this attempt; None (and a warning) when the server does not start one."""
    from mlflow.exceptions import MlflowException

    try:
        return MlflowTracker(settings, config, environ, storage)
    except (MlflowException, OSError) as error:
        log.warning("MLflow did not start a run, the run goes on without it: %s", error)
        return None


# ---------------------------------------------------------------------------------------------
# Weights & Biases


class WandbTracker(WandbCallback, Tracker):
    """transformers' W&B callback, on the run ``start_wandb`` started, finished with the
    published model."""

    def finish(self, published: Published) -> None:
        try:
            self._wandb.run.summary.update({"modelUri": published.model_uri, "manifestUri": published.manifest_uri})
            self._wandb.finish()
            # W&B's service process writes the run (its offline log, its uploads) behind the client;
            # teardown waits for it, where its exit hook may not run (processes torchrun started).
            self._wandb.teardown()
        except (self._wandb.Error, OSError) as error:  # the model is published: W&B costs its own records only
            log.warning("W&B did not record the end of the run: %s", error)


def start_wandb(settings: WandbConfig, config: TrainConfig, environ: Mapping[str, str]) -> Tracker | None:
    """A W&B run of this attempt, which ``WandbTracker`` reports to; None (and a warning) when W&B
    does not start one."""
    import wandb

    try:
        wandb.init(
            project=settings.project,
            entity=settings.entity,
            name=run_name(config, environ),
            group=config.run.uid,
            job_type="train",
            config=config.to_wire(),
        )
    except (wandb.Error, OSError) as error:
        log.warning("W&B did not start a run, the run goes on without it: %s", error)
        return None
    return WandbTracker()
