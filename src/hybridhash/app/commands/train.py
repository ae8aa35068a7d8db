"""``hybridhash train``: train HybridHash at one or more code lengths on a dataset's protocol."""
from __future__ import annotations

import argparse

from .options import add_dataclass_options, dataclass_from_args

HELP = "train HybridHash models (one per code length) on a dataset"
DESCRIPTION = (
    "Train one model per code length into OUT/bits{N}/ (best/ and last/ checkpoints, log.jsonl). "
    "Options left unset take the recipe of the model: the original's (RMSprop 2.5e-5, 15 epochs, ...) for "
    "pretrained or 224 px presets, a from-scratch one (AdamW with warm-up and cosine decay, cached images "
    "shifted per batch) for small presets such as hybridhash_cpu. Multi-GPU: torchrun --nproc-per-node N "
    "$(which hybridhash) train ...")


GROUPS = {"data": "data", "model": "model", "method": "method",
          "optimisation": "optimisation (unset: the recipe's value, or the method's published one)", "run": "run"}


def configure(p: argparse.ArgumentParser) -> None:
    from hybridhash.app.train.recipe import TrainConfig  # torch-free

    groups = add_dataclass_options(p, TrainConfig, GROUPS)
    groups["optimisation"].add_argument("--original-bank-rows", action="store_true",
                                        help="use the original's row count for the dataset")


def config_from_args(args) -> "TrainConfig":
    from hybridhash.app.train import TrainConfig

    bank_rows = args.bank_rows
    if args.original_bank_rows:
        from hybridhash.data import get_spec

        spec, _ = get_spec(args.dataset)
        bank_rows = spec.original_bank_rows
    return dataclass_from_args(TrainConfig, args, bank_rows=bank_rows)


def _split_warnings(out) -> list:
    """The warnings of the run's split (e.g. a single class), as recorded in its run.json."""
    from pathlib import Path

    from hybridhash.fileio import read_json
    from hybridhash.app.rundir import RUN_NAME

    path = Path(out) / RUN_NAME
    return list(read_json(path).get("protocol", {}).get("warnings", [])) if path.is_file() else []


def run(args) -> int:
    from hybridhash.app.train import train
    from hybridhash.app.train.distributed import current

    config = config_from_args(args)
    results = train(config)
    if current().is_main:
        for bits, r in results.items():
            best = "n/a" if r.best_metric is None else f"{r.best_metric:.4f}"
            print(f"{bits:3d} bits: {r.epochs} epochs, best {r.select_on} mAP {best} at epoch {r.best_epoch}, "
                  f"{r.seconds:.1f} s -> {r.directory}")
        for warning in _split_warnings(config.out):
            print(f"warning: {warning}")
    return 0
