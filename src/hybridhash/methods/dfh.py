"""DFH (Li, Pei, Zha and van Gemert, BMVC 2019, "Push for Quantization: Deep Fisher Hashing"): a
pairwise likelihood with a margin against a bank of raw outputs, and a quantization pull towards
codes that mix each image's output with its classes' centers; the relaxed centers V are fitted by
gradient steps at every optimizer step (docs/methods.md, dfh)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .bank import BankMethod
from .base import MethodConfig, MethodDefaults, pairwise_similarity, promote
from .registry import register_method

# the step size falls tenfold at these fractions of the center steps (149 and 179 of 200)
CENTER_DECAYS = (0.745, 0.895)


def target_codes(h: Tensor, y: Tensor, V: Tensor, mu: float) -> Tensor:
    """b (B, K) = sign(mu y_i sign(V)^T + h_i) (an exact 0 stays 0), from h (B, K) detached, y (B, C)
    and the relaxed centers V (K, C)."""
    return torch.sign(mu * (y.to(V.dtype) @ torch.sign(V).t()) + h.detach().to(V.dtype))


def center_step_sizes(steps: int, lr: float) -> Tensor:
    """(steps,) float64: lr, then lr / 10 from step round(0.745 steps), lr / 100 from round(0.895 steps)."""
    i = torch.arange(steps, dtype=torch.float64)
    drops = sum((i >= round(f * steps)).double() for f in CENTER_DECAYS)
    return lr * 0.1 ** drops


def update_centers(V: Tensor, y: Tensor, b: Tensor, vul: float = 1.0, nta: float = 1.0, steps: int = 200,
                   lr: float = 0.03) -> Tensor:
    """V (K, C) after ``steps`` plain gradient steps on
    mean_{KxB}(V y_i - b_i)^2 + vul mean_{CxC}(V^T V - K(2I - 11^T))^2 + nta mean_{KxC}(V - sign V)^2,
    sign V held constant in each step's gradient; y (B, C), b (B, K)."""
    K, C = V.shape
    y, b = y.to(V.dtype), b.to(V.dtype)
    TK = K * (2 * torch.eye(C, dtype=V.dtype, device=V.device) - 1)  # (C, C)
    n_fit = y.shape[0] * K
    for size in center_step_sizes(steps, lr).tolist():
        fit = V @ y.t() - b.t()  # (K, B)
        gram = V.t() @ V - TK  # (C, C), symmetric
        grad = (2 / n_fit) * fit @ y + vul * (4 / C**2) * V @ gram + nta * (2 / (K * C)) * (V - torch.sign(V))
        V = V - size * grad
    return V


def dfh_loss(h: Tensor, U: Tensor, y: Tensor, Y: Tensor, b: Tensor, m: float = 3.0, eta: float = 0.5) -> Tensor:
    """h (B, K) raw outputs, U (n, K) bank, y (B, C), Y (n, C), b (B, K) target codes.

    theta = clamp(0.5 h_i . U_j, -100, 50); mean over B x n of (1 - s) softplus(m + theta)
    + s softplus(m - theta), + eta mean((b - h)^2). (DeepHash-pytorch writes log(1 + exp(.)), which
    is inf, and the loss NaN, once m - theta > 88; softplus equals it wherever it is finite.)
    """
    s = pairwise_similarity(y.to(h.dtype), Y).to(h.dtype)  # (B, n)
    theta = (0.5 * (h @ U.to(h.dtype).t())).clamp(-100, 50)  # (B, n)
    pairs = (1 - s) * F.softplus(m + theta) + s * F.softplus(m - theta)
    return pairs.mean() + eta * (b.to(h.dtype) - h).pow(2).mean()


@dataclass
class DFHConfig(MethodConfig):
    """m: margin of the likelihood (the authors' code: 0, the plain likelihood); mu: weight of the
    class centers in the target codes; vul, nta: weights of the centers' separation and
    quantization terms; eta: weight of the quantization pull of h; center_steps, center_lr: gradient
    steps on V per optimizer step and their first step size; pairs: "bank" (as DeepHash-pytorch) or
    "batch" (the pairs inside the mini-batch; the centers are fitted alike)."""

    m: float = 3.0
    mu: float = 0.1
    vul: float = 1.0
    nta: float = 1.0
    eta: float = 0.5
    center_steps: int = 200
    center_lr: float = 0.03
    pairs: str = "bank"
    choices = {"pairs": ("bank", "batch")}
    nonnegative = ("m", "mu", "vul", "nta", "eta", "center_steps")
    positive = ("center_lr",)


@register_method
class DFH(BankMethod):
    name = "dfh"
    family = "symmetric"
    activation = "none"
    Config = DFHConfig
    DEFAULTS = MethodDefaults("rmsprop", 1e-5, 1e-5, batch_size=64, epochs=150)
    # its best val mAP under the scratch recipe (digits, hybridhash_cpu, 32 bits, 30 epochs, seed 0):
    # 0.30 at lr 2e-3, 0.73 at 2e-4
    scratch_lr_scale = 0.1

    def __init__(self, bits, n_class, num_train, config=None):
        super().__init__(bits, n_class, num_train, config)
        self.register_buffer("V", torch.zeros(bits, n_class))  # (K, C) relaxed class centers

    @property
    def centers(self) -> Tensor:
        """sign(V) (K, C), the class centers (0 where V is exactly 0)."""
        return torch.sign(self.V)

    def loss(self, h: Tensor, y: Tensor, index: Tensor, *,
             gathered: Optional[Tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        """Write the bank, take the target codes with the centers before this step's update, fit V
        on every rank's batch (so V stays identical under DDP), then the loss of the local batch."""
        self.check_batch(h, y, index)
        c = self.config
        written = gathered if gathered is not None else (h, y, index)
        if c.pairs == "bank":
            self.write_bank(*written)
        h = promote(h)
        b = target_codes(h, y, self.V, c.mu)  # (B, K)
        with torch.no_grad():
            h_w, y_w = promote(written[0]).detach(), written[1]
            b_w = target_codes(h_w, y_w, self.V, c.mu)
            self.V.copy_(update_centers(self.V, y_w, b_w, c.vul, c.nta, c.center_steps, c.center_lr))
        if c.pairs == "batch":
            return dfh_loss(h, h, y, y, b, c.m, c.eta)
        return dfh_loss(h, self.bank.U, y, self.bank.Y, b, c.m, c.eta)
