"""The model catalog: the architecture of every InternVL 2.5 and InternVL3 size the planner knows.

Each entry names the vision tower and the language model its model card lists and carries the
dimensions of both from the ``vision_config`` and ``llm_config`` of the model's ``config.json``
on Hugging Face (``https://huggingface.co/OpenGVLab/<name>/blob/main/config.json``). Parameter
counts are computed from those dimensions, layer by layer, and agree with the totals the model
pages report (``card_total``; a test holds them within 0.5 %). docs/sizing.md prints the table.

InternVL unties the LM head from the input embeddings for every size (``tie_word_embeddings`` is
forced to false), so the head is counted separately even for the Qwen2.5 models that tie them.
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
    """The decoder-only LLM behind the projector."""

    name: str
    family: Literal["qwen2", "internlm2", "internlm3"]
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
    """The token the tokenizer puts first, or None (Qwen2.5 adds none; InternLM adds ``<s>``, so
    InternVL's label masking shifts by one)."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads

    @property
    def layer_params(self) -> int:
        h, d, i = self.hidden_size, self.head_dim, self.intermediate_size
        q, kv = self.heads * d, self.kv_heads * d
        attention = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        return attention + 3 * h * i + 2 * h  # gate/up/down projections, two RMSNorms

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def params(self) -> int:
        # input embedding + layers + final norm + the untied LM head
        return 2 * self.embedding_params + self.layers * self.layer_params + self.hidden_size

    def lora_layer_params(self, rank: int) -> int:
        """LoRA parameters per decoder layer on the seven projections InternVL targets
        (q, k, v, o, gate, up, down): rank x (in + out) each."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return rank * ((h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h))


class ModelSpec(_Frozen):
    """One catalog entry: an InternVL model and its parts."""

    name: str
    generation: Literal["2.5", "3"]
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
    def largest_tensor(self) -> int:
        """The biggest single weight: ZeRO-3 must gather it whole."""
        llm = self.llm
        return max(llm.embedding_params, llm.hidden_size * llm.intermediate_size, self.vision.largest_tensor)

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
