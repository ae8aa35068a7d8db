"""MDSHC (Wang et al., CVPR 2023): central similarity towards hash centers whose minimum distance
reaches the Gilbert-Varshamov target (docs/mdshc.md).

Centers: :func:`.mdshc_centers.generate_centers` from the run's seed, with the official
generator's five defects fixed (that module's docstring names each fix), made on first use of
``method.centers`` (``prepare`` makes them) and saved with the run; ``facts()`` reports the target
D, the minimum, mean and variance of their distances, the sweeps run and whether D was reached.

Loss, with u = tanh(h), h the output of the method's head Linear + BatchNorm1d (``make_head``):
a per-class binary cross-entropy on the softmax of sqrt(K) cos(u, c) over the C centers (every
positive class of a multi-label row in the one softmax), plus lam mean((|u| - 1)^2), plus, from
epoch ``pair_start_epoch`` (0-based; 9 as published), beta times the positive-pair term
sum s log(1 + exp((1 - cos(u_b, U_j)) / 2)) / sum s against a bank U of codes.

The bank: the published code fills it with a momentum copy of the network (EMA 0.9 of the
weights, fed the same image); the one-model trainer has no second network, so this is the named
**detached-bank variant** (``bank="detached"``): the bank holds the trained network's own u,
detached, written before each comparison (as the other bank methods' banks), and its labels start
at zero (not Gaussian noise as published). The published gradient-norm clip of 5 is the trainer's
``--grad-clip 5``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .bank import MemoryBank
from .base import Method, MethodConfig, MethodDefaults, pairwise_similarity, promote
from .mdshc_centers import BLOCK, distance_summary, generate_centers, initial_kind, target_distance
from .registry import register_method

__all__ = ["MDSHC", "MDSHCConfig", "mdshc_center_loss", "mdshc_pair_loss"]


def mdshc_center_loss(u: Tensor, y: Tensor, centers: Tensor) -> Tensor:
    """-(1/(B C)) sum_b sum_c [y_bc log p_bc + (1 - y_bc) log(1 - p_bc)], p_b = softmax_c(sqrt(K)
    cos(u_b, c_c)); u (B, K), y (B, C) multi-hot, centers (C, K) +-1, C >= 2. log(1 - p) is taken
    as log1p(-p) where p <= 1/2 and as logsumexp over the other classes minus logsumexp over all
    for the largest p, so it stays finite however close p comes to 1."""
    K = u.shape[1]
    z = K ** 0.5 * F.normalize(u, dim=1) @ F.normalize(centers.to(u.dtype), dim=1).t()  # (B, C)
    log_p = z.log_softmax(1)
    top = F.one_hot(z.argmax(1), z.shape[1]).bool()  # the only class whose p may pass 1/2
    rest = z.masked_fill(top, float("-inf")).logsumexp(1, keepdim=True) - z.logsumexp(1, keepdim=True)
    log_not = torch.where(top, rest, torch.log1p(-log_p.exp().masked_fill(top, 0.0)))
    return -(y * log_p + (1 - y) * log_not).mean()


def mdshc_pair_loss(u: Tensor, y: Tensor, U: Tensor, Y: Tensor) -> Tensor:
    """sum_bj s_bj log(1 + exp((1 - cos(u_b, U_j)) / 2)) / sum_bj s_bj over the positive pairs
    (s_bj = y_b . Y_j > 0) of the batch u (B, K), y (B, C) against rows U (n, K), Y (n, C); 0
    when there is no positive pair."""
    s = pairwise_similarity(y, Y).to(u.dtype)  # (B, n)
    cos = F.normalize(u, dim=1) @ F.normalize(U.to(u.dtype), dim=1).t()
    return (s * F.softplus((1 - cos) / 2)).sum() / s.sum().clamp(min=1)


@dataclass
class MDSHCConfig(MethodConfig):
    """beta: weight of the pair term; lam: of the quantization term; pair_start_epoch: first epoch
    (0-based) of the pair term; seed: of the centers (pass the run's seed); max_sweeps: of the center
    generator; block: centers optimised side by side (1: the published one-at-a-time order);
    bank: what the pair term compares with ("detached": the trained network's own codes)."""

    beta: float = 1.0
    lam: float = 1e-4
    pair_start_epoch: int = 9
    seed: int = 0
    max_sweeps: int = 50
    block: int = BLOCK
    bank: str = "detached"
    choices = {"bank": ("detached",)}
    nonnegative = ("beta", "lam", "pair_start_epoch", "max_sweeps")
    positive = ("block",)


@register_method
class MDSHC(Method):
    name = "mdshc"
    family = "central"
    activation = "tanh"
    Config = MDSHCConfig
    # the official code runs up to 1000 epochs with early stopping on the test queries; the harness
    # selects on its validation split and takes DeepHash-pytorch's 150 epochs as for the others
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=64, epochs=150)
    uses_seed = True  # its centers (their start set, the ADMM duals, the class order) come from the seed

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        self.register_buffer("center_codes", torch.zeros(n_class, bits))  # (C, K) once made
        self.register_buffer("center_sweeps", torch.zeros((), dtype=torch.long))
        self.register_buffer("centers_made", torch.zeros((), dtype=torch.bool))
        self.register_buffer("pair_active", torch.tensor(self.config.pair_start_epoch <= 0))
        self.bank = MemoryBank(num_train, bits, n_class)
        self.center_history: Tuple[int, ...] = ()  # the set's minimum after each sweep (this process)

    @property
    def centers(self) -> Tensor:
        """The +-1 centers (C, K), row c of class c: generated on first use from the seed (or restored)."""
        if not bool(self.centers_made):
            c = self.config
            G, report = generate_centers(self.n_class, self.bits, c.seed, c.max_sweeps, c.block)
            self.center_codes.copy_(torch.from_numpy(G))
            self.center_sweeps.fill_(report.sweeps)
            self.centers_made.fill_(True)
            self.center_history = report.history
        return self.center_codes

    @classmethod
    def table_note(cls, config: MethodConfig, run: Mapping[str, Any], given: Mapping[str, Any],
                   n_train: int, wall_record: str) -> Optional[str]:
        return (f"{cls.name}: its pair term (from epoch {config.pair_start_epoch}) compares with a bank of the "
                "trained network's detached codes, not the published momentum copy")

    def facts(self) -> Dict[str, Any]:
        low, mean, var = distance_summary(self.centers.double().cpu().numpy())
        target = target_distance(self.bits, self.n_class)
        facts = {"centers": initial_kind(self.n_class, self.bits), "center_target": target,
                 "min_center_distance": low, "mean_center_distance": mean, "center_distance_variance": var,
                 "center_sweeps": int(self.center_sweeps), "center_target_reached": low >= target or self.n_class < 2,
                 "center_generator": f"fixed (rules 1-5 of docs/mdshc.md), block {self.config.block}",
                 "bank": "detached codes of the trained network (no momentum copy)"}
        if self.center_history:
            facts["center_min_per_sweep"] = list(self.center_history)
        return facts

    def make_head(self, in_features: int) -> Optional[nn.Module]:
        return nn.Sequential(nn.Linear(in_features, self.bits), nn.BatchNorm1d(self.bits))

    def prepare(self, train_labels: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> None:
        """Makes the centers (unless restored); the labels are not needed."""
        self.centers  # noqa: B018  (made on first use)

    def on_epoch_start(self, epoch: int, step: int) -> None:
        self.pair_active.fill_(epoch >= self.config.pair_start_epoch)

    def loss(self, h: Tensor, y: Tensor, index: Tensor, *,
             gathered: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        index = self.check_batch(h, y, index)
        if self.n_class < 2:
            raise ConfigError("mdshc: its softmax over the class centers needs at least 2 classes")
        h = promote(h)
        y = y.to(h.dtype)
        u = torch.tanh(h)
        # every rank writes every rank's rows, so the banks stay identical under DDP
        if gathered is not None:
            gh, gy, gi = gathered
            self.bank.write(torch.tanh(gh.detach()), gy, gi)
        else:
            self.bank.write(u.detach(), y, index)
        c = self.config
        value = mdshc_center_loss(u, y, self.centers.to(h.device)) + c.lam * (u.abs() - 1).pow(2).mean()
        if bool(self.pair_active) and c.beta:
            value = value + c.beta * mdshc_pair_loss(u, y, self.bank.U, self.bank.Y)
        return value
