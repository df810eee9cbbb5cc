"""``config.json`` of the original layout (OpenGVLab's ``InternVLChatConfig``) and its
transformers-native counterpart (``InternVLConfig``).

Native from original (reference: internvl-recipe.md §7.3, config part):

- ``vision_config``: ``qkv_bias`` → ``attention_bias``, ``qk_normalization`` → ``use_qk_norm``,
  ``dropout`` → ``projection_dropout``, ``initializer_factor`` → ``layer_scale_init_value``; no
  final LayerNorm (``use_mean_pooling``), absolute position embeddings. ``drop_path_rate`` is kept
  (the trainer's stochastic depth reads it, see ``drop_path``).
- ``llm_config``: Qwen2, Qwen3, Qwen3-MoE and GPT-OSS (InternVL3.5) keep their transformers config,
  field for field (GPT-OSS's ``layer_types``, ``sliding_window`` and yarn ``rope_scaling``
  included); InternLM2, InternLM3 and LLaMA become LLaMA (InternLM2's ``bias`` →
  ``attention_bias``; InternLM3's ``qkv_bias`` must equal its ``bias``).
- ``select_layer`` → ``vision_feature_layer``; ``downsample_ratio`` kept; ``image_seq_length`` =
  (image size / patch size)² × ratio²; ``image_token_id`` from the tokenizer's ``<IMG_CONTEXT>``
  (InternVLChatModel reads it from the tokenizer at run time; an export also records it as
  ``img_context_token_id``, read when a folder has no tokenizer). Only ``ps_version`` v2 (every
  InternVL 2.5 and 3 model) exists natively.

The whole original ``config.json`` rides along in the native config as ``internvl_chat_config``,
so an export back to the original layout keeps what the native config has no field for (template,
tiling settings, the LLM's own config keys); the sizes are always taken from the native config.
"""

from __future__ import annotations

import copy
from typing import Any

from transformers import AutoConfig, InternVLConfig, InternVLVisionConfig, PreTrainedConfig

from internvl_trainer.config import DEFAULT_MAX_TILES
from internvl_trainer.model.layouts import AttentionShape, LayoutError, LlmKeys

ORIGINAL_ARCHITECTURE = "InternVLChatModel"
ORIGINAL_MODEL_TYPE = "internvl_chat"
STASH = "internvl_chat_config"
"""Attribute of the native config holding the original config.json it was converted from."""

LLM_ARCHITECTURES: dict[str, tuple[str, LlmKeys]] = {
    "Qwen2ForCausalLM": ("qwen2", "hf"),
    "LlamaForCausalLM": ("llama", "hf"),
    "InternLM3ForCausalLM": ("llama", "hf"),
    "InternLM2ForCausalLM": ("llama", "internlm2"),
    "Qwen3ForCausalLM": ("qwen3", "hf"),
    "Qwen3MoeForCausalLM": ("qwen3_moe", "hf_expert_list"),
    "GptOssForCausalLM": ("gpt_oss", "hf"),
}
"""Original LLM architectures: the native text model type each becomes and its key style."""

OWN_CONFIG_MODEL_TYPES = ("qwen2", "qwen3", "qwen3_moe", "gpt_oss")
"""Text model types whose original ``llm_config`` is transformers' own config, field for field."""

IMAGE_CONTEXT_IDS = {"qwen2": 151667, "llama": 92546, "qwen3": 151671, "qwen3_moe": 151671}
"""``<IMG_CONTEXT>`` ids of released checkpoints (Qwen2-based; InternLM2/LLaMA-based; Qwen3-based,
whose vocabulary has ``<think>`` and ``</think>`` before InternVL's tokens), used only when a folder
has no tokenizer to read it from."""

_LOADER_KEYS = ("attn_implementation", "_attn_implementation", "auto_map", "_name_or_path", "transformers_version")


def is_original(config: dict[str, Any]) -> bool:
    """Whether a config.json describes the original layout."""
    return (
        ORIGINAL_ARCHITECTURE in (config.get("architectures") or []) or config.get("model_type") == ORIGINAL_MODEL_TYPE
    )


def llm_architecture(config: dict[str, Any]) -> str:
    """The LLM architecture of an original config.json. Raises LayoutError for unsupported ones."""
    llm = config.get("llm_config") or {}
    architectures = llm.get("architectures") or []
    if not architectures:
        raise LayoutError("llm_config.architectures: missing; cannot tell which LLM the checkpoint holds")
    architecture = architectures[0]
    if architecture not in LLM_ARCHITECTURES:
        raise LayoutError(
            f"llm_config.architectures: {architecture} is not supported (supported: {', '.join(LLM_ARCHITECTURES)})"
        )
    return architecture


def llm_keys(architecture: str) -> LlmKeys:
    return LLM_ARCHITECTURES[architecture][1]


def attention_shape(text_config: PreTrainedConfig) -> AttentionShape:
    """Head counts of a native text config."""
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    return AttentionShape(num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim)


def _require(section: dict[str, Any], name: str, *keys: str) -> None:
    missing = [key for key in keys if key not in section]
    if missing:
        raise LayoutError(f"{name}: missing {', '.join(missing)}")


def _size(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


# ---------------------------------------------------------------------------------------------
# original → native


def native_vision_config(vision: dict[str, Any]) -> InternVLVisionConfig:
    _require(vision, "vision_config", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    return InternVLVisionConfig(
        hidden_size=vision["hidden_size"],
        num_hidden_layers=vision["num_hidden_layers"],
        num_attention_heads=vision["num_attention_heads"],
        intermediate_size=vision["intermediate_size"],
        image_size=_size(vision.get("image_size", 448)),
        patch_size=_size(vision.get("patch_size", 14)),
        num_channels=vision.get("num_channels", 3),
        hidden_act=vision.get("hidden_act", "gelu"),
        norm_type=vision.get("norm_type", "rms_norm"),
        layer_norm_eps=vision.get("layer_norm_eps", 1e-6),
        attention_bias=vision.get("qkv_bias", False),
        use_qk_norm=vision.get("qk_normalization", False),
        attention_dropout=vision.get("attention_dropout", 0.0),
        projection_dropout=vision.get("dropout", 0.0),
        hidden_dropout_prob=0.0,
        initializer_range=vision.get("initializer_range", 0.02),
        layer_scale_init_value=vision.get("initializer_factor", 0.1),
        use_mean_pooling=True,
        use_absolute_position_embeddings=True,
        drop_path_rate=vision.get("drop_path_rate", 0.0),
    )


def _rope(llm: dict[str, Any]) -> dict[str, Any]:
    rope: dict[str, Any] = {}
    if "rope_theta" in llm:
        rope["rope_theta"] = llm["rope_theta"]
    if llm.get("rope_scaling"):
        rope["rope_scaling"] = dict(llm["rope_scaling"])
    return rope


_LLAMA_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "initializer_range",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "head_dim",
)


def native_text_config(llm: dict[str, Any], architecture: str) -> PreTrainedConfig:
    _require(llm, "llm_config", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
    model_type = LLM_ARCHITECTURES[architecture][0]
    if model_type in OWN_CONFIG_MODEL_TYPES:
        # A copy: transformers writes rope_theta into the rope_scaling dict it is given.
        fields = copy.deepcopy({k: v for k, v in llm.items() if k not in (*_LOADER_KEYS, "model_type")})
        return AutoConfig.for_model(model_type, **fields)
    fields = {key: llm[key] for key in _LLAMA_KEYS if key in llm}
    if architecture == "InternLM2ForCausalLM":
        fields["attention_bias"] = bool(llm.get("bias", False))
    elif architecture == "InternLM3ForCausalLM":
        qkv_bias, bias = bool(llm.get("qkv_bias", False)), bool(llm.get("bias", False))
        if qkv_bias != bias:
            raise LayoutError(f"llm_config: qkv_bias {qkv_bias} and bias {bias} differ; LLaMA has one attention bias")
        fields["attention_bias"] = bias
    else:
        fields["attention_bias"] = bool(llm.get("attention_bias", False))
        fields["mlp_bias"] = bool(llm.get("mlp_bias", False))
    return AutoConfig.for_model("llama", **fields, **_rope(llm))


def native_config(original: dict[str, Any], *, image_token_id: int | None = None) -> InternVLConfig:
    """The native config of an original config.json. ``image_token_id``: the tokenizer's
    ``<IMG_CONTEXT>`` id (when None: the config's ``img_context_token_id``, else released
    checkpoints' id). Raises LayoutError."""
    _require(original, "config", "vision_config", "llm_config")
    ps_version = original.get("ps_version", "v2")
    if ps_version != "v2":
        raise LayoutError(f"ps_version: {ps_version} pixel shuffle has no native counterpart (only v2)")
    architecture = llm_architecture(original)
    vision = native_vision_config(original["vision_config"])
    text = native_text_config(original["llm_config"], architecture)
    ratio = original.get("downsample_ratio", 0.5)
    image_size = _size(original.get("force_image_size") or vision.image_size)
    patch_size = _size(vision.patch_size)
    if image_token_id is None:
        image_token_id = original.get("img_context_token_id") or IMAGE_CONTEXT_IDS.get(text.model_type)
    if image_token_id is None:
        raise LayoutError("img_context_token_id: missing, and the folder has no tokenizer to read <IMG_CONTEXT> from")
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=int((image_size // patch_size) ** 2 * ratio**2),
        downsample_ratio=ratio,
        projector_hidden_act="gelu",
        vision_feature_layer=original.get("select_layer", -1),
        vision_feature_select_strategy="default",
        tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
    )
    setattr(config, STASH, copy.deepcopy(original))
    return config


# ---------------------------------------------------------------------------------------------
# native → original


def native_llm_architecture(config: InternVLConfig) -> str:
    """The original LLM architecture of a native model: the one it was converted from, else the
    one its text model type means (qwen2 → Qwen2, llama → LLaMA, qwen3 → Qwen3, …)."""
    stash = getattr(config, STASH, None) or {}
    architectures = (stash.get("llm_config") or {}).get("architectures") or []
    if architectures and architectures[0] in LLM_ARCHITECTURES:
        return architectures[0]
    meant = {"llama": "LlamaForCausalLM"} | {
        model_type: architecture
        for architecture, (model_type, _) in LLM_ARCHITECTURES.items()
        if model_type in OWN_CONFIG_MODEL_TYPES
    }
    return meant.get(config.text_config.model_type, "")


def _check_exportable(config: InternVLConfig) -> None:
    vision = config.vision_config
    problems = []
    if not vision.use_mean_pooling:
        problems.append("vision_config.use_mean_pooling: false adds a final LayerNorm that InternViT does not have")
    if not vision.use_absolute_position_embeddings:
        problems.append("vision_config.use_absolute_position_embeddings: InternViT always has them")
    if vision.use_mask_token:
        problems.append("vision_config.use_mask_token: InternViT has no mask token")
    if config.vision_feature_select_strategy != "default":
        problems.append("vision_feature_select_strategy: InternVLChatModel always drops the CLS token")
    if config.projector_hidden_act != "gelu":
        problems.append(f"projector_hidden_act: {config.projector_hidden_act}; mlp1 uses GELU")
    if not isinstance(config.vision_feature_layer, int):
        problems.append("vision_feature_layer: InternVLChatModel takes a single layer (select_layer)")
    if problems:
        raise LayoutError("not expressible in the original layout: " + "; ".join(problems))


def _original_vision(vision: InternVLVisionConfig, stash: dict[str, Any]) -> dict[str, Any]:
    return {
        **stash,
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": vision.hidden_size,
        "num_hidden_layers": vision.num_hidden_layers,
        "num_attention_heads": vision.num_attention_heads,
        "intermediate_size": vision.intermediate_size,
        "image_size": _size(vision.image_size),
        "patch_size": _size(vision.patch_size),
        "num_channels": vision.num_channels,
        "hidden_act": vision.hidden_act,
        "norm_type": vision.norm_type,
        "layer_norm_eps": vision.layer_norm_eps,
        "qkv_bias": vision.attention_bias,
        "qk_normalization": vision.use_qk_norm,
        "attention_dropout": vision.attention_dropout,
        "dropout": vision.projection_dropout,
        "drop_path_rate": getattr(vision, "drop_path_rate", 0.0),
        "initializer_range": vision.initializer_range,
        "initializer_factor": vision.layer_scale_init_value,
        "use_flash_attn": stash.get("use_flash_attn", True),
    }


def _rope_fields(text: PreTrainedConfig, type_key: str) -> dict[str, Any]:
    """``rope_theta`` and ``rope_scaling`` with its kind under ``type_key``: transformers' configs
    spell it ``rope_type``, InternLM2's and LLaMA's remote code read ``type``."""
    rope = dict(getattr(text, "rope_parameters", None) or {})
    fields: dict[str, Any] = {"rope_theta": rope.get("rope_theta", getattr(text, "rope_theta", 10000.0))}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "rope_type", "type")}
        fields["rope_scaling"] = {type_key: rope_type, **scaling}
    else:
        fields["rope_scaling"] = None
    return fields


def _original_llm(text: PreTrainedConfig, architecture: str, stash: dict[str, Any]) -> dict[str, Any]:
    expected = LLM_ARCHITECTURES[architecture][0]
    if text.model_type != expected:
        raise LayoutError(f"text_config.model_type: {text.model_type} cannot be written as {architecture}")
    shape = attention_shape(text)
    common = {
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "hidden_act": text.hidden_act,
        "max_position_embeddings": text.max_position_embeddings,
        "rms_norm_eps": text.rms_norm_eps,
        "initializer_range": text.initializer_range,
        "tie_word_embeddings": bool(getattr(text, "tie_word_embeddings", False)),
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "pad_token_id": text.pad_token_id,
        **_rope_fields(text, "rope_type" if expected in OWN_CONFIG_MODEL_TYPES else "type"),
    }
    if expected in OWN_CONFIG_MODEL_TYPES:
        llm = {k: v for k, v in text.to_dict().items() if k not in ("rope_parameters", "dtype")}
        llm.update(common)
        llm["model_type"] = expected
    elif architecture == "InternLM2ForCausalLM":
        if getattr(text, "mlp_bias", False):
            raise LayoutError("text_config.mlp_bias: InternLM2's feed-forward has no bias")
        if shape.head_dim * shape.num_heads != text.hidden_size:
            raise LayoutError("text_config.head_dim: InternLM2 needs head_dim x heads = hidden_size")
        llm = {**common, "model_type": "internlm2", "bias": bool(text.attention_bias)}
    elif architecture == "InternLM3ForCausalLM":
        llm = {
            **common,
            "model_type": "internlm3",
            "head_dim": shape.head_dim,
            "qkv_bias": bool(text.attention_bias),
            "bias": bool(text.attention_bias),
        }
    else:
        llm = {
            **common,
            "model_type": "llama",
            "head_dim": shape.head_dim,
            "attention_bias": bool(text.attention_bias),
            "mlp_bias": bool(getattr(text, "mlp_bias", False)),
        }
    return {**stash, **llm, "architectures": [architecture]}


def original_config(
    config: InternVLConfig,
    *,
    llm_architecture: str | None = None,
    min_tiles: int | None = None,
    max_tiles: int | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """The original config.json of a native config. Raises LayoutError when the native model has
    parts the original layout cannot express."""
    _check_exportable(config)
    architecture = llm_architecture or native_llm_architecture(config)
    if architecture not in LLM_ARCHITECTURES:
        raise LayoutError(
            f"text_config.model_type: {config.text_config.model_type} has no original LLM architecture;"
            f" choose one of {', '.join(LLM_ARCHITECTURES)}"
        )
    stash = copy.deepcopy(getattr(config, STASH, None) or {})
    stash_llm = stash.get("llm_config") or {}
    if (stash_llm.get("architectures") or [None])[0] != architecture:
        stash_llm = {}
    vision = config.vision_config
    image_size = _size(vision.image_size)
    result = {
        **stash,
        "architectures": [ORIGINAL_ARCHITECTURE],
        "model_type": ORIGINAL_MODEL_TYPE,
        "vision_config": _original_vision(vision, stash.get("vision_config") or {}),
        "llm_config": _original_llm(config.text_config, architecture, stash_llm),
        "downsample_ratio": config.downsample_ratio,
        "select_layer": config.vision_feature_layer,
        "force_image_size": image_size,
        "ps_version": "v2",
        "template": stash.get("template", "internvl2_5"),
        "dynamic_image_size": stash.get("dynamic_image_size", True),
        "use_thumbnail": stash.get("use_thumbnail", True),
        "min_dynamic_patch": min_tiles if min_tiles is not None else stash.get("min_dynamic_patch", 1),
        "max_dynamic_patch": max_tiles if max_tiles is not None else stash.get("max_dynamic_patch", DEFAULT_MAX_TILES),
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "img_context_token_id": config.image_token_id,
    }
    if dtype is not None:
        result["torch_dtype"] = dtype
        result["llm_config"]["torch_dtype"] = dtype
        result["vision_config"]["torch_dtype"] = dtype
    result.pop(STASH, None)
    return result
