"""The memory bank, one for every method that compares a batch with earlier outputs, and the bank
methods (DPSH, DSH) built on it.

``MemoryBank`` holds U (rows, bits) and Y (rows, C), zeros at start; each step writes the batch
(detached) before the loss compares it with every row, as pytorch-metric-learning's
``CrossBatchMemory`` wraps a loss. HybridHash's loss and ``BankMethod`` use it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from .base import Method, MethodConfig, promote

__all__ = ["BankMethod", "MemoryBank", "check_matrix"]


def check_matrix(name: str, t: Tensor, cols: int | None = None) -> None:
    """Raise DataError unless ``t`` is a 2-D tensor (with ``cols`` columns when given)."""
    if not isinstance(t, Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise DataError(f"{name} must be a 2-D tensor, got {shape}")
    if cols is not None and t.shape[1] != cols:
        raise DataError(f"{name} has {t.shape[1]} columns, expected {cols}")


class MemoryBank(nn.Module):
    """Rows of earlier codes U (num_train, bits) and their labels Y (num_train, n_class), zeros at
    start, saved in ``state_dict`` so that a resumed run continues exactly.

    Args:
        num_train: rows of the bank, one per training image (or more: rows never written count
            as codes of 0 with no label).
        bits: code length.
        n_class: label vector length.
        loss: ``loss(u, y, U, Y)`` of a batch u (B, bits), y (B, C) against the bank; what
            calling the bank returns, after writing the batch. None: the bank is only written.
        bank_dtype: dtype of U and Y.
    """

    def __init__(self, num_train: int, bits: int, n_class: int,
                 loss: Optional[Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = None,
                 bank_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        for name, value in (("num_train", num_train), ("bits", bits), ("n_class", n_class)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(bank_dtype, torch.dtype) or not bank_dtype.is_floating_point:
            raise ConfigError(f"bank_dtype must be a floating torch dtype, got {bank_dtype!r}")
        self.num_train, self.bits, self.n_class = num_train, bits, n_class
        self.loss = loss
        self.register_buffer("U", torch.zeros(num_train, bits, dtype=bank_dtype))  # (M, bits)
        self.register_buffer("Y", torch.zeros(num_train, n_class, dtype=bank_dtype))  # (M, C)

    def extra_repr(self) -> str:
        return f"num_train={self.num_train}, bits={self.bits}, n_class={self.n_class}, bank_dtype={self.U.dtype}"

    @torch.no_grad()
    def write(self, u: Tensor, y: Tensor, index: Tensor) -> None:
        """U[index] = u (detached, in the bank's dtype), Y[index] = y; u (B, bits), y (B, n_class),
        index (B,) integer rows in [0, num_train)."""
        check_matrix("u", u, self.bits)
        check_matrix("y", y, self.n_class)
        if not isinstance(index, Tensor):
            index = torch.as_tensor(index)
        if index.dim() != 1 or index.shape[0] != u.shape[0] or index.shape[0] != y.shape[0]:
            raise DataError(f"index must have shape ({u.shape[0]},) to match u and y, got {tuple(index.shape)}")
        if index.dtype.is_floating_point or index.dtype == torch.bool:
            raise DataError(f"index must be an integer tensor, got {index.dtype}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_train):
            raise DataError(f"index holds rows outside [0, {self.num_train}): "
                            f"min {int(index.min())}, max {int(index.max())}")
        index = index.to(device=self.U.device, dtype=torch.long)
        self.U[index] = u.detach().to(self.U.dtype)
        self.Y[index] = y.detach().to(self.Y.dtype)

    def forward(self, u: Tensor, y: Tensor, index: Tensor,
                written: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        """Write ``written`` (u, y, index of every process's batch, the local one included; default:
        the local batch), then return ``loss(u, y, U, Y)`` of the local batch against the bank."""
        if self.loss is None:
            raise ConfigError("this memory bank has no loss; call write() and compare with U and Y")
        self.write(*(written if written is not None else (u, y, index)))
        return self.loss(u, y, self.U, self.Y)


class BankMethod(Method):
    """A method whose batch is compared with all n rows of a bank written just before.

    Subclasses implement ``pair_loss(h, y, U, Y)``. With ``config.pairs == "batch"`` the batch is
    compared with itself instead (the pairs inside the mini-batch, as these methods' papers generate
    them online), and the bank is left alone: from random weights, raw outputs compared with a bank
    of their own earlier values can drift together away from it until every code is the same.
    """

    renamed_state = {"U": "bank.U", "Y": "bank.Y"}  # the bank's rows were the method's own buffers

    def __init__(self, bits: int, n_class: int, num_train: int, config: Optional[MethodConfig] = None) -> None:
        super().__init__(bits, n_class, num_train, config)
        self.bank = MemoryBank(num_train, bits, n_class)

    @torch.no_grad()
    def write_bank(self, h: Tensor, y: Tensor, index: Tensor) -> None:
        """U[index] = activation(h) (detached), Y[index] = y."""
        index = self.check_batch(h, y, index)
        self.bank.write(self.activate(h.detach()), y, index)

    @classmethod
    def fit_schedule(cls, params: Dict[str, Any], recipe: str, epochs: int,
                     n_train: int) -> Tuple[Dict[str, Any], int]:
        """Under the scratch recipe, the pairs inside the mini-batch (unless ``pairs`` is given): from
        random weights the unbounded outputs drift together away from the stale bank and the codes
        collapse (measured on digits, DSH: val mAP 0.11 at lr 2e-3 and 2e-4, and with alpha 0.01 or
        0; 0.9997 with in-batch pairs). A method without a ``pairs`` field keeps its bank."""
        has_pairs = any(f.name == "pairs" for f in dataclasses.fields(cls.Config))
        if recipe == "scratch" and "pairs" not in params and has_pairs:
            return {**params, "pairs": "batch"}, epochs
        return params, epochs

    @classmethod
    def table_note(cls, config: MethodConfig, run: Mapping[str, Any], given: Mapping[str, Any],
                   n_train: int, wall_record: str) -> Optional[str]:
        if getattr(config, "pairs", "bank") != "batch":
            return None
        return (f"{cls.name}: pairs inside the mini-batch, not a bank of earlier outputs: from random weights the "
                "bank version's codes collapse")

    def loss(self, h: Tensor, y: Tensor, index: Tensor, *,
             gathered: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        self.check_batch(h, y, index)
        if getattr(self.config, "pairs", "bank") == "batch":
            h = promote(h)
            y = y.to(h.dtype)
            return self.pair_loss(h, y, self.activate(h), y)
        # every rank writes every rank's rows, so the banks stay identical under DDP
        self.write_bank(*(gathered if gathered is not None else (h, y, index)))
        return self.pair_loss(promote(h), y, self.bank.U, self.bank.Y)

    def pair_loss(self, h: Tensor, y: Tensor, U: Tensor, Y: Tensor) -> Tensor:
        """The loss of the batch h (B, bits), y (B, C) against rows U (m, bits), Y (m, C)."""
        raise NotImplementedError
