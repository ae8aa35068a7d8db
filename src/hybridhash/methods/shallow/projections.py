"""Sign-of-projection baselines: LSH (random projections; Charikar, STOC 2002), PCA hashing, and
ITQ (Iterative Quantization; Gong and Lazebnik, CVPR 2011). A bit is +1 where its projection is
>= 0, as the authors' code and the project's sign rule (``hybridhash.codes``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..base import MethodConfig
from .base import ShallowHash
from .streams import FeatureStream, fix_signs, moments, principal_directions

__all__ = ["LSH", "PCAH", "ITQ", "initial_rotation", "itq_rotation"]

F64 = torch.float64


class _Projection(ShallowHash):
    """b(x) = sgn((x - mean) @ projection): the state is ``mean`` (d,) and ``projection`` (d, bits)."""

    @classmethod
    def score(cls, tensors, x: Tensor) -> Tensor:
        return (x - tensors["mean"]) @ tensors["projection"]


@dataclass
class LSHConfig(MethodConfig):
    center: bool = True  # subtract the training mean first (libhash's LSH); False: FIRe's, no centring


class LSH(_Projection):
    """Sign random projections: W (d, bits) with i.i.d. N(0, 1) entries drawn from the seed's
    generator, b(x) = sgn(W^T (x - mean)), mean the training rows' mean (zeros when
    ``center=False``). One pass, for the mean (and to check the features); no covariance, so any
    d is accepted; memory O(d * bits)."""

    name = "lsh"
    summary = "sign random projections of the centred features (Charikar 2002); option center"
    Config = LSHConfig
    covariance = False

    def _fit(self, stream: FeatureStream) -> Dict[str, Tensor]:
        _, mean, _ = moments(stream, scatter=False)
        if not self.options.center:
            mean = torch.zeros_like(mean)
        w = torch.randn(stream.d, self.bits, generator=self.generator(), dtype=F64)  # (d, bits)
        return {"mean": mean, "projection": w.to(stream.device)}

    def state_shapes(self, n_features: int):
        return {"mean": ((n_features,), F64), "projection": ((n_features, self.bits), F64)}


@dataclass
class NoOptions(MethodConfig):
    pass


class PCAH(_Projection):
    """PCA hashing: the projection (d, bits) is the top-``bits`` eigenvectors of the training
    covariance in decreasing order of eigenvalue (each one's sign fixed: its largest-magnitude
    entry positive), b(x) = sgn(P^T (x - mean)). One pass; memory O(d^2); needs bits <= d.

    With bits above the features' rank, the last bits project on directions of zero variance and
    their values are rounding noise: give a rank of at least ``bits`` (the ``eigenvalues`` say)."""

    name = "pcah"
    summary = "signs of the top principal components of the centred features; bits <= features"
    Config = NoOptions
    bits_within_features = True

    def _fit(self, stream: FeatureStream) -> Dict[str, Tensor]:
        n, mean, scatter = moments(stream)
        values, directions = principal_directions(scatter, n, self.bits)
        return {"mean": mean, "projection": directions, "eigenvalues": values}

    def state_shapes(self, n_features: int):
        return {"mean": ((n_features,), F64), "projection": ((n_features, self.bits), F64),
                "eigenvalues": ((self.bits,), F64)}


@dataclass
class ITQConfig(MethodConfig):
    iterations: int = 50  # T: the rotation is updated T + 1 times (the authors' `for iter = 0:n_iter`)


def initial_rotation(bits: int, generator: torch.Generator) -> Tensor:
    """R_0 (bits, bits) float64: the left singular vectors of a (bits, bits) N(0, 1) draw, a random
    rotation as the authors draw it, with :func:`fix_signs` applied so that it does not depend on
    the linear-algebra library's sign convention."""
    g = torch.randn(bits, bits, generator=generator, dtype=F64)
    return fix_signs(torch.linalg.svd(g).U).contiguous()


def itq_rotation(v: Tensor, rotation: Tensor, iterations: int, progress=None) -> tuple:
    """ITQ's alternating minimisation of ||B - V R||_F^2 over B in {-1, 1} and orthogonal R.

    Args:
        v: V (n, K) float64, the centred training rows projected on the principal directions.
        rotation: R_0 (K, K).
        iterations: T; updates t = 0 .. T each set B_t = sgn(V R_t) and R_{t+1} = S_hat S^T from
            the SVD B_t^T V = S Omega S_hat^T.
        progress: None or ``progress(1)`` after each update.

    Returns (R_{T+1} (K, K), errors (T + 2,)): errors[t] = ||B_t - V R_t||_F^2 / n for t = 0 .. T + 1
    (the last with B_{T+1} = sgn(V R_{T+1})); non-increasing, as each half-step can only lower it.
    """
    n = v.shape[0]
    errors = []
    for _ in range(iterations + 1):
        z = v @ rotation  # (n, K)
        b = torch.where(z >= 0, 1.0, -1.0).to(F64)
        errors.append(((b - z) ** 2).sum() / n)
        s, _, s_hat_t = torch.linalg.svd(b.t() @ v)  # (K, K) each
        rotation = s_hat_t.t() @ s.t()
        if progress is not None:
            progress(1)
    z = v @ rotation
    errors.append(((torch.where(z >= 0, 1.0, -1.0).to(F64) - z) ** 2).sum() / n)
    return rotation.contiguous(), torch.stack(errors)


class ITQ(_Projection):
    """Iterative Quantization: PCA as :class:`PCAH`, then the rotation R that ITQ's
    ``iterations + 1`` updates reach from a random R_0 (:func:`initial_rotation`, the seed's
    generator); b(x) = sgn((x - mean) P R) with the final R for every set (the authors' function
    returns its training codes from the rotation before the last update; here they are not).

    Two passes: the mean and covariance, then V = (X - mean) P, which the rotation updates need
    row by row and which is kept: memory O(d^2 + n * bits) float64 (8 * n * bits bytes for V).
    The state adds ``rotation`` (bits, bits) and ``quantization_error`` (iterations + 2,), the
    per-update ||B - V R||_F^2 / n (:func:`itq_rotation`).
    """

    name = "itq"
    summary = "PCA, then the rotation of Iterative Quantization (Gong and Lazebnik 2011); option iterations"
    Config = ITQConfig
    bits_within_features = True

    def _fit(self, stream: FeatureStream) -> Dict[str, Tensor]:
        n, mean, scatter = moments(stream)
        values, directions = principal_directions(scatter, n, self.bits)
        del scatter
        v = torch.empty(n, self.bits, dtype=F64, device=stream.device)  # (n, K)
        row = 0
        for x in stream.epoch("projections"):
            v[row:row + x.shape[0]] = (x - mean) @ directions
            row += x.shape[0]
        r0 = initial_rotation(self.bits, self.generator()).to(stream.device)
        updates = self.options.iterations + 1
        rotation, errors = itq_rotation(v, r0, self.options.iterations,
                                        progress=lambda k: stream.report("rotation", k, updates))
        return {"mean": mean, "projection": directions, "eigenvalues": values, "rotation": rotation,
                "quantization_error": errors}

    @classmethod
    def score(cls, tensors, x: Tensor) -> Tensor:
        t = tensors
        return ((x - t["mean"]) @ t["projection"]) @ t["rotation"]

    def state_shapes(self, n_features: int):
        return {"mean": ((n_features,), F64), "projection": ((n_features, self.bits), F64),
                "eigenvalues": ((self.bits,), F64), "rotation": ((self.bits, self.bits), F64),
                "quantization_error": ((self.options.iterations + 2,), F64)}

    def facts(self) -> Dict[str, Any]:
        errors: Optional[Tensor] = self.tensors.get("quantization_error")
        return {**super().facts(),
                "quantization_error": None if errors is None else [float(e) for e in errors]}
