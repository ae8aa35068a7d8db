"""``hybridhash demo``: train the CPU preset on the embedded digits at several code lengths, evaluate,
print the mAP table beside two floors, and write an HTML report (what ``make demo`` runs)."""
from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from pathlib import Path
from typing import Optional

HELP = "train and evaluate hybridhash_cpu on scikit-learn's digits; print the mAP table; write a report"
DESCRIPTION = (
    "Trains hybridhash_cpu from scratch on the digits protocol (200 queries, 450 training and 50 validation "
    "images, a 1597-image database, mAP@all) with the trainer's defaults for that preset, one model per code "
    "length, selected on the validation split; evaluates on the queries; compares with random-projection LSH "
    "of the pixels and a small MLP hash trained with the same loss; writes OUT/report.html.")

QUICK_BITS = (16, 32)
# what the demo writes at the top of its --out; only these are ever removed, and only when the demo made them
ENTRIES = ("train", "eval", "data", "codes", "report.html")
TITLE = "hybridhash demo: digits"


def configure(p) -> None:
    from hybridhash.configs import COUNT

    from .options import add_option, from_bounds
    from .vocabulary import add_progress, add_seed, code_length

    add_option(p, "--bits", type=code_length(), nargs="+", default=[16, 32, 48, 64], help="code lengths")
    add_option(p, "--epochs", type=from_bounds(COUNT), help="training epochs (default: the preset's recipe)")
    p.add_argument("--out", default="runs/demo",
                   help="output directory: new, empty, or an earlier demo's (whose results are replaced)")
    add_seed(p, "seed of the split, the init and every random draw")
    p.add_argument("--quick", action="store_true", help="1 epoch at 16 and 32 bits: a smoke test, not a result")
    add_progress(p, help="show per-epoch lines and progress bars (on a terminal)", quiet=True)


def _index_and_search(run_dir: Path, protocol) -> Optional[str]:
    """Encode the demo's database, index it, and search it with a few query digits, through the CLI.

    ``run_dir`` holds the checkpoints (``train/bits{N}/best``) and the exported digits with their
    list files (``data/``). Returns the text the report shows.
    """
    from hybridhash.app.cli import main as cli

    data = run_dir / "data"
    best = sorted((run_dir / "train").glob("bits*/best"), key=lambda p: int(p.parent.name[4:]))[-1]
    codes = run_dir / "codes"
    queries = []  # one query image of each of four different digits
    seen = set()
    for line in (data / "test.txt").read_text().splitlines():
        path, *labels = line.split()
        digit = labels.index("1")
        if digit not in seen:
            seen.add(digit)
            queries.append(str(data / path))
        if len(queries) == 4:
            break
    steps = [
        ["encode", "--checkpoint", str(best), "--images", str(data / "database.txt"), "--image-root", str(data),
         "--collection", str(codes), "--no-progress"],
        ["index", "--collection", str(codes)],
        ["search", "--collection", str(codes), "--k", "5", *queries],
    ]
    print("\nIndex and search the database with the 64-bit model:")
    shown = []
    for argv in steps:
        print("$ hybridhash " + " ".join(argv), flush=True)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli(argv)
        print(buf.getvalue(), end="")
        shown.append("$ hybridhash " + " ".join(argv) + "\n" + buf.getvalue())
        if rc:
            print(f"(step failed with exit code {rc})")
            return "\n".join(shown)
    hint = f"Web page on this collection: .venv/bin/hybridhash serve --collection {codes}  (then open http://127.0.0.1:8000)"
    print(hint)
    return "\n".join(shown) + "\n" + hint


def _floors(protocol, bits_list, seed: int, quick: bool):
    """{"LSH (pixels)": {bits: mAP}, "MLP hash (pixels)": {bits: mAP}} on the protocol's queries."""
    from hybridhash import metrics as M
    from hybridhash.app.evaluation import class_ids_or_multihot
    from hybridhash.app.compare.floors import lsh_codes, mlp_codes, pixel_vectors, train_mlp_hash

    tr, q, db = (pixel_vectors(s) for s in (protocol.train, protocol.query, protocol.database))
    ql = class_ids_or_multihot(protocol.query.labels, protocol.multi_label)
    dl = class_ids_or_multihot(protocol.database.labels, protocol.multi_label)
    out = {"LSH (pixels)": {}, "MLP hash (pixels)": {}}
    for bits in bits_list:
        qc, dc = lsh_codes(tr, q, db, bits=bits, seed=seed)
        out["LSH (pixels)"][bits] = M.mean_average_precision(qc, dc, ql, dl, topk=protocol.topk)
        mlp = train_mlp_hash(tr, protocol.train.labels, bits, epochs=1 if quick else 100, seed=seed)
        out["MLP hash (pixels)"][bits] = M.mean_average_precision(mlp_codes(mlp, q), mlp_codes(mlp, db), ql, dl,
                                                                  topk=protocol.topk)
    return out


def run(args) -> int:
    import torch

    from hybridhash.app import report
    from hybridhash.data import load_protocol
    from hybridhash.errors import ConfigError
    from hybridhash.app.evaluation import evaluate_checkpoints
    from hybridhash.outdir import note_made
    from hybridhash.app.train import TrainConfig, train
    from hybridhash.environment import usable_cores

    t_start = time.perf_counter()
    bits_list = tuple(QUICK_BITS if args.quick else args.bits)
    epochs = 1 if args.quick and args.epochs is None else args.epochs
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory")
    _take_out(out)

    protocol = load_protocol("digits", seed=args.seed)
    sizes = {k: len(v) for k, v in protocol.sets.items()}
    print(f"digits: {sizes['train']} training, {sizes['val']} validation, {sizes['query']} query and "
          f"{sizes['database']} database images; hybridhash_cpu from scratch at {', '.join(map(str, bits_list))} bits",
          flush=True)

    t0 = time.perf_counter()
    note_made(out, ["train"])
    config = TrainConfig(dataset="digits", model="hybridhash_cpu", bits=bits_list, out=str(out / "train"),
                         seed=args.seed, epochs=epochs, progress=args.progress and sys.stderr.isatty())
    results = train(config, protocol=protocol, callbacks=[_EpochPrinter()] if args.progress else [])
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    # one thread: on a shared 2-core machine two threads of small matrix products slow down badly
    # whenever another process holds a core, and one keeps most of the speed when none does
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        note_made(out, ["eval"])
        doc = evaluate_checkpoints(out / "train", out / "eval", protocol=protocol, device="cpu")
        floors = _floors(protocol, bits_list, args.seed, args.quick)
    finally:
        torch.set_num_threads(threads)
    t_eval = time.perf_counter() - t0

    res = {int(b): r for b, r in doc["results"].items()}
    series = {"HybridHash mAP@all": {b: r["map"] for b, r in res.items()},
              "HybridHash tie-aware": {b: r["map_tie_aware"] for b, r in res.items()}}
    series.update({f"floor: {k}": v for k, v in floors.items()})
    report.plot_map_vs_bits(series, out / "eval" / "map_vs_bits_floors.png", ylabel="mAP@all",
                            title="digits: HybridHash against two floors")

    columns = ["bits", "mAP@all", "tie-aware mAP", "P@r<=2", "best epoch", "val mAP", "floor: LSH", "floor: MLP hash"]
    rows = [[b, r["map"], r["map_tie_aware"], r["precision_within_radius"], results[b].best_epoch,
             results[b].best_metric, floors["LSH (pixels)"][b], floors["MLP hash (pixels)"][b]]
            for b, r in sorted(res.items())]
    print()
    print(f"{'bits':>4}  {'mAP@all':>8}  {'tie-aware':>9}  {'LSH floor':>9}  {'MLP floor':>9}")
    for b, m, ta, _, _, _, lsh, mlp in rows:
        print(f"{b:>4}  {m:8.4f}  {ta:9.4f}  {lsh:9.4f}  {mlp:9.4f}")

    note_made(out, ["data"])
    protocol.export_images(out / "data", sets=("query", "train", "database"))
    note_made(out, ["codes"])
    extra = _index_and_search(out, protocol)

    total = time.perf_counter() - t_start
    cfg = results[bits_list[0]].directory / "last" / "config.json"
    from hybridhash.fileio import read_json

    train_cfg = read_json(cfg)["extra"]["train_config"] if cfg.exists() else {}
    facts = (f"training {t_train:.0f} s for {len(bits_list)} code lengths, evaluation and floors {t_eval:.0f} s, "
             f"total {total:.0f} s on {usable_cores()} CPU cores; load average {_load()}")
    sections = [
        {"heading": "mAP on the digits protocol",
         "text": "200 queries against a 1597-image database, mAP over the whole ranking (ties broken by database "
                 "index) and its tie-aware expectation. The model of each code length is the epoch with the best "
                 "mAP on 50 validation images (held out of training) searched among the 450 training images. "
                 "Floors on the same split: random-projection LSH of the 8x8 pixels and a 64-256-bits MLP hash "
                 "trained with the same loss. Digits are easy; read HybridHash's figure against the floors.",
         "table": {"columns": columns, "rows": rows},
         "images": ["eval/map_vs_bits_floors.png", "eval/pr_curve.png", "eval/precision_at_n.png"]},
        {"heading": "Retrieval",
         "text": "Six queries (left, grey) with their ten nearest database images by Hamming distance; green: same "
                 "digit, red: another digit.",
         "images": [f"eval/retrieval_bits{max(bits_list)}.png"]},
        {"heading": "Training", "text": facts,
         "pre": "\n".join(f"{k}: {v}" for k, v in train_cfg.items() if k not in ("out",))},
    ]
    if extra:
        sections.append({"heading": "Index and search", "pre": extra})
    note_made(out, ["report.html"])
    report.write_html(out / "report.html", TITLE, sections)
    print(f"\n{facts}")
    print(f"report: {out / 'report.html'}")
    return 0


def _earlier_demo(out: Path) -> bool:
    """An output of the demo from before its directories were marked: its report is there."""
    page = out / "report.html"
    try:
        if not page.is_file():  # a FIFO or a device would block or never end
            return False
        with open(page, "rb") as f:
            return f"<title>{TITLE}</title>".encode() in f.read(4096)
    except OSError:
        return False


def _take_out(out: Path) -> None:
    """Claim ``out`` for the demo and remove what an earlier demo made there, and only that; refuse a
    directory of other files, or an entry the demo would write that it did not make. Each entry is
    noted in the marker just before the demo makes it."""
    from hybridhash.errors import DataError
    from hybridhash.outdir import claim, note_made, read_marker, remove_made

    earlier = out.is_dir() and read_marker(out) is None and _earlier_demo(out)
    claim(out, "demo", legacy=_earlier_demo)
    if earlier:
        note_made(out, [n for n in ENTRIES if (out / n).exists()])
    remove_made(out, ENTRIES)
    left = [n for n in ENTRIES if (out / n).exists() or (out / n).is_symlink()]
    if left:
        raise DataError(f"--out {out} holds {out / left[0]}, which the demo did not write; move it away or "
                        f"choose another --out")


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


class _EpochPrinter:
    """One short line per evaluated epoch, so a person sees the demo move."""

    def __call__(self, event, trainer, **info) -> None:
        if event != "epoch_end" or not trainer.dist.is_main:
            return
        rec = info["record"]
        if trainer.metric_name in rec or rec["epoch"] == trainer.config.epochs:
            val = rec.get(trainer.metric_name)
            print(f"  {trainer.bits:2d} bits  epoch {rec['epoch']:3d}/{trainer.config.epochs}  loss {rec['loss']:.4f}"
                  + (f"  val mAP {val:.4f}" if val is not None else "") + f"  ({trainer.elapsed:.0f} s)", flush=True)
