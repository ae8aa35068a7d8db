"""MDSHC's hash centers: the table of 10 and 100 classes x 16, 32, 48 and 64 bits (target D, the
minimum reached, mean distance, sweeps, seconds) from ``hybridhash.methods.mdshc_centers`` on one
core, and, on the 10-class cases, the same fixed generator written one center at a time with the
matrix inverted at every inner iteration, as the official code runs it (tests/methods/mdshc_naive.py),
as the baseline of the speed ratio. Both are timed in this run; seconds are CPU seconds of this
process (the wall clock beside them: on a shared machine it also counts other people's work).

On the 100-class cases the same code also runs one center at a time (blocks of 1, the published
order), to show what the blocks buy. Writes benchmarks/results/mdshc_centers.json and
mdshc_centers.md. About 4 minutes of CPU.

    python benchmarks/bench_mdshc_centers.py [--seed 0] [--baseline-classes 10]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core, set before numpy loads
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))
from hybridhash.methods.mdshc_centers import BLOCK, generate_centers  # noqa: E402
from tests.methods.mdshc_naive import gv_target, naive_centers  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES, BITS = (10, 100), (16, 32, 48, 64)


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def distances(G: np.ndarray) -> np.ndarray:
    K = G.shape[1]
    return np.rint((K - G @ G.T) / 2)[np.triu_indices(len(G), 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline-classes", type=int, nargs="*", default=[10])
    ap.add_argument("--order-classes", type=int, nargs="*", default=[100])
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for C in CLASSES:
        for K in BITS:
            (G, report), cpu, wall = timed(lambda: generate_centers(C, K, seed=args.seed))
            d = distances(G)
            assert report.target == gv_target(K, C) and report.min == int(d.min())
            row = {"classes": C, "bits": K, "target": report.target, "init": report.init,
                   "initial_min": report.initial_min, "min": int(d.min()), "mean": round(float(d.mean()), 3),
                   "sweeps": report.sweeps, "reached": bool(d.min() >= report.target),
                   "min_per_sweep": list(report.history), "cpu_s": round(cpu, 2), "wall_s": round(wall, 2)}
            if C in args.order_classes:  # the published order with this code: what the blocks buy
                (G1, r1), cpu1, wall1 = timed(lambda: generate_centers(C, K, seed=args.seed, block=1))
                row["one_at_a_time"] = {"min": r1.min, "sweeps": r1.sweeps, "cpu_s": round(cpu1, 2),
                                        "wall_s": round(wall1, 2)}
            if C in args.baseline_classes:
                (B, sweeps), bcpu, bwall = timed(lambda: naive_centers(C, K, args.seed))
                bd = distances(B)
                row["baseline"] = {"min": int(bd.min()), "mean": round(float(bd.mean()), 3), "sweeps": sweeps,
                                   "cpu_s": round(bcpu, 2), "wall_s": round(bwall, 2),
                                   "cpu_ratio": round(bcpu / max(cpu, 1e-9), 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    doc = {"cpu": cpu_model(), "threads": 1, "seed": args.seed, "block": BLOCK, "load_average": os.getloadavg(),
           "numpy": np.__version__, "torch": torch.__version__, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mdshc_centers.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# MDSHC hash centers on one core ({doc['cpu']})", "",
             f"Seed {args.seed}; fixed generator, blocks of {BLOCK} centers side by side; seconds are CPU seconds of "
             f"the process (wall clock in brackets; load average at the end {doc['load_average'][0]:.1f} on a shared "
             "machine). Baseline: the same fixed generator one center at a time with the matrix inverted at every "
             "inner iteration, as the official code runs it. One at a time: this code with blocks of 1 (the published "
             "order).", "",
             "| classes | bits | target D | start | start min | min reached | mean | sweeps | seconds | one at a time: "
             "min, sweeps, seconds | baseline: min, sweeps, seconds | baseline / this |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = r.get("baseline")
        base = f"{b['min']}, {b['sweeps']}, {b['cpu_s']:.1f} ({b['wall_s']:.1f})" if b else "-"
        ratio = f"{b['cpu_ratio']:.1f}x" if b else "-"
        o = r.get("one_at_a_time")
        one = f"{o['min']}, {o['sweeps']}, {o['cpu_s']:.1f} ({o['wall_s']:.1f})" if o else "-"
        lines.append(f"| {r['classes']} | {r['bits']} | {r['target']} | {r['init']} | {r['initial_min']} | "
                     f"{r['min']} | {r['mean']:.2f} | {r['sweeps']} | {r['cpu_s']:.1f} ({r['wall_s']:.1f}) | {one} | "
                     f"{base} | {ratio} |")
    (RESULTS / "mdshc_centers.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'mdshc_centers.md'}")


if __name__ == "__main__":
    main()
