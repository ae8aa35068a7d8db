"""``hybridhash encode``: images (a folder or a list file) -> a code collection, resumable, multi-process."""
from __future__ import annotations

import argparse
import os

from .options import add_option, add_precision_option, add_runtime_option, from_bounds
from .vocabulary import add_batch_size, add_collection, add_image_root, add_max_pixels, add_progress, add_workers

HELP = "encode a folder or list file of images into a code collection"
DESCRIPTION = (
    "Encode images into packed binary codes with paths, labels and a manifest. Run again onto a collection of "
    "the same checkpoint, it updates it in place: new images are encoded, gone ones dropped, images whose size or "
    "modification time changed encoded again, the rest (and the saved index) carried over, and the new generation "
    "switched to at once; it prints what it added, removed, changed, relabelled and kept. Work is written in "
    "shards, so running the same command again after a crash resumes at the first missing shard; shards "
    "whose images changed since (size or modification time) or whose file is damaged are encoded again. "
    "--collection must be new, empty, or a collection hybridhash wrote; only files hybridhash wrote are replaced. "
    "Unreadable images are skipped and listed in COLLECTION/skipped.json (or stop the run with --strict). "
    "Under torchrun each rank encodes its own shards and rank 0 merges them, e.g. "
    "`torchrun --nproc_per_node 4 -m hybridhash.app.cli encode ...`.")


def configure(p):
    from hybridhash.configs import COUNT
    from hybridhash.limits import SHARD_SIZE as DEFAULT_SHARD_SIZE

    p.add_argument("--checkpoint", required=True, help="project checkpoint directory (model.safetensors, config.json)")
    p.add_argument("--images", required=True,
                   help="a folder of images (class sub-folders give labels) or a list file ('path 0 1 0 ...' per line)")
    add_collection(p, "--out", help="the collection directory to write")
    add_image_root(p, help="the folder a list file's relative image paths start from (unset: the list file's "
                           "folder); a folder of images is its own", old=("--root",))
    add_batch_size(p, 64, "images per forward pass")
    add_workers(p, min(4, os.cpu_count() or 1), help="image-decoding processes (0: decode in the main process)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    add_option(p, "--shard-size", type=from_bounds(COUNT), default=DEFAULT_SHARD_SIZE, metavar="N",
               help="images per resumable shard")
    add_max_pixels(p, "skip images with more pixels (width * height) than this, unread (decompression bombs)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun cuda means cuda:LOCAL_RANK)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="update a finished collection of the same checkpoint in place, and reuse finished shards "
                        "of an earlier run (--no-resume: encode everything again, from generation 0)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what an update would add, remove, change and keep, and write nothing")
    add_progress(p)
    add_runtime_option(p)
    add_precision_option(p, "an update keeps the collection's recorded runtime and precision; a new collection "
                            "takes the fastest precision the export's calibration figures pass where the CPU has "
                            "its units, else fp32")
    p.add_argument("--auto-export", action=argparse.BooleanOptionalAction, default=True,
                   help="on a new collection at --runtime auto --precision auto, where the CPU has bf16 or int8 "
                        "units and the checkpoint no export: export, quantize and calibrate it once on a few hundred "
                        "of the images into its weights' cache folder first, so auto can take a faster precision "
                        "(--no-auto-export or HYBRIDHASH_NO_AUTO_EXPORT=1: skip; docs/precision.md)")


def run(args) -> int:
    import time

    from hybridhash.app.encode import encode_collection
    from hybridhash.terminal import printable
    from hybridhash.environment import dist_env

    from hybridhash.environment import device_option

    args.device = device_option(args.device)  # a one-line error for an unknown or absent device
    reports = []
    t0 = time.perf_counter()
    col = encode_collection(args.images, args.collection, args.checkpoint, root=args.image_root, batch_size=args.batch_size,
                            workers=args.workers, strict=args.strict, shard_size=args.shard_size,
                            max_pixels=args.max_pixels, device=args.device, resume=args.resume,
                            progress=args.progress, runtime=args.runtime, precision=args.precision,
                            dry_run=args.dry_run, auto_export=args.auto_export,
                            report=reports.append)
    for line in (reports[0].lines() if reports else []):
        print(printable(line))
    if col is None or reports:  # a dry run, an update, or a rank other than 0 (rank 0 reports)
        return 0
    skipped = col.manifest.get("skipped", 0)
    world_size = dist_env().world_size
    print(printable(f"encoded {col.count} images into {col.directory} ({col.bits} bits, {col.codes.nbytes} bytes "
                    f"of codes{f', {world_size} ranks' if world_size > 1 else ''}, {time.perf_counter() - t0:.2f} s)"))
    if skipped:
        print(f"skipped {skipped} unreadable images, listed with the reason in {col.directory / 'skipped.json'}")
    return 0
