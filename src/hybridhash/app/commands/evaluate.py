"""``hybridhash evaluate``: score checkpoints on a protocol's queries and database; metrics.json and figures."""
from __future__ import annotations

from .options import add_option, add_precision_option, from_bounds
from .vocabulary import add_batch_size, add_data_root, add_image_root, add_max_pixels, add_progress, add_seed, add_workers

HELP = "evaluate checkpoints: mAP, tie-aware mAP, PR curve, precision@N, retrieval picture; ACG/NDCG/WAP if multi-label"
DESCRIPTION = (
    "Encode the queries and the database of the run's recorded split (or of --dataset) with each checkpoint "
    "(a run directory evaluates every bits*/best) and write OUT/metrics.json, pr_curve.png, precision_at_n.png, "
    "map_vs_bits.png and retrieval_bits{N}.png.")


def configure(p) -> None:
    from hybridhash.configs import COUNT, NONNEGATIVE_INT

    p.add_argument("--checkpoint", required=True, help="a run directory, one of its bits{N}/ or a checkpoint directory")
    p.add_argument("--out", help="output directory (default: CHECKPOINT/eval for a run directory, else ./eval)")
    p.add_argument("--dataset", help="protocol to evaluate on (default: the run's recorded split)")
    add_data_root(p, help="the dataset's folder (default: the run's)")
    add_image_root(p)
    p.add_argument("--split", help="a split.json to use instead of the run's")
    add_seed(p, "split seed when no recorded split is used")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 through torchvision when absent")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto")
    add_batch_size(p, 256, "images per forward pass")
    add_workers(p, 0)
    add_max_pixels(p, "refuse images with more pixels (width * height) than this, unread")
    add_option(p, "--queries", type=from_bounds(NONNEGATIVE_INT), default=6, help="queries in the retrieval picture")
    add_option(p, "--top", type=from_bounds(COUNT), default=10, help="results per query in the retrieval picture")
    add_progress(p)
    add_precision_option(p, "PyTorch at bf16 where the hardware has bf16 units and the checkpoint's calibration "
                            "figures pass, else fp32 (int8 runs on the export runtimes only)")
    p.add_argument("--json", action="store_true", help="print metrics.json")


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from hybridhash.app.evaluation import GRADED, evaluate_checkpoints
    from hybridhash.app.rundir import find_run_dir

    ck = Path(args.checkpoint)
    out = args.out
    if out is None:
        run_dir = find_run_dir(ck.resolve()) if ck.exists() else None
        out = str((run_dir or Path(".")) / "eval")
    doc = evaluate_checkpoints(ck, out, dataset=args.dataset, root=args.root, image_root=args.image_root,
                               split_file=args.split, seed=args.seed, device=args.device, batch_size=args.batch_size,
                               workers=args.workers, n_queries=args.queries, k=args.top,
                               progress=args.progress and sys.stderr.isatty(), download=args.download,
                               max_pixels=args.max_pixels, precision=args.precision)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    if doc.get("labelled") is False:  # no labels, so no mAP: the copy score (docs/unsupervised.md)
        print(f"{doc['dataset']}: no labels; copy score (each image's augmented copy found among the originals)")
        print(f"{'bits':>5} {'copy mAP':>9} {'chance':>8} {'images':>7}")
        for bits, r in doc["results"].items():
            print(f"{bits:>5} {r['copy_map']:9.4f} {r['chance']:8.4f} {r['n']:7d}")
        print(f"metrics in {out}")
        return 0
    tk = doc["topk"]
    first = next(iter(doc["results"].values()))
    graded = [key for key in GRADED if key in first]  # multi-label protocols: ACG, NDCG, WAP at the same K
    print(f"{doc['dataset']}: mAP@{tk} on {first['n_query']} queries")
    heads = "".join(f" {GRADED[g] + '@' + str(tk):>10}" for g in graded)
    print(f"{'bits':>5} {'mAP':>8} {'tie-aware':>10} {'P@r<=2':>8}{heads}")
    for bits, r in doc["results"].items():
        print(f"{bits:>5} {r['map']:8.4f} {r['map_tie_aware']:10.4f} {r['precision_within_radius']:8.4f}"
              + "".join(f" {r[g]:10.4f}" for g in graded))
    for warning in doc.get("warnings", []):
        print(f"warning: {warning}")
    print(f"metrics and figures in {out}")
    return 0
