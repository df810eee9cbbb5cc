"""The HF ``Trainer`` of a run, fitted to the data pipeline and the loss of this project.

What differs from the stock Trainer, and why:

- The train loader is the pipeline's ``ResumableLoader`` as it is: it shards by rank and worker
  itself and restores its exact position from a checkpoint, so accelerate never re-wraps it and the
  Trainer never skips batches on resume (``ignore_data_skip``).
- The loss is ``internvl_trainer.loss``: every micro-batch contributes ``Σ w·CE / W`` with ``W``
  the sum of the ``loss_weight`` of every micro-batch of the optimizer step on every rank, times the
  world size because DDP and DeepSpeed average gradients over ranks. The Trainer's own division by
  the accumulation steps is off (``loss_is_scaled_for_ga``); DeepSpeed's is off too (the Trainer
  passes ``scale_wrt_gas=False``). The logged loss is then the global batch's loss.
- The end of the data is agreed by every rank: when any rank's loader runs dry, no rank takes
  another step (one would otherwise wait in a collective forever). A run resumed from a checkpoint
  at its last step takes no step at all.
- The optimizer is torch's AdamW over ``model.optim.parameter_groups`` (no decay for norms, biases
  and embeddings). Under DeepSpeed's CPU offload accelerate swaps it for ``DeepSpeedCPUAdam`` over
  the same groups, in AdamW mode only because it is torch's AdamW: handed a ``DeepSpeedCPUAdam``,
  accelerate rebuilds it as Adam with L2 decay, a different optimizer.
- A mixture-of-experts LLM whose recipe balances its routers (``model.moe``) adds, as InternVL
  does, ``router_aux_loss_coef`` times each micro-batch's load-balancing loss, divided by the
  accumulation steps and averaged over ranks as InternVL's Trainer and DDP do; the logs carry the
  unweighted mean (``aux_loss``) and the coefficient (``aux_loss_coef``) beside ``loss``, which
  includes the weighted term.
- Each logged step is one log line (``StepLog``), not a progress bar redrawn in place, unless the
  run's standard error is a terminal (and its logs plain): there the Trainer's own bar stays.
- A LoRA checkpoint holds the adapters and the parts trained in full (``lora.save_adapter``).
- Evaluation computes the exact held-out loss ``Σ w·CE / Σ w`` over every rank, with the same number
  of forward passes on every rank (ZeRO-3 gathers parameters collectively).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from internvl_trainer.data.collate import Collator
from internvl_trainer.data.loader import ResumableLoader
from internvl_trainer.logs import log_format
from internvl_trainer.loss import loss_normaliser, model_loss
from internvl_trainer.model.lora import save_adapter
from internvl_trainer.model.moe import router_balance
from internvl_trainer.model.optim import parameter_groups

log = logging.getLogger(__name__)

LOSS_KEYS = ("labels", "loss_weight")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(values: torch.Tensor, op: Any = None) -> torch.Tensor:
    if _distributed():
        torch.distributed.all_reduce(values, op=op or torch.distributed.ReduceOp.SUM)
    return values


class EvalSet:
    """The held-out samples of one rank as padded micro-batches, the same count on every rank.

    Slots past a rank's share (or whose sample could not be built) repeat a sample with zero loss
    weight, so they cost a forward pass and change nothing."""

    def __init__(self, refs: Sequence[Any], build: Any, collator: Collator, *, batch_size: int):
        self.refs = list(refs)
        self.build = build
        self.collator = Collator(
            pad_id=collator.pad_id, reduction=collator.reduction, packed=False, pad_to_multiple_of=1
        )
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.refs)

    def batches(self, rank: int, world_size: int) -> Iterator[dict[str, Any]]:
        mine = self.refs[rank::world_size]
        slots = math.ceil(len(self.refs) / world_size)
        filler = None
        rows: list[Any] = []
        weights: list[float] = []
        for slot in range(slots):
            sample = self.build(mine[slot]) if slot < len(mine) else None
            if sample is None:
                filler = filler if filler is not None else self._filler(rank)
                if filler is None:
                    continue  # nothing in the whole split can be built: no rank has a slot
                rows.append(filler)
                weights.append(0.0)
            else:
                rows.append(sample)
                weights.append(1.0)
            if len(rows) == self.batch_size:
                yield self._collate(rows, weights)
                rows, weights = [], []
        if rows:
            yield self._collate(rows, weights)

    def _filler(self, rank: int) -> Any:
        for ref in self.refs[rank:] + self.refs[:rank]:
            sample = self.build(ref)
            if sample is not None:
                return sample
        return None

    def _collate(self, rows: list[Any], weights: list[float]) -> dict[str, Any]:
        batch = self.collator(rows)
        batch["loss_weight"] = batch["loss_weight"] * torch.tensor(weights).unsqueeze(1)
        return batch


class TrainerAware(TrainerCallback):
    """A callback that is handed the trainer it serves (``trainer``), for what the Trainer's
    callback arguments do not carry (the samples of a step, the samples seen)."""

    trainer: InternVLTrainer | None = None


def progress_bar_shown() -> bool:
    """The Trainer's progress bar only on a terminal, with plain logs: a pod's log keeps a bar
    redrawn in place as one line of carriage returns, and JSON logs take lines, not bars."""
    return sys.stderr.isatty() and log_format() == "plain"


class StepLog(TrainerCallback):
    """Each logged step as one log line (``step 5 of 30: loss 9.9, grad_norm 9.73, ...``), in place
    of the Trainer's progress bar, which a pod's log keeps as carriage returns, and printed dicts."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            values = ", ".join(
                f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                for key, value in logs.items()
                if key != "total_flos"
            )
            log.info("step %d of %d: %s", state.global_step, state.max_steps, values)


class InternVLTrainer(Trainer):
    """``transformers.Trainer`` with the pipeline's loader, the global-normaliser loss, the
    no-decay optimizer groups and an exact held-out loss (see the module docstring)."""

    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        loader: ResumableLoader,
        eval_set: EvalSet | None = None,
        **kwargs: Any,
    ):
        self.loader = loader
        self.eval_set = eval_set
        self.step_samples: list[list[list[str]]] = []
        """Sample ids of every row of every micro-batch of the last optimizer step."""
        self.samples_seen = 0
        """Samples this rank has trained on in this process."""
        super().__init__(*args, eval_dataset=eval_set if eval_set is not None and len(eval_set) else None, **kwargs)
        if not progress_bar_shown():
            for shown in (ProgressCallback, PrinterCallback):
                self.remove_callback(shown)
            self.add_callback(StepLog())
        self.router_balance = router_balance(self.model)
        self.aux_totals = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        """This rank's sum of load-balancing losses and their count since the last log."""
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TrainerAware):
                callback.trainer = self

    # -- data ------------------------------------------------------------------------------------

    def get_train_dataloader(self) -> Any:
        return self.loader

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | None]:
        batches: list[dict[str, Any]] = []
        self.step_samples = []
        finished = self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps
        if not finished:
            for _ in range(num_batches):
                try:
                    batches.append(next(epoch_iterator))
                except StopIteration:
                    break
                self.step_samples.append(self.loader.last_samples)
        weight = loss_normaliser(batches, all_reduce=False).to(device)
        short = torch.tensor(float(len(batches) < num_batches), dtype=torch.float64, device=device)
        agreed = _all_reduce(torch.stack([weight, short]))
        if agreed[1] > 0:
            # Some rank has no full step left (or the run is already at its last step): stop everywhere.
            self.control.should_training_stop = True
            self.step_samples = []
            return [], None
        self.samples_seen += sum(len(row) for rows in self.step_samples for row in rows)
        return batches, agreed[0]

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        weights = inputs.pop("loss_weight", None)
        prepared = super()._prepare_inputs(inputs)
        if weights is not None:  # stays float32 (DeepSpeed would cast floats to bf16)
            prepared["loss_weight"] = weights.to(self.args.device)
        return prepared

    # -- loss ------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> Any:
        labels = inputs.pop("labels")
        weights = inputs.pop("loss_weight")
        normaliser = num_items_in_batch if num_items_in_batch is not None else weights.sum(dtype=torch.float64)
        balance = self.router_balance if model.training else None
        with balance.record() if balance is not None else nullcontext():
            head = self.model.get_output_embeddings()
            reentrant = self.is_deepspeed_enabled and is_deepspeed_zero3_enabled()
            loss = model_loss(model, head, inputs, labels, weights, normaliser, reentrant=reentrant)
        if model.training:
            loss = loss * self.args.world_size
        if balance is not None:
            aux = balance.loss(inputs.get("attention_mask"))
            self.aux_totals[0] += aux.detach().to(self.aux_totals)
            self.aux_totals[1] += 1
            loss = loss + balance.coefficient * aux.to(loss) / self.args.gradient_accumulation_steps
        return (loss, None) if return_outputs else loss  # no logits to return: only the last position has any

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.router_balance is not None:
            totals = _all_reduce(self.aux_totals.clone())  # every rank logs the training loss together
            self.aux_totals.zero_()
            if totals[1] > 0:
                logs["aux_loss"] = float(totals[0] / totals[1])
                logs["aux_loss_coef"] = self.router_balance.coefficient
        super().log(logs, start_time)

    # -- optimizer -------------------------------------------------------------------------------

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        groups = parameter_groups(model or self.model, self.args.weight_decay)
        groups = [group for group in groups if group["params"]]
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=self.args.learning_rate,
            betas=(self.args.adam_beta1, self.args.adam_beta2),
            eps=self.args.adam_epsilon,
        )
        return self.optimizer

    # -- saving ----------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Checkpoints keep the in-memory key names, which resuming loads back as they are.
        # transformers would otherwise rename them to the original checkpoint's names when it is
        # handed a state dict (DDP over several ranks, ZeRO-3), names a resume loads none of (and,
        # for a model loaded partitioned, gets wrong: it doubles the "model." prefixes).
        from peft import PeftModel
        from transformers import PreTrainedModel

        if not isinstance(self.model, (PreTrainedModel, PeftModel)):
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            output_dir = output_dir or self.args.output_dir
            os.makedirs(output_dir, exist_ok=True)
            if isinstance(self.model, PeftModel):
                save_adapter(self.model, output_dir, state_dict)
            else:
                self.model.save_pretrained(output_dir, state_dict=state_dict, save_original_format=False)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        return None

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        if self.eval_set is None or not len(self.eval_set):
            return {}
        model = self.model_wrapped if self.is_deepspeed_enabled else self.model
        was_training = model.training
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.args.device)
        head = self.model.get_output_embeddings()
        with torch.no_grad():
            for batch in self.eval_set.batches(self.args.process_index, self.args.world_size):
                batch = self._prepare_inputs(batch)
                labels, weights = batch.pop("labels"), batch.pop("loss_weight")
                totals[0] += model_loss(model, head, batch, labels, weights, 1.0).double()
                totals[1] += weights[:, 1:].sum(dtype=torch.float64)
        _all_reduce(totals)
        model.train(was_training)
        metrics = {f"{metric_key_prefix}_loss": float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics
