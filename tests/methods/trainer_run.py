"""A method through the real training loop: a few epochs of ``cnn_cpu`` on a few digits, and the
method state the run left in its last checkpoint."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from safetensors.torch import load_file

from hybridhash.app.train import TrainConfig, train
from hybridhash.data import load_protocol


@functools.lru_cache(maxsize=1)
def few_digits():
    """6 training images per class (4 after the validation split), 2 queries per class."""
    return load_protocol("digits", sizes=dict(query=2, train=6), val_fraction=0.25)


def train_briefly(name: str, out: Path, epochs: int = 2, **kw: Any) -> Tuple[Any, Dict[str, torch.Tensor], dict]:
    """Train ``name`` for ``epochs`` at 16 bits into ``out``; returns (the 16-bit result, the method's
    state in last/ (keys without the ``loss.`` prefix), method.json). Every epoch's loss is finite."""
    config = TrainConfig(method=name, model="cnn_cpu", bits=(16,), out=str(out), epochs=epochs, batch_size=8,
                         eval_every=epochs, progress=False, threads=1, parallel=1, **kw)
    result = train(config, protocol=few_digits())[16]
    assert result.history and all(math.isfinite(h["loss"]) for h in result.history), result.history
    state = load_file(str(Path(out) / "bits16/last/training_state.safetensors"))
    method_state = {k[len("loss."):]: v for k, v in state.items() if k.startswith("loss.")}
    return result, method_state, json.loads((Path(out) / "bits16/method.json").read_text())
