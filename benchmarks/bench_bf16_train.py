"""bf16 autocast training against fp32 on digits: the mAP each reaches and the time per epoch.

Each seed trains the same run twice through ``hybridhash train`` (one subprocess each, so neither
side inherits the other's allocator or GEMM choice): ``--no-amp`` (fp32) and ``--amp`` (bf16 autocast
with fp32 master weights; on a CPU without bf16 units this is emulated, and the run says so). The
order alternates from seed to seed, so a change of load on a shared machine hits both alike. Then
``hybridhash evaluate`` scores the best (selected on the validation split) and the last checkpoint of
each on the test queries, in fp32.

    python benchmarks/bench_bf16_train.py [--seeds 0 1] [--epochs 20] [--bits 32] [--threads 1]

Writes benchmarks/results/bf16_train.json and bf16_train.md, with the CPU model, its bf16 / int8
unit flags and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_model, load_text, write_results

from hybridhash.precision import cpu_has_bf16_units, unit_flags

RESULTS = Path(__file__).resolve().parent / "results"
SIDES = {"fp32": "--no-amp", "bf16": "--amp"}


def _hybridhash(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "hybridhash.app", *args], check=True, stdout=subprocess.DEVNULL)


def _test_map(checkpoint: Path, out: Path) -> float:
    _hybridhash("evaluate", "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu", "--no-progress")
    results = json.loads((out / "metrics.json").read_text())["results"]
    return next(iter(results.values()))["map"]


def run_side(side: str, seed: int, args, work: Path) -> dict:
    """Train one side of one seed and score it; returns its figures."""
    run = work / f"{side}_seed{seed}"
    _hybridhash("train", "--dataset", args.dataset, "--model", args.model, "--bits", str(args.bits),
                "--epochs", str(args.epochs), "--seed", str(seed), "--threads", str(args.threads),
                "--device", "cpu", "--out", str(run), "--no-progress", SIDES[side])
    recorded = json.loads((run / "run.json").read_text())["precision"]
    bits_dir = run / f"bits{args.bits}"
    log = [json.loads(line) for line in (bits_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    train_s = [r["time"] - r.get("eval_time", 0.0) for r in log]  # the epoch without its evaluation
    scored = [r for r in log if "val_map" in r]
    best = max(scored, key=lambda r: (r["val_map"], r["epoch"]))  # ties to the later epoch, as the trainer
    return {"side": side, "seed": seed, "precision": recorded, "epochs": len(log),
            "s_per_epoch_median": round(statistics.median(train_s), 3),
            "s_per_epoch_all": [round(t, 3) for t in train_s],
            "val_map_final": scored[-1]["val_map"], "val_map_best": best["val_map"], "best_epoch": best["epoch"],
            "test_map_best": round(_test_map(bits_dir / "best", run / "eval_best"), 6),
            "test_map_last": round(_test_map(bits_dir / "last", run / "eval_last"), 6)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="hybridhash_cpu")
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "bf16_train.json"))
    args = p.parse_args(argv)
    result = {"dataset": args.dataset, "model": args.model, "bits": args.bits, "epochs": args.epochs,
              "threads": args.threads, "cpu": cpu_model(), "unit_flags": list(unit_flags()),
              "bf16_emulated": not cpu_has_bf16_units(), "loadavg_before": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench_bf16_train_") as tmp:
        for i, seed in enumerate(args.seeds):
            for side in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
                figures = run_side(side, seed, args, Path(tmp))
                print(json.dumps(figures))
                result["runs"].append(figures)
    result["loadavg_after"] = os.getloadavg()
    return write_results(result, args.out, report)


def report(r: dict) -> str:
    """The Markdown page of a result."""
    speed = ("emulated: this CPU has no bf16 units, so bf16 runs in software and its time per epoch says "
             "nothing of a CPU with AVX512-BF16 or AMX" if r["bf16_emulated"] else "on the CPU's bf16 units")
    lines = [f"# bf16 training against fp32: {r['model']}, {r['dataset']}, {r['bits']} bits, {r['epochs']} epochs",
             "", f"CPU {r['cpu']}; bf16/int8 unit flags: {', '.join(r['unit_flags']) or 'none'}; "
             f"{r['threads']} thread(s); load average {load_text(r['loadavg_before'])} before, "
             f"{load_text(r['loadavg_after'])} after. Sides alternate in order from seed to seed.", "",
             f"bf16 speed here is {speed}. mAP is the test queries' (fp32 encoding) of the best checkpoint "
             "(selected on the validation split) and of the last; s/epoch is the median of the epochs' "
             "training time without their evaluation.", "",
             "| seed | precision | s/epoch | val mAP final | val mAP best (epoch) | test mAP best | test mAP last |",
             "|---|---|---|---|---|---|---|"]
    for x in sorted(r["runs"], key=lambda x: (x["seed"], x["side"] != "fp32")):
        lines.append(f"| {x['seed']} | {x['side']} | {x['s_per_epoch_median']:.2f} | {x['val_map_final']:.4f} | "
                     f"{x['val_map_best']:.4f} ({x['best_epoch']}) | {x['test_map_best']:.4f} | "
                     f"{x['test_map_last']:.4f} |")
    pairs = {}
    for x in r["runs"]:
        pairs.setdefault(x["seed"], {})[x["side"]] = x
    lines += ["", "| seed | test mAP best, bf16 - fp32 | test mAP last, bf16 - fp32 | time bf16 / fp32 |",
              "|---|---|---|---|"]
    for seed, s in sorted(pairs.items()):
        if "fp32" in s and "bf16" in s:
            lines.append(f"| {seed} | {s['bf16']['test_map_best'] - s['fp32']['test_map_best']:+.4f} | "
                         f"{s['bf16']['test_map_last'] - s['fp32']['test_map_last']:+.4f} | "
                         f"{s['bf16']['s_per_epoch_median'] / s['fp32']['s_per_epoch_median']:.2f} |")
    both = [s for s in pairs.values() if "fp32" in s and "bf16" in s]
    if len(both) > 1:
        mean = {k: statistics.mean(s["bf16"][k] - s["fp32"][k] for s in both)
                for k in ("test_map_best", "test_map_last")}
        lines.append(f"| mean | {mean['test_map_best']:+.4f} | {mean['test_map_last']:+.4f} | |")
    lines += ["", "The best checkpoint is picked on the validation split every 5 epochs, so its difference also "
              "holds which epoch each side's selection fell on; the last checkpoint compares the same epoch."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
