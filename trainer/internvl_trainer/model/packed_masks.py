"""Packed sequences on GPT-OSS: attention masks derived from ``position_ids``.

A packed row (``data/collate.collate_packed``) holds several samples with no attention mask, and
``position_ids`` that restart at 0 where each sample starts. transformers' other LLMs hand those
position ids to ``create_causal_mask``, which then keeps every sample's attention within the
sample (a block-diagonal causal mask). ``GptOssModel`` builds its full and sliding-window masks
without them, so the samples of a packed row would attend to each other. A forward pre-hook builds
the two masks from the position ids, as the other models do, whenever they would: no attention mask,
no cache, position ids given. A mask dictionary given to the model is what ``GptOssModel`` uses
as it is (``generate`` passes one the same way).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssModel


def derive_packed_masks(model: nn.Module) -> int:
    """Make every ``GptOssModel`` inside ``model`` derive its masks from ``position_ids`` for
    packed rows; the number of models hooked."""
    hooked = [module for module in model.modules() if isinstance(module, GptOssModel)]
    for module in hooked:
        module.register_forward_pre_hook(_packed_masks, with_kwargs=True)
    return len(hooked)


def _packed_masks(module: GptOssModel, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
    use_cache = kwargs.get("use_cache")
    if use_cache is None:
        use_cache = module.config.use_cache
    position_ids = kwargs.get("position_ids")
    if args or position_ids is None or use_cache:
        return None
    if kwargs.get("attention_mask") is not None or kwargs.get("past_key_values") is not None:
        return None
    embeddings = kwargs.get("inputs_embeds")
    if embeddings is None:
        embeddings = module.embed_tokens(kwargs["input_ids"])
        kwargs = {**kwargs, "input_ids": None, "inputs_embeds": embeddings}
    options = {
        "config": module.config,
        "inputs_embeds": embeddings,
        "attention_mask": None,
        "past_key_values": None,
        "position_ids": position_ids,
    }
    masks = {
        "full_attention": create_causal_mask(**options),
        "sliding_attention": create_sliding_window_causal_mask(**options),
    }
    return args, {**kwargs, "attention_mask": masks}
