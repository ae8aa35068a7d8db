"""The training loop of one code length: a :class:`Trainer` drives a *model* and a *method*.

The model maps images (B, 3, H, W) to raw hash-layer outputs h (B, bits) when called with
``activate=False``. The method owns everything else that is particular to a hashing method: its
loss on h (fed what it trains on, :mod:`.feeds`: labels as below, target features ``loss(h, x)`` or
a second view's outputs ``loss(h1, h2)``), its state (memory banks, learned codes, centers) and the
hooks a loss alone cannot express. The loop calls, in this order::

    method.prepare(train_labels (n, C), generator)          once, on a fresh run
    for each epoch:
        method.on_epoch_start(epoch, step)
        rows = method.epoch_rows(epoch, generator)          None: the whole training set
        for each batch:  loss = method.loss(h, y, index, gathered=..., [features=...])
                         backward, step;  method.on_step(step)
        method.on_epoch_end(epoch)

Every hook is optional. Under DDP, ``gathered`` holds every rank's (h, y, index), detached, so a
method that keeps state writes the same rows on every rank. The method's buffers are saved in the
training state and restored on resume.

Reproducibility: the data order and every random draw of an epoch (augmentation, dropout) come
from generators seeded with (seed, epoch), so an interrupted run resumed from its last saved
epoch ends with the same weights as one that was never interrupted.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .. import rundir as R
from ...environment import autocast_context, pick_device, seed_everything, precision_autocast, training_precision
from ...errors import ConfigError
from ...fileio import write_json
from . import distributed as D
from .augment import BatchAugment
from .build import build_method, build_model
from . import feeds as FD
from .result import BitsResult
from .selection import Selection
from .optim import build_optimizer, lr_factor
from .recipe import TrainConfig, divergence_hint, recipe_defaults
from .state import resume_checkpoint, save_checkpoint
from .streams import TwoStreams

_log = logging.getLogger(__name__)

Callback = Callable[..., None]
METHOD_NAME = "method.json"  # in each bits{N}/ directory


class CachedImages:
    """Training images transformed once (eval pipeline) and held as one tensor (N, 3, H, W)."""

    def __init__(self, dataset, transform, desc: Optional[str] = None):
        from tqdm.auto import tqdm

        items = range(len(dataset))
        if desc:
            items = tqdm(items, desc=desc, leave=False)
        self.images = torch.stack([transform(dataset.image(i)) for i in items])  # (N, 3, H, W)
        self.labels = torch.as_tensor(np.asarray(dataset.labels), dtype=torch.float32)  # (N, C)


def _hook(obj: Any, name: str) -> Callable[..., Any]:
    fn = getattr(obj, name, None)
    return fn if callable(fn) else (lambda *a, **k: None)


class Trainer(Selection):
    """Train one model of ``bits`` bits on ``protocol.train`` into ``out`` (a ``bits{N}`` directory).

    Args:
        config: a resolved :class:`TrainConfig` (see :func:`hybridhash.app.train.recipe.resolve`).
        protocol: the split (``hybridhash.data.Protocol``).
        bits: code length.
        out: this code length's directory.
        model: the network (default: ``create_model(config.model, bits, ...)``).
        method: the hashing method (default: the one ``config`` names, see :func:`build_method`).
        callbacks: callables ``cb(event, trainer, **info)``, events ``"step_end"`` (epoch, step)
            and ``"epoch_end"`` (epoch, record); an exception raised there stops the run as a
            crash would.
        cache: an already built :class:`CachedImages` of the training set (shared across bits).
    """

    def __init__(self, config: TrainConfig, protocol, bits: int, out: os.PathLike, *,
                 model: Optional[nn.Module] = None, method: Optional[nn.Module] = None,
                 callbacks: Sequence[Callback] = (), cache: Optional[CachedImages] = None,
                 dist_info: Optional[D.DistEnv] = None):
        from ...data.transforms import build_transform, with_pipeline

        self.config = c = config
        self.protocol = protocol
        self.bits = bits
        self.out = Path(out)
        self.callbacks = list(callbacks)
        self.dist = dist_info or D.current()
        self.device = pick_device(c.device)
        self.precision = training_precision(self.device, c.amp).name  # the run logs and records why
        # selection encodes under autocast_context, CUDA only: on a CPU it stays on the fp32 path encode takes
        self.amp = self.precision == "bf16"

        torch.manual_seed(c.seed)  # model init
        self.model = model if model is not None else build_model(c, bits)
        self.model.to(self.device)
        self.preprocess = with_pipeline(self.model.preprocess, protocol.name)
        self.eval_transform = build_transform(self.preprocess, train=False)
        self.train_transform = build_transform(self.preprocess, train=True)

        n_train = len(protocol.train)
        self.method = method if method is not None else build_method(c, bits, protocol.n_class, n_train)
        self.method.to(self.device)
        self.trains_on = getattr(self.method, "trains_on", "labels")
        self.even_batch = bool(getattr(self.method, "even_batch", False))
        self.labelled = bool(getattr(protocol, "labelled", True))
        FD.attach_head(self.model, self.method)  # a method's own head (cibhash's encoder), if any
        self.tap = FD.feature_tap(self.model, self.method)  # the penultimate features, for a method that takes them
        if self.trains_on == "targets" and c.targets == "features":
            FD.freeze_backbone(self.model)  # the published form: only the hash head learns
        self.optimizer = build_optimizer(self.model, c, self.method)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.net: nn.Module = self.model
        # a method that trains two networks: the second copy, which takes over model and optimizer when it encodes
        self.streams = TwoStreams(self) if getattr(self.method, "streams", 1) > 1 else None
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

        self.cache = cache
        if c.data_mode == "cache" and self.cache is None:
            self.cache = CachedImages(protocol.train, self.eval_transform)
        self.augment = BatchAugment(shift=c.shift, hflip=protocol.pipeline != "digits")
        self.view_transform = None
        if self.trains_on == "views":
            from ...data.views import two_view_transform

            self.view_transform = two_view_transform(self.preprocess, self.method.views, protocol.name)
        self.make_targets = None
        if self.trains_on == "targets":
            self.make_targets = FD.target_maker(c, self.model, self._train_images)
        rows = int(getattr(self.method, "rows_per_epoch", n_train))
        self.local_n = math.ceil(rows / self.dist.world_size)
        self.steps_per_epoch = math.ceil(self.local_n / c.batch_size)
        if self.even_batch:  # a last batch of one row is dropped, not stepped on
            self.steps_per_epoch = self.local_n // c.batch_size + (self.local_n % c.batch_size >= 2)
        self.total_steps = self.steps_per_epoch * c.epochs
        self.warmup_steps = int(round(c.warmup_epochs * self.steps_per_epoch))

        self.epoch = 0  # epochs completed
        self.step = 0
        self.best_metric: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.elapsed = 0.0
        self.split_hash: Optional[str] = None
        self.writer = None

    # ----------------------------------------------------------------------------------------
    def _emit(self, event: str, **info: Any) -> None:
        for cb in self.callbacks:
            cb(event, self, **info)

    def _progress(self) -> bool:
        return self.config.progress and self.dist.is_main and sys.stderr.isatty()

    def _set_lr(self, optimizer: torch.optim.Optimizer) -> float:
        f = self._lr_factor(self.step)
        for g, base in zip(optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f
        return self.base_lrs[0] * f

    def _lr_factor(self, step: int) -> float:
        c = self.config
        return lr_factor(step, self.total_steps, self.warmup_steps, c.schedule, steps_per_epoch=self.steps_per_epoch,
                         step_epochs=c.lr_step_epochs, step_factor=c.lr_step_factor or 0.1)

    def _generator(self, epoch: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(D.derive_seed(self.config.seed, epoch, stream))

    def _order(self, epoch: int) -> torch.Tensor:
        """This rank's training-set rows for ``epoch``, in order."""
        c = self.config
        rows = _hook(self.method, "epoch_rows")(epoch, self._generator(epoch, D.STREAM_METHOD))
        if rows is None:
            return D.shard_indices(len(self.protocol.train), c.seed, epoch, self.dist.rank, self.dist.world_size)
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        return rows[D.shard_indices(rows.numel(), c.seed, epoch, self.dist.rank, self.dist.world_size)]

    def _batches(self, epoch: int):
        """Yield (x (B, 3, H, W), y (B, C), index (B,)) of this rank for ``epoch``."""
        c = self.config
        order = self._order(epoch)
        if self.cache is not None and self.view_transform is None:
            gen = self._generator(epoch, D.STREAM_AUGMENT)
            for i in range(0, order.numel(), c.batch_size):
                idx = order[i:i + c.batch_size]
                x = self.cache.images[idx]
                if self.augment.active:
                    x = self.augment(x, gen)
                yield x, self.cache.labels[idx], idx
            return
        from torch.utils.data import DataLoader

        ds = self.protocol.train.with_transform(self.view_transform or self.train_transform)
        loader = DataLoader(ds, batch_size=c.batch_size, sampler=order.tolist(), num_workers=c.workers,
                            generator=self._generator(epoch, D.STREAM_AUGMENT),
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for x, y, idx in loader:
            yield x, y, idx

    def train_epoch(self, epoch: int) -> float:
        """One epoch over this rank's share of its rows (two passes for a two-network method, one
        training each network); returns the mean local loss."""
        c = self.config
        seed_everything(D.derive_seed(c.seed, epoch, D.STREAM_AUGMENT))
        _hook(self.method, "on_epoch_start")(epoch, self.step)
        if self.streams is not None:
            loss = self.streams.train_epoch(epoch)
        else:
            self.net.train()
            if self.trains_on == "targets" and c.targets == "features":
                FD.hold_backbone_norms(self.model)
            loss = self.train_pass(epoch, self.net, self.optimizer)
        _hook(self.method, "on_epoch_end")(epoch)
        return loss

    def train_pass(self, epoch: int, net: nn.Module, optimizer: torch.optim.Optimizer,
                   extra: Optional[Callable[[torch.Tensor], Dict[str, Any]]] = None) -> float:
        """One pass over the epoch's batches training ``net`` with ``optimizer``; ``extra(x)``: more
        keyword arguments of the loss for the batch x (a two-network method's). Returns the mean loss."""
        c = self.config
        batches = self._batches(epoch)
        if self._progress():
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=self.steps_per_epoch, desc=f"{self.bits} bits, epoch {epoch + 1}/{c.epochs}",
                           leave=False, dynamic_ncols=True)
        total, count = 0.0, 0
        for x, y, idx in batches:
            views = list(x) if self.view_transform is not None else [x]  # (B, 3, H, W) each
            keep = views[0].shape[0]
            if self.even_batch:
                keep = FD.even_rows(keep)
                if keep == 0:
                    continue
            views = [v[:keep].to(self.device, non_blocking=True) for v in views]
            x = views[0]
            y = y[:keep].to(self.device, non_blocking=True)
            idx = idx[:keep].to(self.device)
            self._set_lr(optimizer)
            with precision_autocast(self.device, self.precision):
                outs = [net(v, activate=False).float() for v in views]  # (B, bits) raw hash-layer outputs
            h = outs[0]
            _hook(self.method, "on_step")(self.step)
            if self.trains_on == "views":
                loss = self.method.loss(h, outs[1])
            elif self.trains_on == "targets":
                loss = self.method.loss(h, self.make_targets(x))
            else:
                gathered = None
                if self.dist.enabled:
                    # every rank writes every rank's batch, so the methods' states stay identical
                    gathered = (D.all_gather_rows(h.detach()), D.all_gather_rows(y), D.all_gather_rows(idx))
                more = {**FD.tapped(self.tap), **(extra(x) if extra else {})}  # features=, or other= and stream=
                loss = self.method.loss(h, y, idx, gathered=gathered, **more)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.dist.enabled:  # a method's own parameters (a classifier) are outside DDP's averaging
                D.average_gradients(self.method.parameters())
            if c.grad_clip:
                nn.utils.clip_grad_norm_(net.parameters(), c.grad_clip)
            optimizer.step()
            self.step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ConfigError(f"the loss became {value} at epoch {epoch + 1}, step {self.step}; "
                                  f"{self.divergence_hint()}")
            total += value * x.shape[0]
            count += x.shape[0]
            if hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{value:.4f}")
            self._emit("step_end", epoch=epoch, step=self.step)
        return total / max(count, 1)

    def divergence_hint(self) -> str:
        """The options and hyper-parameters of this run most likely to have made its loss diverge."""
        c, m = self.config, self.method
        published = getattr(m, "defaults", None)
        defaults = recipe_defaults(c.recipe, self.preprocess["img_size"], c.method,
                                   published.to_dict() if published is not None else None)
        params = {}
        config = getattr(m, "config", None)
        if dataclasses.is_dataclass(config):  # real-valued hyper-parameters: weights and scales
            base = type(config)()
            params = {f.name: (getattr(config, f.name), getattr(base, f.name)) for f in dataclasses.fields(config)
                      if type(getattr(base, f.name)) is float}
        return divergence_hint(c, defaults, getattr(m, "name", c.method), params)

    # ----------------------------------------------------------------------------------------
    def _meta(self) -> Dict[str, Any]:
        return {"preprocess": self.preprocess, "epoch": self.epoch, "step": self.step, "dataset": self.protocol.name,
                "split_hash": self.split_hash, "select_on": self.config.select_on,
                self.metric_name: self.best_metric if self.best_epoch == self.epoch else None,
                "train_config": self.config.to_dict()}

    def save_last(self) -> None:
        with R.saving(self.out / R.LAST) as tmp:
            save_checkpoint(tmp, self.model, self._meta(), optimizer=self.optimizer, loss=self.method, counters={
                "epoch": self.epoch, "step": self.step, "best_metric": self.best_metric,
                "best_epoch": self.best_epoch, "elapsed": self.elapsed, "bits": self.bits})
            if self.streams is not None:
                self.streams.save(tmp, self._meta())

    def save_best(self) -> None:
        with R.saving(self.out / R.BEST) as tmp:
            self.model.save_pretrained(str(tmp), **self._meta())

    def resume_from(self, directory: Path) -> None:
        """Load ``directory`` (a ``last/``): weights, optimizer, the method's state, counters."""
        counters = resume_checkpoint(directory, self.model, optimizer=self.optimizer, loss=self.method)
        self.epoch = int(counters["epoch"])
        self.step = int(counters["step"])
        self.best_metric = counters.get("best_metric")
        self.best_epoch = counters.get("best_epoch")
        self.elapsed = float(counters.get("elapsed", 0.0))
        self.base_lrs = [self.config.lr] * len(self.optimizer.param_groups)
        if self.streams is not None:
            self.streams.resume(directory)

    # ----------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> BitsResult:
        """Train to ``config.epochs`` epochs (from the last saved epoch with ``resume``)."""
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        history: List[Dict[str, Any]] = []
        last = R.resolve_ckpt_dir(self.out / R.LAST)
        if resume and last is not None:
            self.resume_from(last)
            history = R.trim_log(self.out, self.epoch, write=self.dist.is_main)
            if self.dist.is_main:
                _log.info("%d bits: resuming after epoch %d of %d", self.bits, self.epoch, c.epochs)
        else:
            if (self.out / R.LOG_NAME).exists() and self.dist.is_main:
                (self.out / R.LOG_NAME).unlink()
            labels = torch.as_tensor(np.asarray(self.protocol.train.labels), dtype=torch.float32)
            _hook(self.method, "prepare")(labels.to(self.device), self._generator(0, D.STREAM_METHOD))
        if self.dist.is_main:
            self._record_method()
        if c.tensorboard and self.dist.is_main:
            self.writer = tensorboard_writer(self.out / "tensorboard")
        try:
            while self.epoch < c.epochs:
                record = self._run_epoch()
                D.barrier()
                history.append(record)
                self._emit("epoch_end", epoch=self.epoch, record=record)
                if c.stop_after_epochs is not None and self.epoch >= c.stop_after_epochs:
                    break
        finally:
            if self.writer is not None:
                self.writer.close()
        return BitsResult(self.bits, self.out, self.epoch, self.best_epoch, self.best_metric, c.select_on,
                          self.elapsed, history, self.metric_name, FD.copy_spearman(history), self.precision)

    def _record_method(self) -> None:
        """``bits{N}/method.json``: the method, its family, hyper-parameters and facts (CSQ: its centers'
        kind and distances), so a table can say what each run was; the state itself is in last/."""
        m = self.method
        doc = {"method": getattr(m, "name", type(m).__name__), "family": getattr(m, "family", None),
               "config": m.config.to_dict() if hasattr(m, "config") else {},
               "facts": _hook(m, "facts")() or {}}
        write_json(self.out / METHOD_NAME, doc)
        for k, v in doc["facts"].items():
            _log.info("%d bits, %s: %s %s", self.bits, doc["method"], k, v)

    def _run_epoch(self) -> Dict[str, Any]:
        """Train one epoch, then (on the main rank) evaluate, save and log it; returns its record."""
        c = self.config
        epoch = self.epoch
        t0 = time.perf_counter()
        loss = self.train_epoch(epoch)
        self.epoch = epoch + 1
        record: Dict[str, Any] = {"epoch": self.epoch, "step": self.step, "loss": round(loss, 6),
                                  "lr": self.base_lrs[0] * self._lr_factor(max(self.step - 1, 0))}
        if not self.dist.is_main:
            return record
        improved = False
        if self.epoch % c.eval_every == 0 or self.epoch == c.epochs:
            t1 = time.perf_counter()
            scores = self.scores()
            record.update({k: round(v, 6) for k, v in scores.items()})
            value = scores[self.metric_name]
            record["eval_time"] = round(time.perf_counter() - t1, 3)
            # ties go to the later epoch: its learning rate is lower, its weights more settled
            if self.best_metric is None or value >= self.best_metric:
                self.best_metric, self.best_epoch, improved = value, self.epoch, True
        self.elapsed += time.perf_counter() - t0
        record["time"] = round(time.perf_counter() - t0, 3)
        record["elapsed"] = round(self.elapsed, 3)
        if improved:
            record["best"] = True
            self.save_best()
        if self.epoch % c.save_every == 0 or self.epoch == c.epochs:
            self.save_last()
        R.append_log(self.out, record)
        if self.writer is not None:
            for k in ("loss", "lr", "val_map", "query_map", "val_copy_map"):
                if k in record:
                    self.writer.add_scalar(f"{k}", record[k], self.epoch)
        if c.progress:
            _log.info("%d bits, epoch %d/%d: %s", self.bits, self.epoch, c.epochs,
                      ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in record.items() if k not in ("epoch", "best")))
        return record


def tensorboard_writer(directory: Optional[Path]):
    """A SummaryWriter logging to ``directory`` (None: only check that tensorboard is installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'hybridhash[tensorboard]'") from None
    return None if directory is None else SummaryWriter(str(directory))
