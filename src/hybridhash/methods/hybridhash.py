"""HybridHash's own loss as a method: the weighted pairwise likelihood of tanh(h) against a memory
bank (docs/methods.md, hybridhash).

``pairwise_likelihood_loss`` is the pure function of tensors; ``PairwiseLikelihoodLoss`` is that
loss wrapped in its memory bank (buffers ``U`` and ``Y``, saved in ``state_dict`` so a resumed run
continues exactly); ``HybridHashMethod`` drives it as a method.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..limits import BANK_ROWS_PER_IMAGE
from .bank import MemoryBank, check_matrix
from .base import Method, MethodConfig, MethodDefaults, pairwise_similarity
from .registry import register_method

__all__ = ["HybridHashMethod", "PairwiseLikelihoodLoss", "pairwise_likelihood_loss"]


def pairwise_likelihood_loss(u: Tensor, U: Tensor, y: Tensor, Y: Tensor, alpha: float = 0.5) -> Tensor:
    """Weighted pairwise likelihood of a batch against a bank.

    Args:
        u: (B, bits) continuous codes of the batch (tanh outputs); gradients flow through it.
        U: (M, bits) bank of codes (treated as constants).
        y: (B, C) multi-hot label vectors of the batch.
        Y: (M, C) multi-hot label vectors of the bank.
        alpha: scale of the inner products, d_ij = alpha * u_i . U_j.

    Returns:
        Scalar tensor: sum_ij w_ij * (softplus(d_ij) - s_ij * d_ij) / (B * M), where s_ij = 1 when
        y_i and Y_j share a label, and w = S/S1 for similar pairs, S/S0 for dissimilar ones.
        Computed in at least float32 whatever the dtype of ``u`` or of the bank.
    """
    check_matrix("u", u)
    check_matrix("U", U, u.shape[1])
    check_matrix("y", y)
    check_matrix("Y", Y, y.shape[1])
    if y.shape[0] != u.shape[0]:
        raise DataError(f"y has {y.shape[0]} rows but u has {u.shape[0]}")
    if Y.shape[0] != U.shape[0]:
        raise DataError(f"Y has {Y.shape[0]} rows but U has {U.shape[0]}")
    # fp16 banks and autocast outputs are promoted so the softplus and the sums stay accurate
    dtype = torch.promote_types(u.dtype, torch.float32)
    u = u.to(dtype)
    s = pairwise_similarity(y.to(dtype), Y).to(dtype)  # (B, M)
    d = alpha * (u @ U.to(dtype).t())  # (B, M)
    # log(1 + e^d) - s d, written so that no exp overflows
    l = torch.log1p(torch.exp(-d.abs())) + d.clamp(min=0) - s * d  # (B, M)
    S = float(s.numel())
    S1 = s.sum().detach()
    S0 = S - S1
    # a class of pairs that is empty has no terms, so its weight is moot; clamping avoids inf * 0
    w1 = S / S1.clamp(min=1.0)
    w0 = S / S0.clamp(min=1.0)
    w = s * w1 + (1.0 - s) * w0  # (B, M)
    return (w * l).sum() / S


def _against_bank(u: Tensor, y: Tensor, U: Tensor, Y: Tensor, alpha: float) -> Tensor:
    return pairwise_likelihood_loss(u, U, y, Y, alpha)


class PairwiseLikelihoodLoss(MemoryBank):
    """The loss with its memory bank of ``num_train`` rows, both zero at start.

    Each call first writes the batch into the bank (``U[index] = u.detach()``, ``Y[index] = y``),
    then takes the loss of the batch against the whole bank, rows never written included (they
    count as dissimilar pairs with d = 0, as in the original).

    Args:
        num_train: rows of the bank, one per training image. The original sizes it with a
            per-dataset constant instead (10000 for the CIFAR-10 protocols, where 5000 images
            train); pass that number to reproduce its figures exactly.
        bits: code length.
        n_class: label vector length.
        alpha: inner-product scale (0.5 in the paper).
        bank_dtype: dtype of the bank; the original keeps it in torch.float16.
    """

    def __init__(self, num_train: int, bits: int, n_class: int, alpha: float = 0.5,
                 bank_dtype: torch.dtype = torch.float32) -> None:
        super().__init__(num_train, bits, n_class, functools.partial(_against_bank, alpha=float(alpha)), bank_dtype)
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return (f"num_train={self.num_train}, bits={self.bits}, n_class={self.n_class}, alpha={self.alpha}, "
                f"bank_dtype={self.U.dtype}")

    def forward(self, u: Tensor, y: Tensor, index: Tensor, bank_u: Tensor | None = None,
                bank_y: Tensor | None = None, bank_index: Tensor | None = None) -> Tensor:
        """Update the bank, then return the loss of the local batch against it.

        Args:
            u: (B, bits) local batch outputs; the loss is differentiable with respect to them.
            y: (B, n_class) local label vectors.
            index: (B,) local training-set rows.
            bank_u, bank_y, bank_index: optional (B_all, ...) tensors gathered from all
                processes; when given (all three), they are written into the bank instead of the
                local batch, so every process keeps the same bank. They must include the local
                batch.

        Returns:
            Scalar loss tensor.
        """
        given = [t is not None for t in (bank_u, bank_y, bank_index)]
        if any(given) and not all(given):
            raise ConfigError("bank_u, bank_y and bank_index must be given together")
        return super().forward(u, y, index, (bank_u, bank_y, bank_index) if all(given) else None)


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
