"""MDSHC written out from its definition (docs/mdshc.md), for the tests and the centers
benchmark: the Gilbert-Varshamov target from its formula in exact fractions, the per-center ADMM as
the official code runs it (one center at a time, the matrix inverted at every inner iteration, the
best candidate kept as they arise) with the fixes 1-5, and the loss item by item on scalar tensors
(so that autograd differentiates the formula as written)."""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch


def gv_target(K, C):
    """The smallest d >= 0 with V(K, d - 1) >= 2^K / C, V(K, r) = sum_{i=0..r} binom(K, i)."""
    d = 0
    while sum(math.comb(K, i) for i in range(d)) < Fraction(2 ** K, C):
        d += 1
    return d


def _key(distances):
    """(min, mean + min - variance) of a list of integer distances, exactly."""
    n = len(distances)
    mean = Fraction(sum(distances), n)
    var = sum((Fraction(d) - mean) ** 2 for d in distances) / n
    return min(distances), mean + min(distances) - var


def _distances(b, H):
    return [int(np.sum(b != h)) for h in H]


def naive_center(G, i, D, rng, trace=None):
    """Center i of G (C, K) after one run of the ADMM against the other rows (fixes 1, 2); ``trace``:
    b is appended after each outer iteration."""
    C, K = G.shape
    H = np.delete(G, i, axis=0)
    cbar, d0 = H.mean(0), K - 2 * D
    b = G[i].copy()
    z1, z2, z3 = b.copy(), b.copy(), d0 - H @ np.sign(b)
    y1, y2, y3 = rng.random(K), rng.random(K), rng.random(C - 1)
    rho, gamma, count = 1e-5, (1 + math.sqrt(5)) / 2, 0
    best, best_key = G[i].copy(), _key(_distances(G[i], H))

    def judge(candidate):
        nonlocal best, best_key
        key = _key(_distances(candidate, H))
        if key > best_key:  # larger minimum, or the same minimum and a larger score
            best, best_key = candidate, key

    for _ in range(1000):
        for _ in range(10):
            M = 2 * rho * np.eye(K) + rho * H.T @ H
            b = np.linalg.inv(M) @ (rho * (z1 + z2) + rho * H.T @ (d0 - z3) - y1 - y2 - H.T @ y3 - cbar)
            z1, z2, z3 = b + y1 / rho, b + y2 / rho, d0 - H @ b - y3 / rho
            feasible = abs(z2 @ z2 - K) <= 1e-3 and bool(np.all(z3 >= 0))
            if not feasible:
                z1 = np.clip(z1, -1, 1)
                z2 = z2 * math.sqrt(K) / np.linalg.norm(z2)
                z3 = np.maximum(z3, 0)
            y1 = y1 + gamma * rho * (b - z1)
            y2 = y2 + gamma * rho * (b - z2)
            y3 = y3 + gamma * rho * (H @ b + z3 - d0)
            if feasible:
                break
        rho = min(rho * 1.09, 1e7)
        if trace is not None:
            trace.append(b.copy())
        residual = max(np.abs(b - z1).max(), np.abs(b - z2).max(), np.abs(H @ b + z3 - d0).max())
        if rho == 1e7:
            count += 1
        if rho == 1e7 or residual < 1e-6:
            judge(np.where(b >= 0, 1.0, -1.0))
        if residual < 1e-6 or count >= 100:
            break
    return best


def naive_centers(C, K, seed, max_sweeps=50):
    """(centers (C, K) in class order, sweeps run): the start set of section D, then sweeps over the
    centers one at a time until the minimum reaches D (after at least one sweep), keeping the best
    set by (minimum, score) with the start set included; rows permuted from the seed."""
    rng = np.random.default_rng(seed)
    if K & (K - 1):
        G = rng.integers(0, 2, (C, K)).astype(np.float64) * 2 - 1
    else:
        H = np.ones((1, 1))
        while len(H) < K:  # Sylvester's construction
            H = np.block([[H, H], [H, -H]])
        G = np.concatenate([H, -H])[:C]
        for _ in range(C - len(G)):
            row = np.ones(K)
            row[rng.permutation(K)[: K // 2]] = -1
            G = np.concatenate([G, row[None]])
    D = gv_target(K, C)

    def set_key(S):
        return _key([int(np.sum(S[a] != S[c])) for a in range(C) for c in range(a + 1, C)])

    best, best_key, sweeps = G.copy(), set_key(G), 0
    while sweeps < max_sweeps:
        for i in range(C):
            G[i] = naive_center(G, i, D, rng)
        sweeps += 1
        key = set_key(G)
        if key > best_key:
            best, best_key = G.copy(), key
        if key[0] >= D:
            break
    return best[np.random.default_rng([seed, 1]).permutation(C)], sweeps


def naive_mdshc_loss(u, y, centers, U, Y, beta, lam, pair):
    """The loss item by item: u (B rows of K scalar tensors, tanh(h), float64), y (B, C), centers
    (C, K), bank rows U (n, K), Y (n, C) as nested lists of floats; pair: whether the pair term is on.
    Cosines divide by max(norm, 1e-12), as a normalisation with that floor does."""
    B, C, K = len(u), len(centers), len(u[0])

    def cos(a, b):
        na = sum(x * x for x in a) ** 0.5
        nb = sum(x * x for x in b) ** 0.5
        return sum(x * w for x, w in zip(a, b)) / (torch.clamp(torch.as_tensor(na), min=1e-12)
                                                   * torch.clamp(torch.as_tensor(nb), min=1e-12))

    total = 0.0
    for b in range(B):
        exps = [torch.exp(math.sqrt(K) * cos(u[b], centers[c])) for c in range(C)]
        norm = sum(exps)
        for c in range(C):
            p = exps[c] / norm
            total = total - (y[b][c] * torch.log(p) + (1 - y[b][c]) * torch.log(1 - p))
    value = total / (B * C) + lam * sum((abs(x) - 1) ** 2 for row in u for x in row) / (B * K)
    if pair:
        num, den = 0.0, 0
        for b in range(B):
            for j in range(len(U)):
                if sum(a * w for a, w in zip(y[b], Y[j])) > 0:  # a positive pair
                    num = num + torch.log(1 + torch.exp((1 - cos(u[b], U[j])) / 2))
                    den += 1
        value = value + beta * num / max(den, 1)
    return value
