"""The training loop: one :class:`Trainer` per code length, :func:`train` for several in one run.

A run directory holds ``split.json`` (the protocol's split, shared by all code lengths),
``run.json`` (the resolved options) and one ``bits{N}/`` per code length with ``log.jsonl`` (one
JSON line per epoch), ``last/`` (model + ``training_state.safetensors``: optimizer, memory bank,
RNG states, counters; what ``--resume`` continues from) and ``best/`` (the model selected on the
validation split, or on the queries with ``select_on="query"``).

Reproducibility: the data order and every random draw of an epoch (augmentation, dropout) come
from generators seeded with (seed, epoch), so an interrupted run resumed from its last saved
epoch ends with the same weights as one that was never interrupted.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..evaluation import autocast_context, class_ids_or_multihot, encode_images
from ..fileio import read_json, write_json
from ..losses import PairwiseLikelihoodLoss
from .. import metrics as M
from . import distributed as D
from .augment import BatchAugment
from .recipe import RESUME_KEYS, TrainConfig, check_bits_list, resolve
from .state import STATE_NAME, load_training_state, read_training_state, save_training_state

_log = logging.getLogger(__name__)

SPLIT_NAME = "split.json"
RUN_NAME = "run.json"
LOG_NAME = "log.jsonl"
# cached training images above this many bytes fall back to streaming
CACHE_LIMIT_BYTES = 2 << 30

Callback = Callable[..., None]


def bits_dir(run_dir: os.PathLike, bits: int) -> Path:
    return Path(run_dir) / f"bits{bits}"


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: this machine has no CUDA device")
    return device


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), NumPy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based) of ``total``:
    linear warm-up over ``warmup`` steps, then constant or a cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Two groups: weights that decay, and biases, norms and position embeddings that do not."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, config.weight_decay)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=config.lr, momentum=config.momentum or 0.0)
    return torch.optim.AdamW(groups, lr=config.lr)


# --------------------------------------------------------------------------------------------
# checkpoint directories, swapped in whole

def _replace_dir(tmp: Path, final: Path) -> None:
    """Put the complete directory ``tmp`` at ``final``; ``final`` is never half-written.

    A crash between the two renames leaves ``.{name}.old`` beside it, which :func:`resolve_ckpt_dir`
    picks up.
    """
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def resolve_ckpt_dir(path: Path) -> Optional[Path]:
    """``path`` if it is a complete checkpoint directory, else the one a crash mid-swap left."""
    if path.is_dir():
        return path
    old = path.with_name(f".{path.name}.old")
    return old if old.is_dir() else None


def _fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


# --------------------------------------------------------------------------------------------
# data

class CachedImages:
    """Training images transformed once (eval pipeline) and held as one tensor (N, 3, H, W)."""

    def __init__(self, dataset, transform, desc: Optional[str] = None):
        from tqdm.auto import tqdm

        items = range(len(dataset))
        if desc:
            items = tqdm(items, desc=desc, leave=False)
        self.images = torch.stack([transform(dataset.image(i)) for i in items])  # (N, 3, H, W)
        self.labels = torch.as_tensor(np.asarray(dataset.labels), dtype=torch.float32)  # (N, C)


@dataclass
class BitsResult:
    """What one code length's training left behind."""

    bits: int
    directory: Path
    epochs: int
    best_epoch: Optional[int]
    best_metric: Optional[float]
    select_on: str
    seconds: float
    history: List[Dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {"bits": self.bits, "directory": str(self.directory), "epochs": self.epochs,
                "best_epoch": self.best_epoch, "best_metric": self.best_metric, "select_on": self.select_on,
                "seconds": round(self.seconds, 3)}


class Trainer:
    """Train one model of ``bits`` bits on ``protocol.train`` into ``out`` (a ``bits{N}`` directory).

    Args:
        config: a resolved :class:`TrainConfig` (see :func:`hybridhash.train.recipe.resolve`).
        protocol: the split (``hybridhash.data.Protocol``).
        bits: code length.
        out: this code length's directory.
        callbacks: callables ``cb(event, trainer, **info)``, events ``"step_end"`` (epoch, step)
            and ``"epoch_end"`` (epoch, record); an exception raised there stops the run as a
            crash would.
        cache: an already built :class:`CachedImages` of the training set (shared across bits).
    """

    def __init__(self, config: TrainConfig, protocol, bits: int, out: os.PathLike, *,
                 callbacks: Sequence[Callback] = (), cache: Optional[CachedImages] = None,
                 dist_info: Optional[D.DistInfo] = None):
        import hybridhash
        from ..data.transforms import build_transform, with_pipeline

        self.config = c = config
        self.protocol = protocol
        self.bits = bits
        self.out = Path(out)
        self.callbacks = list(callbacks)
        self.dist = dist_info or D.current()
        self.device = pick_device(c.device)
        self.amp = bool(c.amp) and self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        if c.amp and not self.amp and self.dist.is_main:
            _log.debug("mixed precision needs a CUDA device with bf16; training in float32 on %s", self.device)

        torch.manual_seed(c.seed)  # model init
        self.model = hybridhash.create_model(c.model, bits=bits, pretrained=c.pretrained, **c.model_overrides)
        if c.head_init_std is not None:
            with torch.no_grad():
                nn.init.normal_(self.model.hash_head.to_bits.weight, std=c.head_init_std)
        self.model.to(self.device)
        self.preprocess = with_pipeline(self.model.preprocess, protocol.name)
        self.eval_transform = build_transform(self.preprocess, train=False)
        self.train_transform = build_transform(self.preprocess, train=True)

        n_train = len(protocol.train)
        rows = c.bank_rows or n_train
        if rows < n_train:
            raise ConfigError(f"--bank-rows {rows} is smaller than the {n_train} training images")
        self.criterion = PairwiseLikelihoodLoss(rows, bits, protocol.n_class, alpha=c.alpha,
                                                bank_dtype=torch.float16 if c.bank_fp16 else torch.float32)
        self.criterion.to(self.device)
        self.optimizer = build_optimizer(self.model, c)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.net: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

        self.cache = cache
        if c.data_mode == "cache" and self.cache is None:
            self.cache = CachedImages(protocol.train, self.eval_transform)
        self.augment = BatchAugment(shift=c.shift, hflip=protocol.pipeline != "digits")
        self.local_n = math.ceil(n_train / self.dist.world_size)
        self.steps_per_epoch = math.ceil(self.local_n / c.batch_size)
        self.total_steps = self.steps_per_epoch * c.epochs
        self.warmup_steps = int(round(c.warmup_epochs * self.steps_per_epoch))

        self.epoch = 0  # epochs completed
        self.step = 0
        self.best_metric: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.elapsed = 0.0
        self.writer = None

    # ----------------------------------------------------------------------------------------
    @property
    def metric_name(self) -> str:
        return f"{self.config.select_on}_map"

    def _emit(self, event: str, **info: Any) -> None:
        for cb in self.callbacks:
            cb(event, self, **info)

    def _progress(self) -> bool:
        return not self.config.quiet and self.dist.is_main and sys.stderr.isatty()

    def _set_lr(self) -> float:
        f = lr_factor(self.step, self.total_steps, self.warmup_steps, self.config.schedule)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f
        return self.base_lrs[0] * f

    def _batches(self, epoch: int):
        """Yield (x (B, 3, H, W), y (B, C), index (B,)) of this rank for ``epoch``."""
        c = self.config
        order = D.shard_indices(len(self.protocol.train), c.seed, epoch, self.dist.rank, self.dist.world_size)
        if self.cache is not None:
            gen = torch.Generator().manual_seed(D.derive_seed(c.seed, epoch, D.STREAM_AUGMENT))
            for i in range(0, order.numel(), c.batch_size):
                idx = order[i:i + c.batch_size]
                x = self.cache.images[idx]
                if self.augment.active:
                    x = self.augment(x, gen)
                yield x, self.cache.labels[idx], idx
            return
        from torch.utils.data import DataLoader

        ds = self.protocol.train.with_transform(self.train_transform)
        loader = DataLoader(ds, batch_size=c.batch_size, sampler=order.tolist(), num_workers=c.workers,
                            generator=torch.Generator().manual_seed(D.derive_seed(c.seed, epoch, D.STREAM_AUGMENT)),
                            pin_memory=self.device.type == "cuda", persistent_workers=False)
        for x, y, idx in loader:
            yield x, y, idx

    def train_epoch(self, epoch: int) -> float:
        """One pass over this rank's share of the training set; returns the mean local loss."""
        c = self.config
        seed_everything(D.derive_seed(c.seed, epoch, D.STREAM_AUGMENT))
        self.net.train()
        batches = self._batches(epoch)
        if self._progress():
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=self.steps_per_epoch, desc=f"{self.bits} bits, epoch {epoch + 1}/{c.epochs}",
                           leave=False, dynamic_ncols=True)
        total, count = 0.0, 0
        for x, y, idx in batches:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            idx = idx.to(self.device)
            self._set_lr()
            with autocast_context(self.device, self.amp):
                u = self.net(x)  # (B, bits)
            u = u.float()
            if self.dist.enabled:
                # every rank writes every rank's batch, so the banks stay identical
                loss = self.criterion(u, y, idx, D.all_gather_rows(u.detach()), D.all_gather_rows(y),
                                      D.all_gather_rows(idx))
            else:
                loss = self.criterion(u, y, idx)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            self.step += 1
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ConfigError(f"the loss became {value} at epoch {epoch + 1}, step {self.step}; "
                                  f"try a lower --lr (now {c.lr})")
            total += value * x.shape[0]
            count += x.shape[0]
            if hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{value:.4f}")
            self._emit("step_end", epoch=epoch, step=self.step)
        return total / max(count, 1)

    # ----------------------------------------------------------------------------------------
    def _encode(self, name: str) -> np.ndarray:
        c = self.config
        if name == "train" and self.cache is not None:
            data = self.cache.images
        else:
            data = getattr(self.protocol, name).with_transform(self.eval_transform)
        return encode_images(self.model, data, batch_size=c.eval_batch_size, device=self.device,
                             workers=c.workers, amp=self.amp)

    def select_metric(self) -> float:
        """mAP used for model selection: val queries against the training images (``select_on="val"``),
        or the protocol's queries against its database (``"query"``), at the protocol's K."""
        p = self.protocol
        if self.config.select_on == "val":
            q, d = self._encode("val"), self._encode("train")
            ql, dl = p.val.labels, p.train.labels
        else:
            q, d = self._encode("query"), self._encode("database")
            ql, dl = p.query.labels, p.database.labels
        ql, dl = class_ids_or_multihot(ql, p.multi_label), class_ids_or_multihot(dl, p.multi_label)
        return M.mean_average_precision(q, d, ql, dl, topk=p.topk)

    def _meta(self) -> Dict[str, Any]:
        return {"preprocess": self.preprocess, "epoch": self.epoch, "step": self.step, "dataset": self.protocol.name,
                "split_hash": getattr(self, "split_hash", None), "select_on": self.config.select_on,
                self.metric_name: self.best_metric if self.best_epoch == self.epoch else None,
                "train_config": self.config.to_dict()}

    def save_last(self) -> None:
        final = self.out / "last"
        tmp = _fresh_tmp(final)
        self.model.save_pretrained(str(tmp), **self._meta())
        fingerprint = read_json(tmp / "config.json")["fingerprint"]
        save_training_state(tmp / STATE_NAME, optimizer=self.optimizer, loss=self.criterion, counters={
            "epoch": self.epoch, "step": self.step, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
            "elapsed": self.elapsed, "fingerprint": fingerprint, "bits": self.bits,
        })
        _replace_dir(tmp, final)

    def save_best(self) -> None:
        final = self.out / "best"
        tmp = _fresh_tmp(final)
        self.model.save_pretrained(str(tmp), **self._meta())
        _replace_dir(tmp, final)

    def resume_from(self, directory: Path) -> None:
        """Load ``directory`` (a ``last/``): weights, optimizer, bank, counters."""
        from ..models import load_checked, read_state_dict

        state = read_state_dict(directory / "model.safetensors")
        load_checked(self.model, state, str(directory))
        tensors, meta = read_training_state(directory / STATE_NAME)
        counters = meta.get("counters", {})
        fp = read_json(directory / "config.json").get("fingerprint")
        if counters.get("fingerprint") != fp:
            raise CheckpointError(f"{directory}: the weights and the training state come from different saves")
        counters = load_training_state(directory / STATE_NAME, optimizer=self.optimizer, loss=self.criterion)
        self.epoch = int(counters["epoch"])
        self.step = int(counters["step"])
        self.best_metric = counters.get("best_metric")
        self.best_epoch = counters.get("best_epoch")
        self.elapsed = float(counters.get("elapsed", 0.0))
        self.base_lrs = [self.config.lr] * len(self.optimizer.param_groups)

    def _log_path(self) -> Path:
        return self.out / LOG_NAME

    def _trim_log(self) -> List[Dict[str, Any]]:
        """Keep the log lines of epochs up to the resumed one (a killed run may have logged later ones)."""
        path = self._log_path()
        if not path.exists():
            return []
        kept = []
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by the crash
            if rec.get("epoch", 0) <= self.epoch:
                kept.append(rec)
        if self.dist.is_main:
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def _append_log(self, record: Dict[str, Any]) -> None:
        with open(self._log_path(), "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    # ----------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> BitsResult:
        """Train to ``config.epochs`` epochs (from the last saved epoch with ``resume``)."""
        c = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        history: List[Dict[str, Any]] = []
        last = resolve_ckpt_dir(self.out / "last")
        if resume and last is not None:
            self.resume_from(last)
            history = self._trim_log()
            if self.dist.is_main:
                _log.info("%d bits: resuming after epoch %d of %d", self.bits, self.epoch, c.epochs)
        elif self._log_path().exists() and self.dist.is_main:
            self._log_path().unlink()
        if c.tensorboard and self.dist.is_main:
            self.writer = _tensorboard_writer(self.out / "tensorboard")
        try:
            while self.epoch < c.epochs:
                epoch = self.epoch
                t0 = time.perf_counter()
                loss = self.train_epoch(epoch)
                self.epoch = epoch + 1
                record: Dict[str, Any] = {"epoch": self.epoch, "step": self.step, "loss": round(loss, 6),
                                          "lr": self.base_lrs[0] * lr_factor(max(self.step - 1, 0), self.total_steps,
                                                                             self.warmup_steps, c.schedule)}
                improved = False
                if self.dist.is_main:
                    if self.epoch % c.eval_every == 0 or self.epoch == c.epochs:
                        t1 = time.perf_counter()
                        value = self.select_metric()
                        record[self.metric_name] = round(value, 6)
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
                    self._append_log(record)
                    if self.writer is not None:
                        for k in ("loss", "lr", self.metric_name):
                            if k in record:
                                self.writer.add_scalar(f"{k}", record[k], self.epoch)
                    if not c.quiet:
                        _log.info("%d bits, epoch %d/%d: %s", self.bits, self.epoch, c.epochs,
                                  ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in record.items() if k not in ("epoch", "best")))
                D.barrier()
                history.append(record)
                self._emit("epoch_end", epoch=self.epoch, record=record)
                if c.stop_after_epochs is not None and self.epoch >= c.stop_after_epochs:
                    break
        finally:
            if self.writer is not None:
                self.writer.close()
        return BitsResult(self.bits, self.out, self.epoch, self.best_epoch, self.best_metric, c.select_on,
                          self.elapsed, history)


def _tensorboard_writer(directory: Optional[Path]):
    """A SummaryWriter logging to ``directory`` (None: only check that tensorboard is installed)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'hybridhash[tensorboard]'") from None
    return None if directory is None else SummaryWriter(str(directory))


# --------------------------------------------------------------------------------------------
# a whole run: several code lengths

def _check_resume(run_dir: Path, config: TrainConfig) -> None:
    saved_path = run_dir / RUN_NAME
    if not saved_path.exists():
        return
    saved = read_json(saved_path).get("config", {})
    now = json.loads(json.dumps(config.to_dict()))  # tuples as JSON lists, like the saved side
    for k in RESUME_KEYS:
        if k in saved and saved[k] != now.get(k):
            raise ConfigError(f"--resume: {run_dir} was trained with {k}={saved[k]!r}, this run asks for "
                              f"{now.get(k)!r}; use the same options or another --out")


def load_run_protocol(config: TrainConfig, run_dir: Path):
    """The run's protocol: from its ``split.json`` when there is one (resume), else drawn anew."""
    from ..data import load_protocol

    split = run_dir / SPLIT_NAME
    kw = dict(root=config.root, image_root=config.image_root, download=config.download)
    if split.exists():
        return load_protocol(config.dataset, split_file=str(split), **kw)
    return load_protocol(config.dataset, seed=config.seed, val_fraction=config.val_fraction, **kw)


def train(config: TrainConfig, protocol=None, *, callbacks: Sequence[Callback] = ()) -> Dict[int, BitsResult]:
    """Train one model per code length of ``config.bits`` into ``config.out/bits{N}/``.

    Args:
        config: options; unset ones are filled by the recipe of the model (see :mod:`.recipe`).
        protocol: an already loaded ``Protocol`` (default: ``load_protocol(config.dataset, ...)``,
            or the run's recorded split when resuming).
        callbacks: see :class:`Trainer`.

    Returns:
        {bits: BitsResult}. Code lengths already trained to the end are skipped under ``resume``.
    """
    import hybridhash
    from ..models import build_config

    check_bits_list(config.bits)  # a code length no index can hold fails now, before any work
    dist_info = D.init_distributed(config.device if config.device != "auto" else str(pick_device("auto")))
    if config.threads:
        torch.set_num_threads(config.threads)
    img_size = build_config(config.model, 16, **config.model_overrides).img_size
    config = resolve(config, img_size)
    run_dir = Path(config.out)
    if config.tensorboard and dist_info.is_main:
        _tensorboard_writer(None)  # fails now, not after the data is loaded, when tensorboard is missing
    # every rank checks (read-only), so that a refusal stops them all rather than leaving some waiting
    existing = [b for b in config.bits if resolve_ckpt_dir(bits_dir(run_dir, b) / "last") is not None]
    if existing and not config.resume:
        raise ConfigError(f"{run_dir} already holds a run ({bits_dir(run_dir, existing[0]).name}); "
                          f"pass --resume to continue it or choose another --out")
    if config.resume:
        _check_resume(run_dir, config)
    if protocol is None:
        protocol = load_run_protocol(config, run_dir)
    if config.select_on == "val" and len(protocol.val) == 0:
        raise ConfigError("select_on=val needs validation images, but the split has none (val_fraction 0); "
                          "use a val fraction above 0 or --select-on query")
    if config.select_on == "query" and dist_info.is_main:
        _log.warning("selecting the model on the test queries reproduces the original's protocol but is not a "
                     "fair evaluation: the reported figures are then optimistic")
    if config.bank_rows is None and protocol.original_bank_rows and dist_info.is_main:
        _log.debug("memory bank sized to the %d training images (the original used %d rows)",
                   len(protocol.train), protocol.original_bank_rows)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        record = protocol.split_record()
        split_path = run_dir / SPLIT_NAME
        if split_path.exists() and read_json(split_path).get("hash") != record["hash"]:
            raise ConfigError(f"{split_path} records another split of the data than this run's; use another --out")
        if not split_path.exists():
            protocol.save_split(split_path)
        write_json(run_dir / RUN_NAME, {"config": config.to_dict(), "protocol": protocol.summary(),
                                        "torch": torch.__version__, "hybridhash": hybridhash.__version__,
                                        "world_size": dist_info.world_size})
    D.barrier()
    split_hash = protocol.split_record()["hash"]

    workers = _parallel_workers(config, dist_info)
    results: Dict[int, BitsResult] = {}
    if workers > 1:
        results = _train_parallel(config, run_dir, workers, callbacks)
    else:
        cache = None
        for bits in config.bits:
            if cache is None and config.data_mode == "cache" and not _finished(config, run_dir, bits):
                cache = _build_cache(config, protocol, bits, dist_info)
            results[bits] = _train_bits(config, protocol, bits, run_dir, callbacks, cache, dist_info, split_hash)
            if config.stop_after_epochs is not None and results[bits].epochs < config.epochs:
                break
    if dist_info.is_main:
        done = {str(b): r.to_dict() for b, r in results.items()}
        write_json(run_dir / "summary.json", {"dataset": protocol.name, "select_on": config.select_on,
                                              "results": done})
    return results


def _finished(config: TrainConfig, run_dir: Path, bits: int) -> Optional[Dict[str, Any]]:
    """The saved counters of a code length already trained to the end under ``--resume``, else None."""
    last = resolve_ckpt_dir(bits_dir(run_dir, bits) / "last")
    if not config.resume or last is None:
        return None
    _, meta = read_training_state(last / STATE_NAME)
    counters = meta.get("counters", {})
    return counters if int(counters.get("epoch", 0)) >= config.epochs else None


def _train_bits(config: TrainConfig, protocol, bits: int, run_dir: Path, callbacks: Sequence[Callback],
                cache: Optional[CachedImages], dist_info: D.DistInfo, split_hash: str) -> BitsResult:
    out = bits_dir(run_dir, bits)
    counters = _finished(config, run_dir, bits)
    if counters is not None:
        if dist_info.is_main:
            _log.info("%d bits: already trained (%d epochs), skipped", bits, counters["epoch"])
        return BitsResult(bits, out, int(counters["epoch"]), counters.get("best_epoch"), counters.get("best_metric"),
                          config.select_on, float(counters.get("elapsed", 0.0)), _read_log(out))
    trainer = Trainer(config, protocol, bits, out, callbacks=callbacks, cache=cache, dist_info=dist_info)
    trainer.split_hash = split_hash
    return trainer.fit(resume=config.resume)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _parallel_workers(config: TrainConfig, dist_info: D.DistInfo) -> int:
    """Processes to train code lengths in: 1 on GPUs, under torchrun, or when asked; ``parallel=0`` on a
    CPU means one per core (at most one per code length), because small models use one core better
    than several threads do."""
    if dist_info.enabled or pick_device(config.device).type != "cpu" or len(config.bits) < 2:
        return 1
    if config.parallel == 0:
        return max(1, min(len(config.bits), usable_cores()))
    return max(1, min(config.parallel, len(config.bits)))


def _worker(job) -> BitsResult:
    """Train one code length in a child process (spawned: it imports afresh)."""
    config, run_dir, bits, callbacks, threads, log_level = job
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    protocol = load_run_protocol(config, run_dir)
    cache = _build_cache(config, protocol, bits, D.DistInfo()) if config.data_mode == "cache" else None
    return _train_bits(config, protocol, bits, run_dir, callbacks, cache, D.DistInfo(),
                       protocol.split_record()["hash"])


def _train_parallel(config: TrainConfig, run_dir: Path, workers: int,
                    callbacks: Sequence[Callback]) -> Dict[int, BitsResult]:
    import multiprocessing as mp

    threads = config.threads or max(1, usable_cores() // workers)
    level = logging.getLogger().getEffectiveLevel()
    jobs = [(config, run_dir, bits, list(callbacks), threads, level) for bits in config.bits]
    _log.info("training %d code lengths in %d processes of %d thread(s)", len(jobs), workers, threads)
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, maxtasksperchild=1) as pool:
        done = pool.map(_worker, jobs, chunksize=1)
    return {r.bits: r for r in done}


def _build_cache(config: TrainConfig, protocol, bits: int, dist_info: D.DistInfo) -> Optional[CachedImages]:
    import hybridhash
    from ..data.transforms import build_transform, with_pipeline

    model_cfg = hybridhash.models.build_config(config.model, bits, **config.model_overrides)
    size = len(protocol.train) * 3 * model_cfg.img_size ** 2 * 4
    if size > CACHE_LIMIT_BYTES:
        raise ConfigError(f"caching {len(protocol.train)} training images of {model_cfg.img_size} px needs "
                          f"{size / 2**30:.1f} GiB; use --data-mode stream")
    transform = build_transform(with_pipeline(model_cfg.preprocess, protocol.name), train=False)
    desc = "cache training images" if (not config.quiet and dist_info.is_main and sys.stderr.isatty()) else None
    return CachedImages(protocol.train, transform, desc)


def _read_log(directory: Path) -> List[Dict[str, Any]]:
    path = directory / LOG_NAME
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out
