"""DNNH: its triplet hinge against a naive loop, and the divide-and-encode head."""
from __future__ import annotations

import math

import pytest
import torch

from hybridhash.errors import ConfigError
from hybridhash.methods import create_method
from hybridhash.methods.dnnh import DivideAndEncode

from . import in_batch
from .harness import MethodSuite, mean, sim


def naive_dnnh(h, y, margin=1.0):
    u = [[1 / (1 + math.exp(-x)) for x in row] for row in h]
    B = len(u)
    d2 = lambda a, b: sum((p - q) ** 2 for p, q in zip(u[a], u[b]))  # noqa: E731
    terms = [max(0.0, margin - (d2(a, n) - d2(a, p)))
             for a in range(B) for p in range(B) for n in range(B)
             if sim(y[a], y[p]) and not sim(y[a], y[n])]
    return mean(terms) if terms else 0.0


class TestDNNH(MethodSuite):
    name = "dnnh"


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_dnnh_matches_naive_loop(K, kind):
    in_batch.matches_naive("dnnh", naive_dnnh, K, kind)


def test_divide_and_encode_maps_each_slice_to_one_unit():
    head = create_method("dnnh", bits=4, n_class=2, num_train=2, head="divide_encode").make_head(10)
    assert isinstance(head, DivideAndEncode) and head.sizes == [3, 3, 2, 2]
    assert create_method("dnnh", bits=4, n_class=2, num_train=2).make_head(10) is None
    x = torch.randn(2, 10, requires_grad=True)
    out = head(x)
    assert out.shape == (2, 4)
    out[:, 2].sum().backward()  # unit 2 sees features 6 and 7 only
    assert x.grad[:, [6, 7]].abs().sum() > 0 and x.grad[:, :6].abs().sum() == 0 and x.grad[:, 8:].abs().sum() == 0
    with pytest.raises(ConfigError, match="at least 4 features"):
        DivideAndEncode(3, 4)
