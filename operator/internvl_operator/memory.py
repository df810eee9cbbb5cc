"""The memory model: estimated peak GPU memory of one training process, from first principles.

Every constant is in this module, with its derivation next to it; docs/sizing.md prints them.
Nothing depends on the model's name: an estimate is a function of the catalog's dimensions, the
trained parts, the DeepSpeed config (ZeRO stage, offload, bucket sizes) and the batch shape.

The estimate is the sum of what stays allocated for the whole run plus the larger of the two
transient peaks, which never overlap:

- backward peak: the activations kept for the backward pass (layer checkpoints, then the larger
  of the LM-head logits in the loss, one chunk of them in this trainer, and one decoder layer being
  recomputed), plus the vision tower's saved activations when it is trained;
- optimizer-step peak: the fp32 gradient partition the optimizer step reads, allocated after the
  activations are gone.

Persistent parts, per GPU with N GPUs and P parameters of which T are trained:

| part | ZeRO 1 | ZeRO 2 | ZeRO 3 (with CPU offload) |
|---|---|---|---|
| weights (bf16) | 2 P | 2 P | 2 P / N (0) + gathered |
| gradients (bf16) | 2 T | 2 T / N | 2 T / N (0) |
| optimizer states | 12 T / N | 12 T / N | 12 T / N (0) |
| communication buckets | 2 x 2 x reduce bucket | 2 x 2 x reduce bucket | 2 x reduce bucket |

ZeRO-3 partitions frozen weights too (LoRA's frozen base model shards over the GPUs), and it
gathers each layer's weights before use: ``gathered`` is the largest single tensor or the
prefetch bucket plus the current layer, whichever is larger, capped by ``max_live_parameters``
unless one tensor is larger. DeepSpeed allocates its reduce buckets at full size whatever the
number of trained parameters, twice over with ``overlap_comm`` on ZeRO 1 and 2.

A mixture-of-experts LLM keeps the weights, gradients and optimizer states of all its experts (P
counts them all), while its activations are those of the experts each token is routed to (below);
``expert_placement`` says which experts' states each GPU holds.

Sequences are planned at full length: a micro-batch holds per-device batch x maxSeqLength tokens
(packing fills them), and each sequence brings ``tiles_per_sequence`` tiles to the vision tower
(the planner's ``tiles_per_sequence`` says how many).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from internvl_operator.catalog import VISION_TOKENS_PER_TILE, ModelSpec, MoELanguageModel
from internvl_operator.deepspeed import ZeroSettings
from internvl_trainer.config import Section

GIB = 2**30
"""Bytes in a GiB: every size here is in GiB, as GPU memory is."""

# --- bytes per parameter ---------------------------------------------------------------------
WEIGHT_BYTES = 2
"""bf16 weights, trained or frozen."""
GRADIENT_BYTES = 2
"""bf16 gradients of the trained parameters, as DeepSpeed accumulates and reduces them."""
OPTIMIZER_BYTES = 12
"""Mixed-precision AdamW per trained parameter: fp32 master copy (4) + first moment (4) + second
moment (4), as in ZeRO (Rajbhandari et al. 2020, K = 12)."""
STEP_GRADIENT_BYTES = 4
"""The fp32 copy of a GPU's gradient partition that the optimizer step reads (ZeRO 1/2 build it
whole; ZeRO-3 one sub-group at a time)."""

# --- bytes per activation element -----------------------------------------------------------
ACTIVATION_BYTES = 2
"""bf16 activations."""
LOGIT_BYTES = 12
"""Per token and vocabulary entry in the loss. The loss upcasts the bf16 logits to fp32 and
log-softmax keeps its fp32 output (4) for the backward pass; there, its fp32 incoming gradient
(4) and outgoing gradient (4) are alive together with it: 12. The forward peak is lower: bf16
logits (2) + their fp32 copy (4) + the log-softmax output (4) = 10."""
LOSS_CHUNK_TOKENS = 1024
"""Tokens whose logits the trainer's loss holds at once: it applies the LM head to supervised
positions only, this many at a time, recomputing each chunk's logits in the backward pass
(``internvl_trainer.loss.LOSS_CHUNK_TOKENS``; a test holds the two equal). InternVL's trainer
computes the logits of every position; the published figures are compared with that."""
DROPOUT_MASK_BYTES = 1
"""A boolean dropout mask, one byte per element (LoRA's input dropout)."""

# --- elements saved per token by one layer for its backward pass ----------------------------
LLM_LAYER_SAVED_HIDDEN = 6
"""A pre-norm SwiGLU decoder layer with flash attention saves, in units of the hidden size h:
the two RMSNorm inputs (2), the two normalised outputs that feed q/k/v and gate/up (2), the
query (1) and the attention output (1) = 6 h; plus key and value (2 x kv_heads x head_dim)."""
LLM_LAYER_SAVED_INTERMEDIATE = 4
"""... and, in units of the intermediate size i: gate output, up output, SiLU(gate), and the
product feeding the down projection = 4 i. Flash attention keeps no sequence x sequence scores.
In an MoE layer i is the routed experts' together: experts per token x each expert's width."""
MOE_ROUTE_SAVED_HIDDEN = 2
"""An MoE layer also saves, for each expert a token is routed to, the token's copy gathered as
that expert's input and the expert's output before the routing weight scales it = 2 h per route."""
MOE_ROUTER_SAVED = 2
"""... and the router's logits and softmax probabilities, one per expert each = 2 x experts."""
VISION_LAYER_SAVED_HIDDEN = 8
"""An InternViT layer (pre-norm, GELU MLP) saves, in units of its width C: two norm inputs, two
norm outputs, q, k, v and the attention output = 8 C ..."""
VISION_LAYER_SAVED_INTERMEDIATE = 2
"""... and fc1's output and GELU's output = 2 I."""
LORA_ATTENTION_INPUTS_HIDDEN = 4
"""LoRA's dropout copies the input of each target, each copy with a mask: q, k, v and o read a
hidden-size input (4 h) ..."""
LORA_MLP_INPUTS_HIDDEN = 2
"""... and, where LoRA targets the MLP (not on MoE models), gate and up read a hidden-size input
(2 h) and down an intermediate-size one (1 i)."""

# --- fixed costs ----------------------------------------------------------------------------
FRAMEWORK_GIB = 2.0
"""Outside PyTorch's allocator statistics but on the GPU: the CUDA context with its kernels
(about 0.5 GiB), NCCL communicators and their buffers (about 1 GiB), cuBLAS and flash-attention
workspaces (about 0.5 GiB)."""

GPU_BUDGET_FRACTION = 0.9
"""A plan fits when its estimate is at most this fraction of the GPU's memory; the rest absorbs
the caching allocator's fragmentation and what the model leaves out."""


def offload_host_gib(model: ModelSpec, trainable: Trainable) -> float:
    """Host memory a ZeRO-3 CPU-offload run needs over all its nodes: the bf16 weights plus the
    optimizer states and the fp32 gradients of the trained parameters."""
    weights = WEIGHT_BYTES * (model.total_params + trainable.lora_params(model))
    return (weights + (OPTIMIZER_BYTES + STEP_GRADIENT_BYTES) * trainable.params(model)) / GIB


def budget_gib(gpu_memory_gib: float) -> float:
    """The memory a plan may use on a GPU of this size."""
    return GPU_BUDGET_FRACTION * gpu_memory_gib


class Trainable(BaseModel):
    """Which parameters are trained."""

    model_config = ConfigDict(frozen=True)

    vision_layers: int = 0
    """Trained vision layers counted from the top; the tower's full depth trains it whole."""
    projector: bool = False
    llm: bool = False
    lora_rank: int | None = None
    lora_llm: bool = False
    lora_vision: bool = False
    lora_experts: bool = False
    """LoRA on an MoE LLM's expert projections too (the trainer's ``experts`` target)."""
    lora_dropout: bool = True
    """Whether LoRA's dropout is on (rate above 0), so that it copies each adapted input."""

    def lora_params(self, model: ModelSpec) -> int:
        if self.lora_rank is None:
            return 0
        params = 0
        if self.lora_llm:
            params += model.llm.layers * model.llm.lora_layer_params(self.lora_rank)
        if self.lora_experts:
            params += model.llm.layers * model.llm.expert_lora_layer_params(self.lora_rank)
        if self.lora_vision:
            params += model.vision.layers * model.vision_lora_layer_params(self.lora_rank)
        return params

    def params(self, model: ModelSpec) -> int:
        """Trained parameters: the unfrozen parts plus the LoRA adapters."""
        vision = model.vision
        trained = vision.params if self.vision_layers >= vision.layers else self.vision_layers * vision.layer_params
        trained += model.projector_params if self.projector else 0
        trained += model.llm.params if self.llm else 0
        return trained + self.lora_params(model)

    def vision_backward_layers(self, model: ModelSpec) -> int:
        """Vision layers the backward pass goes through (down to the lowest trained one)."""
        return model.vision.layers if self.lora_vision else min(self.vision_layers, model.vision.layers)


class MemoryPart(Section):
    """One part of an estimate."""

    name: str
    gib: float


class MemoryEstimate(Section):
    """Estimated peak memory of one GPU, by part."""

    parts: list[MemoryPart]
    total_gib: float = Field(alias="totalGiB")
    peak: Literal["backward", "optimizer step"]
    """Which transient peak is the larger one."""

    def gib(self, name: str) -> float:
        """The size of a part, 0 when the estimate has no such part."""
        return next((part.gib for part in self.parts if part.name == name), 0.0)

    def largest(self, count: int = 3) -> list[MemoryPart]:
        return sorted(self.parts, key=lambda part: -part.gib)[:count]


def llm_layer_saved(model: ModelSpec) -> int:
    """Elements per token one decoder layer saves for its backward pass."""
    llm = model.llm
    saved = (
        LLM_LAYER_SAVED_HIDDEN * llm.hidden_size
        + 2 * llm.kv_heads * llm.head_dim
        + LLM_LAYER_SAVED_INTERMEDIATE * llm.routed_intermediate_size
    )
    if isinstance(llm, MoELanguageModel):
        saved += MOE_ROUTE_SAVED_HIDDEN * llm.experts_per_token * llm.hidden_size + MOE_ROUTER_SAVED * llm.experts
    return saved


def lora_layer_saved_bytes(model: ModelSpec) -> int:
    """Bytes per token LoRA's input dropout adds to one decoder layer (the ``llm`` target's
    projections; expert adapters have no dropout)."""
    llm = model.llm
    inputs = LORA_ATTENTION_INPUTS_HIDDEN * llm.hidden_size
    if llm.lora_on_mlp:
        inputs += LORA_MLP_INPUTS_HIDDEN * llm.hidden_size + llm.intermediate_size
    return inputs * (ACTIVATION_BYTES + DROPOUT_MASK_BYTES)


def vision_layer_saved(model: ModelSpec) -> int:
    """Elements per vision token one vision layer saves for its backward pass."""
    vision = model.vision
    return VISION_LAYER_SAVED_HIDDEN * vision.hidden_size + VISION_LAYER_SAVED_INTERMEDIATE * vision.intermediate_size


def estimate(
    model: ModelSpec,
    trainable: Trainable,
    *,
    gpus: int,
    deepspeed: dict[str, Any],
    per_device_batch_size: int,
    max_seq_length: int,
    tiles_per_sequence: int,
    gradient_checkpointing: bool = True,
    loss_chunk_tokens: int | None = LOSS_CHUNK_TOKENS,
) -> MemoryEstimate:
    """The estimated peak memory of one of ``gpus`` processes (see the module docstring), with the
    loss's logits of ``loss_chunk_tokens`` tokens at once (None: of every token, as InternVL)."""
    zero = ZeroSettings.of(deepspeed)
    lora = trainable.lora_params(model)
    weights_total = model.total_params + lora
    trained = trainable.params(model)
    shards = gpus if zero.stage >= 1 else 1

    parts: dict[str, float] = {}
    # persistent
    if zero.stage < 3:
        parts["weights"] = WEIGHT_BYTES * weights_total
    else:
        parts["weights"] = 0.0 if zero.offload_params else WEIGHT_BYTES * weights_total / gpus
        layer = max(model.llm.layer_params, model.vision.layer_params)
        live = max(model.largest_gathered, min(zero.max_live_parameters, zero.prefetch_bucket_size + layer))
        parts["gathered weights (ZeRO-3)"] = WEIGHT_BYTES * live
    if zero.offload_optimizer:
        parts["gradients"] = 0.0
        parts["optimizer states"] = 0.0
        step = 0.0
    else:
        parts["gradients"] = GRADIENT_BYTES * trained / (1 if zero.stage <= 1 else gpus)
        parts["optimizer states"] = OPTIMIZER_BYTES * trained / shards
        partition = trained / shards
        step = STEP_GRADIENT_BYTES * (min(zero.sub_group_size, partition) if zero.stage == 3 else partition)
    if zero.stage >= 1:
        copies = 2 if zero.overlap_comm and zero.stage < 3 else 1
        parts["communication buckets"] = GRADIENT_BYTES * zero.reduce_bucket_size * copies
    parts["framework"] = FRAMEWORK_GIB * GIB

    # backward peak
    llm = model.llm
    tokens = per_device_batch_size * max_seq_length
    layer_bytes = llm_layer_saved(model) * ACTIVATION_BYTES + (
        lora_layer_saved_bytes(model) if trainable.lora_llm and trainable.lora_dropout and trainable.lora_rank else 0
    )
    if gradient_checkpointing:
        kept = llm.layers * llm.hidden_size * ACTIVATION_BYTES * tokens
        recompute = layer_bytes * tokens
    else:
        kept = llm.layers * layer_bytes * tokens
        recompute = 0.0
    logits = LOGIT_BYTES * llm.vocab_size * (tokens if loss_chunk_tokens is None else min(tokens, loss_chunk_tokens))
    vision_tokens = per_device_batch_size * tiles_per_sequence * VISION_TOKENS_PER_TILE
    vision_layer = vision_layer_saved(model) * ACTIVATION_BYTES * vision_tokens
    depth = trainable.vision_backward_layers(model)
    if depth == 0:
        vision_kept = 0.0
    elif gradient_checkpointing:
        vision_kept = depth * model.vision.hidden_size * ACTIVATION_BYTES * vision_tokens + vision_layer
    else:
        vision_kept = depth * vision_layer
    backward = kept + max(logits, recompute) + vision_kept
    forward_vision = vision_layer  # the vision forward runs before the LLM holds anything
    activations = max(backward, forward_vision)

    if activations >= step:
        peak: Literal["backward", "optimizer step"] = "backward"
        if backward >= forward_vision:
            parts["layer checkpoints" if gradient_checkpointing else "layer activations"] = kept
            if logits >= recompute:
                parts["logits"] = logits
            else:
                parts["layer recompute"] = recompute
            if vision_kept:
                parts["vision activations"] = vision_kept
        else:
            parts["vision forward"] = forward_vision
    else:
        peak = "optimizer step"
        parts["optimizer step (fp32 gradients)"] = step

    total = sum(parts.values())
    return MemoryEstimate(
        parts=[MemoryPart(name=name, gib=round(size / GIB, 2)) for name, size in parts.items() if size > 0],
        total_gib=round(total / GIB, 2),
        peak=peak,
    )


def expert_placement(model: ModelSpec, trainable: Trainable, *, gpus: int, stage: int, offload: bool) -> str | None:
    """Which experts' weights and states each of ``gpus`` GPUs holds under a ZeRO stage (None for
    a dense model). Transformers keeps a layer's experts as tensors whose first dimension is the
    expert: ZeRO-3 cuts each tensor into equal flat shards, so a GPU holds a run of whole experts
    of every layer; ZeRO-1 and 2 split one flat buffer of all trained parameters in model order, so
    a GPU holds the optimizer states of whole consecutive layers."""
    llm = model.llm
    if not isinstance(llm, MoELanguageModel):
        return None
    experts = llm.experts
    if trainable.llm:
        held = "weights, gradients and optimizer states"
    else:
        held = "frozen weights" + (" (and LoRA pairs)" if trainable.lora_experts else "")
    lead = (
        f"mixture of experts: the {held} of all {experts} experts of each of the {llm.layers} layers are planned "
        f"for ({model.total_params / 1e9:.1f} B parameters), the activations of the {llm.experts_per_token} each "
        f"token is routed to ({model.active_params / 1e9:.1f} B active)"
    )
    if stage == 3 and offload:
        where = "ZeRO-3 + CPU offload keeps them in host memory; a GPU gathers one layer's experts at a time"
    elif stage == 3 and experts % gpus == 0:
        share = experts // gpus
        where = (
            f"ZeRO-3 shards every expert tensor over the {gpus} GPUs: GPU r holds experts {share}r to "
            f"{share}r+{share - 1} of every layer and gathers a layer's {experts} experts to run it"
        )
    elif stage == 3:
        where = (
            f"ZeRO-3 shards every expert tensor over the {gpus} GPUs: each holds {experts / gpus:.3g} experts' "
            f"worth of every layer ({experts} experts do not split evenly over {gpus}, so shards cross experts)"
        )
    elif trainable.llm:
        split = "optimizer states" if stage == 1 else "gradients and optimizer states"
        whole = "weights and gradients" if stage == 1 else "weights"
        where = (
            f"ZeRO-{stage}: every GPU holds the bf16 {whole} of all experts; the {split} are one flat buffer "
            f"split in {gpus} in model order, so each GPU holds those of all experts of about "
            f"{llm.layers / gpus:.3g} consecutive layers, not a share of every expert"
        )
    else:
        where = f"ZeRO-{stage}: every GPU holds all of them"
    return f"{lead}; {where}"
