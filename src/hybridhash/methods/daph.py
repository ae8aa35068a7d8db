"""DAPH (Shen et al., ACM MM 2017, "Deep Asymmetric Pairwise Hashing"), as DeepHash-pytorch writes it:
two networks, trained in turn, each against the other's outputs of the same batch and against its
own binary codes of the training set, which are updated in closed form after every epoch.

A partial port: the reference's "top" network is pretrained and its "bottom" one random; here both
are the harness's model (two copies, the second from its own seed), and, as in the reference, the
second copy (the bottom network, ``encode_stream`` 1) encodes queries and database. How the paper
uses the two networks at test time was not verified. Outside the comparison selectors: a grid runs
it only when named.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from .bank import MemoryBank
from .base import Method, MethodConfig, MethodDefaults, pairwise_similarity, promote
from .dhn import likelihood
from .registry import register_method


def daph_loss(a: Tensor, b: Tensor, s: Tensor, codes: Tensor, alpha: float, lam: float, beta: float) -> Tensor:
    """a (B, K): tanh of the outputs of the network being trained; b (B, K): tanh of the other
    network's outputs of the same images (constants); s (B, B) the batch's similarity; codes (B, K):
    the trained network's binary codes of the batch's rows. With theta_ij = a_i . b_j / 2:
    mean_{BxB} l(theta, s) + alpha mean_{BxK} (a - codes)^2 + lam mean_{KxK} (a^T a / B - I)^2
    + beta mean_k (sum_i a_ik)^2."""
    B, K = a.shape
    pairs = likelihood(0.5 * (a @ b.t()), s).mean()
    quantization = (a - codes.to(a.dtype)).pow(2).mean()
    eye = torch.eye(K, dtype=a.dtype, device=a.device)
    independence = (a.t() @ a / B - eye).pow(2).mean()
    balance = a.sum(0).pow(2).mean()
    return pairs + alpha * quantization + lam * independence + beta * balance


def daph_update_codes(U: Tensor, Z: Tensor, H: Tensor, alpha: float, gamma: float) -> Tuple[Tensor, Tensor]:
    """The epoch's discrete step: banks U, Z (n, K) of both networks' tanh outputs, H (n, K) the
    second network's codes; returns (B, H) with B = sign(alpha U + gamma H) and then
    H = sign(alpha Z + gamma B), the new B (a 0 stays 0, as the reference's sign)."""
    B = torch.sign(alpha * U + gamma * H)
    return B, torch.sign(alpha * Z + gamma * B)


@dataclass
class DAPHConfig(MethodConfig):
    """alpha: weight of each network's pull towards its codes (and of U, Z in the code update); gamma:
    weight of the other network's codes in the code update; lam: weight of the bit independence
    term (lambda in DeepHash-pytorch); beta: weight of the bit balance term."""

    alpha: float = 10.0
    gamma: float = 10.0
    lam: float = 0.01
    beta: float = 0.01
    nonnegative = ("alpha", "gamma", "lam", "beta")


@register_method
class DAPH(Method):
    name = "daph"
    family = "asymmetric"
    activation = "tanh"
    Config = DAPHConfig
    DEFAULTS = MethodDefaults("adam", 1e-4, 1e-5, batch_size=128, epochs=150)
    # under the scratch recipe its best val mAP on digits (hybridhash_cpu, 32 bits, 10 epochs, seed 0) is
    # 0.32 at lr 2e-3, 0.41 at 2e-4
    scratch_lr_scale = 0.1
    streams = 2
    encode_stream = 1  # the reference encodes with its bottom network
    in_default_grid = False

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        # banks[p].U (n, K): the tanh outputs of copy p (U and Z of the reference), with their labels
        self.banks = nn.ModuleList([MemoryBank(num_train, bits, n_class) for _ in range(2)])
        self.register_buffer("B", torch.zeros(num_train, bits))  # (n, K) codes of stream 0
        self.register_buffer("H", torch.zeros(num_train, bits))  # (n, K) codes of stream 1
        self.register_buffer("prepared", torch.zeros((), dtype=torch.bool))

    @classmethod
    def table_note(cls, config: DAPHConfig, run: Mapping[str, object], given: Mapping[str, object],
                   n_train: int, wall_record: str) -> Optional[str]:
        return (f"{cls.name}: partial port: two copies of the model trained in turn (the second from its own "
                "seed, not one pretrained and one random network); codes of the second copy, as the reference "
                "encodes with its bottom network")

    def prepare(self, train_labels: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> None:
        """Draw both networks' codes as sign(N(0, 1)) from ``generator``; a restored state keeps its own."""
        if bool(self.prepared):
            return
        for codes in (self.B, self.H):
            codes.copy_(torch.randn(codes.shape, generator=generator).sign())
        self.prepared.fill_(True)

    def loss(self, h: Tensor, y: Tensor, index: Tensor, other: Optional[Tensor] = None, *, gathered=None,
             stream: int = 0) -> Tensor:
        """h (B, K): raw outputs of network ``stream`` (0 or 1), the one being trained; other (B, K):
        the other network's raw outputs of the same images (no gradient reaches it)."""
        index = self.check_batch(h, y, index)
        if gathered is not None:
            raise ConfigError("daph: its two networks train in one process; run it without several processes")
        if stream not in (0, 1):
            raise ConfigError(f"daph: stream must be 0 or 1, got {stream!r}")
        if not isinstance(other, Tensor) or other.shape != h.shape:
            raise DataError(f"daph: other must be ({h.shape[0]}, {self.bits}), the other network's outputs of the "
                            f"batch, got {tuple(getattr(other, 'shape', ())) if other is not None else None}")
        if not bool(self.prepared):
            raise ConfigError("daph: call prepare(train_labels, generator) before training")
        a = torch.tanh(promote(h))
        b = torch.tanh(promote(other.detach()))
        y = y.to(a.dtype)
        self.banks[stream].write(a, y, index)  # both banks take the batch, whichever network learns from it
        self.banks[1 - stream].write(b, y, index)
        # the reference's second pass keeps theta_ij = u_i . z_j; with a = z here theta is transposed, and
        # s is symmetric, so the mean over all pairs is the same
        s = pairwise_similarity(y, y).to(a.dtype)
        codes = (self.B if stream == 0 else self.H)[index]
        c = self.config
        return daph_loss(a, b, s, codes, c.alpha, c.lam, c.beta)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        B, H = daph_update_codes(self.banks[0].U, self.banks[1].U, self.H, self.config.alpha, self.config.gamma)
        self.B.copy_(B)
        self.H.copy_(H)
