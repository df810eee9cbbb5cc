"""State-dict keys of InternVL's two checkpoint layouts, and the mapping between them.

- **native**: transformers' ``InternVLForConditionalGeneration`` as it sits in memory
  (``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``model.language_model.*``,
  ``lm_head.weight``). Training always happens in this layout.
- **original**: OpenGVLab's ``InternVLChatModel`` (``vision_model.*``, ``mlp1.*``,
  ``language_model.*``), what the released non-``-hf`` checkpoints and InternVL's own training code
  use.

The table (reference: internvl-recipe.md §7.2 and §7.3) is written once, as pairs of key templates,
and read in both directions, so a rename cannot be right one way and wrong the other:

- InternViT: ``class_embedding`` → ``cls_token``, ``patch_embedding`` →
  ``patch_embeddings.projection``, ``position_embedding`` → ``position_embeddings``, ``layers`` →
  ``layer``, ``attn.proj`` → ``attention.projection_layer``, ``attn.{q,k}_norm`` (InternViT-6B) →
  ``attention.{q,k}_norm``, ``norm1``/``norm2`` → ``layernorm_before``/``layernorm_after``,
  ``ls1``/``ls2`` → ``lambda_1``/``lambda_2``; ``mlp.fc1``/``fc2`` keep their names. The fused
  ``attn.qkv`` is three equal row blocks q, k, v.
- Projector: ``mlp1.0``/``mlp1.1``/``mlp1.3`` → ``layer_norm``/``linear_1``/``linear_2``.
- Qwen2, LLaMA, InternLM3, Qwen3 (q/k norms), Qwen3-MoE (router ``mlp.gate``) and GPT-OSS
  (attention ``sinks``, router ``mlp.router``, fused experts with biases) LLMs:
  ``language_model.model.*`` → ``model.language_model.*`` and ``language_model.lm_head`` →
  ``lm_head``. GPT-OSS experts are one tensor per layer in both layouts (``gate_up_proj``, E × H ×
  2I with gate and up columns interleaved, as transformers 4.55 and 5 both hold them).
- Qwen3-MoE experts: InternVL3.5's remote code runs transformers 4.55, whose experts are a list of
  MLPs (``mlp.experts.{e}.gate_proj/up_proj/down_proj.weight``, I × H and H × I); transformers 5
  holds them as one tensor per layer: ``mlp.experts.gate_up_proj`` (E × 2I × H, each expert's gate
  rows then its up rows) and ``mlp.experts.down_proj`` (E × H × I).
- InternLM2 LLMs (converted to LLaMA): ``tok_embeddings`` → ``embed_tokens``, ``attention.wo`` →
  ``self_attn.o_proj``, ``feed_forward.w1/w2/w3`` → ``mlp.gate_proj/down_proj/up_proj``,
  ``attention_norm``/``ffn_norm`` → ``input_layernorm``/``post_attention_layernorm``, ``output`` →
  ``lm_head``. The fused ``attention.wqkv`` is interleaved per key-value head: for each of the
  ``n_kv`` heads, its ``n_heads / n_kv`` query heads, then its key head, then its value head.

Quantized experts (GPT-OSS's MXFP4 ``*_blocks``/``*_scales``) are refused: nothing here trains them.

Original checkpoints saved with LoRA wrapped in (``use_llm_lora``/``use_backbone_lora`` > 0) hold
PEFT keys; ``fold_original_lora`` merges them into plain weights first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch

LlmKeys = Literal["hf", "hf_expert_list", "internlm2"]
"""How the LLM's keys are spelled in the original layout: ``hf`` (Qwen2, LLaMA, InternLM3, Qwen3,
GPT-OSS: the transformers names), ``hf_expert_list`` (Qwen3-MoE: the transformers names, each
expert its own MLP) or ``internlm2`` (InternLM2's own names and fused ``wqkv``)."""

PARAM = "{param}"
LAYER = "{layer}"
REST = "{rest}"
_GROUPS = {PARAM: r"(?P<param>weight|bias)", LAYER: r"(?P<layer>\d+)", REST: r"(?P<rest>.+)"}

IGNORED_ORIGINAL_KEYS = re.compile(r".*\.rotary_emb\.inv_freq$")
"""Buffers some older checkpoints saved and that nothing loads."""


class LayoutError(ValueError):
    """A state dict that does not fit the layout it is read as; the message names the keys."""


@dataclass(frozen=True)
class Rule:
    """One renamed key (or family of keys): its template in each layout."""

    original: str
    native: str

    def match(self, key: str, side: Literal["original", "native"]) -> dict[str, str] | None:
        match = _compiled(getattr(self, side)).fullmatch(key)
        return match.groupdict() if match else None

    def render(self, side: Literal["original", "native"], parts: Mapping[str, str]) -> str:
        text = getattr(self, side)
        for name, value in parts.items():
            text = text.replace("{" + name + "}", value)
        return text


_PATTERNS: dict[str, re.Pattern[str]] = {}


def _compiled(template: str) -> re.Pattern[str]:
    if template not in _PATTERNS:
        pattern = re.escape(template)
        for placeholder, group in _GROUPS.items():
            pattern = pattern.replace(re.escape(placeholder), group)
        _PATTERNS[template] = re.compile(pattern)
    return _PATTERNS[template]


_VL = "vision_model.encoder.layers.{layer}"
_NL = "model.vision_tower.encoder.layer.{layer}"

VISION_RULES = (
    Rule("vision_model.embeddings.class_embedding", "model.vision_tower.embeddings.cls_token"),
    Rule("vision_model.embeddings.position_embedding", "model.vision_tower.embeddings.position_embeddings"),
    Rule(
        "vision_model.embeddings.patch_embedding.{param}",
        "model.vision_tower.embeddings.patch_embeddings.projection.{param}",
    ),
    Rule(f"{_VL}.attn.proj.{{param}}", f"{_NL}.attention.projection_layer.{{param}}"),
    Rule(f"{_VL}.attn.q_norm.{{param}}", f"{_NL}.attention.q_norm.{{param}}"),
    Rule(f"{_VL}.attn.k_norm.{{param}}", f"{_NL}.attention.k_norm.{{param}}"),
    Rule(f"{_VL}.norm1.{{param}}", f"{_NL}.layernorm_before.{{param}}"),
    Rule(f"{_VL}.norm2.{{param}}", f"{_NL}.layernorm_after.{{param}}"),
    Rule(f"{_VL}.ls1", f"{_NL}.lambda_1"),
    Rule(f"{_VL}.ls2", f"{_NL}.lambda_2"),
    Rule(f"{_VL}.mlp.fc1.{{param}}", f"{_NL}.mlp.fc1.{{param}}"),
    Rule(f"{_VL}.mlp.fc2.{{param}}", f"{_NL}.mlp.fc2.{{param}}"),
)

PROJECTOR_RULES = (
    Rule("mlp1.0.{param}", "model.multi_modal_projector.layer_norm.{param}"),
    Rule("mlp1.1.{param}", "model.multi_modal_projector.linear_1.{param}"),
    Rule("mlp1.3.{param}", "model.multi_modal_projector.linear_2.{param}"),
)

_OL = "language_model.model.layers.{layer}"
_TL = "model.language_model.layers.{layer}"

HF_LLM_RULES = (
    Rule("language_model.lm_head.weight", "lm_head.weight"),
    Rule("language_model.model.{rest}", "model.language_model.{rest}"),
)

INTERNLM2_LLM_RULES = (
    Rule("language_model.model.tok_embeddings.weight", "model.language_model.embed_tokens.weight"),
    Rule("language_model.model.norm.weight", "model.language_model.norm.weight"),
    Rule("language_model.output.weight", "lm_head.weight"),
    Rule(f"{_OL}.attention.wo.{{param}}", f"{_TL}.self_attn.o_proj.{{param}}"),
    Rule(f"{_OL}.feed_forward.w1.{{param}}", f"{_TL}.mlp.gate_proj.{{param}}"),
    Rule(f"{_OL}.feed_forward.w2.{{param}}", f"{_TL}.mlp.down_proj.{{param}}"),
    Rule(f"{_OL}.feed_forward.w3.{{param}}", f"{_TL}.mlp.up_proj.{{param}}"),
    Rule(f"{_OL}.attention_norm.weight", f"{_TL}.input_layernorm.weight"),
    Rule(f"{_OL}.ffn_norm.weight", f"{_TL}.post_attention_layernorm.weight"),
)

VISION_QKV = Rule(f"{_VL}.attn.qkv.{{param}}", f"{_NL}.attention.{{part}}_proj.{{param}}")
"""InternViT's fused projection: one original key, three native ones (``part`` q, k, v)."""

INTERNLM2_WQKV = Rule(f"{_OL}.attention.wqkv.{{param}}", f"{_TL}.self_attn.{{part}}_proj.{{param}}")
"""InternLM2's interleaved projection: one original key, three native ones (``part`` q, k, v)."""

_FUSED_NATIVE = {
    "vision": re.compile(
        r"model\.vision_tower\.encoder\.layer\.(?P<layer>\d+)\.attention\.(?P<part>[qkv])_proj\.(?P<param>weight|bias)"
    ),
    "internlm2": re.compile(
        r"model\.language_model\.layers\.(?P<layer>\d+)\.self_attn\.(?P<part>[qkv])_proj\.(?P<param>weight|bias)"
    ),
}


EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
_EXPERT_LIST = re.compile(
    r"language_model\.model\.layers\.(?P<layer>\d+)\.mlp\.experts\.(?P<expert>\d+)"
    r"\.(?P<proj>gate_proj|up_proj|down_proj)\.weight"
)
_STACKED_EXPERTS = re.compile(
    r"model\.language_model\.layers\.(?P<layer>\d+)\.mlp\.experts\.(?P<proj>gate_up_proj|down_proj)"
)
_QUANTIZED = re.compile(r".+\.experts\.\w+_(blocks|scales)")


def rules(llm: LlmKeys) -> tuple[Rule, ...]:
    """The one-to-one renames for an LLM key style (the fused projections apart)."""
    llm_rules = INTERNLM2_LLM_RULES if llm == "internlm2" else HF_LLM_RULES
    return VISION_RULES + PROJECTOR_RULES + llm_rules


def native_key(original: str, llm: LlmKeys) -> str:
    """The native name of an original key that is renamed one to one. Raises LayoutError."""
    return _rename(original, rules(llm), "original", "native")


def original_key(native: str, llm: LlmKeys) -> str:
    """The original name of a native key that is renamed one to one. Raises LayoutError."""
    return _rename(native, rules(llm), "native", "original")


def _rename(key: str, table: Iterable[Rule], source: str, target: str) -> str:
    for rule in table:
        parts = rule.match(key, source)  # type: ignore[arg-type]
        if parts is not None:
            return rule.render(target, parts)  # type: ignore[arg-type]
    raise LayoutError(f"{key}: no {target} name for this {source} key")


# ---------------------------------------------------------------------------------------------
# fused projections


@dataclass(frozen=True)
class AttentionShape:
    """Head counts of an LLM's attention, needed to (de)interleave InternLM2's ``wqkv``."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise LayoutError(f"{self.num_heads} attention heads are not a multiple of {self.num_kv_heads} kv heads")

    @property
    def groups(self) -> int:
        """Query heads per key-value head."""
        return self.num_heads // self.num_kv_heads


def split_vision_qkv(qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v of InternViT's fused ``attn.qkv`` weight (3C × C) or bias (3C): equal row blocks."""
    if qkv.shape[0] % 3:
        raise LayoutError(f"a fused qkv of {qkv.shape[0]} rows cannot be split in three")
    q, k, v = qkv.chunk(3, dim=0)
    return q.clone(), k.clone(), v.clone()


def fuse_vision_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """InternViT's ``attn.qkv`` from q, k and v: stacked row blocks."""
    return torch.cat([q, k, v], dim=0)


def split_wqkv(wqkv: torch.Tensor, shape: AttentionShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k and v of InternLM2's interleaved ``wqkv`` weight or bias (rows: per kv head, its query
    heads, then its key head, then its value head)."""
    rows_per_group = (shape.groups + 2) * shape.head_dim
    if wqkv.shape[0] != shape.num_kv_heads * rows_per_group:
        raise LayoutError(
            f"wqkv has {wqkv.shape[0]} rows; {shape.num_kv_heads} kv heads x ({shape.groups} query heads + 2)"
            f" x head_dim {shape.head_dim} = {shape.num_kv_heads * rows_per_group}"
        )
    grouped = wqkv.reshape(shape.num_kv_heads, shape.groups + 2, shape.head_dim, *wqkv.shape[1:])
    q = grouped[:, : shape.groups].reshape(shape.num_heads * shape.head_dim, *wqkv.shape[1:])
    k = grouped[:, -2].reshape(shape.num_kv_heads * shape.head_dim, *wqkv.shape[1:])
    v = grouped[:, -1].reshape(shape.num_kv_heads * shape.head_dim, *wqkv.shape[1:])
    return q.clone(), k.clone(), v.clone()


def fuse_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: AttentionShape) -> torch.Tensor:
    """InternLM2's interleaved ``wqkv`` from q, k and v (the inverse of ``split_wqkv``)."""
    rest = q.shape[1:]
    grouped_q = q.reshape(shape.num_kv_heads, shape.groups, shape.head_dim, *rest)
    grouped_k = k.reshape(shape.num_kv_heads, 1, shape.head_dim, *rest)
    grouped_v = v.reshape(shape.num_kv_heads, 1, shape.head_dim, *rest)
    fused = torch.cat([grouped_q, grouped_k, grouped_v], dim=1)
    return fused.reshape(shape.num_kv_heads * (shape.groups + 2) * shape.head_dim, *rest)


def stack_experts(experts: Mapping[int, Mapping[str, torch.Tensor]], layer: str) -> dict[str, torch.Tensor]:
    """One layer's ``gate_up_proj`` (E × 2I × H) and ``down_proj`` (E × H × I) from its experts'
    ``gate_proj``/``up_proj``/``down_proj`` weights, experts numbered 0 to E-1."""
    if sorted(experts) != list(range(len(experts))):
        raise LayoutError(f"layer {layer}: experts {sorted(experts)} are not numbered 0 to {len(experts) - 1}")
    for expert, projections in experts.items():
        if set(projections) != set(EXPERT_PROJECTIONS):
            raise LayoutError(f"layer {layer} expert {expert}: only {sorted(projections)} of {EXPERT_PROJECTIONS}")
    ordered = [experts[index] for index in range(len(experts))]
    return {
        "gate_up_proj": torch.stack([torch.cat([e["gate_proj"], e["up_proj"]]) for e in ordered]),
        "down_proj": torch.stack([e["down_proj"] for e in ordered]),
    }


def unstack_experts(gate_up_proj: torch.Tensor, down_proj: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Each expert's ``gate_proj``, ``up_proj`` and ``down_proj`` weights (the inverse of
    ``stack_experts``)."""
    experts = []
    for gate_up, down in zip(gate_up_proj, down_proj, strict=True):
        gate, up = gate_up.chunk(2, dim=0)
        experts.append({"gate_proj": gate.clone(), "up_proj": up.clone(), "down_proj": down.clone()})
    return experts


# ---------------------------------------------------------------------------------------------
# whole state dicts


def to_native(
    state: Mapping[str, torch.Tensor], llm: LlmKeys, shape: AttentionShape | None = None
) -> dict[str, torch.Tensor]:
    """An original-layout state dict in native names; ``shape`` is needed for InternLM2.
    Raises LayoutError naming the keys that fit no rule."""
    quantized = [key for key in state if _QUANTIZED.fullmatch(key)]
    if quantized:
        raise LayoutError(_listing("quantized expert weights (train from a bf16 release of the model)", quantized))
    table = rules(llm)
    native: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        if IGNORED_ORIGINAL_KEYS.fullmatch(key):
            continue
        expert = _EXPERT_LIST.fullmatch(key) if llm == "hf_expert_list" else None
        if expert is not None:
            experts.setdefault(expert["layer"], {}).setdefault(int(expert["expert"]), {})[expert["proj"]] = tensor
            continue
        fused = _split_fused(key, tensor, llm, shape)
        if fused is not None:
            native.update(fused)
            continue
        try:
            native[_rename(key, table, "original", "native")] = tensor
        except LayoutError:
            unknown.append(key)
    if unknown:
        raise LayoutError(_listing("keys that are not InternVLChatModel weights", unknown))
    for layer, layer_experts in experts.items():
        for proj, stacked in stack_experts(layer_experts, layer).items():
            native[f"model.language_model.layers.{layer}.mlp.experts.{proj}"] = stacked
    return native


def _split_fused(
    key: str, tensor: torch.Tensor, llm: LlmKeys, shape: AttentionShape | None
) -> dict[str, torch.Tensor] | None:
    parts = VISION_QKV.match(key, "original")
    if parts is not None:
        blocks = split_vision_qkv(tensor)
        rule = VISION_QKV
    elif llm == "internlm2" and (parts := INTERNLM2_WQKV.match(key, "original")) is not None:
        if shape is None:
            raise LayoutError(f"{key}: splitting InternLM2's wqkv needs the attention shape")
        blocks = split_wqkv(tensor, shape)
        rule = INTERNLM2_WQKV
    else:
        return None
    return {rule.render("native", {**parts, "part": part}): block for part, block in zip("qkv", blocks, strict=True)}


def to_original(
    state: Mapping[str, torch.Tensor], llm: LlmKeys, shape: AttentionShape | None = None
) -> dict[str, torch.Tensor]:
    """A native state dict in original names, q/k/v fused back; ``shape`` is needed for InternLM2.
    Raises LayoutError naming keys that have no original counterpart, or an incomplete q/k/v."""
    table = rules(llm)
    original: dict[str, torch.Tensor] = {}
    pending: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    stacked: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        experts = _STACKED_EXPERTS.fullmatch(key) if llm == "hf_expert_list" else None
        if experts is not None:
            stacked.setdefault(experts["layer"], {})[experts["proj"]] = tensor
            continue
        fused_kind = _fused_kind(key, llm)
        if fused_kind is not None:
            kind, match = fused_kind
            pending.setdefault((kind, match["layer"], match["param"]), {})[match["part"]] = tensor
            continue
        try:
            original[_rename(key, table, "native", "original")] = tensor
        except LayoutError:
            unknown.append(key)
    if unknown:
        raise LayoutError(_listing("keys that InternVLChatModel has no place for", unknown))
    for (kind, layer, param), blocks in pending.items():
        if set(blocks) != {"q", "k", "v"}:
            raise LayoutError(f"layer {layer} {param}: only {sorted(blocks)} of q, k, v are present")
        parts = {"layer": layer, "param": param}
        if kind == "vision":
            original[VISION_QKV.render("original", parts)] = fuse_vision_qkv(blocks["q"], blocks["k"], blocks["v"])
        else:
            if shape is None:
                raise LayoutError("fusing InternLM2's wqkv needs the attention shape")
            fused = fuse_wqkv(blocks["q"], blocks["k"], blocks["v"], shape)
            original[INTERNLM2_WQKV.render("original", parts)] = fused
    for layer, tensors in stacked.items():
        if set(tensors) != {"gate_up_proj", "down_proj"}:
            raise LayoutError(f"layer {layer}: only {sorted(tensors)} of the experts' gate_up_proj and down_proj")
        for index, expert in enumerate(unstack_experts(tensors["gate_up_proj"], tensors["down_proj"])):
            for proj, weight in expert.items():
                original[f"language_model.model.layers.{layer}.mlp.experts.{index}.{proj}.weight"] = weight
    return original


def _fused_kind(key: str, llm: LlmKeys) -> tuple[str, dict[str, str]] | None:
    for kind, pattern in _FUSED_NATIVE.items():
        if kind == "internlm2" and llm != "internlm2":
            continue
        match = pattern.fullmatch(key)
        if match:
            return kind, match.groupdict()
    return None


def _listing(what: str, keys: list[str], shown: int = 8) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"{len(keys)} {what}: {', '.join(sorted(keys)[:shown])}{more}"


# ---------------------------------------------------------------------------------------------
# original checkpoints saved with LoRA wrapped in

_PEFT_PREFIX = re.compile(r"^(language_model|vision_model)\.base_model\.model\.")
_LORA_PART = re.compile(
    r"^(?P<module>.+)\.(?P<kind>base_layer|lora_A\.default|lora_B\.default)\.(?P<param>weight|bias)$"
)


def has_original_lora(state: Iterable[str]) -> bool:
    """Whether original-layout keys carry PEFT wrappers (a checkpoint saved with use_*_lora > 0)."""
    return any(_PEFT_PREFIX.match(key) for key in state)


def fold_original_lora(
    state: Mapping[str, torch.Tensor], *, llm_scaling: float, vision_scaling: float
) -> dict[str, torch.Tensor]:
    """Plain original-layout weights from a checkpoint that InternVL saved with LoRA wrapped in:
    ``W = W_base + scaling · B @ A`` per adapted module, PEFT's prefixes removed. InternVL's own
    training uses alpha = 2 r, so its scaling is 2."""
    plain: dict[str, torch.Tensor] = {}
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        tower_match = _PEFT_PREFIX.match(key)
        key = _PEFT_PREFIX.sub(r"\1.", key)
        lora = _LORA_PART.match(key)
        if tower_match is None or lora is None:
            plain[key] = tensor
            continue
        module, kind = lora["module"], lora["kind"]
        if kind == "base_layer":
            plain[f"{module}.{lora['param']}"] = tensor
        else:
            adapters.setdefault(module, {})[kind.split(".")[0]] = tensor
    for module, pair in adapters.items():
        if set(pair) != {"lora_A", "lora_B"} or f"{module}.weight" not in plain:
            raise LayoutError(f"{module}: incomplete LoRA (needs base_layer, lora_A and lora_B)")
        scaling = llm_scaling if module.startswith("language_model.") else vision_scaling
        base = plain[f"{module}.weight"]
        delta = (pair["lora_B"].float() @ pair["lora_A"].float()) * scaling
        plain[f"{module}.weight"] = (base.float() + delta).to(base.dtype)
    return plain
