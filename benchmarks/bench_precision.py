"""Every runtime x precision side by side: encoding speed by batch, bit agreement and mAP against fp32.

Two small checkpoints are trained on digits (``hybridhash train``, one subprocess each, kept under
``--cache`` and reused while their settings match): hybridhash_cpu and cnn_cpu, 32 bits. Each is
exported to ONNX (``hybridhash export``), then :func:`hybridhash.calibration.calibrate` quantizes the
export to int8 on training images and measures, for every path this machine runs, the share of the
test queries' code bits equal to PyTorch fp32's and the mAP of the test queries over the database,
both encoded on the path.

Speed: every path (runtime, precision) encodes the same ``--timed`` preprocessed test images in
batches of 1, 8, 32 and 64 (as many times over as fill ``--min-seconds``); in each repeat the paths
run in an order rotated from the last, so a change of load on a shared machine hits them alike; a
path's figure is its best repeat (the median is kept too), and its ratio is to PyTorch fp32 at the
same batch in the same run. Pairs that :mod:`hybridhash.precision` refuses, or that would not run at
the precision named here (OpenVINO bf16 without bf16 units runs f32), are listed with the reason.
bf16 on a CPU without bf16 units is emulated, and int8 without int8 dot-product units has no units of
its own: the page says which.

    python benchmarks/bench_precision.py [--quick] [--threads 1] [--repeats 3] [--epochs 10]

Writes benchmarks/results/precision.json and precision.md with the CPU model, its bf16 / int8 unit
flags, the thread count and the load average. ``--quick``: one repeat, 32 timed images, a database
of 400 for mAP (after the first training, a few minutes on 2 busy cores).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import cpu_model, load_text, write_results

from hybridhash.app.commands.export import _images as preprocessed  # the images `export --calibrate` measures
from hybridhash.app.evaluation import class_ids_or_multihot
from hybridhash.calibration import calibrate, measurable_paths
from hybridhash.data import load_protocol
from hybridhash.data.transforms import eval_transform
from hybridhash.engines import onnx_available, open_encoder, openvino_available
from hybridhash.engines.encoding import encode_images
from hybridhash.errors import ConfigError
from hybridhash.models import from_pretrained
from hybridhash.precision import PRECISIONS, RUNTIME_PRECISIONS, check_runtime_precision, has_units, unit_flags

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BATCHES = (1, 8, 32, 64)
CALIBRATION_IMAGES = 256  # training images int8's activation ranges are calibrated on


def _hybridhash(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "hybridhash.app", *args], check=True, stdout=subprocess.DEVNULL)


def checkpoint(model: str, args) -> Path:
    """The best checkpoint (selected on val) of ``model`` trained on digits, with its ONNX export beside it."""
    run = Path(args.cache) / f"{model}_{args.bits}b_{args.epochs}e_seed0"
    best = run / f"bits{args.bits}" / "best"
    if not (best / "model.safetensors").is_file():
        _hybridhash("train", "--dataset", "digits", "--model", model, "--bits", str(args.bits), "--epochs",
                    str(args.epochs), "--seed", "0", "--threads", str(args.threads), "--device", "cpu",
                    "--out", str(run), "--no-progress")
    if not (best / "model.onnx").is_file():
        _hybridhash("export", "--checkpoint", str(best))
    return best


def refusals(folder: Path) -> list:
    """(runtime, precision, reason) for every pair not measured here."""
    measured = set(measurable_paths(folder)) | {("torch", "fp32")}
    installed = {"torch": True, "onnx": onnx_available(), "openvino": openvino_available()}
    out = []
    for runtime in RUNTIME_PRECISIONS:
        for p in PRECISIONS:
            if (runtime, p) in measured:
                continue
            try:
                check_runtime_precision(runtime, p)
                reason = (f"{runtime} is not installed" if not installed[runtime] else
                          "no bf16 units here: OpenVINO would run it at f32, so its figures would be fp32's"
                          if p == "bf16" else "no graph for it")
            except ConfigError as err:
                reason = str(err)
            out.append({"runtime": runtime, "precision": p, "reason": reason})
    return out


def speeds(folder: Path, paths: list, images: torch.Tensor, args) -> list:
    """Images/s of every path at every batch (best and median of the rotated repeats)."""
    models = {p: open_encoder(folder, p[0], threads=args.threads, precision=p[1]) for p in paths}
    rows = []
    for batch in BATCHES:
        loops = {}
        for p, m in models.items():  # untimed first pass (set-up at this batch shape) sizes the loop count
            t0 = time.perf_counter()
            encode_images(m, images, batch_size=batch)
            loops[p] = max(1, math.ceil(args.min_seconds / max(time.perf_counter() - t0, 1e-6)))
        times = {p: [] for p in paths}
        for r in range(args.repeats):
            for p in paths[r % len(paths):] + paths[:r % len(paths)]:
                t0 = time.perf_counter()
                for _ in range(loops[p]):
                    encode_images(models[p], images, batch_size=batch)
                times[p].append((time.perf_counter() - t0) / loops[p])
        base = len(images) / min(times[("torch", "fp32")])
        for p in paths:
            best = len(images) / min(times[p])
            rows.append({"runtime": p[0], "precision": p[1], "batch": batch, "loops": loops[p],
                         "images_per_s": round(best, 2),
                         "images_per_s_median": round(len(images) / statistics.median(times[p]), 2),
                         "ratio_to_torch_fp32": round(best / base, 3)})
        print(json.dumps([r for r in rows if r["batch"] == batch]), flush=True)
    return rows


def measure(model: str, protocol, args) -> dict:
    """Agreement, mAP and speed of every path for one trained checkpoint."""
    best = checkpoint(model, args)
    tf = eval_transform(from_pretrained(best))
    queries, q_labels = preprocessed(protocol.query, tf, len(protocol.query))
    database, d_labels = preprocessed(protocol.database, tf, args.database)
    train, _ = preprocessed(protocol.train, tf, CALIBRATION_IMAGES)
    doc = calibrate(best, best, queries, query_labels=class_ids_or_multihot(q_labels, protocol.multi_label),
                    database=database, database_labels=class_ids_or_multihot(d_labels, protocol.multi_label),
                    topk=protocol.topk, calibration_images=train.numpy(), threads=args.threads, dataset="digits")
    paths = [(e["runtime"], e["precision"]) for e in doc["paths"]]
    val = json.loads((best.parent / "log.jsonl").read_text().splitlines()[-1]).get("val_map")
    return {"model": model, "val_map_last_epoch": val, "queries": doc["held_out"], "database": doc["database"],
            "quality": [{k: e[k] for k in ("runtime", "precision", "agreement", "map", "map_change")}
                        for e in doc["paths"]],
            "speed": speeds(best, paths, queries[:args.timed], args), "refused": refusals(best)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["hybridhash_cpu", "cnn_cpu"])
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--timed", type=int, default=64, help="test images each path encodes per repeat and batch")
    p.add_argument("--min-seconds", type=float, default=0.3,
                   help="a timed repeat encodes the images as many times as fill this (short paths are noisy)")
    p.add_argument("--database", type=int, default=100000, help="database images for mAP (default: all)")
    p.add_argument("--quick", action="store_true", help="one repeat, 32 timed images, a database of 400")
    p.add_argument("--cache", default=str(HERE / ".cache" / "precision"), help="where the checkpoints are kept")
    p.add_argument("--out", default=str(RESULTS / "precision.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.timed, args.database = 1, 32, min(args.database, 400)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # the training subprocesses
    t0 = time.perf_counter()
    result = {"dataset": "digits", "bits": args.bits, "epochs": args.epochs, "threads": args.threads,
              "repeats": args.repeats, "timed_images": args.timed, "min_seconds": args.min_seconds,
              "batches": list(BATCHES), "cpu": cpu_model(),
              "unit_flags": list(unit_flags()), "units": {q: has_units(q) for q in PRECISIONS},
              "torch": torch.__version__, "loadavg_before": os.getloadavg()}
    protocol = load_protocol("digits", None)
    result["checkpoints"] = [measure(m, protocol, args) for m in args.models]
    result["loadavg_after"] = os.getloadavg()
    result["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return write_results(result, args.out, report)


def _units(r: dict, precision: str) -> str:
    if precision == "fp32" or r["units"][precision]:
        return ""
    return " (emulated)" if precision == "bf16" else " (no int8 units)"


def report(r: dict) -> str:
    """The Markdown page of a result."""
    lines = [f"# Runtimes x precisions on {r['dataset']}, {r['bits']} bits: speed by batch, bit agreement, mAP", "",
             f"CPU {r['cpu']}; bf16/int8 unit flags: {', '.join(r['unit_flags']) or 'none'}; {r['threads']} "
             f"thread(s); load average {load_text(r['loadavg_before'])} before, {load_text(r['loadavg_after'])} "
             f"after; torch {r['torch']}; {r['wall_seconds']:.0f} s in all.", ""]
    if not r["units"]["bf16"]:
        lines += ["**bf16 is emulated here**: this CPU has no bf16 units (AVX512-BF16, AMX-BF16), so PyTorch "
                  "runs bf16 in software and its speed says nothing of a CPU that has them.", ""]
    if not r["units"]["int8"]:
        lines += ["**int8 has no units of its own here** (no AVX512-VNNI, AVX-VNNI or AMX-INT8): the int8 graph "
                  "runs on the plain vector units, so its speed is not that of a CPU with them.", ""]
    lines += [f"Images/s: {r['timed_images']} test images encoded per batch size (again and again for at "
              f"least {r['min_seconds']} s), best of {r['repeats']} repeat(s) in rotated order; the ratio is "
              "to PyTorch fp32 at the same batch in the same run. "
              "Agreement: the share of the test queries' code bits equal to PyTorch fp32's. mAP: the test "
              "queries over the database, both encoded on the path (mAP@all).", ""]
    for c in r["checkpoints"]:
        val = f"val mAP {c['val_map_last_epoch']:.4f} at the last epoch, " if c["val_map_last_epoch"] else ""
        lines += [f"## {c['model']} ({val}{r['epochs']} epochs; {c['queries']} queries, {c['database']} "
                  "database images)", "",
                  "| runtime | precision | " + " | ".join(f"batch {b} img/s (x fp32)" for b in r["batches"])
                  + " | bit agreement | mAP (change) |", "|---" * (len(r["batches"]) + 4) + "|"]
        for q in c["quality"]:
            cells = [next(f"{s['images_per_s']:.1f} ({s['ratio_to_torch_fp32']:.2f}x)" for s in c["speed"]
                          if (s["runtime"], s["precision"], s["batch"]) == (q["runtime"], q["precision"], b))
                     for b in r["batches"]]
            lines.append(f"| {q['runtime']} | {q['precision']}{_units(r, q['precision'])} | " + " | ".join(cells)
                         + f" | {q['agreement']:.4f} | {q['map']:.4f} ({q['map_change']:+.4f}) |")
        lines += ["", "Not measured: " + "; ".join(f"{x['runtime']} {x['precision']}: {x['reason']}"
                                                     for x in c["refused"]) + ".", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
