"""A whole training run: several code lengths, in one process, side by side, or under torchrun.

The run directory's layout is :mod:`hybridhash.app.rundir`'s; one :class:`~.loop.Trainer` trains each
code length.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch

from .. import rundir as R
from ..rundir import held_run, load_run_protocol  # in rundir so that the fit shares them without importing this module
from ...environment import device_option, pick_device, training_precision, usable_cores
from ...errors import ConfigError
from ...fileio import read_json, write_json
from ...locking import exclusive
from ...outdir import check_claim, claim
from . import distributed as D
from . import feeds as FD
from .build import build_method, check_trainable, method_params
from .loop import CachedImages, Callback, Trainer, tensorboard_writer
from .result import BitsResult
from .recipe import RESUME_KEYS, TrainConfig, check_bits_list, check_numbers, resolve, selection_metric
from .state import STATE_NAME, read_training_state

_log = logging.getLogger(__name__)

# cached training images above this many bytes fall back to streaming
CACHE_LIMIT_BYTES = 2 << 30


def _check_out(run_dir: Path, config: TrainConfig, keys: Sequence[str] = RESUME_KEYS) -> None:
    """Refuse a run that would mix with the one ``run_dir`` holds: a new one (its run.json and
    summary.json would be replaced, and evaluation would mix both), or a resumed one whose ``keys``
    options differ."""
    if config.resume:
        _check_resume(run_dir, config, keys)
        return
    held = held_run(run_dir)
    if held:
        raise ConfigError(f"{run_dir} already holds a run ({', '.join(held)}); continue it with --resume and the "
                          f"same options, or choose another --out")


def _check_resume(run_dir: Path, config: TrainConfig, keys: Sequence[str] = RESUME_KEYS) -> None:
    saved_path = run_dir / R.RUN_NAME
    if not saved_path.exists():  # run.json is written before the first epoch, so no run was started here
        raise ConfigError(f"--resume: no run in {run_dir}; drop --resume to start a new run")
    check_claim(run_dir, "train", legacy=R.is_run_dir)  # before reading a run.json that may be anyone's
    saved = read_json(saved_path).get("config", {})
    now = json.loads(json.dumps(config.to_dict()))  # tuples as JSON lists, like the saved side
    for k in keys:
        if k in saved and saved[k] != now.get(k):
            raise ConfigError(f"--resume: {run_dir} was trained with {k}={saved[k]!r}, this run asks for "
                              f"{now.get(k)!r}; use the same options or another --out")


# options that fit_method sets from the size of the training set
FITTED_KEYS = ("epochs", "method_params")


def published_settings(config: TrainConfig) -> Dict[str, Any]:
    """The published optimiser settings of ``config``'s method (and a one-line error for an unknown
    method or hyper-parameter now, before any data is read)."""
    from ...methods import method_defaults

    return method_defaults(config.method, **method_params(config)).to_dict()


def fit_method(config: TrainConfig, n_train: int) -> TrainConfig:
    """``config`` with the method's schedule fitted to ``n_train`` training images: its hyper-parameters
    and epochs as the method's ``fit_schedule`` gives them (e.g. ADSH's outer iterations matched to
    the other methods' image-steps, DSH's and DPSH's in-batch pairs under the scratch recipe)."""
    from ...methods import method_class

    params, epochs = method_class(config.method).fit_schedule(dict(config.method_params), config.recipe,
                                                              config.epochs, n_train)
    if params == config.method_params and epochs == config.epochs:
        return config
    return dataclasses.replace(config, method_params=params, epochs=epochs)


def _no_val_message(protocol) -> str:
    """Why ``--select-on val`` cannot work on this split: every set's size and what would fix it."""
    n_images = sum(len(p) for p in protocol.pools.values())
    n_train = len(protocol.train)
    if protocol.val_fraction == 0:
        why = "val_fraction 0"
    elif protocol.multi_label:
        why = f"val_fraction {protocol.val_fraction:g} of {n_train} training image(s) rounds to 0"
    else:
        why = (f"val_fraction {protocol.val_fraction:g} of {n_train} training images rounds to 0, and no class has "
               f"2 training images to spare one")
    return (f"{protocol.name} has {n_images} images: query {len(protocol.query)}, train {n_train}, val 0 ({why}), "
            f"database {len(protocol.database)}; --select-on val needs at least 1 validation image: use a larger "
            f"dataset (a class with at least 2 training images), --val-fraction above 0, or --select-on query")


def train(config: TrainConfig, protocol=None, *, callbacks: Sequence[Callback] = (),
          locked: bool = False) -> Dict[int, BitsResult]:
    """Train one model per code length of ``config.bits`` into ``config.out/bits{N}/``.

    Args:
        config: options; unset ones are filled by the recipe of the model (see :mod:`.recipe`).
        protocol: an already loaded ``Protocol`` (default: ``load_protocol(config.dataset, ...)``,
            or the run's recorded split when resuming).
        callbacks: see :class:`~.loop.Trainer`.
        locked: the caller holds the writer's lock of ``config.out`` (:mod:`hybridhash.locking`), as
            a comparison grid does for its cells; otherwise the main process takes it here.

    Returns:
        {bits: BitsResult}. Code lengths already trained to the end are skipped under ``resume``.

    Raises:
        LockedError: another process is writing ``config.out``.
    """
    from ...methods import is_training_free
    from ...models import build_config

    if is_training_free(config.method):  # fitted in one pass over the images, no training loop
        from .fit import fit_run

        return fit_run(config, protocol, locked=locked)
    check_numbers(config)  # named as the options they are, before the method checks its share of them
    check_bits_list(config.bits)  # a code length no index can hold fails now, before any work
    check_trainable(config.method)  # before its published settings, which the loop may not offer
    dist_info = D.init_distributed(device_option(config.device))  # also refuses an unusable --device early
    model_cfg = build_config(config.model, 16, **config.model_overrides)
    config = resolve(FD.fed_defaults(config), model_cfg.img_size, published_settings(config))
    FD.check_method_options(config, model_cfg.img_size, model_cfg.preprocess)
    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = Path(config.out)
    if config.tensorboard and dist_info.is_main:
        tensorboard_writer(None)  # fails now, not after the data is loaded, when tensorboard is missing
    # every rank checks (read-only), so that a refusal stops them all rather than leaving some waiting;
    # the options a method's fitting to the data changes are compared once the data is read
    if not config.resume:  # a foreign directory first: nothing of it is a run to speak of
        check_claim(run_dir, "train", legacy=R.is_run_dir)
    _check_out(run_dir, config, [k for k in RESUME_KEYS if k not in FITTED_KEYS])
    if protocol is None:
        protocol = load_run_protocol(config, run_dir)
    FD.check_method_data(config.method, protocol)  # a method that needs labels, on data without them
    if config.select_on == "query" and not protocol.labelled:
        raise ConfigError(f"--select-on query scores the test queries with their labels, and {protocol.name} has "
                          f"none; use --select-on val (the label-free copy score)")
    config = fit_method(config, len(protocol.train))
    # the method's own checks against the training set (e.g. a bank's rows), before images are cached
    build_method(config, config.bits[0], protocol.n_class, len(protocol.train))
    if config.select_on != "query" and len(protocol.val) == 0:
        raise ConfigError(_no_val_message(protocol))
    if config.select_on == "query" and dist_info.is_main:
        _log.warning("selecting the model on the test queries reproduces the original's protocol but is not a "
                     "fair evaluation: the reported figures are then optimistic")
    if config.bank_rows is None and protocol.original_bank_rows and dist_info.is_main:
        _log.debug("memory bank sized to the %d training images (the original used %d rows)",
                   len(protocol.train), protocol.original_bank_rows)
    writer = nullcontext() if locked or not dist_info.is_main else exclusive(run_dir, what="run directory")
    with writer:
        _check_out(run_dir, config)  # again, as the one writer: another process may have started a run here
        return _train_run(config, protocol, run_dir, callbacks, dist_info)


def _train_run(config: TrainConfig, protocol, run_dir: Path, callbacks: Sequence[Callback],
               dist_info: D.DistEnv) -> Dict[int, BitsResult]:
    """Record the run in ``run_dir`` and train its code lengths (the checks of :func:`train` passed)."""
    import hybridhash

    previous: Dict[str, Any] = {}  # what a resumed run holds of code lengths not trained now
    if dist_info.is_main:
        claim(run_dir, "train", legacy=R.is_run_dir)
        record = protocol.split_record()
        split_path = run_dir / R.SPLIT_NAME
        if split_path.exists() and read_json(split_path).get("hash") != record["hash"]:
            raise ConfigError(f"{split_path} records another split of the data than this run's; use another --out")
        if not split_path.exists():
            protocol.save_split(split_path)
        recorded = config.to_dict()
        precision = training_precision(pick_device(config.device), config.amp)
        # said once for the run (every code length's Trainer makes the same choice)
        _log.log(logging.WARNING if precision.emulated else logging.INFO, "training in %s: %s", *precision[:2])
        if config.resume:
            saved = read_json(run_dir / R.RUN_NAME).get("config", {})
            recorded["bits"] = sorted(set(saved.get("bits", [])) | set(config.bits))
            if (run_dir / R.SUMMARY_NAME).exists():
                previous = read_json(run_dir / R.SUMMARY_NAME).get("results", {})
        write_json(run_dir / R.RUN_NAME, {"config": recorded, "precision": precision._asdict(),
                                          "protocol": protocol.summary(),
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
        done = {**previous, **{str(b): r.to_dict() for b, r in results.items()}}
        write_json(run_dir / R.SUMMARY_NAME, {"dataset": protocol.name, "select_on": config.select_on,
                                              "results": done})
    return results


def _finished(config: TrainConfig, run_dir: Path, bits: int) -> Optional[Dict[str, Any]]:
    """The saved counters of a code length already trained to the end under ``--resume``, else None."""
    last = R.resolve_ckpt_dir(R.bits_dir(run_dir, bits) / R.LAST)
    if not config.resume or last is None:
        return None
    _, meta = read_training_state(last / STATE_NAME)
    counters = meta.get("counters", {})
    return counters if int(counters.get("epoch", 0)) >= config.epochs else None


def _train_bits(config: TrainConfig, protocol, bits: int, run_dir: Path, callbacks: Sequence[Callback],
                cache: Optional[CachedImages], dist_info: D.DistEnv, split_hash: str) -> BitsResult:
    out = R.bits_dir(run_dir, bits)
    counters = _finished(config, run_dir, bits)
    if counters is not None:
        if dist_info.is_main:
            _log.info("%d bits: already trained (%d epochs), skipped", bits, counters["epoch"])
        history = R.read_log(out)
        selected_by = selection_metric(config.select_on, protocol.labelled)
        return BitsResult(bits, out, int(counters["epoch"]), counters.get("best_epoch"), counters.get("best_metric"),
                          config.select_on, float(counters.get("elapsed", 0.0)), history, selected_by,
                          FD.copy_spearman(history))
    trainer = Trainer(config, protocol, bits, out, callbacks=callbacks, cache=cache, dist_info=dist_info)
    trainer.split_hash = split_hash
    return trainer.fit(resume=config.resume)


def _parallel_workers(config: TrainConfig, dist_info: D.DistEnv) -> int:
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
    cache = _build_cache(config, protocol, bits, D.DistEnv()) if config.data_mode == "cache" else None
    return _train_bits(config, protocol, bits, run_dir, callbacks, cache, D.DistEnv(),
                       protocol.split_record()["hash"])


# (processes, pool) while keep_workers() is active: the pool the next parallel run reuses
_kept: Optional[list] = None


@contextmanager
def keep_workers() -> Iterator[None]:
    """Within this block, runs that train code lengths in parallel processes hand their jobs to the
    same processes from one run to the next (a comparison grid's cells) instead of starting new
    ones: each start imports torch and timm again, about 3 s of a cell of a minute on 2 cores. Every
    job seeds what it draws, so a reused process trains what a new one would."""
    global _kept
    if _kept is not None:  # nested: the outer block owns the pool
        yield
        return
    _kept = []
    try:
        yield
    except BaseException:  # interrupted (Ctrl-C reaches the processes too) or failed: stop them now
        _drop_kept()
        raise
    finally:
        held, _kept = _kept, None
        for _, pool in held:  # idle between runs: they finish at once
            pool.close()
            pool.join()


def _pool(workers: int) -> Tuple[Any, bool]:
    """A pool of ``workers`` spawned processes, and whether the caller must close it."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    if _kept is None:
        return ctx.Pool(workers, maxtasksperchild=1), True
    if not _kept or _kept[0][0] != workers:
        for _, pool in _kept:
            pool.close()
            pool.join()
        _kept[:] = [(workers, ctx.Pool(workers))]
    return _kept[0][1], False


def _train_parallel(config: TrainConfig, run_dir: Path, workers: int,
                    callbacks: Sequence[Callback]) -> Dict[int, BitsResult]:
    threads = config.threads or max(1, usable_cores() // workers)
    level = logging.getLogger().getEffectiveLevel()
    jobs = [(config, run_dir, bits, list(callbacks), threads, level) for bits in config.bits]
    _log.info("training %d code lengths in %d processes of %d thread(s)", len(jobs), workers, threads)
    pool, own = _pool(workers)
    try:
        done = pool.map(_worker, jobs, chunksize=1)
    except BaseException:
        if not own:  # a failed or interrupted job may leave its process half way: never reuse the pool
            _drop_kept()
        raise
    finally:
        if own:  # as `with Pool(...)` does: its processes have done their one job
            pool.terminate()
            pool.join()
    return {r.bits: r for r in done}


def _drop_kept() -> None:
    """Terminate the kept pool's processes; the next parallel run starts new ones."""
    if _kept:
        for _, pool in _kept:
            pool.terminate()
            pool.join()
        _kept.clear()


def _build_cache(config: TrainConfig, protocol, bits: int, dist_info: D.DistEnv) -> Optional[CachedImages]:
    from ...data.transforms import build_transform, with_pipeline
    from ...models import build_config

    model_cfg = build_config(config.model, bits, **config.model_overrides)
    size = len(protocol.train) * 3 * model_cfg.img_size ** 2 * 4
    if size > CACHE_LIMIT_BYTES:
        raise ConfigError(f"caching {len(protocol.train)} training images of {model_cfg.img_size} px needs "
                          f"{size / 2**30:.1f} GiB; use --data-mode stream")
    transform = build_transform(with_pipeline(model_cfg.preprocess, protocol.name), train=False)
    desc = "cache training images" if (config.progress and dist_info.is_main and sys.stderr.isatty()) else None
    return CachedImages(protocol.train, transform, desc)
