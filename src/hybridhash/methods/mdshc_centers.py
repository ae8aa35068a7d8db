"""MDSHC's hash centers (Wang et al., CVPR 2023; docs/mdshc.md): C codes of K bits whose
minimum pairwise Hamming distance reaches the Gilbert-Varshamov target D(K, C), found by sweeps of
a per-center ADMM over the box-and-sphere relaxation of {-1, +1}^K, the ADMM as the official code
(Wangld5/Center-Hashing) runs it. The official generator's defects are fixed (rules 1-5):

1. a center's candidates are sign(b) at every outer iteration at the rho cap **and** at the
   iteration where the residual test stops the ADMM (the published code never judges that point
   and returns its input unchanged);
2. a candidate replaces the center only if (its minimum distance to the others, its score) is
   larger, compared in that order (lexicographically), score = mean + min - variance of its C - 1
   distances: the set's minimum distance never decreases;
3. after each sweep the set is compared with the best so far by (minimum, score), the initial set
   included; stop at minimum >= D (after at least one sweep, as the official loop) or after
   ``max_sweeps``; the best set is kept;
4. the duals start from U(0, 1) draws of a numpy Generator seeded from ``seed`` (reproducible);
5. the report records D, the set's minimum, mean and variance, the sweeps run and whether the
   minimum reached D; the rows are then permuted (class c gets row pi(c), pi drawn from ``seed``).

Vectorised: the ADMM runs for a block of ``block`` centers at once, each against the set as it
stood when the block started; the block's candidates are then judged in order against the current
set (rule 2), so a later center of the block sees the earlier ones' updates when it is judged.
``block=1`` is the published Gauss-Seidel order (each center optimised against the current
others); the default ``BLOCK`` (4) costs less CPU per sweep and converges in about as few sweeps;
every center in one block (``None``, Jacobi order) needs many more sweeps.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import List, Optional, Tuple

import numpy as np
from scipy.linalg import hadamard

from ..errors import ConfigError

__all__ = ["CenterReport", "accept_candidate", "admm_candidates", "distance_summary", "generate_centers",
           "initial_centers", "initial_kind", "set_key", "target_distance"]

# the published ADMM's constants (section D.1.3)
RHO0, RHO_GROWTH, RHO_CAP = 1e-5, 1.09, 1e7
GAMMA = (1 + 5 ** 0.5) / 2  # dual step multiplier
TOL, MAX_OUTER, MAX_INNER, PATIENCE = 1e-6, 1000, 10, 100
SPHERE_TOL = 1e-3
# centers optimised side by side: 2.2 to 3 times less CPU than one at a time for 100 classes at 16
# to 64 bits, in as many sweeps (benchmarks/results/mdshc_centers.md)
BLOCK = 4


def target_distance(bits: int, n_class: int) -> int:
    """D(K, C): the smallest d >= 0 with V(K, d - 1) >= 2^K / C, V(K, r) = sum_{i <= r} binom(K, i)
    (V(K, r < 0) = 0), compared in exact integers: C V(K, d - 1) >= 2^K."""
    volume, d = 0, 0  # volume = V(K, d - 1)
    while n_class * volume < 2 ** bits:
        volume += comb(bits, d)
        d += 1
    return d


def initial_kind(n_class: int, bits: int) -> str:
    """The start set :func:`initial_centers` draws for C classes at K bits."""
    if bits & (bits - 1):
        return "random"
    return "hadamard" if n_class <= 2 * bits else "hadamard+balanced"


def initial_centers(n_class: int, bits: int, rng: np.random.Generator) -> Tuple[np.ndarray, str]:
    """(C, K) float64 +-1 start set and its kind: K a power of two: the first C rows of [H_K; -H_K]
    (Sylvester), rows beyond 2K balanced random (exactly K/2 entries -1) ("hadamard" /
    "hadamard+balanced"); otherwise i.i.d. uniform +-1 entries ("random")."""
    kind = initial_kind(n_class, bits)
    if kind == "random":
        return rng.integers(0, 2, (n_class, bits)).astype(np.float64) * 2 - 1, kind
    H = hadamard(bits).astype(np.float64)
    rows = np.concatenate([H, -H])[:n_class]
    extra = n_class - len(rows)
    if extra <= 0:
        return rows, kind
    balanced = np.ones((extra, bits))
    for r in range(extra):
        balanced[r, rng.permutation(bits)[: bits // 2]] = -1
    return np.concatenate([rows, balanced]), kind


def _stats(d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(min, score) along the last axis of integer distances d (..., m), score = mean + min -
    variance, from exact integer sums (equal multisets give equal scores)."""
    d = d.astype(np.int64)
    m = d.shape[-1]
    mean = d.sum(-1) / m
    low = d.min(-1)
    return low, mean + low - ((d * d).sum(-1) / m - mean * mean)


def set_key(G: np.ndarray) -> Tuple[int, float]:
    """(minimum, score) of the C (C - 1) / 2 pairwise distances of a +-1 set G (C, K), C >= 2."""
    C, K = G.shape
    dist = np.rint((K - G @ G.T) / 2)[np.triu_indices(C, 1)]
    low, score = _stats(dist)
    return int(low), float(score)


def admm_candidates(G: np.ndarray, rows: np.ndarray, target: int, rng: np.random.Generator,
                    trace: Optional[List[np.ndarray]] = None) -> List[np.ndarray]:
    """The published per-center ADMM (section D.1.3) for the centers ``rows`` (S,) of G (C, K), C >= 2,
    each against the other C - 1 rows of G, run side by side. Returns per center its candidates
    (n_s, K) +-1, in the order they arose: sign(b) (0 -> +1) at each outer iteration at the rho
    cap and at the iteration whose residual stops the run (rule 1). The duals are drawn center by
    center (y1 (K), y2 (K), y3 (C - 1)), the order a run of one center at a time draws them in.
    ``trace``: b (S, K) is appended after each outer iteration (a stopped center's stays put)."""
    C, K = G.shape
    S = len(rows)
    d0 = K - 2.0 * target
    W = np.ones((S, C))  # W[s, j] = 0 where j is center s itself: H_s is G with that row masked
    W[np.arange(S), rows] = 0.0
    gram = G.T @ G
    A = np.linalg.inv(2 * np.eye(K) + gram - np.einsum("sk,sl->skl", G[rows], G[rows]))  # (S, K, K)
    cbar = (G.sum(0) - G[rows]) / (C - 1)  # (S, K) the others' mean
    y1, y2, y3 = np.empty((S, K)), np.empty((S, K)), np.zeros((S, C))
    for s, i in enumerate(rows):  # drawn center by center, as a per-center run draws them
        y1[s], y2[s] = rng.random(K), rng.random(K)
        y3[s, np.arange(C) != i] = rng.random(C - 1)
    GT = np.ascontiguousarray(G.T)
    b = G[rows].copy()
    z1, z2 = b.copy(), b.copy()
    Hb = (b @ GT) * W
    z3 = (d0 - Hb) * W  # zero at the masked entries, as every (S, C) array here
    rho, at_cap = RHO0, np.zeros(S, dtype=np.int64)
    live = np.ones(S, dtype=bool)  # centers whose run goes on
    found: List[List[np.ndarray]] = [[] for _ in range(S)]
    for _ in range(MAX_OUTER):
        inner = live.copy()  # centers still in this outer iteration's inner loop
        for _ in range(MAX_INNER):
            t = rho * d0 - rho * z3
            t -= y3
            t *= W
            rhs = z1 + z2
            rhs *= rho
            rhs -= y1 + y2 + cbar
            rhs += t @ G
            bi = np.matmul(A, rhs[:, :, None])[:, :, 0]
            bi /= rho
            hb = bi @ GT
            hb *= W
            p1, p2 = bi + y1 / rho, bi + y2 / rho
            p3 = d0 - hb
            p3 -= y3 / rho
            p3 *= W
            sq = np.einsum("sk,sk->s", p2, p2)
            feasible = (np.abs(sq - K) <= SPHERE_TOL) & (p3.min(1) >= 0)
            if feasible.any():  # feasible proposals stay as they are, the others are projected
                keep = feasible[:, None]
                p1 = np.where(keep, p1, np.minimum(np.maximum(p1, -1), 1))
                p2 = np.where(keep, p2, p2 * (K ** 0.5 / np.sqrt(np.maximum(sq, 1e-300)))[:, None])
                p3 = np.where(keep, p3, np.maximum(p3, 0))
            else:
                p1 = np.minimum(np.maximum(p1, -1.0, out=p1), 1.0, out=p1)
                p2 *= (K ** 0.5 / np.sqrt(np.maximum(sq, 1e-300)))[:, None]
                p3 = np.maximum(p3, 0.0, out=p3)
            g = rho * GAMMA
            n1, n2 = y1 + g * (bi - p1), y2 + g * (bi - p2)
            n3 = hb + p3
            n3 -= d0
            n3 *= g
            n3 *= W
            n3 += y3
            if inner.all():
                y1, y2, y3, b, Hb, z1, z2, z3 = n1, n2, n3, bi, hb, p1, p2, p3
            else:
                on = inner[:, None]
                y1, y2, y3 = np.where(on, n1, y1), np.where(on, n2, y2), np.where(on, n3, y3)
                b, Hb = np.where(on, bi, b), np.where(on, hb, Hb)
                z1, z2, z3 = np.where(on, p1, z1), np.where(on, p2, z2), np.where(on, p3, z3)
            inner &= ~feasible  # a feasible proposal leaves the inner loop
            if not inner.any():
                break
        rho = min(rho * RHO_GROWTH, RHO_CAP)
        if trace is not None:
            trace.append(b.copy())
        capped = rho == RHO_CAP
        residual = np.maximum(np.abs(b - z1).max(1), np.abs(b - z2).max(1))
        residual = np.maximum(residual, (np.abs(Hb + z3 - d0) * W).max(1))
        converged = live & (residual < TOL)
        if capped:
            at_cap += live
        for s in np.flatnonzero(live & (capped | converged)):
            found[s].append(np.where(b[s] >= 0, 1.0, -1.0))
        live &= ~converged & (at_cap < PATIENCE)
        if not live.any():
            break
    return [np.array(f).reshape(-1, K) for f in found]


def accept_candidate(G: np.ndarray, i: int, candidates: np.ndarray) -> bool:
    """Rule 2: replace G[i] by the candidate with the largest (min, score) against the other rows
    if that beats the current row's (the first one among equals); True when G[i] changed."""
    if not len(candidates):
        return False
    C, K = G.shape
    others = np.delete(G, i, axis=0)
    options = np.concatenate([G[i:i + 1], candidates])
    low, score = _stats(np.rint((K - options @ others.T) / 2))
    top = low == low.max()
    best = int(np.flatnonzero(top & (score == score[top].max()))[0])
    if best == 0:
        return False
    G[i] = options[best]
    return True


@dataclass(frozen=True)
class CenterReport:
    """What a generated set records: its target D, kind of start set, minimum, mean and variance
    of the pairwise distances before and after, the sweeps run and whether min >= D."""

    target: int
    init: str
    initial_min: int
    min: int
    mean: float
    variance: float
    sweeps: int
    reached: bool
    history: Tuple[int, ...]  # the set's minimum after each sweep


def distance_summary(G: np.ndarray) -> Tuple[int, float, float]:
    """(minimum, mean, variance) of the pairwise Hamming distances of a +-1 set G (C, K); (K, K, 0)
    when C < 2."""
    C, K = G.shape
    if C < 2:
        return K, float(K), 0.0
    dist = np.rint((K - G @ G.T) / 2)[np.triu_indices(C, 1)]
    return int(dist.min()), float(dist.mean()), float(dist.var())


def generate_centers(n_class: int, bits: int, seed: int = 0, max_sweeps: int = 50,
                     block: Optional[int] = BLOCK) -> Tuple[np.ndarray, CenterReport]:
    """The centers (C, K) float64 +-1, rows in class order (already permuted), and their report.

    ``block``: centers optimised side by side (None: all of them; 1: the published Gauss-Seidel
    order; every block starts from the set the earlier blocks left). C = 1: the start set unchanged.
    C > 2^K: ConfigError (no C distinct codes exist).
    """
    if n_class > 2 ** bits:
        raise ConfigError(f"mdshc: {n_class} classes need at least {(n_class - 1).bit_length()} bits for distinct "
                          f"hash centers, got {bits}; use more bits")
    target = target_distance(bits, n_class)
    rng = np.random.default_rng(seed)
    G, kind = initial_centers(n_class, bits, rng)
    first = distance_summary(G)[0]
    history: List[int] = []
    if n_class >= 2:
        best, best_key = G.copy(), set_key(G)
        step = n_class if block is None else max(1, min(block, n_class))
        for _ in range(max_sweeps):
            for start in range(0, n_class, step):
                rows = np.arange(start, min(start + step, n_class))
                for i, cands in zip(rows, admm_candidates(G, rows, target, rng)):
                    accept_candidate(G, int(i), cands)
            key = set_key(G)
            history.append(key[0])
            if key > best_key:
                best, best_key = G.copy(), key
            if key[0] >= target:
                break
        G = best
    order = np.random.default_rng([seed, 1]).permutation(n_class)
    G = G[order]  # class c gets row order[c]
    low, mean, var = distance_summary(G)
    report = CenterReport(target, kind, first, low, mean, var, len(history), low >= target or n_class < 2,
                          tuple(history))
    return G, report
