"""``internvl-train run``: one training run, read top to bottom, one function per phase.

    setup_process       the world against train.yaml, storage (credentials, base model, output
                        writable), the experiment trackers
    setup_arguments     the Trainer's arguments (DeepSpeed known before the model loads)
    setup_model         the base model (local or S3); freeze, drop path, checkpointing, LoRA
    setup_data          datasets and held-out split, sampler, packing, collator, resumable loader
    complete_arguments  the steps, now that the data is known
    setup_resume        the newest complete checkpoint of runs/<uid>/, or none
    setup_progress      metrics.jsonl, TensorBoard, status.progress
    setup_tracking      a run in each experiment tracker train.yaml names (MLflow, W&B)
    setup_trainer       the Trainer, publishing a checkpoint every saveSteps
    train               training, then the held-out loss
    save_final_model    the trained model beside its processor
    publish_model       merge, export, reload and generate, publish with the manifest last;
                        the trackers' runs get the model's URIs

Every process of the run executes this (torchrun, mpirun, or one process on a laptop); only the
main process writes shared outputs (the checkpoint manifest, metrics, the model). Exit codes
(docs/contract.md §5): 2 for bad input (train.yaml, the world size, storage that refuses the
credentials or has no base model or output bucket, a bad sample in strict mode), 1 for anything else.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import shutil
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from internvl_trainer.config import TrainConfig
from internvl_trainer.data.collate import Collator
from internvl_trainer.data.errors import StrictDataError
from internvl_trainer.data.loader import PackedStream, ResumableLoader
from internvl_trainer.data.packing import PackingBudget
from internvl_trainer.data.report import write_report
from internvl_trainer.data.sampling import MixtureSampler
from internvl_trainer.model.load import Loaded, ModelFolderError, fetch_folder, load
from internvl_trainer.model.prepare import Prepared, prepare_for_training
from internvl_trainer.problems import BadInput, Problem
from internvl_trainer.storage import Storage
from internvl_trainer.storage.upload import upload_file
from internvl_trainer.train import checkpoints, curves
from internvl_trainer.train.datasets import RunData, open_run_data
from internvl_trainer.train.distributed import ProcessEnvironment, check_world, detect, export_for_torch
from internvl_trainer.train.metrics import EventWriter, MetricsLog, ProgressCallback
from internvl_trainer.train.preflight import check_storage, check_tracking
from internvl_trainer.train.publish import Published, base_dtype, publish
from internvl_trainer.train.status import StatusReporter
from internvl_trainer.train.tracking import Tracker, open_trackers
from internvl_trainer.train.trainer import EvalSet, InternVLTrainer

log = logging.getLogger(__name__)

SCRATCH_ENV = "INTERNVL_SCRATCH"


@dataclass
class RunResult:
    """What a run did (on every process; the URIs on the main process)."""

    steps: int
    """The optimizer step the run ended at."""
    resumed_from: int | None
    """The checkpoint step it resumed from, if any."""
    eval_loss: float | None
    model_uri: str | None
    manifest_uri: str | None
    validation: dict[str, Any] | None


# ---------------------------------------------------------------------------------------------
# settings


def scratch_root(environ: Mapping[str, str]) -> Path:
    """``$INTERNVL_SCRATCH`` in a pod (docs/contract.md §2), else ``~/.cache/internvl``."""
    return Path(environ.get(SCRATCH_ENV) or Path.home() / ".cache" / "internvl")


def model_dtype(config: TrainConfig, on_gpu: bool) -> torch.dtype:
    """float32 on CPU; on GPU bf16 weights under DeepSpeed (it keeps fp32 master copies) and with
    LoRA (frozen base), float32 for a plain full fine-tune (autocast computes in bf16)."""
    if not on_gpu:
        return torch.float32
    if config.deepspeed is not None or config.method.type == "lora":
        return torch.bfloat16
    return torch.float32


def warmup_steps(ratio: float, max_steps: int) -> float | int:
    """The Trainer's warmup: a ratio below 1, else every step."""
    return ratio if ratio < 1 else max_steps


def training_arguments(
    config: TrainConfig, output_dir: Path, environment: ProcessEnvironment, *, on_gpu: bool, max_steps: int
) -> TrainingArguments:
    training, batch = config.training, config.batch
    eval_steps = training.eval_steps
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch.per_device_batch_size,
        per_device_eval_batch_size=batch.per_device_batch_size,
        gradient_accumulation_steps=batch.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        weight_decay=training.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=training.max_grad_norm,
        lr_scheduler_type=training.scheduler,
        warmup_steps=warmup_steps(training.warmup_ratio, max_steps),
        max_steps=max_steps,
        logging_strategy="steps",
        logging_steps=training.logging_steps,
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=None,
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        seed=training.seed,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        deepspeed=dict(config.deepspeed) if config.deepspeed is not None else None,
        remove_unused_columns=False,
        ignore_data_skip=True,
        report_to=[],
        disable_tqdm=not environment.is_main,
        dataloader_num_workers=0,
        save_only_model=False,
        ddp_find_unused_parameters=False,
    )


# ---------------------------------------------------------------------------------------------
# checkpoints and progress


class CheckpointCallback(TrainerCallback):
    """After the Trainer saved a checkpoint locally: add the data position and metrics.jsonl,
    publish it to runs/<uid>/checkpoints/ with its manifest last, upload metrics and TensorBoard,
    keep the newest K, report it in status.progress. Also makes the last step a checkpoint."""

    def __init__(
        self,
        config: TrainConfig,
        storage: Storage,
        environment: ProcessEnvironment,
        loader: ResumableLoader,
        *,
        progress: ProgressCallback | None,
        run_dir: Path,
        data: RunData,
        reporter: StatusReporter | None,
    ):
        self.config = config
        self.storage = storage
        self.environment = environment
        self.loader = loader
        self.progress = progress
        self.run_dir = run_dir
        self.data = data
        self.reporter = reporter
        self.published: list[int] = []

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        environment = self.environment
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        checkpoints.write_data_state(folder, environment.rank, self.loader.state_dict())
        if self.progress is not None:
            checkpoints.write_metrics(folder, self.progress.metrics.path)
        uri = checkpoints.checkpoint_uri(self.config.layout, state.global_step)
        checkpoints.publish(
            self.storage,
            folder,
            uri,
            rank=environment.rank,
            local_rank=environment.local_rank,
            producer=self.config.to_wire(),
        )
        self.published.append(state.global_step)
        if environment.is_main:
            upload_progress(self.storage, self.config, self.run_dir, self.data, self.loader)
            checkpoints.prune(self.storage, self.config.layout, self.config.training.checkpoints_kept)
            if self.reporter is not None:
                eval_loss = self.progress.eval_loss if self.progress is not None else None
                self.reporter.results(latest_checkpoint_uri=uri, eval_loss=eval_loss)
        if environment.local_rank == 0:
            shutil.rmtree(folder, ignore_errors=True)


def data_report(data: RunData, loader: ResumableLoader, world_size: int) -> dict[str, Any]:
    """The data report of this process's view (the main process's loader, every process's bad
    samples on this node)."""
    return {
        "loader": {"rank0": vars(loader.stats).copy(), "worldSize": world_size},
        **data.report(),
    }


def upload_progress(storage: Storage, config: TrainConfig, run_dir: Path, data: RunData, loader: ResumableLoader):
    """metrics.jsonl and the curves drawn from it, the TensorBoard files and the data report, to runs/<uid>/."""
    layout = config.layout
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        logged = metrics.read_bytes()
        storage.write_bytes(layout.metrics, logged)
        heading = curves.title(config.to_wire(), config.run.name)
        drawn = curves.write(run_dir / "plots", curves.read_records(logged.decode()), heading)
        upload_file(storage, drawn, f"{layout.plots}/{drawn.name}")
    events = run_dir / "tensorboard"
    for path in sorted(events.glob("events.out.tfevents.*")):
        upload_file(storage, path, f"{layout.tensorboard}/{path.name}")
    write_report(data_report(data, loader, config.batch.world_size), layout.data_report, storage)


# ---------------------------------------------------------------------------------------------
# the run, phase by phase


def run(
    config: TrainConfig,
    *,
    environ: MutableMapping[str, str] | None = None,
    scratch: Path | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> RunResult:
    """Train, checkpoint and publish one run (see the module docstring). Raises BadInput."""
    environ = os.environ if environ is None else environ
    process = setup_process(config, environ, scratch)
    args = setup_arguments(config, process)
    model = setup_model(config, process, args)
    data = setup_data(config, process, args, model)
    complete_arguments(args, config, model, data)
    start = setup_resume(config, process, args, data.loader)
    progress = setup_progress(process, data, start)
    trackers = setup_tracking(config, process, environ)
    trainer = setup_trainer(config, process, args, model, data, progress, [*trackers, *callbacks])
    evaluate_at_end = data.eval_set is not None and not config.training.eval_steps
    eval_loss = train(trainer, progress, start, evaluate_at_end=evaluate_at_end)
    final_dir = save_final_model(trainer, model, process)
    result = RunResult(trainer.state.global_step, start.step, eval_loss, None, None, None)
    dtype = model.base_dtype
    # Every process lets go of its engine, then waits for the others: a ZeRO-3 process that left
    # with collectives still queued could abort at exit while the main one publishes. The export
    # loads the model again, so the main process frees this copy first anyway.
    del trainer, model
    gc.collect()
    checkpoints.barrier()
    if not process.environment.is_main:
        return result
    upload_progress(process.storage, config, process.run_dir, data.data, data.loader)
    published = publish_model(config, process, final_dir, data.data, dtype)
    if process.reporter is not None and eval_loss is not None:
        # Where the model is, status.output, the operator derives from the spec once the job succeeded.
        process.reporter.results(eval_loss=eval_loss)
    result.model_uri, result.manifest_uri = published.model_uri, published.manifest_uri
    result.validation = published.validation
    for tracker in trackers:
        tracker.finish(published)
    return result


@dataclass
class RunProcess:
    """This process of the run: its place in the world, the storage, its scratch folders."""

    environment: ProcessEnvironment
    storage: Storage
    scratch: Path
    """Node-local: the base model and data caches."""
    run_dir: Path
    """This run's working folder: Trainer output, metrics, TensorBoard, the final model."""
    on_gpu: bool
    reporter: StatusReporter | None
    """status.progress patches, on the main process in a cluster."""


def setup_process(config: TrainConfig, environ: MutableMapping[str, str], scratch: Path | None) -> RunProcess:
    """The world checked against train.yaml, torch.distributed's environment, storage checked
    (credentials, base model, output writable), the seed."""
    environment = detect(environ)
    check_world(environment, config)
    if environment.launcher != "single" or config.deepspeed is not None:
        export_for_torch(environment, environ)  # torch.distributed's env:// (DeepSpeed needs it alone too)
    storage = Storage(config.storage)
    check_storage(config, storage, environment.rank)
    if environment.is_main:
        check_tracking(config)
    set_seed(config.training.seed)
    root = scratch or scratch_root(environ)
    return RunProcess(
        environment=environment,
        storage=storage,
        scratch=root,
        run_dir=root / "runs" / config.run.uid,
        on_gpu=torch.cuda.is_available(),
        reporter=StatusReporter.from_environment(environ) if environment.is_main else None,
    )


def setup_arguments(config: TrainConfig, process: RunProcess) -> TrainingArguments:
    """The Trainer's arguments, before the model: under ZeRO-3 the model must load partitioned,
    which the arguments set up. The steps follow once the data is known (``complete_arguments``)."""
    args = training_arguments(
        config, process.run_dir / "trainer", process.environment, on_gpu=process.on_gpu, max_steps=1
    )
    if config.deepspeed is not None and process.environment.world_size > 1:
        # ZeRO-3 partitions the weights while they load, so DeepSpeed must see the whole world by
        # then; accelerate sets DeepSpeed's communication up itself on GPUs, not on CPUs. Imported
        # here: only a run with DeepSpeed needs it, and it probes the accelerator when imported.
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if process.on_gpu else "gloo", auto_mpi_discovery=False)
    return args


@dataclass
class RunModel:
    """The base model, loaded and prepared for training, with what the run keeps of its folder."""

    loaded: Loaded
    prepared: Prepared
    base_dtype: str
    """The dtype the base's config.json declares, which the exported model keeps."""

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        assert self.loaded.tokenizer is not None  # setup_model refuses a folder without one
        return self.loaded.tokenizer


def setup_model(config: TrainConfig, process: RunProcess, args: TrainingArguments) -> RunModel:
    """The base model (local or S3), loaded and prepared: freeze, drop path, checkpointing, LoRA."""
    # One process per node downloads the base; every process then loads it from the node's copy
    # together (under ZeRO-3 loading is collective: the weights are partitioned as they load).
    try:
        with args.main_process_first(local=True, desc="fetching the base model"):
            base = fetch_folder(config.model.weights, storage=process.storage, cache_dir=process.scratch / "models")
        dtype = model_dtype(config, process.on_gpu)
        loaded = load(base, layout=config.model.layout, dtype=dtype, name=config.model.weights)
    except ModelFolderError as error:
        raise BadInput([Problem("model.weights", str(error))]) from error
    if loaded.tokenizer is None:
        raise BadInput([Problem("model.weights", f"{config.model.weights}: the model folder has no tokenizer")])
    try:
        checkpointing = config.training.gradient_checkpointing
        prepared = prepare_for_training(loaded.model, config.method, gradient_checkpointing=checkpointing)
    except ValueError as error:
        raise BadInput([Problem("method", str(error))]) from error
    return RunModel(loaded, prepared, base_dtype(loaded.folder))


@dataclass
class RunDataPipeline:
    """The datasets and the pipeline that feeds the Trainer: sampler, packing, collator, loader."""

    data: RunData
    sampler: MixtureSampler
    loader: ResumableLoader
    eval_set: EvalSet | None


def setup_data(config: TrainConfig, process: RunProcess, args: TrainingArguments, model: RunModel) -> RunDataPipeline:
    """Datasets and the held-out split, the sampler, packing, the collator and the resumable loader."""
    training, batch, environment = config.training, config.batch, process.environment
    with args.main_process_first(local=True, desc="indexing the annotations"):
        data = open_run_data(
            config,
            model.tokenizer,
            model.loaded.model.config,
            storage=process.storage,
            cache_dir=process.scratch / "data-cache",
            bad_dir=process.run_dir / "bad-samples",
        )
    sampler = MixtureSampler(data.specs(), seed=training.seed, epochs=None if training.max_steps else training.epochs)
    pad_id = model.tokenizer.pad_token_id
    collator = Collator(pad_id=pad_id, reduction=training.loss_reduction, packed=config.data.packing)
    stream = PackedStream(
        sampler,
        data.build,
        collator,
        batch_size=batch.per_device_batch_size,
        budget=PackingBudget(max_tokens=config.data.max_seq_length) if config.data.packing else None,
        rank=environment.rank,
        world_size=environment.world_size,
    )
    workers = config.data.workers
    loader = ResumableLoader(stream, num_workers=workers, prefetch_factor=2 if workers else None)
    # DataLoader iterators draw their workers' base seed from this generator, not the global one,
    # so a resumed run's global RNG (restored from the checkpoint) stays in step.
    loader.options["generator"] = torch.Generator().manual_seed(training.seed)
    eval_refs = data.eval_refs()
    eval_set = (
        EvalSet(eval_refs, data.build_eval, collator, batch_size=batch.per_device_batch_size) if eval_refs else None
    )
    return RunDataPipeline(data, sampler, loader, eval_set)


def complete_arguments(args: TrainingArguments, config: TrainConfig, model: RunModel, data: RunDataPipeline) -> None:
    """What the arguments could not know before the model and the data: the steps and whether
    DDP must expect parameters without gradients."""
    training = config.training
    # With epochs and packing the count of packed rows is not known ahead: this is an upper bound,
    # and the run ends early, on every rank together, when the data runs out.
    max_steps = training.max_steps or max(1, math.ceil(data.sampler.total / training.global_batch_size))
    args.max_steps = max_steps
    args.warmup_steps = warmup_steps(training.warmup_ratio, max_steps)
    # Parts trained in full that a text-only batch leaves unused (the projector, vision layers)
    # would otherwise stop DDP waiting for their gradients.
    trainable = model.prepared.trainable
    args.ddp_find_unused_parameters = bool(trainable.vision or trainable.projector or trainable.vision_layers)


@dataclass
class ResumePoint:
    """Where training starts: a downloaded checkpoint and its step, or the beginning."""

    folder: Path | None = None
    step: int | None = None


def setup_resume(
    config: TrainConfig, process: RunProcess, args: TrainingArguments, loader: ResumableLoader
) -> ResumePoint:
    """``resume: latest``: the newest complete checkpoint of runs/<uid>/, the loader at its data
    position. ``resume: never``: the run's old checkpoints are deleted."""
    storage, layout, environment = process.storage, config.layout, process.environment
    if config.run.resume != "latest":
        if environment.is_main:
            for stale in checkpoints.find(storage, layout):
                log.info("resume: never, deleting %s", stale.uri)
                checkpoints.delete_folder(storage, stale.uri)
        return ResumePoint()
    found = checkpoints.latest(storage, layout)
    if found is None:
        return ResumePoint()
    with args.main_process_first(local=True, desc="fetching the checkpoint"):
        folder = checkpoints.download(storage, found, process.run_dir / "resume")
    state = checkpoints.read_data_states(folder, environment.rank)
    if state is not None:
        loader.load_state_dict(state)
    log.info("resuming from %s", found.uri)
    return ResumePoint(folder, found.step)


def setup_progress(process: RunProcess, data: RunDataPipeline, start: ResumePoint) -> ProgressCallback | None:
    """On the main process: metrics.jsonl continuing the one saved with the checkpoint (what a dead
    attempt logged after it, a final held-out loss included, is logged again), a TensorBoard file
    per attempt, status.progress."""
    if not process.environment.is_main:
        return None
    metrics = MetricsLog(process.run_dir / "metrics.jsonl")
    metrics.path.unlink(missing_ok=True)
    if start.folder is not None:
        checkpoints.read_metrics(start.folder, metrics.path)
    return ProgressCallback(
        metrics,
        EventWriter(process.run_dir / "tensorboard"),
        samples_before=data.loader.stats.samples,
        epoch_length=data.sampler.epoch_length,
        world_size=process.environment.world_size,
        reporter=process.reporter,
    )


def setup_tracking(config: TrainConfig, process: RunProcess, environ: Mapping[str, str]) -> list[Tracker]:
    """On the main process: a run of this attempt in each experiment tracker train.yaml names."""
    if not process.environment.is_main:
        return []
    return open_trackers(config, environ, process.storage)


def setup_trainer(
    config: TrainConfig,
    process: RunProcess,
    args: TrainingArguments,
    model: RunModel,
    data: RunDataPipeline,
    progress: ProgressCallback | None,
    callbacks: Sequence[TrainerCallback],
) -> InternVLTrainer:
    """The Trainer over the prepared model and the loader, publishing each checkpoint it saves."""
    checkpointing = CheckpointCallback(
        config,
        process.storage,
        process.environment,
        data.loader,
        progress=progress,
        run_dir=process.run_dir,
        data=data.data,
        reporter=process.reporter,
    )
    return InternVLTrainer(
        model=model.prepared.model,
        args=args,
        loader=data.loader,
        eval_set=data.eval_set,
        callbacks=[*([progress] if progress is not None else []), checkpointing, *callbacks],
    )


def train(
    trainer: InternVLTrainer, progress: ProgressCallback | None, start: ResumePoint, *, evaluate_at_end: bool
) -> float | None:
    """Train from the resume point; the held-out loss: the last one logged, or one pass at the end.
    In strict mode a bad sample, in training or in the held-out pass, is bad input."""
    try:
        trainer.train(resume_from_checkpoint=str(start.folder) if start.folder is not None else None)
        eval_loss = progress.eval_loss if progress is not None else None
        if evaluate_at_end:
            eval_loss = trainer.evaluate().get("eval_loss")
    except StrictDataError as error:
        raise BadInput([Problem(error.where, error.reason)]) from error
    return eval_loss


def save_final_model(trainer: InternVLTrainer, model: RunModel, process: RunProcess) -> Path:
    """The trained model in run_dir/final: saved by every process (ZeRO-3 gathers the weights),
    with the processor (or the tokenizer) beside it on the main process."""
    final_dir = process.run_dir / "final"
    if process.environment.is_main and final_dir.exists():
        shutil.rmtree(final_dir)
    trainer.save_model(str(final_dir))
    if process.environment.is_main:
        (model.loaded.processor or model.tokenizer).save_pretrained(str(final_dir))
    return final_dir


def publish_model(config: TrainConfig, process: RunProcess, final: Path, data: RunData, dtype: str) -> Published:
    """Merge, export, reload and generate, publish with the manifest last (``train.publish``)."""
    if config.deepspeed is not None:
        # Loading for the export must not partition the model as ZeRO-3 loading did.
        unset_hf_deepspeed_config()
    storage, run_dir, models = process.storage, process.run_dir, process.scratch / "models"
    return publish(config, final, storage=storage, scratch=run_dir, cache_dir=models, data=data, dtype=dtype)
