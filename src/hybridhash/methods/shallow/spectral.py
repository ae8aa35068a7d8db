"""Spectral Hashing (Weiss, Torralba and Fergus, NIPS 2008) as the authors' trainSH / compressSH
compute it: PCA, a uniform box fitted to the projections, and the K one-dimensional Laplacian
eigenfunctions of lowest eigenvalue along the principal directions."""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor

from ...errors import CheckpointError
from .base import ShallowHash
from .projections import NoOptions
from .streams import FeatureStream, moments, principal_directions

__all__ = ["SH", "spectral_modes", "EPS"]

F64 = torch.float64
EPS = 2.2e-16  # widens the box by MATLAB's double-precision eps, as trainSH does


def spectral_modes(ranges: Tensor, bits: int) -> Tensor:
    """The ``bits`` modes of lowest eigenvalue: int64 (bits, m) with one positive entry per row.

    ``ranges`` (m,) float64 are the box sides R_j. Direction j offers the modes q e_j for
    q = 1 .. maxMode_j - 1, maxMode_j = ceil((bits + 1) R_j / max R); a mode's eigenvalue is
    (q pi / R_j)^2. Enumerated as the zero mode, then direction by direction and q increasing,
    sorted by eigenvalue with a stable sort (ties keep that order); the first (the zero mode) is
    dropped and the next ``bits`` kept. The direction of largest range alone offers ``bits``
    modes, so there are always enough.
    """
    m = ranges.shape[0]
    max_mode = torch.ceil((bits + 1) * ranges / ranges.max()).to(torch.int64)  # (m,), as trainSH evaluates it
    direction = [-1]  # the zero mode first
    frequency = [0]
    for j in range(m):
        count = int(max_mode[j]) - 1
        direction += [j] * count
        frequency += list(range(1, count + 1))
    direction_t, frequency_t = torch.tensor(direction), torch.tensor(frequency, dtype=F64)
    omega0 = math.pi / ranges  # (m,)
    lam = torch.zeros(len(direction), dtype=F64)
    lam[1:] = (frequency_t[1:] * omega0[direction_t[1:]]) ** 2
    keep = torch.sort(lam, stable=True).indices[1:bits + 1]
    modes = torch.zeros(bits, m, dtype=torch.int64)
    modes[torch.arange(bits), direction_t[keep]] = frequency_t[keep].to(torch.int64)
    return modes


class SH(ShallowHash):
    """Spectral Hashing: P (d, m), m = min(bits, d), the top principal directions (signs fixed as
    PCAH's); v = x P, not centred (the box's minimum is subtracted instead); per direction the box
    [min v_j - eps, max v_j + eps] over the training rows (eps = 2.2e-16); then the modes of
    :func:`spectral_modes`. The bit of mode q e_j is +1 where cos(q pi (v_j - min_j) / R_j) > 0
    (strictly, as compressSH), which equals the authors' product of sin(pi/2 + ...) over the
    directions, all of whose other factors are 1.

    Two passes: the covariance, then each direction's minimum and maximum; memory O(d^2); bits may
    exceed d (several bits then share a direction at different frequencies). float64 throughout.
    State: ``projection`` (d, m), ``eigenvalues`` (m,), ``minimum`` / ``maximum`` (m,) (eps
    included), ``modes`` int64 (bits, m).
    """

    name = "sh"
    summary = "Spectral Hashing's one-dimensional eigenfunctions along the principal directions (Weiss et al. 2008)"
    Config = NoOptions
    strict = True  # cos(...) of exactly 0 is a -1 bit, as compressSH's "> 0"

    def _fit(self, stream: FeatureStream) -> Dict[str, Tensor]:
        n, _, scatter = moments(stream)
        m = min(self.bits, stream.d)
        values, directions = principal_directions(scatter, n, m)
        del scatter
        low = torch.full((m,), math.inf, dtype=F64, device=stream.device)
        high = torch.full((m,), -math.inf, dtype=F64, device=stream.device)
        for x in stream.epoch("ranges"):
            if x.shape[0]:
                v = x @ directions  # (B, m)
                low = torch.minimum(low, v.amin(0))
                high = torch.maximum(high, v.amax(0))
        low, high = low - EPS, high + EPS
        modes = spectral_modes((high - low).cpu(), self.bits).to(stream.device)
        return {"projection": directions, "eigenvalues": values, "minimum": low, "maximum": high, "modes": modes}

    @classmethod
    def score(cls, tensors, x: Tensor) -> Tensor:
        t = tensors
        j = t["modes"].argmax(1)  # (bits,) each mode's direction
        q = t["modes"].gather(1, j[:, None])[:, 0].to(F64)  # (bits,) its frequency
        low = t["minimum"]
        omega = q * (math.pi / (t["maximum"] - low))[j]  # (bits,)
        v = x @ t["projection"]  # (B, m)
        return torch.cos((v[:, j] - low[j]) * omega)

    def state_shapes(self, n_features: int):
        m = min(self.bits, n_features)
        return {"projection": ((n_features, m), F64), "eigenvalues": ((m,), F64), "minimum": ((m,), F64),
                "maximum": ((m,), F64), "modes": ((self.bits, m), torch.int64)}

    def check_state(self) -> None:
        t = self.tensors
        modes = t["modes"]
        if not (bool(((modes > 0).sum(1) == 1).all()) and bool((modes >= 0).all())):
            raise CheckpointError("sh state modes must have one positive frequency per row and zeros elsewhere")
        if not bool((t["maximum"] > t["minimum"]).all()):
            raise CheckpointError("sh state: every maximum must exceed its minimum")
