"""Memory bank shared by the bank methods (DPSH, DSH): U (n, bits) and Y (n, C), zeros at start."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .base import Method, MethodConfig, promote


class BankMethod(Method):
    """A method whose batch is compared with all n rows of a bank written just before.

    Subclasses implement ``pair_loss(h, y, U, Y)``. With ``config.pairs == "batch"`` the batch is
    compared with itself instead (the pairs inside the mini-batch, as these methods' papers generate
    them online), and the bank is left alone: from random weights, raw outputs compared with a bank
    of their own earlier values can drift together away from it until every code is the same.
    """

    def __init__(self, bits: int, n_class: int, num_train: int, config: Optional[MethodConfig] = None) -> None:
        super().__init__(bits, n_class, num_train, config)
        self.register_buffer("U", torch.zeros(num_train, bits))  # (n, bits)
        self.register_buffer("Y", torch.zeros(num_train, n_class))  # (n, C)

    @torch.no_grad()
    def write_bank(self, h: Tensor, y: Tensor, index: Tensor) -> None:
        """U[index] = activation(h) (detached), Y[index] = y."""
        index = self.check_batch(h, y, index).to(self.U.device)
        self.U[index] = self.activate(h.detach()).to(self.U.dtype)
        self.Y[index] = y.detach().to(self.Y.dtype)

    def loss(self, h: Tensor, y: Tensor, index: Tensor, *,
             gathered: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        self.check_batch(h, y, index)
        if getattr(self.config, "pairs", "bank") == "batch":
            h = promote(h)
            y = y.to(h.dtype)
            return self.pair_loss(h, y, self.activate(h), y)
        # every rank writes every rank's rows, so the banks stay identical under DDP
        self.write_bank(*(gathered if gathered is not None else (h, y, index)))
        return self.pair_loss(promote(h), y, self.U, self.Y)

    @classmethod
    def fit_schedule(cls, params: Dict[str, Any], recipe: str, epochs: int,
                     n_train: int) -> Tuple[Dict[str, Any], int]:
        """Under the scratch recipe, the pairs inside the mini-batch (unless ``pairs`` is given): from
        random weights the unbounded outputs drift together away from the stale bank and the codes
        collapse (measured on digits, DSH: val mAP 0.11 at lr 2e-3 and 2e-4, and with alpha 0.01 or
        0; 0.9997 with in-batch pairs)."""
        if recipe == "scratch" and "pairs" not in params:
            return {**params, "pairs": "batch"}, epochs
        return params, epochs

    @classmethod
    def table_note(cls, config: MethodConfig, run: Mapping[str, Any], given: Mapping[str, Any],
                   n_train: int, wall_record: str) -> Optional[str]:
        if getattr(config, "pairs", "bank") != "batch":
            return None
        return (f"{cls.name}: pairs inside the mini-batch, not a bank of earlier outputs: from random weights the "
                "bank version's codes collapse")

    def pair_loss(self, h: Tensor, y: Tensor, U: Tensor, Y: Tensor) -> Tensor:
        """The loss of the batch h (B, bits), y (B, C) against rows U (m, bits), Y (m, C)."""
        raise NotImplementedError
