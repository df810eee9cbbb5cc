"""Model FLOPs of a training pass, the GPU's peak, and MFU (model FLOPs utilisation).

Model FLOPs count the work the model needs, not what the hardware does: padding, the causal
square a masked kernel computes in full, and gradient checkpointing's recomputation are not
counted. So two layouts of the same samples have the same model FLOPs, and the one that wastes
less has the higher MFU. Per sample of n tokens and t tiles (``FORMULA`` in the report):

- LLM (trained): 6 · N_llm · n, N_llm its active parameters (those a token goes through: of a
  mixture of experts, the router and the experts the token is routed to, not every expert) less
  the input embedding (a lookup);
- LLM attention: 12 · layers · width · n(n+1)/2, width = heads x head_dim, over the pairs a causal
  sample attends (forward 4 · width per pair for QKᵀ and AV, backward twice that);
- projector (trained): 6 · N_proj · t · tokens per tile (256 at 448 pixels);
- vision tower (frozen: forward only, nothing below it needs a gradient): 2 · N_vit · t · v, with
  v = patches + class token per tile (1025) and N_vit its parameters less the position and class
  embeddings; its attention 4 · layers · width · t · v².

MFU = model FLOPs / (seconds x the GPU's dense bf16 peak).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import InternVLForConditionalGeneration

from internvl_trainer.model.moe import MOE_BLOCKS, ROUTERS

FORMULA = (
    "Model FLOPs = Σ over samples of 6·N_llm·n + 12·L_llm·w_llm·n(n+1)/2 + 6·N_proj·k·t + 2·N_vit·v·t"
    " + 4·L_vit·w_vit·v²·t, for a sample of n tokens and t tiles; N_llm: the LLM's parameters less its input"
    " embedding, counting of each mixture-of-experts layer only the experts a token is routed to (top-k of E);"
    " N_proj: the projector's, N_vit: the vision tower's less its position and class embeddings;"
    " L, w: layers and attention width (heads x head dim); k: image tokens per tile (256), v: vision tokens per"
    " tile (1025, patches and class token). The frozen vision tower runs forward only (2·N, not 6·N); causal"
    " attention counts the n(n+1)/2 pairs a sample attends; padding and recomputation are not counted."
    " MFU = model FLOPs / (time x the GPU's dense bf16 peak)."
)

PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
)
"""Dense bf16 tensor-core peaks (NVIDIA's datasheets, half the figures given with sparsity), by a
part of the device name; the first match wins, so longer names come first."""


@dataclass(frozen=True)
class ModelSize:
    """What the FLOPs formula needs of a model."""

    llm_params: int
    llm_layers: int
    llm_width: int
    projector_params: int
    vision_params: int
    vision_layers: int
    vision_width: int
    vision_tokens_per_tile: int
    llm_tokens_per_tile: int

    @classmethod
    def of(cls, model: InternVLForConditionalGeneration) -> ModelSize:
        config, inner = model.config, model.model
        text, vision = config.text_config, config.vision_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        embeddings = inner.vision_tower.embeddings
        lookups = embeddings.position_embeddings.numel() + embeddings.cls_token.numel()
        size = vision.image_size[0] if isinstance(vision.image_size, (list, tuple)) else vision.image_size
        patch = vision.patch_size[0] if isinstance(vision.patch_size, (list, tuple)) else vision.patch_size
        return cls(
            llm_params=_count(inner.language_model)
            - _count(inner.language_model.embed_tokens)
            - _unrouted(inner.language_model)
            + _count(model.lm_head),
            llm_layers=text.num_hidden_layers,
            llm_width=text.num_attention_heads * head_dim,
            projector_params=_count(inner.multi_modal_projector),
            vision_params=_count(inner.vision_tower) - lookups,
            vision_layers=vision.num_hidden_layers,
            vision_width=vision.hidden_size,
            vision_tokens_per_tile=(size // patch) ** 2 + 1,
            llm_tokens_per_tile=config.image_seq_length,
        )

    def flops(self, tokens: Sequence[int], tiles: int) -> float:
        """Model FLOPs of training on samples of these token counts with ``tiles`` tiles in all."""
        pairs = sum(n * (n + 1) // 2 for n in tokens)
        v = self.vision_tokens_per_tile
        return float(
            6 * self.llm_params * sum(tokens)
            + 12 * self.llm_layers * self.llm_width * pairs
            + 6 * self.projector_params * self.llm_tokens_per_tile * tiles
            + 2 * self.vision_params * v * tiles
            + 4 * self.vision_layers * self.vision_width * v * v * tiles
        )


def _count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def _unrouted(module) -> int:
    """The expert parameters of ``module``'s MoE blocks that a token is not routed to: of each
    block's E experts, all but its router's top k."""
    unrouted = 0
    for block in module.modules():
        if isinstance(block, MOE_BLOCKS):
            router = next(part for part in block.modules() if isinstance(part, ROUTERS))
            unrouted += _count(block.experts) // router.num_experts * (router.num_experts - router.top_k)
    return unrouted


def peak_tflops(gpu: str) -> float | None:
    """The dense bf16 peak of a GPU by its name, None when unknown."""
    return next((peak for part, peak in PEAK_TFLOPS if part in gpu), None)


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    if peak is None or seconds <= 0:
        return None
    return flops / seconds / (peak * 1e12)
