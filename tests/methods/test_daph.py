"""DAPH: its loss, value and gradient, against an item-by-item re-computation from docs/roster.md; its
banks and the epoch-end code update against a naive loop; two networks through the real training loop
(two passes per epoch, the second copy encoding, the first saved beside the checkpoint, an
interrupted run resumed exactly); and the comparison grid running it only when named."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from hybridhash.errors import ConfigError, DataError
from hybridhash.methods import create_method

from .harness import MethodSuite, assert_matches_naive, labels, naive_autograd, sign, sim
from .trainer_run import few_digits, train_briefly


class TestDAPH(MethodSuite):
    name = "daph"


def naive_daph(h, other, y, codes, alpha, lam, beta):
    """The loss item by item: a = tanh(h) rows of the trained network, b = tanh(other) rows of the
    other one (constants); theta_ij = a_i . b_j / 2; mean over all B x B pairs of
    softplus(theta) - s theta + alpha mean over B x K of (a - code)^2 + lam mean over K x K of
    (sum_i a_ik a_il / B - [k == l])^2 + beta mean over k of (sum_i a_ik)^2."""
    B, K = len(h), len(h[0])
    a = [[torch.tanh(x) for x in row] for row in h]
    b = [[math.tanh(float(x)) for x in row] for row in other]
    pairs = 0
    for i in range(B):
        for j in range(B):
            theta = 0.5 * sum(a[i][k] * b[j][k] for k in range(K))
            softplus = torch.log1p(torch.exp(-theta.abs())) + theta.clamp(min=0)
            pairs = pairs + softplus - sim(y[i], y[j]) * theta
    quantization = sum((a[i][k] - codes[i][k]) ** 2 for i in range(B) for k in range(K)) / (B * K)
    independence = sum((sum(a[i][k] * a[i][m] for i in range(B)) / B - float(k == m)) ** 2
                       for k in range(K) for m in range(K)) / (K * K)
    balance = sum(sum(a[i][k] for i in range(B)) ** 2 for k in range(K)) / K
    return pairs / (B * B) + alpha * quantization + lam * independence + beta * balance


@pytest.mark.parametrize("stream", [0, 1])
@pytest.mark.parametrize("B,K,kind,scale", [(5, 8, "single", 1.0), (4, 16, "multi", 2.0), (1, 8, "single", 1.0),
                                            (3, 8, "none", 0.5), (6, 8, "single", 8.0)])
def test_daph_value_and_gradient_match_the_items(B, K, kind, scale, stream):
    g = torch.Generator().manual_seed(B * 31 + K + stream)
    n, C = 10, 4
    alpha, lam, beta = 10.0, 0.3, 0.2  # larger lam and beta than the defaults, so their terms weigh
    method = create_method("daph", bits=K, n_class=C, num_train=n, lam=lam, beta=beta)
    method.prepare(None, g)
    index = torch.randperm(n, generator=g)[:B]
    y = torch.zeros(B, C, dtype=torch.float64) if kind == "none" else labels(kind, B, C, g)
    h = (scale * torch.randn(B, K, generator=g, dtype=torch.float64)).requires_grad_(True)
    other = (scale * torch.randn(B, K, generator=g, dtype=torch.float64)).requires_grad_(True)
    codes = (method.B if stream == 0 else method.H)[index].tolist()
    value = method.loss(h, y, index, other, stream=stream)
    value.backward()
    assert other.grad is None  # nothing reaches the network that is not being trained
    naive_value, naive_grads = naive_autograd(
        lambda rows: naive_daph(rows, other.tolist(), y.tolist(), codes, alpha, lam, beta), h.detach())
    assert_matches_naive(value.item(), [h.grad], naive_value, naive_grads, rel=1e-5)
    # both banks take the batch: the trained network's outputs and the other's
    own, theirs = method.banks[stream], method.banks[1 - stream]
    assert torch.allclose(own.U[index], torch.tanh(h.detach()).float())
    assert torch.allclose(theirs.U[index], torch.tanh(other.detach()).float())
    assert torch.equal(own.Y[index], y.float()) and torch.equal(theirs.Y[index], y.float())


def test_daph_code_update_matches_a_naive_loop():
    g = torch.Generator().manual_seed(3)
    n, K, alpha, gamma = 7, 6, 5.0, 3.0  # |alpha U| > gamma where |U| > 0.6: there U decides
    method = create_method("daph", bits=K, n_class=2, num_train=n, alpha=alpha, gamma=gamma)
    method.prepare(None, g)
    assert set(method.B.unique().tolist()) == set(method.H.unique().tolist()) == {-1.0, 1.0}
    for bank in method.banks:
        bank.U.copy_(torch.tanh(2 * torch.randn(n, K, generator=g)))
    U, Z, H0 = method.banks[0].U.tolist(), method.banks[1].U.tolist(), method.H.tolist()
    method.on_epoch_end(0)
    B = [[sign(alpha * U[i][k] + gamma * H0[i][k]) for k in range(K)] for i in range(n)]
    H = [[sign(alpha * Z[i][k] + gamma * B[i][k]) for k in range(K)] for i in range(n)]  # with the new B
    assert method.B.tolist() == B and method.H.tolist() == H
    assert B != H0 and H != B  # the banks decided some codes (not a copy of the other matrix)


def test_daph_restored_codes_survive_prepare_and_bad_calls_get_one_line():
    K, C, n = 8, 3, 6
    method = create_method("daph", bits=K, n_class=C, num_train=n)
    y = torch.eye(C)[torch.arange(n) % C]
    h, idx = torch.randn(2, K), torch.arange(2)
    with pytest.raises(ConfigError, match="prepare"):
        method.loss(h, y[idx], idx, torch.randn(2, K))
    method.prepare(y, torch.Generator().manual_seed(0))
    again = create_method("daph", bits=K, n_class=C, num_train=n)
    again.load_state_tensors(method.state_tensors())
    again.prepare(y, torch.Generator().manual_seed(1))  # a restored run keeps its codes
    assert torch.equal(again.B, method.B) and torch.equal(again.H, method.H)
    with pytest.raises(DataError, match="other must be"):
        method.loss(h, y[idx], idx)
    with pytest.raises(DataError, match="other must be"):
        method.loss(h, y[idx], idx, torch.randn(3, K))
    with pytest.raises(ConfigError, match="stream must be 0 or 1"):
        method.loss(h, y[idx], idx, torch.randn(2, K), stream=2)
    with pytest.raises(ConfigError, match="one process"):
        method.loss(h, y[idx], idx, torch.randn(2, K), gathered=(h, y[idx], idx))


def test_daph_trainer_builds_two_copies_and_encodes_with_the_second(tmp_path):
    from hybridhash.app.train import TrainConfig
    from hybridhash.app.train.build import build_model
    from hybridhash.app.train.loop import Trainer
    from hybridhash.app.train.recipe import resolve

    config = resolve(TrainConfig(method="daph", model="cnn_cpu", bits=(16,), out=str(tmp_path), epochs=1,
                                 batch_size=8, progress=False, threads=1, parallel=1, recipe="scratch"), img_size=32)
    trainer = Trainer(config, few_digits(), 16, tmp_path / "bits16")
    first, second = trainer.streams.models
    torch.manual_seed(config.seed)
    harness = build_model(config, 16)  # the first copy is the run's model as a one-network run builds it
    assert all(torch.equal(a, b.to(a.device)) for a, b in zip(first.state_dict().values(),
                                                               harness.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert trainer.model is second and trainer.optimizer is trainer.streams.optimizers[1]
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {id(p) for p in second.parameters()}


def _tensors(path):
    return load_file(str(path))


def test_daph_trains_two_networks_and_resumes_exactly(tmp_path):
    result, straight, record = train_briefly("daph", tmp_path / "straight")
    assert record["family"] == "asymmetric" and record["config"]["alpha"] == 10.0
    assert set(straight) == {"banks.0.U", "banks.0.Y", "banks.1.U", "banks.1.Y", "B", "H", "prepared"}
    assert set(straight["B"].unique().tolist()) <= {-1.0, 1.0} and set(straight["H"].unique().tolist()) <= {-1.0, 1.0}
    assert all((straight[f"banks.{p}.U"].abs().sum(1) > 0).all() for p in (0, 1))  # every row written
    last = tmp_path / "straight/bits16/last"
    assert json.loads((last / "stream0/config.json").read_text())["bits"] == 16
    weights = _tensors(last / "model.safetensors")
    companion = _tensors(last / "stream0/model.safetensors")
    assert any(not torch.equal(weights[k], companion[k]) for k in weights)
    assert result.best_metric is not None and 0 <= result.best_metric <= 1

    train_briefly("daph", tmp_path / "cut", stop_after_epochs=1)
    _, resumed, _ = train_briefly("daph", tmp_path / "cut", resume=True)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    cut = tmp_path / "cut/bits16/last"
    for name in ("model.safetensors", "stream0/model.safetensors"):
        a, b = _tensors(last / name), _tensors(cut / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    for name in ("training_state.safetensors", "stream0/training_state.safetensors"):
        a, b = _tensors(last / name), _tensors(cut / name)
        assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("optim.")), name


def test_daph_resume_without_its_second_network_is_one_line(tmp_path):
    import shutil

    from hybridhash.errors import CheckpointError

    train_briefly("daph", tmp_path / "cut", stop_after_epochs=1)
    shutil.rmtree(tmp_path / "cut/bits16/last/stream0")
    with pytest.raises(CheckpointError, match="stream0/, the second network of daph"):
        train_briefly("daph", tmp_path / "cut", resume=True)


def test_daph_runs_in_a_grid_only_when_named(tmp_path):
    from hybridhash.app.compare.grid import Grid
    from hybridhash.app.compare.report import markdown, write_report
    from hybridhash.app.compare.selectors import expand_methods

    for selector in ("all", "supervised", "asymmetric"):
        assert "daph" not in expand_methods([selector])
    assert expand_methods(["daph", "asymmetric"]) == ("daph", "adsh")
    grid = Grid(methods=expand_methods(["daph"]), bits=(16,), seeds=(0,), out=str(tmp_path / "grid"), model="cnn_cpu",
                epochs=1, threads=1, parallel=1, progress=False)
    grid.check()
    grid.run(protocols={0: few_digits()}, echo=lambda line: None)
    doc = write_report(grid, floor=False)
    assert [r["method"] for r in doc["rows"]] == ["daph"] and doc["missing"] == []
    assert any(n.startswith("daph: partial port") for n in doc["notes"]) and "daph: partial port" in markdown(doc)
