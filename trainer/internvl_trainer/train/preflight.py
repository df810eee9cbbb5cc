"""What a run checks before it trains: that the object store takes its credentials, that the base
model's prefix holds files, and that the run can list, write and delete under its output URI.

Each of these fails the same way on every attempt, so each is bad input (exit 2, docs/contract.md
§5) naming the field to fix: ``storage.credentials`` (the credentials come from the environment,
the Secret in a cluster), ``model.weights`` or ``output.uri``. Without these checks a refused
credential or a missing bucket ends in a storage error after the downloads have started (exit 1,
retried), and a run without write permission trains ``saveSteps`` steps before its first
checkpoint fails. Every process checks for itself (a probe object of its own), before any
collective: each one refuses on its own, whichever launcher started it.

The experiment trackers train.yaml names are checked by the main process, the one that reports
(``check_tracking``): the MLflow server must answer and take the credentials of the environment
(its client's own retries, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ride out a server restarting),
and W&B needs an API key (``WANDB_API_KEY``, or ``wandb login``'s netrc entry) unless
``WANDB_MODE`` is offline or disabled. Each failure is bad
input naming ``tracking.mlflow.trackingUri``, ``tracking.mlflow.credentials`` or
``tracking.wandb.credentials``: a wrong tracking URI is found before the run spends GPU time.
After these checks a tracker's failure is only a warning (``train.tracking``).
"""

from __future__ import annotations

import contextlib
import netrc
import os
from collections.abc import Iterator
from urllib.parse import urlsplit

from botocore.exceptions import ClientError, NoCredentialsError

from internvl_trainer.config import TrainConfig
from internvl_trainer.problems import BadInput, Problem
from internvl_trainer.storage import Storage, StorageError, parse
from internvl_trainer.storage.stream import client_error_code, client_error_status

CREDENTIALS_REFUSED = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId"}
)
"""S3 error codes that mean the credentials themselves are wrong, whatever the request."""

THROTTLED = frozenset({"SlowDown", "RequestTimeout", "TooManyRequests"})

PROBE_NAME = "write-probe-rank{rank}"


def check_storage(config: TrainConfig, storage: Storage, rank: int) -> None:
    """Raise BadInput naming the field when the base model or the output URI cannot be used."""
    weights = config.model.weights
    if parse(weights).is_s3:
        with _refusals("model.weights", weights):
            if next(iter(storage.list(weights)), None) is None:
                raise BadInput([Problem("model.weights", f"{weights}: no objects under this prefix")])
    probe = f"{config.layout.run}/{PROBE_NAME.format(rank=rank)}"
    with _refusals("output.uri", config.output.uri):
        next(iter(storage.list(config.layout.run)), None)
        storage.write_bytes(probe, b"")
        storage.delete(probe)


@contextlib.contextmanager
def _refusals(field: str, uri: str) -> Iterator[None]:
    """Storage errors inside become BadInput: refused credentials name ``storage.credentials``;
    anything else refused (no such bucket, access denied, a local path that is not a folder) names
    ``field``. Errors a retry may cure (5xx, throttling, a lost connection) pass through."""
    try:
        yield
    except (StorageError, OSError) as error:
        # The storage layer raises its errors "from None", keeping botocore's as the context.
        cause = error.__context__
        if isinstance(cause, NoCredentialsError):
            raise BadInput([Problem("storage.credentials", "no S3 credentials in the environment")]) from error
        code = client_error_code(cause) if isinstance(cause, ClientError) else ""
        if code in CREDENTIALS_REFUSED:
            reason = f"the object store refused the credentials of the environment ({code})"
            raise BadInput([Problem("storage.credentials", reason)]) from error
        if isinstance(cause, ClientError) and _refusal(cause):
            reason = cause.response.get("Error", {}).get("Message") or "refused"
            raise BadInput([Problem(field, f"{uri}: {reason} ({code or client_error_status(cause)})")]) from error
        if not isinstance(error, StorageError):
            raise BadInput([Problem(field, f"{uri}: {error.strerror or error}")]) from error
        raise


def _refusal(error: ClientError) -> bool:
    """A 4xx answer other than throttling: asking again will not change it."""
    return 400 <= client_error_status(error) < 500 and client_error_code(error) not in THROTTLED


UNAUTHORISED = frozenset({401, 403})


def check_tracking(config: TrainConfig) -> None:
    """Raise BadInput naming the field when a tracker train.yaml names cannot take the run. The
    trackers' clients read their credentials from the environment, so this does too."""
    tracking = config.tracking
    if tracking and tracking.mlflow:
        _check_mlflow(tracking.mlflow.tracking_uri, tracking.mlflow.experiment)
    if tracking and tracking.wandb and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
        if not _wandb_api_key():
            reason = "no WANDB_API_KEY in the environment (in a cluster: the Secret tracking.wandb.apiKeySecret)"
            raise BadInput([Problem("tracking.wandb.credentials", reason)])


def _wandb_api_key() -> bool:
    """Whether W&B's client finds an API key: WANDB_API_KEY, else the netrc entry of its server
    that ``wandb login`` writes on a workstation."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _check_mlflow(tracking_uri: str, experiment: str) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    except MlflowException as error:
        reason = str(error).splitlines()[0]
        if error.get_http_status_code() in UNAUTHORISED:
            reason = f"the MLflow server refused the credentials of the environment: {reason}"
            raise BadInput([Problem("tracking.mlflow.credentials", reason)]) from error
        raise BadInput([Problem("tracking.mlflow.trackingUri", f"{tracking_uri}: {reason}")]) from error
