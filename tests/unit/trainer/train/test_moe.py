"""Training a mixture-of-experts InternVL (tiny Qwen3-MoE and GPT-OSS LLMs of 4 experts, 2 routed
per token): under ZeRO-3 on two CPU ranks whose samples route to different experts, exactly as one
process; and with InternVL's load-balancing loss, weighted by the checkpoint's coefficient, in the
loss and in the metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import InternVLForConditionalGeneration

from internvl_trainer.config import TrainConfig
from internvl_trainer.data.collate import Collator, model_inputs
from internvl_trainer.model.load import load
from internvl_trainer.storage import Storage
from internvl_trainer.train.datasets import open_run_data
from internvl_trainer.train.run import run
from tests.unit.trainer.train.runs import ANSWERS, run_two_ranks, train_config, write_data, write_model
from tests.unit.trainer.train.test_two_ranks import STEPS, config_for, losses

MARKED = 5
"""The one sample whose answer holds the marker token."""
MARKER = "Q"
ANSWERS_WITH_MARKER = [*ANSWERS, *ANSWERS]
ANSWERS_WITH_MARKER[MARKED] = "Quiet: a cat."
RARE_EXPERT = 3
COEFFICIENT = 0.01
"""``router_aux_loss_coef`` of the tiny MoE models (model.tiny)."""


def router(model: InternVLForConditionalGeneration) -> torch.nn.Module:
    """Layer 0's router (Qwen3-MoE's ``gate``, GPT-OSS's ``router``)."""
    block = model.model.language_model.layers[0].mlp
    return block.gate if hasattr(block, "gate") else block.router


def route_marker_to_rare_expert(model: InternVLForConditionalGeneration, tokenizer) -> None:
    """Layer 0 routes the marker token, and no other token, to the rare expert: hidden dimension
    0 is 3 on the marker's embedding and 0 everywhere else, dimension 1 is 1 everywhere (image
    tokens included), attention adds nothing to either, and the rare expert's router row is
    20·(dim 0 − dim 1), far above the other experts' small logits on the marker and far below
    them on any other token (which the training steps move by a few thousandths at most)."""
    language_model = model.model.language_model
    embeddings = language_model.embed_tokens.weight
    embeddings[:, :2] = torch.tensor([0.0, 1.0])
    embeddings[tokenizer.convert_tokens_to_ids(MARKER), 0] = 3.0
    projector = model.model.multi_modal_projector.linear_2
    projector.weight[:2] = 0.0
    projector.bias[:2] = torch.tensor([0.0, 1.0])
    output = language_model.layers[0].self_attn.o_proj
    output.weight[:2] = 0.0
    if output.bias is not None:
        output.bias[:2] = 0.0
    rows = router(model).weight
    rows[RARE_EXPERT] = 0.0
    rows[RARE_EXPERT, :2] = torch.tensor([20.0, -20.0])


@pytest.fixture(scope="module")
def sixteen_marked(tmp_path_factory):
    """16 samples, the marked one among them."""
    return write_data(tmp_path_factory.mktemp("marked"), count=16, answers=ANSWERS_WITH_MARKER)


@pytest.fixture(scope="module", params=["qwen3_moe", "gpt_oss"])
def marked(request, tmp_path_factory, sixteen_marked):
    """A MoE model routing as above, and the 16 samples. GPT-OSS, whose load-balancing loss
    InternVL always adds, with a zero coefficient: the term differs with the split of the batch."""
    text = {"router_aux_loss_coef": 0.0} if request.param == "gpt_oss" else {}
    folder = tmp_path_factory.mktemp(request.param)
    model = write_model(folder / "model", llm=request.param, text=text, adjust=route_marker_to_rare_expert)
    return request.param, model, sixteen_marked


def layer0_experts(model_dir, meta, tmp_path) -> list[set[int]]:
    """The experts layer 0 of the base model routes each sample's tokens to, sample by sample."""
    config = train_config(str(model_dir), str(meta), str(tmp_path / "out"))
    loaded = load(model_dir, dtype=torch.float32)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    data = open_run_data(config, tokenizer, model.config, storage=Storage(config.storage), cache_dir=tmp_path)
    collator = Collator(pad_id=tokenizer.pad_token_id, packed=False)
    chosen: list[torch.Tensor] = []
    hook = router(model).register_forward_hook(lambda module, args, output: chosen.append(output[2]))
    experts = []
    with torch.no_grad():
        for where in data.all_refs():
            sample = data.build_at(where, np.random.default_rng(0))
            model(**model_inputs(collator([sample])))
            experts.append(set(chosen.pop().flatten().tolist()))
    hook.remove()
    return experts


def checkpointed(config: TrainConfig) -> TrainConfig:
    """With activation checkpointing, as InternVL's MoE scripts train."""
    training = config.training.model_copy(update={"gradient_checkpointing": True})
    return config.model_copy(update={"training": training})


def test_one_sample_alone_routes_to_the_rare_expert(marked, tmp_path):
    _, model_dir, meta = marked
    experts = layer0_experts(model_dir, meta, tmp_path)
    assert [number for number, used in enumerate(experts) if RARE_EXPERT in used] == [MARKED]
    assert set().union(*experts) == {0, 1, 2, 3}


def test_zero3_on_two_ranks_routing_unevenly_trains_as_one_process(marked, tmp_path):
    """Each step's global batch of 8 goes 4 to a rank: a step holding the marked sample routes
    tokens to the rare expert of layer 0 on one rank and none on the other (and in the others, no
    rank does); every sample is trained on or held out, so some step or evaluation has it."""
    llm, model_dir, meta = marked
    run(checkpointed(config_for(model_dir, meta, tmp_path / "one", world=1)), environ={}, scratch=tmp_path / "scratch")
    config = config_for(model_dir, meta, tmp_path / "two", world=2, deepspeed="zero_stage3_config_100b_1e7_offload")
    process = run_two_ranks(checkpointed(config), tmp_path, "zero3")
    assert process.returncode == 0, process.stderr[-4000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [key for key, _ in two] == [key for key, _ in one] and "evalLoss" in dict(two)
    assert [value for _, value in two] == pytest.approx([value for _, value in one], rel=1e-5)
    logged = [json.loads(line) for line in (tmp_path / "two/runs/uid-1/metrics.jsonl").open()]
    assert [("auxLoss" in record) for record in logged if "loss" in record] == [llm == "gpt_oss"] * STEPS


def metrics(model_dir, meta, output) -> list[dict]:
    run(train_config(str(model_dir), str(meta), str(output), steps=2), environ={}, scratch=output / "scratch")
    return [json.loads(line) for line in (output / "runs/uid-1/metrics.jsonl").open()]


def test_the_load_balancing_loss_is_added_with_the_checkpoints_coefficient_and_logged(tmp_path, pictures):
    """The same weights with and without the checkpoint's ``output_router_logits``: the first
    step's loss differs by exactly the coefficient times the logged load-balancing loss, and the
    term's gradient changes the second step."""
    plain = write_model(tmp_path / "plain", llm="qwen3_moe")
    balanced = write_model(tmp_path / "balanced", llm="qwen3_moe", text={"output_router_logits": True})
    without, with_ = metrics(plain, pictures, tmp_path / "without"), metrics(balanced, pictures, tmp_path / "with")
    assert "auxLoss" not in without[0]
    assert with_[0]["auxLossCoef"] == COEFFICIENT
    # E·Σ f·P with f the share of routings (summing to top_k = 2) and P the mean probability
    # (about 1/4 for a near-uniform random router): about 2
    assert 1.8 < with_[0]["auxLoss"] < 2.6
    assert with_[0]["loss"] == pytest.approx(without[0]["loss"] + COEFFICIENT * with_[0]["auxLoss"], rel=1e-6)
    assert with_[1]["loss"] - COEFFICIENT * with_[1]["auxLoss"] != pytest.approx(without[1]["loss"], rel=1e-7)


def test_expert_adapters_under_zero3_on_two_ranks_train_as_one_process(tmp_path, sixteen_marked):
    """LoRA on attention and on every expert's stacked tensors (PEFT's parameter adapters), with
    the expert tensors partitioned by ZeRO-3 over two ranks that route unevenly."""
    model_dir = write_model(tmp_path / "model", llm="qwen3_moe", adjust=route_marker_to_rare_expert)
    method = {"type": "lora", "dropPathRate": 0.0, "lora": {"targets": ["llm", "experts"], "dropout": 0.0}}

    def lora(config: TrainConfig) -> TrainConfig:
        return checkpointed(config.model_copy(update={"method": config.method.model_validate(method)}))

    run(lora(config_for(model_dir, sixteen_marked, tmp_path / "one", world=1)), environ={}, scratch=tmp_path / "s")
    config = config_for(model_dir, sixteen_marked, tmp_path / "two", world=2, deepspeed="zero_stage3_config")
    process = run_two_ranks(lora(config), tmp_path, "zero3")
    assert process.returncode == 0, process.stderr[-4000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [key for key, _ in two] == [key for key, _ in one]
    assert [value for _, value in two] == pytest.approx([value for _, value in one], rel=1e-5)
