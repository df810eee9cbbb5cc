"""The model catalog: the architecture of every InternVL 2.5, InternVL3 and InternVL3.5 size the planner knows.

Each entry names the vision tower and the language model its model card lists and carries the
dimensions of both from the ``vision_config`` and ``llm_config`` of the model's ``config.json``
on Hugging Face (``https://huggingface.co/OpenGVLab/<name>/blob/main/config.json``). Parameter
counts are computed from those dimensions, layer by layer, and agree with the totals the model
pages report (``card_total``; a test holds them within 0.5 %). docs/sizing.md prints the table.

InternVL unties the LM head from the input embeddings for every size (``tie_word_embeddings`` is
forced to false), so the head is counted separately even for the Qwen2.5 and Qwen3 models that tie
them. A mixture-of-experts LLM (``MoELanguageModel``: InternVL3.5's Qwen3-MoE and GPT-OSS) has
``params`` of all its experts and ``active_params`` of those a token is routed to.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from internvl_trainer.config import MODEL_NAMES

PATCH_SIZE = 14
IMAGE_SIZE = 448
VISION_TOKENS_PER_TILE = (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1
"""Tokens the vision tower sees per 448-pixel tile: 32 x 32 patches plus the class token."""
LLM_TOKENS_PER_TILE = ((IMAGE_SIZE // PATCH_SIZE) // 2) ** 2
"""Tokens a tile becomes in the LLM after the 0.5 pixel shuffle: 256."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VisionTower(_Frozen):
    """An InternViT vision encoder."""

    name: str
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    qkv_bias: bool
    qk_norm: bool
    norm: Literal["layer_norm", "rms_norm"]
    card_params: str
    """The size its own model card gives."""

    @property
    def layer_params(self) -> int:
        c, i = self.hidden_size, self.intermediate_size
        norm = c if self.norm == "rms_norm" else 2 * c  # RMSNorm has a weight, LayerNorm a weight and a bias
        attention = c * 3 * c + (3 * c if self.qkv_bias else 0) + c * c + c  # qkv, proj (with bias)
        mlp = c * i + i + i * c + c  # fc1, fc2 with biases
        extras = 2 * c + (2 * norm if self.qk_norm else 0)  # layer scales ls1, ls2; q_norm, k_norm
        return attention + mlp + 2 * norm + extras

    @property
    def embedding_params(self) -> int:
        c = self.hidden_size
        return 3 * PATCH_SIZE * PATCH_SIZE * c + c + c + VISION_TOKENS_PER_TILE * c  # patch conv, class, positions

    @property
    def params(self) -> int:
        return self.embedding_params + self.layers * self.layer_params

    @property
    def largest_tensor(self) -> int:
        return max(self.hidden_size * self.intermediate_size, 3 * self.hidden_size**2)


class LanguageModel(_Frozen):
    """The decoder-only LLM behind the projector, with a dense SwiGLU MLP in every layer."""

    name: str
    family: Literal["qwen2", "internlm2", "internlm3", "qwen3", "qwen3_moe", "gpt_oss"]
    hidden_size: int
    layers: int
    heads: int
    kv_heads: int
    intermediate_size: int
    vocab_size: int
    """Rows of the embedding and the LM head in the InternVL checkpoint (the tokenizer's
    vocabulary plus InternVL's special tokens)."""
    qkv_bias: bool
    bos_token: str | None
    """The token the tokenizer puts first, or None (Qwen2.5 and Qwen3 add none; InternLM adds
    ``<s>``, so InternVL's label masking shifts by one)."""
    head_size: int | None = None
    """The config's ``head_dim`` where it is not hidden_size / heads (Qwen3, GPT-OSS)."""
    qk_norm: bool = False
    """An RMSNorm over each query and key head (Qwen3's ``q_norm`` and ``k_norm``, head_dim weights each)."""
    output_bias: bool = False
    """A bias on the attention's output projection too (GPT-OSS)."""
    attention_sinks: bool = False
    """A learned sink logit per query head (GPT-OSS's ``sinks``)."""

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // self.heads

    @property
    def attention_params(self) -> int:
        """q, k, v and o projections with their biases, the q/k norms and the sinks of one layer."""
        h, d = self.hidden_size, self.head_dim
        q, kv = self.heads * d, self.kv_heads * d
        params = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.qkv_bias else 0) + (h if self.output_bias else 0)
        return params + (2 * d if self.qk_norm else 0) + (self.heads if self.attention_sinks else 0)

    @property
    def mlp_params(self) -> int:
        """gate, up and down projections of one layer."""
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def active_mlp_params(self) -> int:
        """The MLP parameters one token goes through."""
        return self.mlp_params

    @property
    def layer_params(self) -> int:
        return self.attention_params + self.mlp_params + 2 * self.hidden_size  # two RMSNorms

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def params(self) -> int:
        # input embedding + layers + final norm + the untied LM head
        return 2 * self.embedding_params + self.layers * self.layer_params + self.hidden_size

    @property
    def active_params(self) -> int:
        """The parameters one token goes through (every one, for a dense model)."""
        return self.params - self.layers * (self.mlp_params - self.active_mlp_params)

    @property
    def routed_intermediate_size(self) -> int:
        """Intermediate activations per token and layer: the MLP's width, or the routed experts' together."""
        return self.intermediate_size

    @property
    def largest_gathered(self) -> int:
        """The most parameters ZeRO-3 gathers as one: the largest tensor, the embedding or the
        gate (up) projection."""
        return max(self.embedding_params, self.hidden_size * self.intermediate_size)

    @property
    def lora_on_mlp(self) -> bool:
        """Whether LoRA targets the MLP projections too, not only the attention's."""
        return True

    def lora_layer_params(self, rank: int) -> int:
        """LoRA parameters per decoder layer on the projections InternVL targets: q, k, v, o and,
        where ``lora_on_mlp``, gate, up and down; rank x (in + out) each."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = (h + q) + 2 * (h + kv) + (q + h)
        return rank * (attention + (2 * (h + i) + (i + h) if self.lora_on_mlp else 0))

    def expert_lora_layer_params(self, rank: int) -> int:
        """LoRA parameters per decoder layer on the experts' projections (none without experts)."""
        return 0


class MoELanguageModel(LanguageModel):
    """A mixture-of-experts LLM: every layer's MLP is ``experts`` SwiGLU experts of width
    ``intermediate_size`` (Qwen3-MoE's ``moe_intermediate_size``, GPT-OSS's ``intermediate_size``)
    behind a linear router that sends each token to ``experts_per_token`` of them.

    Weights, gradients and optimizer states are those of all experts (``params``); a token's
    compute and activations are those of the experts it is routed to (``active_params``). The MoE
    block is a ZeRO-3 leaf module, so ZeRO-3 gathers all of a layer's experts at once. LoRA
    targets the attention projections; expert projections are optional and not planned for."""

    experts: int
    experts_per_token: int
    expert_bias: bool = False
    """Biases on each expert's gate/up and down projections (GPT-OSS)."""
    router_bias: bool = False
    """A bias per expert on the router (GPT-OSS)."""

    @property
    def expert_params(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        return 3 * h * i + ((2 * i + h) if self.expert_bias else 0)

    @property
    def router_params(self) -> int:
        return self.experts * self.hidden_size + (self.experts if self.router_bias else 0)

    @property
    def mlp_params(self) -> int:
        return self.experts * self.expert_params + self.router_params

    @property
    def active_mlp_params(self) -> int:
        return self.experts_per_token * self.expert_params + self.router_params

    @property
    def routed_intermediate_size(self) -> int:
        return self.experts_per_token * self.intermediate_size

    @property
    def largest_gathered(self) -> int:
        """The embedding, or the MoE block of one layer (a ZeRO-3 leaf module, gathered whole)."""
        return max(self.embedding_params, self.mlp_params)

    @property
    def lora_on_mlp(self) -> bool:
        return False

    def expert_lora_layer_params(self, rank: int) -> int:
        """A rank-r pair per expert on its gate/up (h -> 2 i) and down (i -> h) projections, as PEFT
        adapts the experts' E x ... parameters (the trainer's ``experts`` LoRA target)."""
        h, i = self.hidden_size, self.intermediate_size
        return self.experts * rank * ((h + 2 * i) + (i + h))


class ModelSpec(_Frozen):
    """One catalog entry: an InternVL model and its parts."""

    name: str
    generation: Literal["2.5", "3", "3.5"]
    vision: VisionTower
    llm: LanguageModel
    card_total: str
    """The total its Hugging Face page reports."""

    @property
    def source(self) -> str:
        return f"https://huggingface.co/OpenGVLab/{self.name}/blob/main/config.json"

    @property
    def projector_params(self) -> int:
        """mlp1: LayerNorm(4C), Linear(4C, H), GELU, Linear(H, H)."""
        c4, h = 4 * self.vision.hidden_size, self.llm.hidden_size
        return 2 * c4 + c4 * h + h + h * h + h

    @property
    def total_params(self) -> int:
        return self.vision.params + self.projector_params + self.llm.params

    @property
    def active_params(self) -> int:
        """The parameters one token goes through: all but the experts it is not routed to."""
        return self.vision.params + self.projector_params + self.llm.active_params

    @property
    def is_moe(self) -> bool:
        return isinstance(self.llm, MoELanguageModel)

    @property
    def largest_gathered(self) -> int:
        """The most parameters ZeRO-3 must gather at once: the biggest single weight, or an MoE
        layer's experts."""
        return max(self.llm.largest_gathered, self.vision.largest_tensor)

    def vision_lora_layer_params(self, rank: int) -> int:
        """LoRA parameters per vision layer on attn.qkv, attn.proj, mlp.fc1 and mlp.fc2."""
        c, i = self.vision.hidden_size, self.vision.intermediate_size
        return rank * ((c + 3 * c) + (c + c) + (c + i) + (i + c))


VIT_300M = VisionTower(
    name="InternViT-300M-448px-V2_5",
    hidden_size=1024,
    layers=24,
    heads=16,
    intermediate_size=4096,
    qkv_bias=True,
    qk_norm=False,
    norm="layer_norm",
    card_params="0.3B",
)
VIT_6B = VisionTower(
    name="InternViT-6B-448px-V2_5",
    hidden_size=3200,
    layers=45,
    heads=25,
    intermediate_size=12800,
    qkv_bias=False,
    qk_norm=True,
    norm="rms_norm",
    card_params="5.5B",
)

_QWEN_VOCAB = 151674
_INTERNLM2_VOCAB = 92553


def _qwen(size: str, hidden: int, layers: int, heads: int, kv: int, inter: int, base: bool = False) -> LanguageModel:
    return LanguageModel(
        name=f"Qwen/Qwen2.5-{size}" + ("" if base else "-Instruct"),
        family="qwen2",
        hidden_size=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv,
        intermediate_size=inter,
        vocab_size=_QWEN_VOCAB,
        qkv_bias=True,
        bos_token=None,
    )


def _internlm2(name: str, hidden: int, layers: int, heads: int, inter: int) -> LanguageModel:
    return LanguageModel(
        name=f"internlm/{name}",
        family="internlm2",
        hidden_size=hidden,
        layers=layers,
        heads=heads,
        kv_heads=8,
        intermediate_size=inter,
        vocab_size=_INTERNLM2_VOCAB,
        qkv_bias=False,
        bos_token="<s>",
    )


INTERNLM3_8B = LanguageModel(
    name="internlm/internlm3-8b-instruct",
    family="internlm3",
    hidden_size=4096,
    layers=48,
    heads=32,
    kv_heads=2,
    intermediate_size=10240,
    vocab_size=128512,
    qkv_bias=False,
    bos_token="<s>",
)

_QWEN3_VOCAB = 151936


def _qwen3(size: str, hidden: int, layers: int, heads: int, kv: int, inter: int) -> LanguageModel:
    """A dense Qwen3: no q/k/v bias, a q and a k RMSNorm per head, head_dim 128 whatever the width."""
    return LanguageModel(
        name=f"Qwen/Qwen3-{size}",
        family="qwen3",
        hidden_size=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv,
        intermediate_size=inter,
        vocab_size=_QWEN3_VOCAB,
        qkv_bias=False,
        bos_token=None,
        head_size=128,
        qk_norm=True,
    )


def _qwen3_moe(size: str, hidden: int, layers: int, heads: int, expert_inter: int) -> MoELanguageModel:
    """A Qwen3-MoE: Qwen3's attention (4 KV heads), 128 experts of ``moe_intermediate_size``, 8 per
    token, a router without bias, every layer sparse."""
    return MoELanguageModel(
        name=f"Qwen/Qwen3-{size}",
        family="qwen3_moe",
        hidden_size=hidden,
        layers=layers,
        heads=heads,
        kv_heads=4,
        intermediate_size=expert_inter,
        vocab_size=_QWEN3_VOCAB,
        qkv_bias=False,
        bos_token=None,
        head_size=128,
        qk_norm=True,
        experts=128,
        experts_per_token=8,
    )


GPT_OSS_20B = MoELanguageModel(
    # https://huggingface.co/openai/gpt-oss-20b/blob/main/config.json: 24 layers alternating
    # sliding-window (128 tokens) and full attention, which changes no parameter count.
    name="openai/gpt-oss-20b",
    family="gpt_oss",
    hidden_size=2880,
    layers=24,
    heads=64,
    kv_heads=8,
    intermediate_size=2880,
    vocab_size=201088,
    qkv_bias=True,
    bos_token=None,
    head_size=64,
    output_bias=True,
    attention_sinks=True,
    experts=32,
    experts_per_token=4,
    expert_bias=True,
    router_bias=True,
)
"""InternVL3.5's GPT-OSS is bf16, which this stack trains as it is: InternVL's maintainers answer
that it was trained entirely in BF16, not in GPT-OSS's MXFP4
(https://github.com/OpenGVLab/InternVL/issues/1134); InternVL's stage-0 script
internvl_chat_gpt_oss/shell/internvl3_5_gpt_oss/internvl3_5_gpt_oss_20b_stage0_mlp_warmup.sh starts
from openai/gpt-oss-20b (``--llm_path``), whose MXFP4 experts transformers dequantizes on load, and
every later stage trains and saves the LLM in bf16 under ZeRO-3 (``--bf16 True``, ``--freeze_llm
False`` in ..._stage2_sft.sh). So no InternVL3.5 checkpoint is refused for its weight format."""

_ENTRIES = [
    # InternVL 2.5: the model cards' "Vision part" and "Language part" columns.
    ("InternVL2_5-1B", "2.5", VIT_300M, _qwen("0.5B", 896, 24, 14, 2, 4864), "938M"),
    ("InternVL2_5-2B", "2.5", VIT_300M, _internlm2("internlm2_5-1_8b-chat", 2048, 24, 16, 8192), "2.21B"),
    ("InternVL2_5-4B", "2.5", VIT_300M, _qwen("3B", 2048, 36, 16, 2, 11008), "3.71B"),
    ("InternVL2_5-8B", "2.5", VIT_300M, _internlm2("internlm2_5-7b-chat", 4096, 32, 32, 14336), "8.08B"),
    ("InternVL2_5-26B", "2.5", VIT_6B, _internlm2("internlm2_5-20b-chat", 6144, 48, 48, 16384), "25.5B"),
    ("InternVL2_5-38B", "2.5", VIT_6B, _qwen("32B", 5120, 64, 40, 8, 27648), "38.4B"),
    ("InternVL2_5-78B", "2.5", VIT_6B, _qwen("72B", 8192, 80, 64, 8, 29568), "78.4B"),
    # InternVL3: natively pre-trained from the base Qwen2.5 models (and InternLM3 for 9B).
    ("InternVL3-1B", "3", VIT_300M, _qwen("0.5B", 896, 24, 14, 2, 4864, base=True), "938M"),
    ("InternVL3-2B", "3", VIT_300M, _qwen("1.5B", 1536, 28, 12, 2, 8960, base=True), "2.09B"),
    ("InternVL3-8B", "3", VIT_300M, _qwen("7B", 3584, 28, 28, 4, 18944, base=True), "7.94B"),
    ("InternVL3-9B", "3", VIT_300M, INTERNLM3_8B, "9.14B"),
    ("InternVL3-14B", "3", VIT_300M, _qwen("14B", 5120, 48, 40, 8, 13824, base=True), "15.1B"),
    ("InternVL3-38B", "3", VIT_6B, _qwen("32B", 5120, 64, 40, 8, 27648, base=True), "38.4B"),
    ("InternVL3-78B", "3", VIT_6B, _qwen("72B", 8192, 80, 64, 8, 29568, base=True), "78.4B"),
    # InternVL3.5: the model cards' table (https://huggingface.co/OpenGVLab/InternVL3_5-8B: vision
    # encoder, language model, "#Total Param"); the LLM dimensions are the config.json of the Qwen3
    # or GPT-OSS model it names, which InternVL3.5's llm_config carries.
    ("InternVL3_5-1B", "3.5", VIT_300M, _qwen3("0.6B", 1024, 28, 16, 8, 3072), "1.06B"),
    ("InternVL3_5-2B", "3.5", VIT_300M, _qwen3("1.7B", 2048, 28, 16, 8, 6144), "2.35B"),
    ("InternVL3_5-4B", "3.5", VIT_300M, _qwen3("4B", 2560, 36, 32, 8, 9728), "4.73B"),
    ("InternVL3_5-8B", "3.5", VIT_300M, _qwen3("8B", 4096, 36, 32, 8, 12288), "8.53B"),
    ("InternVL3_5-14B", "3.5", VIT_300M, _qwen3("14B", 5120, 40, 40, 8, 17408), "15.12B"),
    ("InternVL3_5-38B", "3.5", VIT_6B, _qwen3("32B", 5120, 64, 64, 8, 25600), "38.40B"),
    ("InternVL3_5-30B-A3B", "3.5", VIT_300M, _qwen3_moe("30B-A3B", 2048, 48, 32, 768), "30.85B"),
    ("InternVL3_5-241B-A28B", "3.5", VIT_6B, _qwen3_moe("235B-A22B", 4096, 94, 64, 1536), "240.70B"),
    ("InternVL3_5-GPT-OSS-20B-A4B-Preview", "3.5", VIT_300M, GPT_OSS_20B, "21.23B"),
]

CATALOG: dict[str, ModelSpec] = {
    name: ModelSpec(name=name, generation=generation, vision=vision, llm=llm, card_total=total)
    for name, generation, vision, llm, total in _ENTRIES
}
assert tuple(CATALOG) == MODEL_NAMES, "the catalog and the API's model names must list the same models"


def model_spec(name: str) -> ModelSpec:
    """The catalog entry of a model name (one of internvl_trainer.config.MODEL_NAMES)."""
    return CATALOG[name]


def parse_size(text: str) -> float:
    """A size such as 938M or 25.5B as a number of parameters."""
    scale = {"M": 1e6, "B": 1e9}[text[-1]]
    return float(text[:-1]) * scale
