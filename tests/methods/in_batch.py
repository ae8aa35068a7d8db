"""The check shared by the in-batch methods: the loss of a batch against a naive loop over its pairs
or triplets."""
from __future__ import annotations

import pytest
import torch

from hybridhash.methods import create_method

from .harness import L, labels


def matches_naive(name, naive, K, kind, scale=1.5):
    g = torch.Generator().manual_seed(K * 7 + len(name))
    C = 3
    h, y = scale * torch.randn(6, K, generator=g, dtype=torch.float64), labels(kind, 6, C, g)
    got = create_method(name, bits=K, n_class=C, num_train=6).loss(h, y, torch.arange(6)).item()
    assert got == pytest.approx(naive(L(h), L(y)), rel=1e-5, abs=1e-7)
