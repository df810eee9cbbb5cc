"""How fast the operator turns many new InternVLFinetunes into jobs, and how much memory it needs.

The operator runs as it does in production (``internvl-operator run`` in its own process, with a
kubeconfig) against an emulated API server in this process, so its peak resident memory is its
own. Objects are created at once; the clock stops when every one shows ``JobCreated=True``.

The emulator keeps objects in a list it scans on every request, so its latency grows with the
number of objects and dominates the end-to-end time (at 500 objects, 3,000 stored objects, a run
takes over 25 minutes here): that time measures the emulator, not the operator, and is labelled
so. The end-to-end row therefore reports what the emulator cannot distort: the API requests the
operator sent per object, by verb (the emulator records every request; the operator's are told
from the benchmark's own by their User-Agent), the operator process's CPU time per object, and its
peak memory. A second table times the operator's own work per object (validate, plan, render,
decide) for 500 objects without any API server.
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import kmock
import yaml

from benchmarks import Table
from internvl_operator.launchers import AUTO_ORDER, LAUNCHERS
from internvl_operator.reconcile import Observed, reconcile
from internvl_operator.settings import OperatorSettings
from tests.emulated_cluster import client_for, serve

OBJECTS = 100
PURE_OBJECTS = 500
NAMESPACE = "default"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lora-internvl3-8b.yaml"


def _kubeconfig(url: str, folder: str) -> str:
    path = Path(folder) / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulated", "cluster": {"server": url}}],
                "users": [{"name": "bench", "user": {}}],
                "contexts": [{"name": "bench", "context": {"cluster": "emulated", "user": "bench"}}],
                "current-context": "bench",
            }
        )
    )
    return str(path)


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


BENCHMARK_CLIENT = "internvl-benchmark"
"""The User-Agent of the benchmark's own client; the operator's requests are the others."""


def _verb(request) -> str:
    """The Kubernetes verb of a recorded request (kmock's FETCH is get; its UPDATE, patch or update
    by the HTTP method), with its subresource."""
    method = str(request.method.value).lower()
    action = request.action.value.lower() if request.action is not None else method
    action = {"fetch": "get", "update": "patch" if method == "patch" else "update"}.get(action, action)
    return f"{action} {request.subresource}" if request.subresource else action


def _job_created(obj: dict) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "JobCreated" and c["status"] == "True" for c in conditions)


async def _measure() -> tuple[float, float, int, float, Counter[str]]:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        serve(emulator)
        url = str(emulator.url).rstrip("/")
        user = client_for(url)
        user._api.user_agent = BENCHMARK_CLIENT
        with tempfile.TemporaryDirectory() as folder:
            env = {**os.environ, "KUBECONFIG": _kubeconfig(url, folder)}
            command = [sys.executable, "-m", "internvl_operator.cli", "run", "-n", NAMESPACE, "--standalone"]
            log = open(os.environ.get("BENCH_OPERATOR_LOG", Path(folder) / "operator.log"), "w")  # noqa: SIM115 - closed with the folder
            operator = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
            try:
                await asyncio.sleep(3)  # the operator's start-up is not part of the measurement
                template = yaml.safe_load(EXAMPLE.read_text())
                start, start_cpu, first_request = time.perf_counter(), _cpu_seconds(operator.pid), len(list(emulator))
                for index in range(OBJECTS):
                    obj = copy.deepcopy(template)
                    obj["metadata"].update({"name": f"bench-{index}", "namespace": NAMESPACE, "uid": f"uid-{index}"})
                    await asyncio.to_thread(user.create, obj)
                done = 0
                while done < OBJECTS:
                    await asyncio.sleep(2)
                    items = await asyncio.to_thread(
                        user.list, "internvl.dev/v1alpha1", "InternVLFinetune", NAMESPACE, {}
                    )
                    done = sum(_job_created(item) for item in items)
                    if time.perf_counter() - start > 1800 or operator.poll() is not None:
                        tail = (Path(folder) / "operator.log").read_text()[-2000:]
                        raise RuntimeError(f"{done} of {OBJECTS} reached JobCreated; operator log:\n{tail}")
                elapsed = time.perf_counter() - start
                cpu = _cpu_seconds(operator.pid) - start_cpu
                peak = _peak_rss_mib(operator.pid)
                verbs = Counter(
                    _verb(request)
                    for request in list(emulator)[first_request:]
                    if request.headers.get("User-Agent") != BENCHMARK_CLIENT
                )
                launcher = LAUNCHERS[AUTO_ORDER[0]]  # what auto picks where every launcher is served
                jobs = await asyncio.to_thread(user.list, launcher.api_version, launcher.kind, NAMESPACE, {})
            finally:
                operator.terminate()
                try:
                    await asyncio.to_thread(operator.wait, 30)
                except subprocess.TimeoutExpired:  # measured already: a slow shutdown is not a result
                    operator.kill()
                    await asyncio.to_thread(operator.wait)
    return elapsed, peak, len(jobs), cpu, verbs


def _reconcile_seconds() -> float:
    """The operator's own work for PURE_OBJECTS new objects: everything but the API calls."""
    template = yaml.safe_load(EXAMPLE.read_text())
    bodies = []
    for index in range(PURE_OBJECTS):
        body = copy.deepcopy(template)
        body["metadata"].update({"name": f"bench-{index}", "uid": f"uid-{index}", "generation": 1})
        bodies.append(body)
    settings, now = OperatorSettings(), datetime.now(UTC)
    start = time.perf_counter()
    for body in bodies:
        actions = reconcile(Observed(body, None, [], frozenset(LAUNCHERS), now), settings)
        assert len(actions.create) == 5
    return time.perf_counter() - start


def run() -> list[Table]:
    elapsed, peak, jobs, cpu, verbs = asyncio.run(_measure())
    pure = _reconcile_seconds()
    per_verb = ", ".join(f"{verb} {count / OBJECTS:.2f}" for verb, count in sorted(verbs.items()))
    return [
        Table(
            title=f"Operator: {OBJECTS} new InternVLFinetunes to JobCreated",
            method=(
                f"`internvl-operator run` in its own process against an emulated API server (kmock) in the "
                f"benchmark's process; {OBJECTS} copies of `{EXAMPLE.name}` created one after another, until all "
                "show JobCreated=True. Each reconciliation plans, renders and creates five children. What the "
                "emulator cannot distort: the operator's API requests per object by verb (every request the "
                "emulator received from the operator after its start-up, status patches and events included), "
                "its CPU time per object (the operator process's user + system time over the run) and its peak "
                "memory (VmHWM). "
                "The wall time is the emulator's: it scans every stored object on each request, so it grows with "
                "the objects held and says nothing about the operator's speed on a real API server."
            ),
            columns=[
                "Objects",
                "Jobs created",
                "API requests per object (by verb)",
                "Operator CPU per object",
                "Operator peak RSS",
                "Emulator wall time (not the operator's speed)",
            ],
            rows=[
                [
                    str(OBJECTS),
                    str(jobs),
                    f"{sum(verbs.values()) / OBJECTS:.1f} ({per_verb})",
                    f"{cpu / OBJECTS * 1e3:.0f} ms",
                    f"{peak:.0f} MiB",
                    f"{elapsed:.1f} s ({OBJECTS / elapsed:.1f} objects/s)",
                ]
            ],
        ),
        Table(
            title=f"Operator: its own work for {PURE_OBJECTS} new InternVLFinetunes, without an API server",
            method=(
                "`reconcile` (validate with CEL rules, plan, resolve train.yaml, render the five children, build "
                f"the status) on {PURE_OBJECTS} new objects in one process: the CPU cost per object that the "
                "end-to-end number above hides behind the emulator's latency."
            ),
            columns=["Objects", "Total", "Per object", "Objects per second"],
            rows=[
                [
                    str(PURE_OBJECTS),
                    f"{pure:.2f} s",
                    f"{pure / PURE_OBJECTS * 1e3:.1f} ms",
                    f"{PURE_OBJECTS / pure:.0f}",
                ]
            ],
        ),
    ]
