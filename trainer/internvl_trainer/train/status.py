"""Live progress on the InternVLFinetune: ``status.progress``, the one part of the status the
trainer writes.

In a training pod the operator sets ``INTERNVL_NAME`` and ``INTERNVL_NAMESPACE`` and mounts a
ServiceAccount token whose Role allows patching this object's status only (docs/contract.md §2,
§4). The main process sends JSON merge patches of ``status.progress`` to the API server, at most
one step report per interval (the last one is always sent), and one after each checkpoint. The
operator owns the rest of the status (conditions, output) and reverts anything written there.
Anywhere else (a laptop) there is no reporter. A failed patch is logged and forgotten: reporting
never fails a run.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from internvl_trainer.config import GROUP_VERSION

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PROGRESS_INTERVAL_SECONDS = 30.0

logger = logging.getLogger(__name__)


class StatusReporter:
    """Patches the status of one InternVLFinetune."""

    def __init__(
        self,
        url: str,
        token: str,
        context: ssl.SSLContext | None,
        *,
        interval: float = PROGRESS_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._url = url
        self._token = token
        self._context = context
        self._interval = interval
        self._clock = clock
        self._last_sent: float | None = None

    def __repr__(self) -> str:
        return f"StatusReporter({self._url!r})"  # never the token

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] = os.environ, account: Path = SERVICE_ACCOUNT
    ) -> StatusReporter | None:
        """The reporter of this pod's object, or None outside a cluster."""
        name, namespace = environ.get("INTERNVL_NAME"), environ.get("INTERNVL_NAMESPACE")
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT", "443")
        token_file = account / "token"
        if not (name and namespace and host and token_file.exists()):
            return None
        ca_file = account / "ca.crt"
        context = ssl.create_default_context(cafile=str(ca_file)) if ca_file.exists() else None
        server = f"https://{host}:{port}" if ":" not in host else f"https://[{host}]:{port}"
        url = f"{server}/apis/{GROUP_VERSION}/namespaces/{namespace}/internvlfinetunes/{name}/status"
        return cls(url, token_file.read_text().strip(), context)

    def progress(
        self,
        *,
        step: int,
        total_steps: int | None,
        epoch: float | None = None,
        loss: float | None = None,
        samples_per_second: float | None = None,
        eta_seconds: int | None = None,
        final: bool = False,
    ) -> bool:
        """Report training progress; skipped (False) when the last report is too recent, unless
        final."""
        now = self._clock()
        if not final and self._last_sent is not None and now - self._last_sent < self._interval:
            return False
        self._last_sent = now
        percent = min(100, int(100 * step / total_steps)) if total_steps else 0
        progress = {
            "step": step,
            "totalSteps": total_steps,
            "percent": percent,
            "epoch": epoch,
            "loss": loss,
            "samplesPerSecond": samples_per_second,
            "etaSeconds": eta_seconds,
            "updatedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        return self._patch({"progress": {key: value for key, value in progress.items() if value is not None}})

    def results(self, *, latest_checkpoint_uri: str | None = None, eval_loss: float | None = None) -> bool:
        """Report the newest complete checkpoint and the latest held-out loss (never rate-limited)."""
        results = {"latestCheckpointUri": latest_checkpoint_uri, "evalLoss": eval_loss}
        return self._patch({"progress": {key: value for key, value in results.items() if value is not None}})

    def _patch(self, status: dict[str, Any]) -> bool:
        request = urllib.request.Request(
            self._url,
            data=json.dumps({"status": status}).encode(),
            method="PATCH",
            headers={
                "Authorization": f"Bearer {self._token}",
                "Content-Type": "application/merge-patch+json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self._context) as response:
                response.read()
            return True
        except OSError as error:  # urllib's errors, timeouts and refused connections
            logger.warning("could not report status to %s: %s", self._url, error)
            return False
