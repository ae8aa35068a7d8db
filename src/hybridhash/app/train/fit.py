"""``train`` for the training-free baselines (``lsh``, ``pcah``, ``itq``, ``sh``): fit instead of train.

The training images go through the feature network (``--model``: ``pixels``, a registry model or
timm backbone, with ``--pretrained imagenet`` on a user's machine, or a trained checkpoint's
directory) once; their features are kept in memory when they fit :data:`FEATURE_CACHE_BYTES`, and
otherwise the network runs again for each pass the fitter asks for (itq and sh take two). Each code
length is then fitted, scored on the selection split as a trained model's last epoch would be, and
written as an ordinary run: run.json, split.json, summary.json, and per code length
``bits{N}/best`` and ``bits{N}/last`` (the same checkpoint: a ``ShallowHashModel``), ``method.json``
and a one-record ``log.jsonl`` (epoch 0, the selection score). ``evaluate``, ``encode``,
``search``, ``serve`` and ``export`` use it unchanged.

Options that only a training loop uses (``--epochs``, ``--lr``, ``--resume``, ...) are refused
with one line rather than silently ignored: a recorded run then says exactly what it did.
Same options and seed, same checkpoint bytes.
"""
from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, Iterator, Optional

import numpy as np
import torch

from .. import rundir as R
from ...errors import ConfigError, DataError
from ...fileio import write_json
from ...limits import FEATURE_CACHE_BYTES
from ...locking import exclusive
from ...outdir import check_claim, claim
from ...environment import pick_device
from .loop import METHOD_NAME
from .result import BitsResult
from .recipe import TrainConfig, check_bits_list, check_numbers

_log = logging.getLogger(__name__)

# options of a training loop, meaningless to a fit: refused when they differ from their default
TRAINING_ONLY = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "momentum", "schedule",
                 "warmup_epochs", "head_init_std", "data_mode", "shift", "eval_every", "amp", "grad_clip", "recipe",
                 "parallel", "alpha", "bank_rows", "bank_fp16", "save_every", "tensorboard", "resume")


def check_fit_options(config: TrainConfig) -> None:
    """One-line ConfigError naming the training-loop options ``config`` sets for a training-free method."""
    base = TrainConfig()
    given = [f"--{k.replace('_', '-')}" for k in TRAINING_ONLY if getattr(config, k) != getattr(base, k)]
    if given:
        raise ConfigError(f"--method {config.method} is training-free (fitted in one pass over the training "
                          f"images, no training loop): {', '.join(given)} {'does' if len(given) == 1 else 'do'} "
                          f"not apply; drop {'it' if len(given) == 1 else 'them'}")


def _refuse_held(run_dir: Path) -> None:
    held = R.held_run(run_dir)
    if held:  # a fit is never resumed: it would mix with the run there
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(held)}); choose another --out")


def check_rows(baseline, n_train: int) -> None:
    """Refuse fewer training images than a baseline's definition needs: 2 for the mean of any; for
    pcah and itq (bits <= d) bits + 1, since n centred rows span at most n - 1 directions and the
    bits beyond them would be rounding noise."""
    need = baseline.bits + 1 if baseline.bits_within_features else 2
    if n_train < need:
        raise DataError(f"{baseline.name}: {baseline.bits} bits need at least {need} training images, the split "
                        f"has {n_train}; use fewer --bits, a larger dataset or a smaller --val-fraction"
                        + (", or sh or lsh" if baseline.bits_within_features else ""))


def _collate(batch):
    return torch.stack([b[0] for b in batch])


class Features:
    """The training set's features (n, d) float32, as the fitter's ``batches()`` asks for them:
    held in memory when they fit ``FEATURE_CACHE_BYTES``, else computed again on every call."""

    def __init__(self, network, dataset, config: TrainConfig, device: torch.device, progress: bool):
        from torch.utils.data import DataLoader

        self.network, self.device, self.progress = network, device, progress
        self.n, self.d = len(dataset), network.n_features
        self.loader = DataLoader(dataset, batch_size=config.eval_batch_size, shuffle=False,
                                 num_workers=config.workers, collate_fn=_collate)
        self.cached: Optional[torch.Tensor] = None
        if self.n * self.d * 4 <= FEATURE_CACHE_BYTES:
            self.cached = torch.cat(list(self._run("features")))  # (n, d) on the device
        else:
            _log.info("features of %d training images (%.1f GiB) exceed the %.1f GiB cache: the network runs again "
                      "for each pass", self.n, self.n * self.d * 4 / 2**30, FEATURE_CACHE_BYTES / 2**30)

    @torch.inference_mode()
    def _run(self, desc: str) -> Iterator[torch.Tensor]:
        from ...models.cpu_gemm import inference_context

        batches = self.loader
        if self.progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, total=len(self.loader), desc=desc, leave=False)
        for x in batches:
            x = x.to(self.device)
            with inference_context(x):  # as the model's own forward does, so the features are the same
                yield self.network(x).float()

    def batches(self) -> Iterator[torch.Tensor]:
        if self.cached is not None:
            return iter(self.cached.split(self.loader.batch_size))
        return self._run("features (again)")


def fit_run(config: TrainConfig, protocol=None, *, locked: bool = False) -> Dict[int, BitsResult]:
    """Fit ``config.method`` (a training-free baseline) at each code length into ``config.out``.

    Same arguments and result as :func:`~.run.train` (``BitsResult.epochs`` is 0: nothing was
    trained). One-line errors: training-loop options, a model without pre-hash features, features
    too wide for the baseline, fewer training images than its bits need.
    """
    from ...methods import make_shallow
    from ...models.features import feature_network
    check_numbers(config)
    check_bits_list(config.bits)
    check_fit_options(config)
    baselines = {b: make_shallow(config.method, b, config.seed, **config.method_params) for b in config.bits}
    device = pick_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(config.out)
    check_claim(run_dir, "train", legacy=R.is_run_dir)
    _refuse_held(run_dir)
    network = feature_network(config.model, config.pretrained, **config.model_overrides).to(device)
    for baseline in baselines.values():
        baseline.check_width(network.n_features)  # bits above d, d above the covariance limit
    if protocol is None:
        protocol = R.load_run_protocol(config, run_dir)
    for baseline in baselines.values():
        check_rows(baseline, len(protocol.train))
    if config.select_on != "query" and len(protocol.val) == 0:
        raise ConfigError(f"{protocol.name}: no validation image to score the fit on ({len(protocol.train)} training "
                          f"images, val_fraction {protocol.val_fraction:g}); use --val-fraction above 0 or "
                          f"--select-on query")
    with (nullcontext() if locked else exclusive(run_dir, what="run directory")):
        _refuse_held(run_dir)  # again, as the one writer
        return _fit_all(config, protocol, run_dir, network, baselines, device)


def _fit_all(config: TrainConfig, protocol, run_dir: Path, network, baselines, device) -> Dict[int, BitsResult]:
    import hybridhash
    from ...data.transforms import build_transform, with_pipeline

    claim(run_dir, "train", legacy=R.is_run_dir)
    protocol.save_split(run_dir / R.SPLIT_NAME)
    write_json(run_dir / R.RUN_NAME, {"config": config.to_dict(), "protocol": protocol.summary(),
                                      "torch": torch.__version__, "hybridhash": hybridhash.__version__,
                                      "world_size": 1})
    preprocess = with_pipeline(network.config.preprocess, protocol.name)
    transform = build_transform(preprocess, train=False)
    progress = bool(config.progress) and sys.stderr.isatty()
    t0 = time.perf_counter()
    features = Features(network, protocol.train.with_transform(transform), config, device, progress)
    shared = time.perf_counter() - t0
    results: Dict[int, BitsResult] = {}
    for bits, baseline in baselines.items():
        results[bits] = _fit_bits(config, protocol, run_dir, network, baseline.to(device), features, transform,
                                  preprocess, progress, shared)
    write_json(run_dir / R.SUMMARY_NAME, {"dataset": protocol.name, "select_on": config.select_on,
                                          "results": {str(b): r.to_dict() for b, r in results.items()}})
    return results


def _fit_bits(config: TrainConfig, protocol, run_dir: Path, network, baseline, features: Features, transform,
              preprocess, progress: bool, shared: float) -> BitsResult:
    from ... import metrics as M
    from ...codes import binarize
    from ...models.shallow import ShallowHashModel
    from ...engines.encoding import encode_images
    from ..evaluation import class_ids_or_multihot, copy_score
    from .recipe import selection_metric

    out = R.bits_dir(run_dir, baseline.bits)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    baseline.fit(features.batches, features.d, progress=progress or None)
    model = ShallowHashModel.from_fit(network, baseline).to(features.device).eval()
    p = protocol

    def codes(subset: str) -> np.ndarray:
        if subset == "train" and features.cached is not None:  # from the held features: no network pass
            with torch.inference_mode():
                return torch.cat([binarize(model.head(x)).cpu() for x in features.batches()]).numpy()
        return encode_images(model, getattr(p, subset).with_transform(transform), batch_size=config.eval_batch_size,
                             device=features.device, workers=config.workers)

    # scored as a trained model's epoch is: val queries against the training images (or the protocol's
    # sets), and the label-free copy score beside it; the selection's metric is the fit's score
    queries, database = ("query", "database") if config.select_on == "query" else ("val", "train")
    q = codes(queries)
    scores = {}
    if p.labelled:
        ql = class_ids_or_multihot(getattr(p, queries).labels, p.multi_label)
        dl = class_ids_or_multihot(getattr(p, database).labels, p.multi_label)
        scores[f"{queries}_map"] = float(M.mean_average_precision(q, codes(database), ql, dl, topk=p.topk))
    if queries == "val":
        scores["val_copy_map"] = copy_score(model, p.val, seed=config.seed, batch_size=config.eval_batch_size,
                                            device=features.device, workers=config.workers, dataset_name=p.name,
                                            originals=q, preprocess=preprocess)["copy_map"]
    metric = selection_metric(config.select_on, p.labelled)
    score = scores[metric]
    seconds = time.perf_counter() - t0 + shared
    meta = {"preprocess": preprocess, "epoch": 0, "step": 0, "dataset": p.name, "split_hash": p.split_record()["hash"],
            "select_on": config.select_on, **scores, "train_config": config.to_dict(),
            "fit": {"method": baseline.name, "family": "shallow", "n_train": baseline.n_train}}
    for name in (R.BEST, R.LAST):
        with R.saving(out / name) as tmp:
            model.save_pretrained(str(tmp), **meta)
    facts = baseline.facts()
    write_json(out / METHOD_NAME, {"method": baseline.name, "family": "shallow", "config": baseline.config(),
                                   "facts": facts})
    record = {"epoch": 0, "step": 0, **{k: round(v, 6) for k, v in scores.items()}, "best": True,
              "time": round(seconds, 3),
              "elapsed": round(seconds, 3)}
    if (out / R.LOG_NAME).exists():
        (out / R.LOG_NAME).unlink()
    R.append_log(out, record)
    if config.progress:
        _log.info("%d bits, %s fitted on %d images of %d features: %s %.4f", baseline.bits, baseline.name,
                  baseline.n_train, baseline.n_features, metric, score)
    return BitsResult(baseline.bits, out, 0, 0, score, config.select_on, seconds, [record], selected_by=metric)
