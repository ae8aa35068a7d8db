"""DSDH (Li, Sun, He and Tan, NeurIPS 2017, "Deep Supervised Discrete Hashing"): the pairwise
likelihood against a bank of raw outputs, and discrete codes Bd of the training set that a linear
classifier W must map to the labels, fitted by ridge regression (W) and discrete cyclic coordinate
descent (Bd, one bit at a time) (docs/methods.md, dsdh).

Two variants. "paper" (default; the PyTorch port the reference cites): the network is also pulled
towards Bd (eta mean((Bd[ind] - h)^2)), the similarity is taken against the whole training set's
labels, Bd starts at random signs, and W and Bd are updated after each epoch. "deephash" (the
DeepHash-pytorch script, kept to reproduce it): W and Bd are updated before each epoch from banks
that start at zero, and their terms of the loss hold no network output, so they carry no gradient
and the network trains on the likelihood alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError
from .bank import BankMethod
from .base import MethodConfig, MethodDefaults, pairwise_similarity, promote
from .dhn import likelihood
from .registry import register_method

VARIANTS = ("paper", "deephash")
# mu, nu, eta, dcc_iter of each variant: the port's, and DeepHash-pytorch's get_config
VARIANT_DEFAULTS: Dict[str, Dict[str, Any]] = {
    "paper": {"mu": 0.01, "nu": 1.0, "eta": 0.01, "dcc_iter": 1},
    "deephash": {"mu": 1.0, "nu": 1.0, "eta": 55.0, "dcc_iter": 10},
}


def regress_labels(B: Tensor, Y: Tensor, nu_over_mu: float) -> Tensor:
    """W (K, C) = (B^T B + (nu/mu) I)^-1 B^T Y: the ridge regression of labels Y (n, C) on codes B (n, K)."""
    K = B.shape[1]
    A = B.t() @ B + nu_over_mu * torch.eye(K, dtype=B.dtype, device=B.device)
    return torch.linalg.solve(A, B.t() @ Y)


def dcc_sweep(B: Tensor, W: Tensor, Y: Tensor, U: Tensor, eta_over_mu: float) -> Tensor:
    """One discrete cyclic coordinate sweep: with P = Y W^T + (eta/mu) U (n, K), for k = 0 .. K-1 in
    turn (later bits see the updated earlier ones) B[:, k] = sign(P[:, k] - B[:, not k] W[not k] W[k]);
    B (n, K) codes, W (K, C), Y (n, C), U (n, K). Returns the new B."""
    B = B.clone()
    K = B.shape[1]
    P = Y @ W.t() + eta_over_mu * U  # (n, K)
    for k in range(K):
        rest = [j for j in range(K) if j != k]
        B[:, k] = torch.sign(P[:, k] - B[:, rest] @ (W[rest] @ W[k]))
    return B


def dsdh_loss(h: Tensor, U: Tensor, y: Tensor, Y: Tensor, codes: Tensor, W: Tensor, variant: str,
              mu: float, nu: float, eta: float) -> Tensor:
    """h (B, K) raw outputs, U (n, K) bank, y (B, C), Y (n, C) labels of the bank's rows, codes (B, K)
    = Bd of the batch's rows, W (K, C).

    "paper": theta = clamp(0.5 h_i . U_j, -100, 50); mean over B x n of l(theta, s) + eta mean((codes - h)^2).
    "deephash": theta = 0.5 h_i . U_j; mean over B x n of l(theta, s) + mu mean((y - codes W)^2)
    + nu mean(W^2) (the last two are constants of the network).
    """
    s = pairwise_similarity(y.to(h.dtype), Y).to(h.dtype)  # (B, n)
    theta = 0.5 * (h @ U.to(h.dtype).t())  # (B, n)
    codes, W = codes.to(h.dtype), W.to(h.dtype)
    if variant == "paper":
        return likelihood(theta.clamp(-100, 50), s).mean() + eta * (codes - h).pow(2).mean()
    return likelihood(theta, s).mean() + mu * (y.to(h.dtype) - codes @ W).pow(2).mean() + nu * W.pow(2).mean()


@dataclass
class DSDHConfig(MethodConfig):
    """variant: "paper" or "deephash" (module docstring); mu: weight of the classification term;
    nu: of W's ridge penalty; eta: of the coupling of the network's outputs with Bd; dcc_iter:
    rounds of (W step, DCC sweep) per update; pairs: "bank" (the likelihood against every training
    row) or "batch" (against the mini-batch; the bank still feeds the W and Bd updates). ``from_dict`` fills the four numbers the dict does
    not give with its variant's defaults (VARIANT_DEFAULTS); the dataclass defaults are "paper"'s."""

    variant: str = "paper"
    mu: float = 0.01
    nu: float = 1.0
    eta: float = 0.01
    dcc_iter: int = 1
    pairs: str = "bank"
    choices = {"variant": VARIANTS, "pairs": ("bank", "batch")}
    positive = ("mu",)
    nonnegative = ("nu", "eta", "dcc_iter")

    @classmethod
    def from_dict(cls, d: Dict[str, Any], method: str = "method") -> "DSDHConfig":
        variant = d.get("variant", cls.variant)
        if variant in VARIANT_DEFAULTS:  # an unknown one is refused by check
            d = {**VARIANT_DEFAULTS[variant], **d}
        return super().from_dict(d, method)  # type: ignore[return-value]


@register_method
class DSDH(BankMethod):
    name = "dsdh"
    family = "symmetric"
    activation = "none"
    Config = DSDHConfig
    # its best val mAP under the scratch recipe (digits, hybridhash_cpu, 32 bits, 30 epochs, seed 0):
    # 0.59 at lr 2e-3, 0.74 at 2e-4
    scratch_lr_scale = 0.1

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        self.register_buffer("codes", torch.zeros(num_train, bits))  # (n, K) Bd, transposed
        self.register_buffer("W", torch.zeros(bits, n_class))  # (K, C) label regression
        self.register_buffer("prepared", torch.zeros((), dtype=torch.bool))

    @classmethod
    def published(cls, config: DSDHConfig) -> MethodDefaults:
        """The port's batch 128 ("paper"; it also anneals the lr to 1e-7 by a cosine), DeepHash-pytorch's
        64 ("deephash")."""
        return MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=128 if config.variant == "paper" else 64, epochs=150)

    @classmethod
    def table_note(cls, config, run, given, n_train, wall_record) -> Optional[str]:
        pairs = super().table_note(config, run, given, n_train, wall_record)
        if config.variant == "paper":
            note = f"{cls.name}: variant paper (codes coupled to the network's outputs, eta {config.eta:g})"
        else:
            note = f"{cls.name}: variant deephash (the discrete terms carry no gradient: the likelihood alone trains)"
        return note if pairs is None else f"{note}; {pairs[len(cls.name) + 2:]}"

    def facts(self) -> Dict[str, Any]:
        return {"variant": self.config.variant}

    def prepare(self, train_labels: Tensor, generator: Optional[torch.Generator] = None) -> None:
        """"paper": the bank's labels become the training set's (n, C) and Bd random signs drawn from
        ``generator``; skipped when restored by load_state_tensors. "deephash": nothing (its banks
        start at zero, as the reference's)."""
        if self.config.variant != "paper" or bool(self.prepared):
            return
        if tuple(train_labels.shape) != (self.num_train, self.n_class):
            raise ConfigError(f"dsdh: train_labels must be ({self.num_train}, {self.n_class}), "
                              f"got {tuple(train_labels.shape)}")
        self.bank.Y.copy_(train_labels.to(self.bank.Y.device, self.bank.Y.dtype))
        draw = torch.randn(self.num_train, self.bits, generator=generator)
        self.codes.copy_(torch.where(draw >= 0, 1.0, -1.0).to(self.codes.device))
        self.prepared.fill_(True)

    @torch.no_grad()
    def update_codes(self) -> None:
        """``dcc_iter`` rounds of the W step then one DCC sweep of Bd, from the bank (U, Y)."""
        c = self.config
        U, Y = self.bank.U.double(), self.bank.Y.double()
        B = self.codes.double()
        for _ in range(c.dcc_iter):
            W = regress_labels(B, Y, c.nu / c.mu)
            B = dcc_sweep(B, W, Y, U, c.eta / c.mu)
        if c.dcc_iter:
            self.W.copy_(W.to(self.W.dtype))
            self.codes.copy_(B.to(self.codes.dtype))

    def on_epoch_start(self, epoch: int, step: int) -> None:
        if self.config.variant == "deephash":
            self.update_codes()

    def on_epoch_end(self, epoch: int) -> None:
        if self.config.variant == "paper":
            self.update_codes()

    def loss(self, h: Tensor, y: Tensor, index: Tensor, *,
             gathered: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        index = self.check_batch(h, y, index)
        c = self.config
        if c.variant == "paper" and not bool(self.prepared):
            raise ConfigError("dsdh: call prepare(train_labels) before training (variant paper)")
        self.write_bank(*(gathered if gathered is not None else (h, y, index)))
        codes = self.codes[index.to(self.codes.device)]
        h = promote(h)
        U, Y = (h, y) if c.pairs == "batch" else (self.bank.U, self.bank.Y)
        return dsdh_loss(h, U, y, Y, codes, self.W, c.variant, c.mu, c.nu, c.eta)
