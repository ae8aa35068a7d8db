"""Training: the recipe (options and defaults), optimiser and schedule, the loop of one code length
driving a model and a method, the run over several code lengths, and distributed helpers.

>>> from hybridhash.app.train import TrainConfig, train
>>> results = train(TrainConfig(dataset="digits", model="hybridhash_cpu", bits=(64,), out="runs/x"))
"""
import importlib
from typing import Any

from ..rundir import bits_dir
from .recipe import TrainConfig, choose_recipe, original_recipe, resolve, scratch_recipe

# imported on first use: they load torch, which the command line's --help does without
_LAZY = {"BitsResult": "result", "Trainer": "loop", "lr_factor": "optim", "train": "run"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BitsResult", "TrainConfig", "Trainer", "bits_dir", "choose_recipe", "lr_factor", "original_recipe",
    "resolve", "scratch_recipe", "train",
]
