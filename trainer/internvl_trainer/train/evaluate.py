"""Evaluating a model on a team's own data: predictions beside references, exact match, token F1, loss.

``internvl-train evaluate --model PATH_OR_URI --data META`` runs the model (a local folder or an S3
prefix, either layout) on every sample of the meta file's datasets, built exactly as training
builds them (template, tiling, masks). For each sample it

- computes the teacher-forced loss over the sample's supervised tokens (every assistant turn);
- generates (greedy) an answer to the prompt that precedes the sample's last assistant turn, and
  compares it with that turn: exact match and token F1 after normalisation (lower case, punctuation
  removed, whitespace collapsed; words are whitespace-separated, CJK characters count one each).

It writes one JSON line per sample (``{"id", "where", "reference", "prediction", "exactMatch",
"tokenF1", "loss", "tokens"}``) and a summary: the means of exact match and token F1 over the
samples with an answer, and the token-weighted loss, so the base and the fine-tuned model can be
compared on the same data. The training run's final check (``validation.jsonl``) uses the same
functions on a few held-out samples.
"""

from __future__ import annotations

import json
import logging
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from internvl_trainer.loss import IGNORE_INDEX

log = logging.getLogger(__name__)

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_PUNCTUATION = set(string.punctuation)


def normalise(text: str) -> str:
    """Lower case, punctuation (ASCII and Unicode) removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    kept = "".join(" " if char in _PUNCTUATION or unicodedata.category(char).startswith("P") else char for char in text)
    return " ".join(kept.split())


def words(text: str) -> list[str]:
    return _TOKEN.findall(normalise(text))


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 over ``words``: 1.0 when both are empty."""
    predicted, expected = words(prediction), words(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def reference_answer(record: dict[str, Any]) -> str | None:
    """The text of a record's last assistant turn."""
    for message in reversed(record.get("conversations") or []):
        role = message.get("from", message.get("role"))
        if role in ("gpt", "assistant"):
            return str(message.get("value", message.get("content", "")))
    return None


def prompt_length(labels: torch.Tensor) -> int | None:
    """Where the last assistant turn's supervised tokens start (the prompt is everything before)."""
    supervised = (labels != IGNORE_INDEX).nonzero().flatten()
    if supervised.numel() == 0:
        return None
    start = int(supervised[-1])
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start


@dataclass
class Scored:
    """One evaluated sample."""

    loss_sum: float
    tokens: int
    prediction: str | None


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pixels(sample: Any, model: torch.nn.Module) -> torch.Tensor | None:
    if not sample.tiles:
        return None
    parameter = next(model.parameters())
    return sample.pixel_values.to(device=parameter.device, dtype=parameter.dtype)


@torch.no_grad()
def sample_loss(model: torch.nn.Module, sample: Any) -> tuple[float, int]:
    """The summed cross-entropy and the count of a sample's supervised tokens."""
    device = _model_device(model)
    ids = sample.input_ids.unsqueeze(0).to(device)
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    pixels = _pixels(sample, model)
    if pixels is not None:
        inputs["pixel_values"] = pixels
    logits = model(**inputs).logits[0, :-1].float()
    targets = sample.labels[1:].to(device)
    keep = targets != IGNORE_INDEX
    if not bool(keep.any()):
        return 0.0, 0
    loss = F.cross_entropy(logits[keep], targets[keep], reduction="sum")
    return float(loss), int(keep.sum())


@torch.no_grad()
def generate_answer(model: torch.nn.Module, tokenizer: Any, sample: Any, *, max_new_tokens: int = 64) -> str | None:
    """The model's greedy answer to the prompt before the sample's last assistant turn."""
    start = prompt_length(sample.labels)
    if start is None:
        return None
    device = _model_device(model)
    ids = sample.input_ids[:start].unsqueeze(0).to(device)
    inputs: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    pixels = _pixels(sample, model)
    if pixels is not None:
        inputs["pixel_values"] = pixels
    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).strip()


def score(model: torch.nn.Module, tokenizer: Any, sample: Any, *, max_new_tokens: int = 64) -> Scored:
    loss_sum, tokens = sample_loss(model, sample)
    prediction = generate_answer(model, tokenizer, sample, max_new_tokens=max_new_tokens)
    return Scored(loss_sum, tokens, prediction)


def line_for(sample_id: str, where: str, reference: str | None, scored: Scored) -> dict[str, Any]:
    line: dict[str, Any] = {"id": sample_id, "where": where, "reference": reference, "prediction": scored.prediction}
    if reference is not None and scored.prediction is not None:
        line["exactMatch"] = exact_match(scored.prediction, reference)
        line["tokenF1"] = token_f1(scored.prediction, reference)
    line["loss"] = scored.loss_sum / scored.tokens if scored.tokens else None
    line["tokens"] = scored.tokens
    return line


def summarise(lines: Sequence[dict[str, Any]], skipped: int = 0) -> dict[str, Any]:
    """Means of exact match and token F1 over answered samples, the token-weighted loss."""
    answered = [line for line in lines if "exactMatch" in line]
    tokens = sum(line["tokens"] for line in lines)
    loss = sum(line["loss"] * line["tokens"] for line in lines if line["loss"] is not None)
    return {
        "samples": len(lines),
        "skipped": skipped,
        "exactMatch": sum(line["exactMatch"] for line in answered) / len(answered) if answered else None,
        "tokenF1": sum(line["tokenF1"] for line in answered) / len(answered) if answered else None,
        "loss": loss / tokens if tokens else None,
        "tokens": tokens,
    }


def evaluate_samples(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Iterable[tuple[str, str, dict[str, Any] | None, Any]],
    *,
    max_new_tokens: int = 64,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], int]:
    """Score ``(id, where, record, sample)`` items (sample None: skipped). Returns the lines and
    the number skipped."""
    from tqdm.auto import tqdm

    model.eval()
    lines, skipped = [], 0
    for sample_id, where, record, sample in tqdm(list(items), desc="evaluate", disable=not progress):
        if sample is None:
            skipped += 1
            continue
        scored = score(model, tokenizer, sample, max_new_tokens=max_new_tokens)
        reference = reference_answer(record) if record is not None else None
        lines.append(line_for(sample_id, where, reference, scored))
    return lines, skipped


def write_jsonl(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))


def all_items(data: Any) -> list[tuple[str, str, dict[str, Any] | None, Any]]:
    """Every sample of every dataset of a ``RunData`` (held-out split or not), built."""
    from internvl_trainer.data.errors import SampleError

    items = []
    for where in data.all_refs():
        sample = data.build_eval(where)
        try:
            record = data.record(where) if sample is not None else None
        except SampleError:
            record = None
        items.append((f"{data.names[where.dataset]}:{where.line}", data.where(where), record, sample))
    return items


def run_evaluation(
    model_uri: str,
    meta_uri: str,
    output: Path,
    *,
    config: Any = None,
    model_name: str | None = None,
    max_new_tokens: int = 64,
    limit: int | None = None,
    scratch: Path | None = None,
) -> dict[str, Any]:
    """What ``internvl-train evaluate`` runs: load, build every sample, score, write. Returns the
    summary (also written to ``<output>.summary.json``)."""
    import tempfile

    from internvl_trainer.model.load import load
    from internvl_trainer.storage import Storage
    from internvl_trainer.train.datasets import open_run_data

    storage = Storage(config.storage) if config is not None else Storage()
    scratch = scratch or Path(tempfile.mkdtemp(prefix="internvl-evaluate-"))
    loaded = load(model_uri, storage=storage, cache_dir=scratch / "models")
    if loaded.tokenizer is None:
        raise ValueError(f"{model_uri}: the model folder has no tokenizer")
    if torch.cuda.is_available():
        loaded.model.to("cuda")
    evaluation_config = config or evaluation_train_config(loaded, model_uri, meta_uri, model_name)
    data = open_run_data(
        evaluation_config,
        loaded.tokenizer,
        loaded.model.config,
        storage=storage,
        cache_dir=scratch / "data-cache",
        meta_uri=meta_uri,
        eval_split=0.0,
    )
    items = all_items(data)[:limit] if limit else all_items(data)
    lines, skipped = evaluate_samples(loaded.model, loaded.tokenizer, items, max_new_tokens=max_new_tokens)
    summary = {"model": model_uri, "data": meta_uri, **summarise(lines, skipped)}
    write_jsonl(output, lines)
    output.with_name(output.name + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def evaluation_train_config(loaded: Any, model_uri: str, meta_uri: str, model_name: str | None) -> Any:
    """A TrainConfig that only serves to build samples for a model evaluated without a train.yaml:
    the template of ``model_name`` (else guessed from the tokenizer: a ``<s>`` BOS means an
    InternLM-based model), the processor's tile limit (a published model's is its run's
    ``data.maxTiles``), no sequence limit to speak of."""
    from internvl_trainer.config import DEFAULT_MAX_TILES, TrainConfig

    if model_name is None:
        model_name = "InternVL2_5-8B" if getattr(loaded.tokenizer, "bos_token", None) == "<s>" else "InternVL3-8B"
    images = loaded.processor.image_processor if loaded.processor is not None else None
    max_tiles = getattr(images, "max_patches", None) or DEFAULT_MAX_TILES
    weights = model_uri if model_uri.startswith("s3://") else str(Path(model_uri).resolve())
    return TrainConfig.model_validate(
        {
            "model": {"name": model_name, "weights": weights},
            "method": {"type": "full", "dropPathRate": 0.0},
            "data": {"meta": meta_uri, "maxSeqLength": 1048576, "maxTiles": max_tiles, "overlong": "skip"},
            "training": {"learningRate": 1e-5, "weightDecay": 0.0, "globalBatchSize": 1},
            "batch": {"perDeviceBatchSize": 1, "gradientAccumulationSteps": 1},
            "output": {"uri": "/unused"},
        }
    )
