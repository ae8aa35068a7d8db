"""ADSH (Jiang and Li, AAAI 2018): asymmetric hashing. The training set gets learned codes V
(n, K); each outer iteration trains the network on a sample of it against V, then updates V one
bit column at a time in closed form."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from .base import Method, MethodConfig, MethodDefaults, pairwise_similarity, promote
from .registry import register_method


def soft_similarity(y: Tensor, Y: Tensor) -> Tuple[Tensor, float]:
    """S~ = S (1 + r) - r with S = [y . Y > 0] (m, n) and r = sum(S) / sum(1 - S); returns (S~, r)."""
    S = pairwise_similarity(y, Y).to(Y.dtype)
    r = float(S.sum() / (S.numel() - S.sum()).clamp(min=1))  # all-similar: no re-weighting needed
    return S * (1 + r) - r, r


def adsh_loss(u: Tensor, V: Tensor, S_soft: Tensor, V_batch: Tensor, gamma: float, num_train: int) -> Tensor:
    """u (B, K) = tanh(h); V (n, K); S_soft (B, n); V_batch (B, K) = V[index]:
    (sum((u V^T - K S~)^2) + gamma sum((V_batch - u)^2)) / (n B)."""
    K = u.shape[1]
    square = (u @ V.to(u.dtype).t() - K * S_soft.to(u.dtype)).pow(2).sum()
    quant = (V_batch.to(u.dtype) - u).pow(2).sum()
    return (square + gamma * quant) / (num_train * u.shape[0])


def adsh_update_v(V: Tensor, U: Tensor, S_soft: Tensor, U_bar: Tensor, gamma: float) -> Tensor:
    """Column-wise discrete update. V (n, K); U (m, K) the sample's latest u; S_soft (m, n);
    U_bar (n, K): U at the sampled rows, zeros elsewhere. With Q = -2 K S~^T U - 2 gamma U_bar,
    V[:, k] = -sign(2 V[:, not k] (U[:, not k]^T U[:, k]) + Q[:, k]) for k = 0 .. K-1 in turn."""
    V = V.clone()
    K = V.shape[1]
    Q = -2 * K * S_soft.t() @ U - 2 * gamma * U_bar  # (n, K)
    for k in range(K):
        rest = [j for j in range(K) if j != k]
        V[:, k] = -torch.sign(2 * V[:, rest] @ (U[:, rest].t() @ U[:, k]) + Q[:, k])
    return V


def iterations_for(image_steps: int, num_train: int, num_samples: int = 2000, epochs_per_iteration: int = 3) -> int:
    """Outer iterations that give ADSH about ``image_steps`` image-steps (images seen in training)."""
    return max(1, round(image_steps / (epochs_per_iteration * min(num_samples, num_train))))


@dataclass
class ADSHConfig(MethodConfig):
    """gamma: weight of the V-u coupling; num_samples: images per outer iteration (at most n);
    epochs_per_iteration: trainer epochs (passes over the sample) per outer iteration;
    iterations: outer iterations, so the run lasts iterations * epochs_per_iteration trainer
    epochs (scale it with ``iterations_for`` to match other methods' image-steps); database:
    "network" (codes of the network for every set) or "learned" (V as the training-set codes)."""

    gamma: float = 200.0
    num_samples: int = 2000
    epochs_per_iteration: int = 3
    iterations: int = 50
    database: str = "network"
    choices = {"database": ("network", "learned")}
    positive = ("num_samples", "epochs_per_iteration", "iterations")
    nonnegative = ("gamma",)


@register_method
class ADSH(Method):
    name = "adsh"
    family = "asymmetric"
    activation = "tanh"
    Config = ADSHConfig

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        m = min(self.config.num_samples, num_train)
        self.register_buffer("labels", torch.zeros(num_train, n_class))  # (n, C) of the training set
        self.register_buffer("V", torch.zeros(num_train, bits))  # (n, K) learned codes
        self.register_buffer("U_bar", torch.zeros(num_train, bits))  # latest u at the sampled rows
        self.register_buffer("sample", torch.zeros(m, dtype=torch.long))  # rows of this outer iteration
        self.register_buffer("sample_iteration", torch.full((), -1, dtype=torch.long))
        self.register_buffer("r", torch.zeros((), dtype=torch.float64))
        self.register_buffer("prepared", torch.zeros((), dtype=torch.bool))

    @property
    def rows_per_epoch(self) -> int:
        return int(self.sample.shape[0])

    @classmethod
    def published(cls, config: ADSHConfig) -> MethodDefaults:
        return MethodDefaults("adam", 1e-4, 1e-5, batch_size=64,
                              epochs=config.iterations * config.epochs_per_iteration)

    @classmethod
    def fit_schedule(cls, params: Dict[str, Any], recipe: str, epochs: int,
                     n_train: int) -> Tuple[Dict[str, Any], int]:
        """Under the shared scratch recipe, the outer iterations that see as many images as the other
        methods' ``epochs`` passes over the whole set (unless ``iterations`` is given); the run's
        epochs become iterations * epochs_per_iteration, so that it ends on a V update."""
        config = cls.Config.from_dict(params, cls.name)
        params = dict(params)
        if "iterations" not in params and recipe == "scratch":
            params["iterations"] = iterations_for(epochs * n_train, n_train, config.num_samples,
                                                  config.epochs_per_iteration)
        return params, params.get("iterations", config.iterations) * config.epochs_per_iteration

    @classmethod
    def table_note(cls, config: ADSHConfig, run: Mapping[str, Any], given: Mapping[str, Any],
                   n_train: int, wall_record: str) -> Optional[str]:
        scaled = run.get("recipe") == "scratch" and "iterations" not in given
        return (f"{cls.name}: {config.iterations} outer iterations x {config.epochs_per_iteration} epochs over "
                f"samples of {min(config.num_samples, n_train)} of the {n_train} training images = "
                f"{run.get('epochs')} trainer epochs"
                + (" (iterations scaled to the other methods' image-steps)" if scaled else "")
                + "; queries and database encoded by the network")

    def prepare(self, train_labels: Tensor, generator: Optional[torch.Generator] = None) -> None:
        if tuple(train_labels.shape) != (self.num_train, self.n_class):
            raise ConfigError(f"adsh: train_labels must be ({self.num_train}, {self.n_class}), "
                              f"got {tuple(train_labels.shape)}")
        self.labels.copy_(train_labels.to(self.labels.device, self.labels.dtype))
        self.prepared.fill_(True)

    def epoch_rows(self, epoch: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """The sample of this epoch's outer iteration, drawn from ``generator`` on its first epoch."""
        if not bool(self.prepared):
            raise ConfigError("adsh: call prepare(train_labels) before training")
        it = epoch // self.config.epochs_per_iteration
        if int(self.sample_iteration) != it:
            rows = torch.randperm(self.num_train, generator=generator)[: self.sample.shape[0]]
            self.sample.copy_(rows.to(self.sample.device))
            self.r.fill_(soft_similarity(self.labels[self.sample], self.labels)[1])
            self.U_bar.zero_()
            self.sample_iteration.fill_(it)
        return self.sample.cpu().clone()

    def loss(self, h: Tensor, y: Tensor, index: Tensor, *, gathered=None) -> Tensor:
        index = self.check_batch(h, y, index)
        if int(self.sample_iteration) < 0:
            raise ConfigError("adsh: call epoch_rows(epoch, generator) at each epoch start to draw the sample")
        in_sample = torch.zeros(self.num_train, dtype=torch.bool, device=self.V.device)
        in_sample[self.sample] = True
        h_w, y_w, index_w = gathered if gathered is not None else (h, y, index)
        index_w = torch.as_tensor(index_w).to(self.V.device, torch.long)
        if not bool(in_sample[index_w].all()):
            raise DataError("adsh: batch rows outside this outer iteration's sample; iterate over epoch_rows(...)")
        u = torch.tanh(promote(h))
        with torch.no_grad():
            self.U_bar[index_w] = torch.tanh(h_w.detach()).to(self.U_bar.dtype)
        r = float(self.r)
        S_soft = pairwise_similarity(y.to(u.dtype), self.labels.to(u.device)).to(u.dtype) * (1 + r) - r
        V = self.V.to(u.device)
        return adsh_loss(u, V, S_soft, V[index.to(V.device)], self.config.gamma, self.num_train)

    @torch.no_grad()
    def on_epoch_end(self, epoch: int) -> None:
        """After the last epoch of an outer iteration, the column-wise update of V."""
        per = self.config.epochs_per_iteration
        if (epoch + 1) % per or int(self.sample_iteration) != epoch // per:
            return
        S_soft, _ = soft_similarity(self.labels[self.sample], self.labels)
        self.V.copy_(adsh_update_v(self.V, self.U_bar[self.sample], S_soft, self.U_bar, self.config.gamma))

    def learned_codes(self) -> Tensor:
        """V as +-1 codes (n, K) of the training set (a 0 of sign() counted as +1)."""
        return torch.where(self.V >= 0, 1.0, -1.0)
