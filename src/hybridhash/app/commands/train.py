"""``hybridhash train``: train HybridHash at one or more code lengths on a dataset's protocol."""
from __future__ import annotations

import argparse

from .options import add_config_option, add_dataclass_options, dataclass_from_args

HELP = "train HybridHash models (one per code length) on a dataset"
DESCRIPTION = (
    "Train one model per code length into OUT/bits{N}/ (best/ and last/ checkpoints, log.jsonl). "
    "Options left unset take the recipe of the model: the original's (RMSprop 2.5e-5, 15 epochs, ...) for "
    "pretrained or 224 px presets, a from-scratch one (AdamW with warm-up and cosine decay, cached images "
    "shifted per batch) for small presets such as hybridhash_cpu. Multi-GPU: torchrun --nproc-per-node N "
    "$(which hybridhash) train ... Training-free baselines (--method lsh, pcah, itq, sh) are fitted instead, in "
    "one pass over the training images, on --model pixels, a model's pre-hash features or a checkpoint "
    "directory's; training-loop options are refused for them. To re-run a recorded run: --config RUN/run.json (or RUN) --out NEW; the options "
    "given beside it override the recorded ones.")

# what run.json records that does not define the run: the first run may have been resumed, or
# stopped early by the tests' hook
NOT_REPEATED = ("resume", "stop_after_epochs")
# a run.json is a few kilobytes; anything past this is not one
MAX_RECORD_BYTES = 16 * 2**20


GROUPS = {"data": "data", "model": "model", "method": "method",
          "optimisation": "optimisation (unset: the recipe's value, or the method's published one)", "run": "run"}


def configure(p: argparse.ArgumentParser) -> None:
    from hybridhash.app.train.recipe import TrainConfig  # torch-free

    from .vocabulary import code_length

    add_config_option(p, recorded_options,
                      help="re-run a recorded run: its run.json (or its directory) gives every option the command "
                           "line does not; the recorded options are the resolved ones (the recipe's values filled in)")
    groups = add_dataclass_options(p, TrainConfig, GROUPS, types={"bits": code_length()})
    groups["optimisation"].add_argument("--original-bank-rows", action="store_true",
                                        help="use the original's row count for the dataset")


def recorded_options(path: str) -> dict:
    """{option dest: value} that the run.json at ``path`` (or in the run directory ``path``) records,
    in today's names, without what does not define the run (:data:`NOT_REPEATED`); a one-line
    ConfigError for a file that is not a training run's record."""
    from pathlib import Path

    from hybridhash.errors import ConfigError, DataError
    from hybridhash.fileio import read_json
    from hybridhash.app.rundir import RUN_NAME
    from hybridhash.app.train.recipe import legacy_options

    given = Path(path)
    file = given / RUN_NAME if given.is_dir() else given
    hint = "name the run.json of a training run, or its directory"
    if not file.is_file():
        why = "no such file" if not file.exists() else "not a regular file"
        raise ConfigError(f"--config {file}: {why}; {hint}")
    if file.stat().st_size > MAX_RECORD_BYTES:
        raise ConfigError(f"--config {file}: {file.stat().st_size} bytes, too large for a run.json; {hint}")
    try:
        record = read_json(file)
    except DataError as err:  # nested past the parser's recursion limit
        raise ConfigError(f"--config {err}") from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"--config {file}: not JSON; {hint}") from None
    if not (isinstance(record, dict) and isinstance(record.get("config"), dict) and "hybridhash" in record):
        raise ConfigError(f"--config {file}: not the run.json of a hybridhash training run; {hint}")
    values = legacy_options(record["config"])
    if "precision" not in record and values.get("amp") is True:
        # recorded before --amp could be left unset: the recipe's true then meant "where the device has bf16"
        values["amp"] = None
    for name in NOT_REPEATED:
        values.pop(name, None)
    return values


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
            score = (r.selected_by or f"{r.select_on}_map").replace("_", " ").replace("map", "mAP")
            if r.epochs == 0 and r.best_epoch == 0:  # a training-free baseline, fitted
                print(f"{bits:3d} bits: fitted {config.method}, {score} {best}, {r.seconds:.1f} s -> "
                      f"{r.directory}")
                continue
            print(f"{bits:3d} bits: {r.epochs} epochs, best {score} {best} at epoch {r.best_epoch}, "
                  f"{r.seconds:.1f} s -> {r.directory}")
        for warning in _split_warnings(config.out):
            print(f"warning: {warning}")
    return 0
