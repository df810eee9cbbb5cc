"""Every kind of bad sample is declared in ``data.errors``, once."""

from __future__ import annotations

import importlib
import pkgutil

import internvl_trainer.data
from internvl_trainer.data.errors import SampleError


def every_subclass(cls: type) -> list[type]:
    return [found for sub in cls.__subclasses__() for found in (sub, *every_subclass(sub))]


def test_every_sample_error_kind_is_declared_in_errors_with_its_own_kind():
    for module in pkgutil.iter_modules(internvl_trainer.data.__path__, "internvl_trainer.data."):
        importlib.import_module(module.name)
    kinds = {cls.__name__: (cls.__module__, cls.kind) for cls in every_subclass(SampleError)}
    assert {module for module, _ in kinds.values()} == {"internvl_trainer.data.errors"}
    assert sorted(kind for _, kind in kinds.values()) == sorted(
        ["json", "record", "conversation", "placeholder", "path", "missing", "unreadable", "image", "video"]
        + ["overlong", "strict"]
    )
