"""The check shared by the methods that own parameters trained with the network (GreedyHash's and
DSHSD's classifier): through the trainer on a few digits, the classifier is trained by the optimizer,
saved with the training state, and restored on resume (a cut run ends where an uninterrupted one does)."""
from __future__ import annotations

from safetensors.torch import load_file
import torch

from hybridhash.app.train import TrainConfig, train
from hybridhash.app.train.state import read_training_state
from hybridhash.data import load_protocol
from hybridhash.methods import create_method


def _config(out, method, params, **kw) -> TrainConfig:
    return TrainConfig(model="cnn_cpu", bits=(16,), out=str(out), progress=False, threads=1, parallel=1, eval_every=2,
                       epochs=2, batch_size=16, method=method, method_params=params, **kw)


def classifier_trains_saves_and_resumes(tmp_path, method, params=None):
    params = dict(params or {})
    p = load_protocol("digits", sizes=dict(query=2, train=6), val_fraction=0.2)
    train(_config(tmp_path / "straight", method, params), protocol=p)
    train(_config(tmp_path / "cut", method, params, stop_after_epochs=1), protocol=p)
    train(_config(tmp_path / "cut", method, params, resume=True), protocol=p)
    ends = [read_training_state(tmp_path / r / "bits16/last/training_state.safetensors")[0] for r in ("straight", "cut")]
    W = [e["loss.W"] for e in ends]
    # the run's seed (0) drew the initial weights
    start = create_method(method, bits=16, n_class=p.n_class, num_train=len(p.train), seed=0, **params).W.detach()
    assert W[0].shape == start.shape == (p.n_class, 16)
    assert torch.equal(W[0], W[1])  # the resumed run restored W and its optimizer state
    assert not torch.equal(W[0], start)  # trained
    # the optimizer holds state (momentum, moments) for W beside the network's parameters
    assert (p.n_class, 16) in [tuple(v.shape) for k, v in ends[0].items() if k.startswith("optim.")]
    a, b = (load_file(str(tmp_path / r / "bits16/last/model.safetensors")) for r in ("straight", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
