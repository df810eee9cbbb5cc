"""LoRA adapters through PEFT (reference: internvl-recipe.md §1.8; environment.md §3).

Targets are chosen by a module-path pattern, never by bare module names: the vision tower's
attention also has ``q_proj``/``k_proj``/``v_proj``, so a plain name list would put adapters in the
vision tower too.

- ``llm``: ``q/k/v/o_proj`` and ``gate/up/down_proj`` of every language-model layer (InternVL's
  Qwen2/LLaMA/Qwen3 targets; InternLM2's ``wqkv``/``wo``/``w1..w3`` are the same weights once
  converted). In a mixture-of-experts layer (Qwen3-MoE, GPT-OSS) that is the attention only: its
  MLP is a router and experts, which this target leaves frozen and without adapters.
- ``experts`` (on request, MoE LLMs): every expert's ``gate_up_proj`` and ``down_proj``, which
  transformers holds as one E × … tensor per layer; PEFT adapts such parameters
  (``target_parameters``) with a rank-r pair per expert, and its merge adds each expert's
  ``scaling · B @ A`` back into that expert's slice, so the merged model is the adapted one.
  PEFT has no dropout for such parameters, hence ``LoraConfig``'s rule: dropout 0 with this target.
- ``vision`` (on request): ``q/k/v_proj``, ``projection_layer``, ``mlp.fc1``, ``mlp.fc2`` of every
  vision layer (InternVL's ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``).

Parts that train in full next to the adapters (the projector when ``freeze.projector`` is false,
unfrozen vision layers, …) become PEFT ``modules_to_save``: they are saved with the adapter and
merged back by ``merge``. PEFT never puts adapters inside them.
"""

from __future__ import annotations

from collections.abc import Sequence

from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model
from torch import nn

from internvl_trainer.config import LoraConfig
from internvl_trainer.model.freeze import TrainablePlan

LLM_TARGETS = (
    r"model\.language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"
)
VISION_TARGETS = (
    r"model\.vision_tower\.encoder\.layer\.\d+\.(attention\.(q_proj|k_proj|v_proj|projection_layer)|mlp\.(fc1|fc2))"
)
TARGETS = {"llm": LLM_TARGETS, "vision": VISION_TARGETS}
EXPERT_PARAMETERS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
"""The experts' projections of Qwen3-MoE and GPT-OSS, as PEFT's ``target_parameters`` (names that
end parameter paths; nothing but a language model's MoE block has ``experts``)."""


def target_pattern(targets: Sequence[str]) -> str | None:
    """The module-path regex (PEFT matches it against the whole path) for the requested towers;
    None when only the experts' parameters are targeted."""
    unknown = sorted(set(targets) - {*TARGETS, "experts"})
    if unknown or not targets:
        raise ValueError(f"method.lora.targets: expected llm, vision and/or experts, got {list(targets)}")
    modules = [f"({TARGETS[name]})" for name in ("llm", "vision") if name in targets]
    return "|".join(modules) or None


def expert_parameters(model: nn.Module) -> list[str]:
    """``EXPERT_PARAMETERS`` when ``model`` has them; a dense model has none to adapt."""
    names = {name for name, _ in model.named_parameters()}
    present = [suffix for suffix in EXPERT_PARAMETERS if any(name.endswith(f".{suffix}") for name in names)]
    if not present:
        raise ValueError("method.lora.targets: experts, but the language model has no mixture-of-experts layers")
    return present


def peft_config(
    lora: LoraConfig, trainable: TrainablePlan | None = None, experts: Sequence[str] = ()
) -> PeftLoraConfig:
    """PEFT's LoraConfig for our settings; parts the plan trains in full become modules_to_save,
    ``experts`` (suffixes of ``EXPERT_PARAMETERS``) become target parameters."""
    modules_to_save = None
    if trainable is not None:
        modules_to_save = trainable.module_paths() or None
    return PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_pattern(lora.targets),
        target_parameters=list(experts) or None,
        modules_to_save=modules_to_save,
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_lora(model: nn.Module, lora: LoraConfig, trainable: TrainablePlan | None = None) -> PeftModel:
    """Wrap a native model with LoRA adapters; only the adapters (and ``trainable``'s parts) train.
    ``MethodConfig`` has already refused a target whose tower trains in full."""
    experts = expert_parameters(model) if "experts" in lora.targets else ()
    return get_peft_model(model, peft_config(lora, trainable, experts))


def save_adapter(model: PeftModel, folder: str, state_dict: dict | None = None) -> None:
    """Write the adapters and the ``modules_to_save`` into ``folder``. The embeddings are never
    saved as such: no target reaches them; rows grown for added tokens are the mean of the base's
    (``load.fit_embeddings``), which loading the base for a merge grows again; embeddings that
    train are inside a module_to_save (the LLM trained in full). PEFT's default ("auto") would
    decide the same after looking the base's config up under ``base_model_name_or_path``, an
    ``s3://`` URI it can neither open nor find on the hub, and warn at every save that it could not."""
    model.save_pretrained(folder, state_dict=state_dict, save_embedding_layers=False)


def adapted_modules(model: nn.Module) -> list[str]:
    """Paths of the modules that carry a LoRA adapter."""
    return sorted(name for name, module in model.named_modules() if hasattr(module, "lora_A") and module.lora_A)


def merge(model: nn.Module) -> nn.Module:
    """The plain model with every adapter (and trained modules_to_save copy) merged in; a model
    without adapters is returned unchanged."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model
