"""HybridHash's own loss as a method: the weighted pairwise likelihood of ``hybridhash.losses``
on tanh(h), against a memory bank (SPEC.md section 5)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..errors import ConfigError
from ..limits import BANK_ROWS_PER_IMAGE
from ..losses import PairwiseLikelihoodLoss
from .base import Method, MethodConfig, MethodDefaults
from .registry import register_method


@dataclass
class HybridHashMethodConfig(MethodConfig):
    """alpha: inner-product scale; bank_rows: rows of the bank (None: num_train; the original
    used 10000 on the CIFAR-10 protocols); bank_fp16: keep the bank in float16 as the original."""

    alpha: float = 0.5
    bank_rows: Optional[int] = None
    bank_fp16: bool = False
    positive = ("alpha", "bank_rows")


@register_method
class HybridHashMethod(Method):
    name = "hybridhash"
    family = "symmetric"
    activation = "tanh"
    Config = HybridHashMethodConfig
    DEFAULTS = MethodDefaults("rmsprop", 2.5e-5, 1e-5, batch_size=64, epochs=15)
    run_options = ("alpha", "bank_rows", "bank_fp16")  # `hybridhash train --alpha` etc.

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        rows = self.config.bank_rows or num_train
        if rows < num_train:
            raise ConfigError(f"hybridhash: bank_rows {rows} is smaller than the {num_train} training images")
        if rows > BANK_ROWS_PER_IMAGE * num_train:  # checked before the bank (rows x bits floats) is allocated
            raise ConfigError(f"hybridhash: bank_rows {rows} is more than {BANK_ROWS_PER_IMAGE} rows per training "
                              f"image ({num_train} images): rows beyond the training set are never written; use at "
                              f"most {BANK_ROWS_PER_IMAGE * num_train}, or leave it unset for one row per image")
        self.criterion = PairwiseLikelihoodLoss(rows, bits, n_class, alpha=self.config.alpha,
                                                bank_dtype=torch.float16 if self.config.bank_fp16 else torch.float32)

    def loss(self, h: Tensor, y: Tensor, index: Tensor, *, gathered=None) -> Tensor:
        index = self.check_batch(h, y, index)
        if gathered is None:
            return self.criterion(torch.tanh(h), y, index)
        h_all, y_all, index_all = gathered
        return self.criterion(torch.tanh(h), y, index, torch.tanh(h_all.detach()), y_all, index_all)
