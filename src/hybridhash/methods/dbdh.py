"""DBDH (Zheng, Zhang and Lu, Neurocomputing 2020, "Deep balanced discrete hashing for image
retrieval"): the pairwise likelihood of hard-clamped outputs against a bank of them, with a balance
term that pushes each code's mean bit towards 0 (docs/methods.md, dbdh)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..errors import ConfigError
from .bank import BankMethod
from .base import MethodConfig, MethodDefaults, pairwise_similarity
from .dhn import likelihood
from .registry import register_method


def dbdh_loss(h: Tensor, U: Tensor, y: Tensor, Y: Tensor, alpha: float = 0.1, p: int = 2) -> Tensor:
    """h (B, K) raw outputs, U (n, K) bank of clamped outputs, y (B, C), Y (n, C).

    u = clamp(h, -1, 1) (no gradient where |h| > 1); theta = 0.5 u_i . U_j; mean over B x n of
    l(theta, s) + alpha mean_i |mean_k u_ik|^p (each code's balance, not each bit's over the batch).
    """
    u = h.clamp(-1, 1)
    s = pairwise_similarity(y.to(h.dtype), Y).to(h.dtype)  # (B, n)
    theta = 0.5 * (u @ U.to(h.dtype).t())  # (B, n)
    balance = u.mean(dim=1).abs().pow(p).mean()
    return likelihood(theta, s).mean() + alpha * balance


@dataclass
class DBDHConfig(MethodConfig):
    """alpha: weight of the balance term; p: its power, 1 or 2; pairs: "bank" (as DeepHash-pytorch)
    or "batch" (the pairs inside the mini-batch)."""

    alpha: float = 0.1
    p: int = 2
    pairs: str = "bank"
    choices = {"pairs": ("bank", "batch")}
    nonnegative = ("alpha",)

    def check(self, method: str) -> None:
        super().check(method)
        if self.p not in (1, 2):
            raise ConfigError(f"{method}: p must be 1 or 2, got {self.p!r}")


@register_method
class DBDH(BankMethod):
    name = "dbdh"
    family = "symmetric"
    activation = "clamp"  # to [-1, 1]; codes stay sign(h)
    Config = DBDHConfig
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=128, epochs=150, lr_step_epochs=50)
    # its best val mAP under the scratch recipe (digits, hybridhash_cpu, 32 bits, 30 epochs, seed 0):
    # 0.54 at lr 2e-3, 0.76 at 2e-4
    scratch_lr_scale = 0.1

    def activate(self, h: Tensor) -> Tensor:
        """clamp(h, -1, 1), what the bank stores."""
        return h.clamp(-1, 1)

    def pair_loss(self, h: Tensor, y: Tensor, U: Tensor, Y: Tensor) -> Tensor:
        return dbdh_loss(h, U, y, Y, self.config.alpha, self.config.p)
