"""``make demo``: the whole product on one machine, for real, with no GPU and no cluster.

1. The offline checks on the examples (validate, the immutability rule).
2. A local S3 server (SeaweedFS) on loopback; the sample dataset and a tiny random InternVL are
   generated and uploaded to it.
3. ``examples/demo.yaml`` is planned and rendered like the operator does into ``demo-out/manifests``.
4. The trainer runs exactly as the pod would: the same entrypoint (internvl-train launch: torchrun, one process), the
   rendered train.yaml, the pod's environment. It LoRA fine-tunes, evaluates, merges and uploads.
5. A summary, the run's training curves (drawn by the run, in S3) copied to demo-out/; the S3 server
   stops, also on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from examples.demo_data import write_dataset
from internvl_operator import cli as operator_cli
from internvl_trainer import cli as train_cli
from internvl_trainer import data_cli

EXAMPLES = Path(__file__).resolve().parent
OUT = Path("demo-out")
BUCKET = "demo"
IMAGE_SIZE = 56

PROGRAMS: dict[str, Callable[[list[str]], int]] = {
    "internvl-operator": operator_cli.main,
    "internvl-train": train_cli.main,
    "internvl-data": data_cli.main,
}

# (what the step shows, program, arguments, the exit code it must give)
CHECKS = [
    (
        "Validate the example InternVLFinetune objects offline (schema and CEL rules)",
        "internvl-operator",
        ["validate", "examples/lora-internvl3-8b.yaml", "examples/full-internvl2_5-26b.yaml"],
        0,
    ),
    (
        "Refuse an update that changes immutable fields",
        "internvl-operator",
        ["validate", "--old", "examples/lora-internvl3-8b.yaml", "examples/full-internvl2_5-26b.yaml"],
        2,
    ),
    ("Validate a hand-written train.yaml", "internvl-train", ["validate", "--config", "examples/train.yaml"], 0),
]


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def checks() -> bool:
    for title, program, argv, expected in CHECKS:
        step(title)
        print(f"$ {program} {' '.join(argv)}", flush=True)
        code = PROGRAMS[program](argv)
        sys.stderr.flush()
        if code != expected:
            print(f"demo failed: exit code {code}, expected {expected}")
            return False
    return True


def base_model(folder: Path) -> Path:
    """A tiny random model shaped like InternVL3-1B's family (Qwen2 LLM), with its tokenizer."""
    import torch

    from internvl_trainer.model.export import save_hf
    from internvl_trainer.model.processor import build_processor
    from internvl_trainer.model.tiny import tiny_config, tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_model(tiny_config(tokenizer, image_size=IMAGE_SIZE, vision_layers=1, text_layers=2))
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)  # logits with a real model's range, so LoRA can sharpen them
    processor = build_processor(tokenizer, image_size=IMAGE_SIZE, image_seq_length=4, max_tiles=1)
    return save_hf(model, folder, processor=processor)


def _deepspeed_accelerator() -> dict[str, str]:
    """Without a GPU the demo trains on the CPU: DeepSpeed is told so, rather than left to warn in
    every process that it found no GPU (a warning worth keeping in a pod, where GPUs are expected)."""
    import torch

    return {} if torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu"}


def render(environment: dict[str, str]) -> Path:
    """The operator's plan and children of examples/demo.yaml; returns the rendered train.yaml."""
    manifests = OUT / "manifests"
    shutil.rmtree(manifests, ignore_errors=True)
    manifests.mkdir(parents=True)
    for argv in (["plan", "examples/demo.yaml"], ["render", "examples/demo.yaml"]):
        print(f"$ internvl-operator {' '.join(argv)}", flush=True)
        result = subprocess.run(
            [sys.executable, "-m", "internvl_operator.cli", *argv], env=environment, capture_output=True, text=True
        )
        if result.returncode:
            raise RuntimeError(result.stderr)
        if argv[0] == "plan":
            print(result.stdout)
            continue
        for document in yaml.safe_load_all(result.stdout):
            path = manifests / f"{document['kind'].lower()}-{document['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(document, sort_keys=False))
            print(f"  wrote {path}")
            if document["kind"] == "ConfigMap":
                (manifests / "train.yaml").write_text(document["data"]["train.yaml"])
    return manifests / "train.yaml"


def main() -> int:
    started = time.monotonic()
    if not checks():
        return 1
    from internvl_trainer.storage import Storage
    from internvl_trainer.storage.local_server import LocalS3Server

    OUT.mkdir(exist_ok=True)
    with LocalS3Server() as server, tempfile.TemporaryDirectory() as scratch:
        step(f"A local S3 server at {server.endpoint}")
        server.create_bucket(BUCKET)
        credentials = server.client_environment()
        os.environ.update({**credentials, **_deepspeed_accelerator()})
        storage = Storage(server.storage_config())

        step("Generate the sample dataset and upload it")
        counts = write_dataset(Path(scratch) / "data", f"s3://{BUCKET}/datasets/shapes")
        storage.upload(Path(scratch) / "data", f"s3://{BUCKET}/datasets/shapes")
        print(f"  {sum(counts.values())} samples: {counts}")

        step("Build a tiny random InternVL as the base weights and upload it")
        storage.upload(base_model(Path(scratch) / "model"), f"s3://{BUCKET}/models/tiny-internvl3")

        step("Plan and render examples/demo.yaml as the operator would")
        operator_environment = {**os.environ, "INTERNVL_OPERATOR_DEFAULT_STORAGE_ENDPOINT": server.endpoint}
        train_yaml = render(operator_environment)

        step("Train as the pod would: internvl-train launch (torchrun) → internvl-train run --config train.yaml")
        pod_environment = {
            **os.environ,
            **credentials,
            "INTERNVL_NAME": "demo-shapes",
            "INTERNVL_NAMESPACE": "default",
            "INTERNVL_ATTEMPT": "1",
            "INTERNVL_SCRATCH": str(Path(scratch) / "scratch"),
            "PET_NNODES": "1",
            "PET_NPROC_PER_NODE": "1",
            "PET_NODE_RANK": "0",
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": "29511",
            "OMP_NUM_THREADS": "2",
        }
        command = ["internvl-train", "launch", "--config", str(train_yaml)]
        print("$ " + " ".join(command), flush=True)
        bin_folder = Path(sys.executable).parent
        pod_environment["PATH"] = f"{bin_folder}{os.pathsep}{pod_environment.get('PATH', '')}"
        if subprocess.run(command, env=pod_environment).returncode:
            print("demo failed: the training run failed")
            return 1

        step("Summary")
        output = yaml.safe_load(train_yaml.read_text())["output"]["uri"]
        run_folder = f"{output}/runs/{yaml.safe_load(train_yaml.read_text())['run']['uid']}"
        curves_png = _download_curves(storage, run_folder)
        metrics = [json.loads(line) for line in (OUT / "metrics.jsonl").read_text().splitlines()]
        losses = [record["loss"] for record in metrics if "loss" in record]
        report = json.loads(storage.read_bytes(f"{run_folder}/data-report.json"))
        _print_data_report(report, f"{run_folder}/data-report.json")
        if losses:
            print(f"  training loss: {losses[0]:.3f} at the start, {losses[-1]:.3f} at the end")
        print(f"  merged model: {output}/model")
        print(f"  manifest:     {output}/manifest.json (exists: {storage.exists(f'{output}/manifest.json')})")
        validation = storage.read_bytes(f"{run_folder}/validation.jsonl").decode().splitlines()
        if validation:
            sample = json.loads(validation[0])
            print(f"  a validation sample ({sample['where']}):")
            print(f"    expected:  {sample['reference']!r}")
            print(f"    generated: {sample['prediction']!r}")
        print(f"  training curves: {curves_png}")
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; the S3 server is stopped")
    return 0


def _print_data_report(report: dict, uri: str) -> None:
    bad = report["badSamples"]
    print(f"  data report: {uri}")
    for name, dataset in report["datasets"].items():
        print(f"    {name}: {dataset['samples']} samples ({dataset['heldOut']} held out) from {dataset['annotation']}")
    by_kind = ", ".join(f"{kind} {count}" for kind, count in bad["byKind"].items()) or "none"
    print(f"    bad samples skipped: {bad['skipped']} (by kind: {by_kind})")


def _download_curves(storage, run_folder: str) -> Path:
    """The curves the run drew (runs/<uid>/plots/), with the metrics.jsonl they were drawn from."""
    from internvl_trainer.train.curves import CURVES_PNG

    for uri in (f"{run_folder}/plots/{CURVES_PNG}", f"{run_folder}/metrics.jsonl"):
        (OUT / uri.rsplit("/", 1)[1]).write_bytes(storage.read_bytes(uri))
    return OUT / CURVES_PNG


if __name__ == "__main__":
    sys.exit(main())
