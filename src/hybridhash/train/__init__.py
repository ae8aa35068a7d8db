"""Training: the recipe (options and defaults), the loop with its checkpoints, and distributed helpers.

>>> from hybridhash.train import TrainConfig, train
>>> results = train(TrainConfig(dataset="digits", model="hybridhash_cpu", bits=(64,), out="runs/x"))
"""
from .recipe import TrainConfig, choose_recipe, original_recipe, resolve, scratch_recipe
from .trainer import BitsResult, Trainer, bits_dir, lr_factor, train

__all__ = [
    "BitsResult", "TrainConfig", "Trainer", "bits_dir", "choose_recipe", "lr_factor", "original_recipe",
    "resolve", "scratch_recipe", "train",
]
