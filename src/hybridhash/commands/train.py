"""``hybridhash train``: train HybridHash at one or more code lengths on a dataset's protocol."""
from __future__ import annotations

import argparse
import json

HELP = "train HybridHash models (one per code length) on a dataset"
DESCRIPTION = (
    "Train one model per code length into OUT/bits{N}/ (best/ and last/ checkpoints, log.jsonl). "
    "Options left unset take the recipe of the model: the original's (RMSprop 2.5e-5, 15 epochs, ...) for "
    "pretrained or 224 px presets, a from-scratch one (AdamW with warm-up and cosine decay, cached images "
    "shifted per batch) for small presets such as hybridhash_cpu. Multi-GPU: torchrun --nproc-per-node N "
    "$(which hybridhash) train ...")


def _overrides(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"depths\": [1, 1, 1]}}', got {text!r}")
    return value


def configure(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="digits", help="protocol name (digits, cifar10, ..., list:<dir>, folder:<dir>)")
    d.add_argument("--root", help="data directory (not needed for digits)")
    d.add_argument("--image-root", help="where list-file image paths start")
    d.add_argument("--download", action="store_true", help="download CIFAR-10 through torchvision when absent")
    d.add_argument("--val-fraction", type=float, default=0.1, help="share of the training images held out for selection")
    d.add_argument("--workers", type=int, default=0, help="data-loading processes")
    d.add_argument("--data-mode", choices=("stream", "cache"), help="stream: per-image transforms in a DataLoader; "
                   "cache: images preprocessed once, held in memory, shifted per batch (default: by recipe)")
    d.add_argument("--shift", type=int, help="cache mode: largest random shift in pixels")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="hybridhash_cpu", help="preset name (see `hybridhash models`)")
    m.add_argument("--model-overrides", type=_overrides, default={}, metavar="JSON",
                   help='preset options to change, e.g. \'{"depths": [1, 1, 1]}\'')
    m.add_argument("--bits", type=int, nargs="+", default=[16, 32, 48, 64], help="code lengths, one model each")
    m.add_argument("--pretrained", help="'imagenet' (timm NesT weights of the preset) or a NesT weights file")
    o = p.add_argument_group("optimisation (unset: the recipe's value)")
    o.add_argument("--epochs", type=int)
    o.add_argument("--batch-size", type=int)
    o.add_argument("--optimizer", choices=("rmsprop", "adamw"))
    o.add_argument("--lr", type=float)
    o.add_argument("--weight-decay", type=float)
    o.add_argument("--schedule", choices=("constant", "cosine"))
    o.add_argument("--warmup-epochs", type=float)
    o.add_argument("--head-init-std", type=float, help="std of the init of the layer that makes the bits")
    o.add_argument("--grad-clip", type=float)
    o.add_argument("--alpha", type=float, default=0.5, help="the loss's inner-product scale")
    o.add_argument("--bank-rows", type=int, help="rows of the loss's memory bank (default: the training set "
                   "size; the original used 10000 on CIFAR-10)")
    o.add_argument("--original-bank-rows", action="store_true", help="use the original's row count for the dataset")
    o.add_argument("--bank-fp16", action="store_true", help="keep the bank in float16 as the original")
    o.add_argument("--recipe", choices=("original", "scratch"), help="force a recipe (default: by model)")
    amp = o.add_mutually_exclusive_group()
    amp.add_argument("--amp", dest="amp", action="store_true", default=None,
                     help="mixed precision (bf16 autocast on CUDA; CPU runs stay float32)")
    amp.add_argument("--no-amp", dest="amp", action="store_false")
    r = p.add_argument_group("run")
    r.add_argument("--out", default="runs/train", help="run directory")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--eval-every", type=int, help="evaluate for selection every N epochs (and at the end)")
    r.add_argument("--select-on", choices=("val", "query"), default="val",
                   help="split that picks the best epoch; 'query' reproduces the original (not a fair protocol)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last saved epoch")
    r.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto")
    r.add_argument("--threads", type=int, help="torch CPU threads (per process)")
    r.add_argument("--parallel", type=int, help="CPU only: code lengths trained at once in separate processes "
                   "(0: one per core; default: by recipe, 0 for small presets, 1 otherwise)")
    r.add_argument("--save-every", type=int, default=1, help="save last/ every N epochs")
    r.add_argument("--eval-batch-size", type=int, default=256)
    r.add_argument("--tensorboard", action="store_true", help="also log to OUT/bits{N}/tensorboard")
    r.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    r.add_argument("--stop-after-epochs", type=int, help=argparse.SUPPRESS)


def config_from_args(args) -> "TrainConfig":
    from hybridhash.train import TrainConfig

    bank_rows = args.bank_rows
    if args.original_bank_rows:
        from hybridhash.data import get_spec

        spec, _ = get_spec(args.dataset)
        bank_rows = spec.original_bank_rows
    return TrainConfig(
        dataset=args.dataset, root=args.root, image_root=args.image_root, download=args.download,
        model=args.model, model_overrides=args.model_overrides, pretrained=args.pretrained, bits=tuple(args.bits),
        out=args.out, seed=args.seed, val_fraction=args.val_fraction, select_on=args.select_on,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
        head_init_std=args.head_init_std, data_mode=args.data_mode, shift=args.shift, eval_every=args.eval_every,
        amp=args.amp, grad_clip=args.grad_clip, alpha=args.alpha, bank_rows=bank_rows, bank_fp16=args.bank_fp16,
        device=args.device, workers=args.workers, eval_batch_size=args.eval_batch_size, save_every=args.save_every,
        resume=args.resume, tensorboard=args.tensorboard, quiet=args.quiet, threads=args.threads, parallel=args.parallel,
        stop_after_epochs=args.stop_after_epochs, recipe=args.recipe,
    )


def _split_warnings(out) -> list:
    """The warnings of the run's split (e.g. a single class), as recorded in its run.json."""
    from pathlib import Path

    from hybridhash.fileio import read_json
    from hybridhash.train.trainer import RUN_NAME

    path = Path(out) / RUN_NAME
    return list(read_json(path).get("protocol", {}).get("warnings", [])) if path.is_file() else []


def run(args) -> int:
    from hybridhash.train import train
    from hybridhash.train.distributed import current

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
