"""``hybridhash compare``: a fair comparison grid of methods x code lengths x seeds on one protocol and
one model, and its table (mean +- std over seeds, beside an LSH floor)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Tuple

from .options import add_option, from_bounds, json_object
from .vocabulary import add_batch_size, add_data_root, add_image_root, add_max_pixels, add_progress, add_threads
from .vocabulary import code_length

HELP = "compare hashing methods: one model, one protocol, methods x code lengths x seeds, mean +- std"
DESCRIPTION = (
    "Trains every method at every code length with every seed on one model and one protocol, and tabulates "
    "mAP@K of the protocol, tie-aware mAP and precision within Hamming radius 2 (on multi-label data also ACG@K, "
    "NDCG@K and weighted mAP@K; mean +- sample std over seeds) "
    "beside random-projection LSH of the pixels. One cell = one method at one seed: an ordinary training run "
    "(OUT/<method>/seed<s>/, all code lengths, selected on the validation split) and its evaluation "
    "(OUT/<method>/seed<s>/eval/metrics.json). Every method of a seed trains on one split drawn with that seed. "
    "Each method keeps its recipe (its published optimiser settings when fine-tuning a pretrained model, the "
    "project's shared scratch recipe from random weights on small images) unless --same-optimizer imposes one. "
    "Run again with the same options to resume: finished cells are skipped, half-trained ones continue. "
    "Unsupervised methods and the training-free baselines (fitted on --baseline-model, raw pixels by default) "
    "join the same table, marked by family. --shard i/n runs every n-th cell (for several machines or a job array); the table (OUT/table.md, "
    "table.csv, table.json, map_vs_bits.png, pr_curve.png, report.html) is written from whatever cells are "
    "finished and lists the missing ones.")


def configure(p: argparse.ArgumentParser) -> None:
    import dataclasses

    from hybridhash.app.train.recipe import TrainConfig  # torch-free

    # the ranges of train's options of the same names
    ranges = {f.name: f.metadata.get("bounds") for f in dataclasses.fields(TrainConfig)}
    g = p.add_argument_group("grid")
    g.add_argument("--methods", nargs="+", metavar="NAME",
                   help="method names and selectors, mixed: 'supervised' (the methods that train on labels; 'all' "
                        "alone means the same), a family: 'symmetric', 'asymmetric', 'central', 'classification', "
                        "'unsupervised' (those that train without labels), and 'baselines' (the "
                        "training-free lsh pcah itq sh), e.g. central baselines; a partial port (daph) runs only when "
                        "named (default: all, or the grid recorded in OUT with --report-only)")
    add_option(g, "--bits", type=code_length(), nargs="+", help="code lengths (default: 16 32 64)")
    add_option(g, "--seeds", type=from_bounds(ranges["seed"]), nargs="+",
               help="seeds; each draws its own split, shared by every method (default: 0 1 2)")
    g.add_argument("--out", default="runs/compare", help="grid directory (cells, table, figures)")
    g.add_argument("--shard", default="0/1", metavar="I/N", help="run only the cells whose index %% N == I")
    g.add_argument("--report-only", action="store_true", help="train nothing: tabulate the finished cells of OUT")
    g.add_argument("--no-floor", action="store_true", help="leave out the LSH floor rows")
    d = p.add_argument_group("data and model (one for every cell)")
    d.add_argument("--dataset", default="digits", help="protocol name (digits, cifar10, ..., list:<dir>, folder:<dir>)")
    add_data_root(d)
    add_image_root(d)
    add_option(d, "--val-fraction", type=from_bounds(ranges["val_fraction"]), default=0.1,
               help="share of the training images held out for selection")
    add_max_pixels(d, "refuse images with more pixels (width * height) than this, unread")
    d.add_argument("--model", default="hybridhash_cpu", help="preset name (see `hybridhash models`)")
    d.add_argument("--model-overrides", type=json_object, default={}, metavar="JSON",
                   help="preset options to change, e.g. '{\"depths\": [1, 1, 1]}'")
    d.add_argument("--pretrained", help="'imagenet' or a NesT weights file (then each method's published recipe)")
    d.add_argument("--baseline-model", metavar="NAME_OR_CHECKPOINT",
                   help="the feature network the training-free baselines are fitted on: a model name (e.g. a timm "
                        "backbone) or a trained checkpoint directory (default: pixels at --model's image size)")
    d.add_argument("--baseline-pretrained", help="with --baseline-model: its weights, as train's --pretrained takes them")
    o = p.add_argument_group("training (shared by every method)")
    add_option(o, "--epochs", type=from_bounds(ranges["epochs"]), help="training epochs of every method (default: each "
                                                             "recipe's; ADSH's outer iterations are scaled to match)")
    o.add_argument("--same-optimizer", action="store_true",
                   help="impose one optimiser setting on every method: --optimizer, --lr, --weight-decay, "
                        "--batch-size, unset ones as the hybridhash method gets them under the model's recipe")
    o.add_argument("--optimizer", help="with --same-optimizer: rmsprop, adamw or adam")
    add_option(o, "--lr", type=from_bounds(ranges["lr"]), help="with --same-optimizer: peak learning rate")
    add_option(o, "--weight-decay", type=from_bounds(ranges["weight_decay"]), help="with --same-optimizer: weight decay")
    add_batch_size(o, None, "with --same-optimizer: images per step")
    o.add_argument("--method-params", type=json_object, default={}, metavar="JSON",
                   help="hyper-parameters per method, e.g. '{\"adsh\": {\"iterations\": 5}}'")
    r = p.add_argument_group("machinery")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto")
    add_threads(r)
    add_option(r, "--parallel", type=from_bounds(ranges["parallel"]),
               help="CPU only: code lengths trained at once in separate processes (0: one per core; default: by "
                    "recipe)")
    add_progress(r, help="show per-epoch lines and progress bars (the per-cell lines and the table remain)",
                 quiet=True)


def grid_from_args(args):
    """The :class:`~hybridhash.app.compare.grid.Grid` the options name; under --report-only the grid
    recorded in OUT fills --methods, --bits and --seeds when they are not given."""
    from hybridhash.app.compare.grid import Grid
    from hybridhash.app.compare.selectors import expand_methods

    recorded = Grid.read(args.out) if args.report_only else None
    methods = expand_methods(args.methods or (list(recorded.methods) if recorded else ["all"]))
    baseline_model = args.baseline_model or (recorded.baseline_model if recorded else None)
    baseline_pretrained = args.baseline_pretrained or (recorded.baseline_pretrained if recorded else None)
    return Grid(
        methods=tuple(methods), bits=tuple(args.bits or (recorded.bits if recorded else (16, 32, 64))),
        seeds=tuple(args.seeds if args.seeds is not None else (recorded.seeds if recorded else (0, 1, 2))),
        out=args.out, dataset=args.dataset, root=args.root, image_root=args.image_root, model=args.model,
        model_overrides=args.model_overrides, pretrained=args.pretrained, val_fraction=args.val_fraction,
        epochs=args.epochs, same_optimizer=args.same_optimizer or bool(recorded and recorded.same_optimizer),
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
        method_params=args.method_params or (recorded.method_params if recorded else {}), device=args.device,
        threads=args.threads, parallel=args.parallel, progress=args.progress, max_pixels=args.max_pixels,
        baseline_model=baseline_model, baseline_pretrained=baseline_pretrained)


def run(args) -> int:
    from hybridhash.app.compare.grid import GRID_NAME
    from hybridhash.errors import ConfigError
    from hybridhash.app.compare.report import markdown, write_report

    shard = parse_shard(args.shard)
    if args.report_only and not (Path(args.out) / GRID_NAME).is_file():
        raise ConfigError(f"--report-only: {args.out} holds no comparison grid ({GRID_NAME}); run it without "
                          "--report-only first, or name the --out of one")
    grid = grid_from_args(args)
    protocols = {}
    if not args.report_only:
        t0 = time.perf_counter()
        grid.check()  # bad options fail before any data is read
        cells = grid.cells(shard)
        print(f"compare: {len(cells)} cell(s) of {len(grid.cells())} ({len(grid.methods)} methods x "
              f"{len(grid.seeds)} seeds, {' '.join(map(str, grid.bits))} bits) on {grid.dataset} with {grid.model}"
              + (f", shard {args.shard}" if shard != (0, 1) else ""), flush=True)
        # filled with one split per seed, which the floor then reuses
        grid.run(shard, protocols=protocols, echo=lambda line: print(line, flush=True))
        print(f"compare: {len(cells)} cell(s) in {time.perf_counter() - t0:.0f} s", flush=True)
    doc = write_report(grid, protocols, floor=not args.no_floor)
    print()
    print(markdown(doc), end="")
    print(f"\ntable: {grid.out}/table.md (also table.csv, table.json, report.html)")
    return 0


def parse_shard(text: str) -> Tuple[int, int]:
    """``"i/n"`` -> (i, n), checked."""
    from hybridhash.errors import ConfigError

    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must be i/n such as 0/2, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard must be i/n with 0 <= i < n, got {text!r}")
    return i, n
