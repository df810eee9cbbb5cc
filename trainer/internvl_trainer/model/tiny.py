"""A tiny random InternVL with a tokenizer trained on the spot: for the demo, the benchmarks and
the tests, which must run offline and in seconds (reference: environment.md §2.1, §2.2).

The model is a real ``InternVLForConditionalGeneration`` (vision tower, projector, and an LLM of
one of InternVL's families: Qwen2 or LLaMA (InternVL3), dense Qwen3, Qwen3-MoE or GPT-OSS
(InternVL3.5)) of a few layers and hidden sizes of 32 to 64. Every weight is perturbed away from
its initial value, so no two tensors (a layer's two norms, ``lambda_1`` and ``lambda_2``, two
experts, …) are equal: a mapping that swaps two keys changes the model's output. The tokenizer is
a byte-level BPE over a small corpus with InternVL's special tokens and the ChatML control tokens,
and, as the original releases' vocabularies, no ``<video>``.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import (
    GptOssConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLVisionConfig,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
)

from internvl_trainer.data.template import DEFAULT_SYSTEM_MESSAGE, INTERNVL3_5_GPT_OSS
from internvl_trainer.model.processor import INTERNVL_TOKENS, VIDEO_TOKEN, prepare_tokenizer

TinyLLM = Literal["qwen2", "llama", "qwen3", "qwen3_moe", "gpt_oss"]
CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CORPUS = (
    "Describe the image in detail. What is shown in the picture? A cat sits on a red mat.",
    "The dog runs after the ball in the park. Compare both images and count the objects.",
    "system user assistant answer question frame video",
    DEFAULT_SYSTEM_MESSAGE,
)


def tiny_tokenizer(
    vocab_size: int = 320, *, video_token: bool = False, harmony: bool = False
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained now, with InternVL's tokens and ``<pad>``; with
    ``<video>`` too when ``video_token`` (as the ``-hf`` releases' vocabularies); with GPT-OSS's
    harmony tokens and ``<|return|>`` as its end of sequence when ``harmony`` (the
    ``internvl3_5_gpt_oss`` template's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    control = [*CONTROL_TOKENS, *(INTERNVL3_5_GPT_OSS.control_tokens if harmony else ())]
    special = [*control, *INTERNVL_TOKENS, *([VIDEO_TOKEN] if video_token else []), "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(CORPUS) * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=INTERNVL3_5_GPT_OSS.last_separator if harmony else "<|im_end|>",
        pad_token="<pad>",
    )
    prepare_tokenizer(tokenizer)
    return tokenizer


def tiny_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    llm: TinyLLM = "qwen2",
    image_size: int = 448,
    vision_layers: int = 2,
    text_layers: int = 2,
    qk_norm: bool = False,
    norm_type: Literal["layer_norm", "rms_norm"] = "layer_norm",
    use_mean_pooling: bool = True,
) -> InternVLConfig:
    """A tiny InternVL config: vision hidden 32 (2 heads), LLM hidden 64 (4 heads, 2 kv heads).
    ``use_mean_pooling`` false adds the final vision LayerNorm InternViT does not have."""
    vision = InternVLVisionConfig(
        hidden_size=32,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=14,
        norm_type=norm_type,
        use_qk_norm=qk_norm,
        attention_bias=True,
        use_mean_pooling=use_mean_pooling,
        drop_path_rate=0.0,
    )
    text = tiny_text_config(tokenizer, llm, text_layers)
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=int((image_size // 14) ** 2 * 0.25),
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def tiny_text_config(tokenizer: PreTrainedTokenizerFast, llm: TinyLLM, layers: int) -> PreTrainedConfig:
    """The LLM of a tiny InternVL: hidden 64, 4 heads of 16, 2 kv heads. The MoE families have 4
    experts of intermediate size 24 (2 × 24 ≠ 64, so a transposed expert tensor cannot pass), 2
    routed per token; GPT-OSS alternates sliding-window (of 8 tokens, shorter than a test's
    sequences) and full attention layers, with attention sinks."""
    common = dict(
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    experts = dict(num_experts_per_tok=2, router_aux_loss_coef=0.01)
    if llm == "qwen2":
        return Qwen2Config(intermediate_size=128, **common)
    if llm == "llama":
        return LlamaConfig(intermediate_size=128, head_dim=16, **common)
    if llm == "qwen3":
        return Qwen3Config(intermediate_size=128, head_dim=16, **common)
    if llm == "qwen3_moe":
        return Qwen3MoeConfig(
            head_dim=16, num_experts=4, moe_intermediate_size=24, norm_topk_prob=True, **experts, **common
        )
    if llm == "gpt_oss":
        return GptOssConfig(
            head_dim=16, num_local_experts=4, intermediate_size=24, sliding_window=8, **experts, **common
        )
    raise ValueError(f"llm: {llm!r} is not one of {TinyLLM.__args__}")


@torch.no_grad()
def tiny_model(config: InternVLConfig, *, seed: int = 0, scale: float = 0.05) -> InternVLForConditionalGeneration:
    """A random model for ``config``: initialised, then every tensor perturbed by ``scale`` · N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config)
    for parameter in model.parameters():
        parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()
