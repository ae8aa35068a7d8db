"""``hybridhash data``: list the protocols, describe one, check a dataset, export in-memory images."""
from __future__ import annotations

import argparse
import json

from ...errors import DataError
from ...terminal import printable
from .options import HelpFormatter, add_option, from_bounds
from .vocabulary import add_data_root, add_image_root, add_max_pixels, add_progress, add_seed, add_threads

HELP = "list, describe, check or export datasets and their retrieval protocols"
DESCRIPTION = (
    "Datasets by name with their retrieval protocols. 'data list' shows the table, 'data info NAME' "
    "the sizes of a split, 'data check NAME --data-root DIR' finds missing or malformed data before a "
    "long run, 'data export NAME --out DIR' writes in-memory images (digits, CIFAR-10) as PNG files "
    "with list files."
)


def _parse_sizes(text: str) -> dict:
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[key.strip()] = float(value) if "." in value else int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected query=N,train=N, got {text!r}") from None
    return out


def _add_data_args(p: argparse.ArgumentParser, *, split: bool = True) -> None:
    from hybridhash.configs import FRACTION

    p.add_argument("name", help="digits, digits_hard, cifar10, cifar10-1, cifar10-2, nuswide_21, nuswide_21_m, "
                                "nuswide_81_m, coco, imagenet, list:DIR or folder:DIR")
    add_data_root(p)
    add_image_root(p, help="the folder a list file's relative image paths start from (unset: the list file's folder)")
    p.add_argument("--sizes", type=_parse_sizes, default=None, metavar="query=N,train=N",
                   help="per-class protocols: per-class query/train counts (int) or fractions (float), "
                        "for a smaller copy of the data")
    if split:
        add_seed(p, "seed of the query/train/val draws")
        add_option(p, "--val-fraction", type=from_bounds(FRACTION), default=0.1,
                   help="share of training images held out for model selection")
        p.add_argument("--split-file", default=None, help="re-create the split recorded in this JSON file")
        p.add_argument("--download", action="store_true", help="download CIFAR-10 if absent")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    fmt = HelpFormatter

    sub.add_parser("list", help="the protocol table", formatter_class=fmt)

    p = sub.add_parser("info", help="sizes, classes and metric of a protocol's split", formatter_class=fmt)
    _add_data_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--save-split", default=None, metavar="PATH", help="also write the split record here")

    p = sub.add_parser("check", help="report missing or malformed data; non-zero exit if anything is wrong",
                       formatter_class=fmt)
    _add_data_args(p, split=False)
    p.add_argument("--verify-images", action="store_true",
                   help="decode every image (and check CIFAR-10's md5 sums)")
    from hybridhash.configs import NONNEGATIVE_INT

    add_threads(p, "--workers", default=4, help="threads decoding images")
    add_max_pixels(p, "with --verify-images: report images with more pixels (width * height) than this, unread")
    add_option(p, "--max-problems", type=from_bounds(NONNEGATIVE_INT), default=20, metavar="N", help="problems printed per kind")
    add_progress(p)

    p = sub.add_parser("export", help="write in-memory images (digits, CIFAR-10) as PNG files plus list files",
                       formatter_class=fmt)
    _add_data_args(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--sets", default="query,train,database", help="comma-separated sets to export")


def _print_table() -> None:
    from ...data import PROTOCOLS

    print(f"{'name':<13} {'classes':>7} {'labels':<7} {'query':>6} {'train':>6} {'database':>9} {'mAP@':>5}  description")
    for spec in PROTOCOLS.values():
        pub = spec.published
        print(f"{spec.name:<13} {spec.n_class or '-':>7} {'multi' if spec.multi_label else 'single' if spec.multi_label is False else '-':<7} "
              f"{pub.get('query', '-'):>6} {pub.get('train', '-'):>6} {pub.get('database', '-'):>9} "
              f"{spec.topk_label:>5}  {spec.description}")


def _info(args) -> int:
    from ...data import get_spec, load_protocol

    spec, name_dir = get_spec(args.name)
    if spec.kind != "digits" and args.root is None and name_dir is None:
        pub = spec.published
        print(f"{spec.name}: {spec.description}")
        print(f"  classes {spec.n_class or 'from the data'}, mAP@{spec.topk_label}; published sizes: "
              + ", ".join(f"{k} {v}" for k, v in pub.items()))
        print("  pass --data-root DIR for the split of your copy")
        return 0
    proto = load_protocol(args.name, args.root, image_root=args.image_root, seed=args.seed,
                          download=args.download, split_file=args.split_file, val_fraction=args.val_fraction,
                          sizes=args.sizes)
    summary = proto.summary()
    if args.save_split:
        record = proto.save_split(args.save_split)
        summary["split_hash"] = record["hash"]
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(printable(f"{proto.name}: {summary['description']}"))
    labels = "multi-label" if proto.multi_label else "single-label"
    print(f"  {proto.n_class} classes, {labels}, mAP@{summary['topk']}, seed {proto.seed}, "
          f"val_fraction {proto.val_fraction}, pipeline {summary['pipeline']}")
    if proto.root:
        print(printable(f"  root {proto.root}" + (f", images under {proto.image_root}" if proto.image_root else "")))
    for name, size in summary["sizes"].items():
        print(f"  {name:<9} {size:>8}")
    if args.save_split:
        print(printable(f"  split written to {args.save_split} (hash {summary['split_hash'][:12]})"))
    return 0


def _check(args) -> int:
    from ...data.check import check_protocol

    report = check_protocol(args.name, args.root, image_root=args.image_root, verify_images=args.verify_images,
                            progress=args.progress, threads=args.threads, sizes=args.sizes,
                            max_pixels=args.max_pixels)
    print(report.format(args.max_problems))
    return 0 if report.ok else 1


def _export(args) -> int:
    from ...data import load_protocol

    proto = load_protocol(args.name, args.root, image_root=args.image_root, seed=args.seed,
                          download=args.download, split_file=args.split_file, val_fraction=args.val_fraction,
                          sizes=args.sizes)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    if not sets:
        raise DataError("--sets names no set")
    written = proto.export_images(args.out, sets)
    for name, paths in written.items():
        print(f"{name:<9} {len(paths):>8} images")
    print(printable(f"written to {args.out}"))
    return 0


def run(args) -> int:
    if args.data_command == "list":
        _print_table()
        return 0
    return {"info": _info, "check": _check, "export": _export}[args.data_command](args)
