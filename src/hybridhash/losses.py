"""Weighted pairwise likelihood loss with a memory bank (SPEC.md section 5).

``pairwise_likelihood_loss`` is the pure function of tensors; ``PairwiseLikelihoodLoss`` is the
thin module that owns the bank (buffers ``U`` and ``Y``, saved in ``state_dict`` so a resumed run
continues exactly).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .errors import ConfigError, DataError

__all__ = ["pairwise_likelihood_loss", "PairwiseLikelihoodLoss"]


def _check_matrix(name: str, t: Tensor, cols: int | None = None) -> None:
    if not isinstance(t, Tensor) or t.dim() != 2:
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise DataError(f"{name} must be a 2-D tensor, got {shape}")
    if cols is not None and t.shape[1] != cols:
        raise DataError(f"{name} has {t.shape[1]} columns, expected {cols}")


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
    _check_matrix("u", u)
    _check_matrix("U", U, u.shape[1])
    _check_matrix("y", y)
    _check_matrix("Y", Y, y.shape[1])
    if y.shape[0] != u.shape[0]:
        raise DataError(f"y has {y.shape[0]} rows but u has {u.shape[0]}")
    if Y.shape[0] != U.shape[0]:
        raise DataError(f"Y has {Y.shape[0]} rows but U has {U.shape[0]}")
    # fp16 banks and autocast outputs are promoted so the softplus and the sums stay accurate
    dtype = torch.promote_types(u.dtype, torch.float32)
    u = u.to(dtype)
    s = (y.to(dtype) @ Y.to(dtype).t() > 0).to(dtype)  # (B, M)
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


class PairwiseLikelihoodLoss(nn.Module):
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

    def __init__(
        self,
        num_train: int,
        bits: int,
        n_class: int,
        alpha: float = 0.5,
        bank_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        for name, value in (("num_train", num_train), ("bits", bits), ("n_class", n_class)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(bank_dtype, torch.dtype) or not bank_dtype.is_floating_point:
            raise ConfigError(f"bank_dtype must be a floating torch dtype, got {bank_dtype!r}")
        self.num_train = num_train
        self.bits = bits
        self.n_class = n_class
        self.alpha = float(alpha)
        self.register_buffer("U", torch.zeros(num_train, bits, dtype=bank_dtype))  # (M, bits)
        self.register_buffer("Y", torch.zeros(num_train, n_class, dtype=bank_dtype))  # (M, C)

    def extra_repr(self) -> str:
        return (
            f"num_train={self.num_train}, bits={self.bits}, n_class={self.n_class}, "
            f"alpha={self.alpha}, bank_dtype={self.U.dtype}"
        )

    @torch.no_grad()
    def update_bank(self, u: Tensor, y: Tensor, index: Tensor) -> None:
        """Write rows of the bank.

        Args:
            u: (B, bits) codes; stored detached, in the bank's dtype.
            y: (B, n_class) label vectors.
            index: (B,) integer rows of the training set, each in [0, num_train).
        """
        _check_matrix("u", u, self.bits)
        _check_matrix("y", y, self.n_class)
        if not isinstance(index, Tensor):
            index = torch.as_tensor(index)
        if index.dim() != 1 or index.shape[0] != u.shape[0] or index.shape[0] != y.shape[0]:
            raise DataError(
                f"index must have shape ({u.shape[0]},) to match u and y, got {tuple(index.shape)}"
            )
        if index.dtype.is_floating_point or index.dtype == torch.bool:
            raise DataError(f"index must be an integer tensor, got {index.dtype}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_train):
            raise DataError(
                f"index holds rows outside [0, {self.num_train}): "
                f"min {int(index.min())}, max {int(index.max())}"
            )
        index = index.to(device=self.U.device, dtype=torch.long)
        self.U[index] = u.detach().to(self.U.dtype)
        self.Y[index] = y.detach().to(self.Y.dtype)

    def forward(
        self,
        u: Tensor,
        y: Tensor,
        index: Tensor,
        bank_u: Tensor | None = None,
        bank_y: Tensor | None = None,
        bank_index: Tensor | None = None,
    ) -> Tensor:
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
        if all(given):
            self.update_bank(bank_u, bank_y, bank_index)
        else:
            self.update_bank(u, y, index)
        return pairwise_likelihood_loss(u, self.U, y, self.Y, self.alpha)
