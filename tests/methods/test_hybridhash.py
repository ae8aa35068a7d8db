"""The hybridhash method: the original's loss fixtures, its loss against a naive loop, its bank."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hybridhash.methods import create_method

from .harness import L, MethodSuite, labels, naive_weighted_likelihood

DATA = Path(__file__).parents[1] / "fixtures"


class TestHybridHash(MethodSuite):
    name = "hybridhash"


@pytest.mark.parametrize("name", ["loss_singlelabel", "loss_multilabel"])
def test_hybridhash_method_reproduces_the_loss_fixtures(name):
    meta = json.loads((DATA / f"{name}.json").read_text())
    t = load_file(DATA / f"{name}.safetensors")
    method = create_method("hybridhash", bits=meta["bit"], n_class=meta["n_class"], num_train=meta["num_train"],
                           alpha=meta["alpha"])
    for s in range(meta["steps"]):
        h = torch.atanh(t[f"step{s}.u"].double())  # the fixture holds tanh outputs; the method takes raw h
        value = method.loss(h, t[f"step{s}.y"], t[f"step{s}.index"])
        assert abs(value.item() - t["losses"][s].item()) <= meta["tolerance_abs"], s


@pytest.mark.parametrize("K", [8, 16])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_hybridhash_matches_naive_loop(K, kind):
    g = torch.Generator().manual_seed(20 + K)
    n, C = 9, 3
    h, y, idx = torch.randn(6, K, generator=g, dtype=torch.float64), labels(kind, 6, C, g), torch.randperm(n, generator=g)[:6]
    got = create_method("hybridhash", bits=K, n_class=C, num_train=n).loss(h, y, idx).item()
    U, Y = torch.zeros(n, K), torch.zeros(n, C)
    U[idx], Y[idx] = torch.tanh(h).float(), y.float()
    assert got == pytest.approx(naive_weighted_likelihood(L(torch.tanh(h)), L(U), L(y), L(Y), 0.5), rel=1e-5)


def test_gathered_rows_fill_the_bank_loss_stays_local():
    g = torch.Generator().manual_seed(2)
    n, K, C = 10, 8, 3
    h_all, y_all, idx_all = torch.randn(6, K, generator=g), labels("single", 6, C, g).float(), torch.randperm(n, generator=g)[:6]
    m = create_method("hybridhash", bits=K, n_class=C, num_train=n)
    local = create_method("hybridhash", bits=K, n_class=C, num_train=n)
    got = m.loss(h_all[3:], y_all[3:], idx_all[3:], gathered=(h_all, y_all, idx_all))
    local.loss(h_all[:3], y_all[:3], idx_all[:3])  # the same bank, written batch by batch
    assert got.item() == pytest.approx(local.loss(h_all[3:], y_all[3:], idx_all[3:]).item(), rel=1e-6)
