"""The training loop's extension for a method that trains two networks (``method.streams == 2``, DAPH).

Both networks are the run's model: copy 0 is the one the trainer builds, copy 1 a second one built
the same way from its own seed. Each epoch makes two passes over the same batches (same order and
augmentation): pass p trains copy p with its own optimizer, the other copy in eval mode giving its
raw outputs of the batch without gradient, ``loss(h, y, index, stream=p, other=...)``. Both passes
replay the same optimizer steps of the schedule, so the step counter and the learning rate are
those of a one-network run of the same epochs.

The copy the method encodes with (``encode_stream``) becomes the trainer's model and optimizer: the
run's checkpoints, its evaluation and every code come from it. The other copy is kept in
``last/stream<i>/`` (weights, config and its optimizer's state), so that a run resumes exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn

from .. import rundir as R
from ...environment import precision_autocast
from ...errors import CheckpointError, ConfigError
from . import distributed as D
from . import feeds as FD
from .build import build_model
from .optim import build_optimizer
from .state import resume_checkpoint, save_checkpoint


class TwoStreams:
    """The two copies of ``trainer``'s model and their optimizers; makes the trainer's ``model``,
    ``net`` and ``optimizer`` those of the copy its method encodes with."""

    def __init__(self, trainer) -> None:
        t, method = trainer, trainer.method
        if t.dist.enabled:
            raise ConfigError(f"{method.name} trains two networks in turn, which a run of several processes does not "
                              "do; run it in one process (without torchrun)")
        self.trainer = t
        with torch.random.fork_rng(devices=[]):  # the first copy's draws stay those of a one-network run
            torch.manual_seed(D.derive_seed(t.config.seed, 0, D.STREAM_SECOND_MODEL))
            second = build_model(t.config, t.bits)
        second.to(t.device)
        FD.attach_head(second, method)
        self.models = [t.model, second]
        self.optimizers = [t.optimizer, build_optimizer(second, t.config)]
        self.encoder = method.encode_stream
        self.other = 1 - self.encoder  # the copy saved beside the checkpoint
        t.model = t.net = self.models[self.encoder]
        t.optimizer = self.optimizers[self.encoder]

    def _outputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs (B, bits) of ``model`` (in eval mode) for images x, without gradient."""
        with torch.no_grad(), precision_autocast(self.trainer.device, self.trainer.precision):
            return model(x, activate=False).float()

    def train_epoch(self, epoch: int) -> float:
        """Both passes of ``epoch``; returns the mean of their mean losses."""
        t = self.trainer
        start, losses = t.step, []
        for p, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            t.step = start
            other = self.models[1 - p]
            model.train()
            other.eval()
            losses.append(t.train_pass(epoch, model, optimizer,
                                       lambda x, p=p, other=other: {"stream": p, "other": self._outputs(other, x)}))
        return sum(losses) / len(losses)

    def _directory(self, checkpoint: Path) -> Path:
        return Path(checkpoint) / f"stream{self.other}"

    def save(self, checkpoint: Path, meta: Dict[str, Any]) -> None:
        """The other copy's weights, config and optimizer state into ``checkpoint`` (a ``last/`` being written)."""
        save_checkpoint(self._directory(checkpoint), self.models[self.other], meta,
                        optimizer=self.optimizers[self.other], loss=nn.Module(), counters={})

    def resume(self, checkpoint: Path) -> None:
        """Restore what :meth:`save` wrote into ``checkpoint`` (its RNG states are the main state's)."""
        directory = self._directory(checkpoint)
        if not (directory / R.CONFIG_NAME).is_file():
            raise CheckpointError(f"{checkpoint}: no {directory.name}/, the second network of "
                                  f"{self.trainer.method.name}; this run cannot resume")
        resume_checkpoint(directory, self.models[self.other], optimizer=self.optimizers[self.other],
                          loss=nn.Module(), restore_rng_states=False)
