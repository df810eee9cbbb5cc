"""Which parts of a native InternVL model train: freeze flags for the vision tower, the projector
and the LLM, plus the last N vision layers unfrozen (``MethodConfig.resolved_freeze`` and
``unfreeze_vision_layers``; reference: internvl-recipe.md §1.7 freezing order).

Frozen pieces of the vision tower stay in eval mode whatever ``model.train()`` says: no dropout and
no drop-path noise on features that are not being learnt (InternVL leaves a frozen ViT in train
mode, a defect this avoids, reference §11 item 9). In a frozen tower with unfrozen last layers (or
LoRA adapters), only the layers that train follow ``train()``. The projector and the LLM follow
``train()`` as usual: LoRA's dropout lives inside the frozen LLM.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

from torch import nn

from internvl_trainer.config import FreezeConfig, vision_layers_beyond_depth

VISION = "model.vision_tower"
PROJECTOR = "model.multi_modal_projector"
LLM = ("model.language_model", "lm_head")

PARTS = {"vision": (VISION,), "projector": (PROJECTOR,), "llm": LLM}
"""Module paths of each part of an ``InternVLForConditionalGeneration``."""


@dataclass(frozen=True)
class TrainablePlan:
    """What trains, after the freeze flags: whole parts and the unfrozen last vision layers."""

    vision: bool
    projector: bool
    llm: bool
    vision_layers: tuple[int, ...]
    """Indices of vision layers that train although the tower is frozen."""

    def module_paths(self) -> list[str]:
        """Module paths of everything that trains in full."""
        paths: list[str] = []
        for part in ("vision", "projector", "llm"):
            if getattr(self, part):
                paths.extend(PARTS[part])
        paths.extend(f"{VISION}.encoder.layer.{index}" for index in self.vision_layers)
        return paths


def plan(freeze: FreezeConfig, unfreeze_vision_layers: int, vision_layer_count: int) -> TrainablePlan:
    """The trainable parts for resolved freeze flags (every flag set) and N unfrozen vision layers."""
    if None in (freeze.vision, freeze.projector, freeze.llm):
        raise ValueError("freeze flags must be resolved first (MethodConfig.resolved_freeze)")
    # The planner refuses this from the catalog's depth; the loaded model's depth is the last word.
    beyond = vision_layers_beyond_depth(unfreeze_vision_layers, vision_layer_count)
    if beyond:
        raise ValueError(f"method.unfreezeVisionLayers: {beyond}")
    layers: tuple[int, ...] = ()
    if freeze.vision and unfreeze_vision_layers:
        layers = tuple(range(vision_layer_count - unfreeze_vision_layers, vision_layer_count))
    return TrainablePlan(
        vision=not freeze.vision, projector=not freeze.projector, llm=not freeze.llm, vision_layers=layers
    )


def apply_plan(model: nn.Module, trainable: TrainablePlan) -> None:
    """Set ``requires_grad`` from the plan (everything else frozen) and keep the frozen parts of
    the vision tower in eval mode."""
    model.requires_grad_(False)
    for path in trainable.module_paths():
        model.get_submodule(path).requires_grad_(True)
    keep_frozen_vision_in_eval(model.get_submodule(VISION))
    model.train(model.training)


def keep_frozen_vision_in_eval(tower: nn.Module) -> None:
    """Make ``tower.train(True)`` leave its frozen pieces (embeddings, layers, final norm) in eval
    mode. A piece counts as frozen when none of its parameters requires a gradient at the time of
    the call, so LoRA adapters or a full copy added later (PEFT) put their layer back in training."""

    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        nn.Module.train(self, mode)
        if mode:
            for piece in (self.embeddings, *self.encoder.layer, self.layernorm):
                if not any(parameter.requires_grad for parameter in piece.parameters()):
                    piece.train(False)
        return self

    tower.train = types.MethodType(train, tower)  # type: ignore[method-assign]


def apply_freeze(model: nn.Module, flags: FreezeConfig, unfreeze_vision_layers: int = 0) -> TrainablePlan:
    """Apply resolved freeze flags to an ``InternVLForConditionalGeneration``; returns the plan."""
    count = len(model.get_submodule(f"{VISION}.encoder.layer"))
    trainable = plan(flags, unfreeze_vision_layers, count)
    apply_plan(model, trainable)
    return trainable
