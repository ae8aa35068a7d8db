"""The pairwise likelihood loss against the original's replays and a naive double loop."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hybridhash.errors import ConfigError, DataError
from hybridhash.methods.hybridhash import PairwiseLikelihoodLoss, pairwise_likelihood_loss

DATA = Path(__file__).parents[1] / "fixtures"


def naive_loss(u, U, y, Y, alpha):
    """Double Python loop over pairs, in float64, straight from the paper (docs/methods.md, hybridhash)."""
    B, M = u.shape[0], U.shape[0]
    s = [[1.0 if float(y[i].double() @ Y[j].double()) > 0 else 0.0 for j in range(M)] for i in range(B)]
    S1 = sum(map(sum, s))
    S = B * M
    S0 = S - S1
    total = 0.0
    for i in range(B):
        for j in range(M):
            d = alpha * float(u[i].double() @ U[j].double())
            l = math.log1p(math.exp(-abs(d))) + max(d, 0.0) - s[i][j] * d
            w = S / S1 if s[i][j] else S / S0
            total += w * l
    return total / S


@pytest.mark.parametrize("name", ["loss_singlelabel", "loss_multilabel"])
def test_reproduces_original_replay(name):
    meta = json.loads((DATA / f"{name}.json").read_text())
    t = load_file(DATA / f"{name}.safetensors")
    loss = PairwiseLikelihoodLoss(meta["num_train"], meta["bit"], meta["n_class"], alpha=meta["alpha"])
    assert meta["steps"] >= 2
    for s in range(meta["steps"]):
        value = loss(t[f"step{s}.u"], t[f"step{s}.y"], t[f"step{s}.index"])
        assert abs(value.item() - t["losses"][s].item()) <= meta["tolerance_abs"], s


@pytest.mark.parametrize("multilabel", [False, True])
def test_matches_naive_double_loop(multilabel):
    g = torch.Generator().manual_seed(3 + multilabel)
    B, M, bits, C = 5, 13, 12, 4
    u = torch.tanh(3 * torch.randn(B, bits, generator=g))
    U = torch.tanh(3 * torch.randn(M, bits, generator=g))
    if multilabel:
        y = (torch.rand(B, C, generator=g) < 0.4).float()
        Y = (torch.rand(M, C, generator=g) < 0.4).float()
    else:
        y = torch.eye(C)[torch.randint(0, C, (B,), generator=g)]
        Y = torch.eye(C)[torch.randint(0, C, (M,), generator=g)]
    for alpha in (0.5, 4.0):  # 4.0 pushes |d| up to 48, where a naive log(1 + e^d) would overflow in fp32
        got = pairwise_likelihood_loss(u, U, y, Y, alpha).item()
        assert got == pytest.approx(naive_loss(u, U, y, Y, alpha), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("all_similar", [True, False])
def test_one_empty_pair_class_is_finite(all_similar):
    g = torch.Generator().manual_seed(0)
    u, U = torch.randn(3, 8, generator=g), torch.randn(6, 8, generator=g)
    y = torch.ones(3, 2)
    Y = torch.ones(6, 2) if all_similar else torch.zeros(6, 2)
    got = pairwise_likelihood_loss(u, U, y, Y)
    assert torch.isfinite(got)
    # with one class of pairs only, both weights would be 1: the plain mean of l
    d = 0.5 * u @ U.t()
    expected = (torch.nn.functional.softplus(d) - float(all_similar) * d).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_gradients_reach_u_only_and_bank_is_written_first():
    g = torch.Generator().manual_seed(1)
    loss = PairwiseLikelihoodLoss(num_train=20, bits=8, n_class=3)
    u = torch.randn(4, 8, generator=g, requires_grad=True)
    y = torch.eye(3)[torch.tensor([0, 1, 2, 0])]
    index = torch.tensor([3, 7, 11, 19])
    value = loss(u, y, index)
    value.backward()
    assert u.grad is not None and u.grad.abs().sum() > 0
    assert not loss.U.requires_grad and loss.U.grad is None
    assert torch.equal(loss.U[index], u.detach())
    assert torch.equal(loss.Y[index], y)
    # the batch is in the bank when the loss is taken: same value as the pure function on it
    assert value.item() == pytest.approx(pairwise_likelihood_loss(u.detach(), loss.U, y, loss.Y).item())
    assert list(dict(loss.named_parameters())) == []


def test_bank_is_in_state_dict_and_resume_is_exact():
    g = torch.Generator().manual_seed(2)
    a = PairwiseLikelihoodLoss(num_train=10, bits=6, n_class=2)
    batches = [
        (
            torch.randn(3, 6, generator=g),
            torch.eye(2)[torch.randint(0, 2, (3,), generator=g)],
            torch.randperm(10, generator=g)[:3],
        )
        for _ in range(3)
    ]
    a(*batches[0])
    b = PairwiseLikelihoodLoss(num_train=10, bits=6, n_class=2)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"U", "Y"}
    for batch in batches[1:]:
        assert a(*batch).item() == b(*batch).item()


def test_fp16_bank_reproduces_the_original_storage():
    g = torch.Generator().manual_seed(4)
    loss16 = PairwiseLikelihoodLoss(num_train=12, bits=8, n_class=3, bank_dtype=torch.float16)
    assert loss16.U.dtype == torch.float16 and loss16.Y.dtype == torch.float16
    u = torch.tanh(torch.randn(5, 8, generator=g))
    y = torch.eye(3)[torch.randint(0, 3, (5,), generator=g)]
    index = torch.arange(5)
    value = loss16(u, y, index)
    assert value.dtype == torch.float32
    assert torch.equal(loss16.U[index], u.half())
    U, Y = torch.zeros(12, 8), torch.zeros(12, 3)
    U[index], Y[index] = u.half().float(), y
    expected = pairwise_likelihood_loss(u, U, y, Y)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    # and it differs from the float32 bank by the rounding only
    loss32 = PairwiseLikelihoodLoss(num_train=12, bits=8, n_class=3)
    assert value.item() == pytest.approx(loss32(u, y, index).item(), rel=1e-3)


def test_gathered_batches_update_the_bank_loss_is_local():
    g = torch.Generator().manual_seed(5)
    loss = PairwiseLikelihoodLoss(num_train=16, bits=8, n_class=4)
    u_all = torch.randn(6, 8, generator=g)
    y_all = torch.eye(4)[torch.randint(0, 4, (6,), generator=g)]
    idx_all = torch.tensor([0, 5, 9, 2, 14, 7])
    u_local = u_all[3:].clone().requires_grad_(True)  # this process holds the second half
    value = loss(u_local, y_all[3:], idx_all[3:], bank_u=u_all, bank_y=y_all, bank_index=idx_all)
    assert torch.equal(loss.U[idx_all], u_all)
    expected = naive_loss(u_all[3:], loss.U, y_all[3:], loss.Y, 0.5)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    # the gradient reaches the local rows only, and equals central differences of the naive loss
    # (the bank is held fixed: it stores detached rows)
    eps = 1e-4
    fd = torch.zeros_like(u_local, dtype=torch.float64)
    for i in range(u_local.shape[0]):
        for k in range(u_local.shape[1]):
            plus, minus = u_all[3:].clone().double(), u_all[3:].clone().double()
            plus[i, k] += eps
            minus[i, k] -= eps
            fd[i, k] = (naive_loss(plus, loss.U, y_all[3:], loss.Y, 0.5)
                        - naive_loss(minus, loss.U, y_all[3:], loss.Y, 0.5)) / (2 * eps)
    torch.testing.assert_close(u_local.grad.double(), fd, rtol=1e-3, atol=1e-6)
    with pytest.raises(ConfigError, match="together"):
        loss(u_local, y_all[3:], idx_all[3:], bank_u=u_all)


def test_original_row_count_counts_unwritten_rows_as_dissimilar():
    u = torch.ones(1, 4)
    y = torch.tensor([[1.0, 0.0]])
    small = PairwiseLikelihoodLoss(num_train=1, bits=4, n_class=2)(u, y, torch.tensor([0]))
    big = PairwiseLikelihoodLoss(num_train=3, bits=4, n_class=2)(u, y, torch.tensor([0]))
    d = 0.5 * 4
    assert small.item() == pytest.approx(math.log1p(math.exp(d)) - d, rel=1e-6)
    # 1 similar pair (weight 3/1) and 2 zero rows (weight 3/2, l = ln 2), averaged over 3
    assert big.item() == pytest.approx((3 * (math.log1p(math.exp(d)) - d) + 2 * 1.5 * math.log(2)) / 3, rel=1e-6)


def test_bad_input_names_the_culprit():
    loss = PairwiseLikelihoodLoss(num_train=4, bits=8, n_class=2)
    u, y = torch.zeros(2, 8), torch.zeros(2, 2)
    with pytest.raises(DataError, match="index holds rows outside"):
        loss(u, y, torch.tensor([0, 4]))
    with pytest.raises(DataError, match="u has 7 columns"):
        loss(torch.zeros(2, 7), y, torch.tensor([0, 1]))
    with pytest.raises(DataError, match="index must have shape"):
        loss(u, y, torch.tensor([0]))
    with pytest.raises(DataError, match="integer"):
        loss(u, y, torch.tensor([0.0, 1.0]))
    with pytest.raises(ConfigError, match="num_train"):
        PairwiseLikelihoodLoss(num_train=0, bits=8, n_class=2)
    with pytest.raises(ConfigError, match="bank_dtype"):
        PairwiseLikelihoodLoss(num_train=2, bits=8, n_class=2, bank_dtype=torch.int8)
