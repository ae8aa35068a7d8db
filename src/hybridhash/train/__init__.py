"""Training: the recipe (options and defaults), optimiser and schedule, the loop of one code length
driving a model and a method, the run over several code lengths, and distributed helpers.

>>> from hybridhash.train import TrainConfig, train
>>> results = train(TrainConfig(dataset="digits", model="hybridhash_cpu", bits=(64,), out="runs/x"))
"""
from ..rundir import bits_dir
from .loop import BitsResult, Trainer
from .optim import lr_factor
from .recipe import TrainConfig, choose_recipe, original_recipe, resolve, scratch_recipe
from .run import train

__all__ = [
    "BitsResult", "TrainConfig", "Trainer", "bits_dir", "choose_recipe", "lr_factor", "original_recipe",
    "resolve", "scratch_recipe", "train",
]
