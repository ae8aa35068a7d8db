"""mAP of hybridhash.metrics against a straightforward per-query loop, at two protocol sizes.

Synthetic codes shaped like learned ones (a random prototype per class, each item its class
prototype with bits flipped at random, a share of items built on another class's prototype):

- imagenet: 5000 queries x 128503 database items, 100 classes, 64 bits, mAP@1000;
- cifar10:  1000 queries x 54000 database items, 10 classes, 64 bits, mAP@all.

The project's metric runs in a fresh subprocess that loads the codes from disk, so its peak
resident memory (VmHWM, reset just before the call) is its own. Two per-query loops run here on a
subset of the queries, their times extrapolated linearly to all queries and their per-query APs
compared with the project's: the straightforward one of the usual reference code (per query:
relevance from label inner products, Hamming distances from +-1 inner products, a full stable
argsort, the AP formula) and a tuned one (popcount distances, radix argsort), a harder baseline.
Writes benchmarks/results/metrics.json and metrics.md. Takes about two minutes on 2 idle cores.

    python benchmarks/bench_metrics.py [--loop-queries 200] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import load_text  # benchmarks/machine.py

RESULTS = Path(__file__).resolve().parent / "results"

SETTINGS = {
    "imagenet": dict(nq=5000, ndb=128503, n_class=100, bits=64, topk=1000),
    "cifar10": dict(nq=1000, ndb=54000, n_class=10, bits=64, topk=None),
}


def synthetic(nq: int, ndb: int, n_class: int, bits: int, seed: int = 0, flip: float = 0.15, stray: float = 0.1):
    """Packed codes and class ids: (nq, bits/8) uint8, (ndb, bits/8) uint8, (nq,), (ndb,)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((n_class, bits)) < 0.5  # (n_class, bits)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, n_class, n)
        source = np.where(rng.random(n) < stray, rng.integers(0, n_class, n), labels)
        bits_ = prototypes[source] ^ (rng.random((n, bits)) < flip)
        return np.packbits(bits_, axis=1), labels

    q, ql = make(nq)
    db, dbl = make(ndb)
    return q, db, ql, dbl


def loop_average_precisions(
    q: np.ndarray, db: np.ndarray, ql: np.ndarray, dbl: np.ndarray, topk: int | None, n_class: int
) -> np.ndarray:
    """The straightforward loop: one query at a time, float64 (nq,).

    As the usual reference evaluation code does it, on +-1 float codes and one-hot label rows:
    relevance from label inner products, Hamming distances (bits - q.r) / 2, a full stable
    argsort, the AP formula of the top K.
    """
    bits = 8 * q.shape[1]
    qb = np.unpackbits(q, axis=1).astype(np.float32) * 2 - 1  # (nq, bits)
    rb = np.unpackbits(db, axis=1).astype(np.float32) * 2 - 1  # (ndb, bits)
    qlab = np.eye(n_class, dtype=np.float32)[ql]  # (nq, C)
    rlab = np.eye(n_class, dtype=np.float32)[dbl]  # (ndb, C)
    out = np.zeros(len(q))
    for i in range(len(q)):
        relevant = (rlab @ qlab[i]) > 0  # (ndb,)
        dist = 0.5 * (bits - rb @ qb[i])  # (ndb,)
        order = np.argsort(dist, kind="stable")[:topk]
        ranks = np.flatnonzero(relevant[order]) + 1
        if ranks.size:
            out[i] = np.mean(np.arange(1, ranks.size + 1) / ranks)
    return out


def tuned_loop_average_precisions(
    q: np.ndarray, db: np.ndarray, ql: np.ndarray, dbl: np.ndarray, topk: int | None
) -> np.ndarray:
    """A tuned loop, a harder baseline: popcount of xor on 64-bit words, a radix (stable) argsort
    of the small-integer distances, class ids compared only on the top K. float64 (nq,)."""
    qw = q.view(np.uint64)[:, 0]  # (nq,) for 64 bits
    dbw = db.view(np.uint64)[:, 0]  # (ndb,)
    out = np.zeros(len(q))
    for i in range(len(q)):
        dist = np.bitwise_count(dbw ^ qw[i])  # (ndb,) uint8
        order = np.argsort(dist, kind="stable")[:topk]
        ranks = np.flatnonzero(dbl[order] == ql[i]) + 1
        if ranks.size:
            out[i] = np.mean(np.arange(1, ranks.size + 1) / ranks)
    return out


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    try:  # "5" resets the peak RSS (VmHWM) of this process, Linux >= 4.0
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(workdir: str, topk: str, repeats: int) -> None:
    """Runs in a fresh interpreter: times the project's metric and reads its peak memory."""
    from hybridhash.metrics import average_precisions, tie_aware_mean_average_precision

    d = Path(workdir)
    q, db, ql, dbl = (np.load(d / f"{name}.npy") for name in ("q", "db", "ql", "dbl"))
    k = None if topk == "none" else int(topk)
    report: dict = {"rss_before_mb": _rss_kb("VmRSS") / 1024}
    runs = []
    for threads in (None, 1):
        times, peaks = [], []
        for _ in range(repeats):
            reset = _reset_peak()
            base = _rss_kb("VmRSS")
            t0 = time.perf_counter()
            ap = average_precisions(q, db, ql, dbl, k, num_threads=threads)
            times.append(time.perf_counter() - t0)
            peaks.append((_rss_kb("VmHWM") - base) / 1024 if reset else float("nan"))
        runs.append({"num_threads": threads or "default", "seconds": times, "peak_rss_delta_mb": peaks})
        if threads is None:
            np.save(d / "ap.npy", ap)
    report["runs"] = runs
    report["map"] = float(ap.mean())
    report["peak_rss_total_mb"] = _rss_kb("VmHWM") / 1024
    t0 = time.perf_counter()
    report["tie_aware_map"] = tie_aware_mean_average_precision(q, db, ql, dbl, k)
    report["tie_aware_seconds"] = time.perf_counter() - t0
    (d / "child.json").write_text(json.dumps(report))


def run_setting(name: str, cfg: dict, loop_queries: int, repeats: int) -> dict:
    q, db, ql, dbl = synthetic(cfg["nq"], cfg["ndb"], cfg["n_class"], cfg["bits"])
    with tempfile.TemporaryDirectory() as tmp:
        for key, arr in (("q", q), ("db", db), ("ql", ql), ("dbl", dbl)):
            np.save(Path(tmp) / f"{key}.npy", arr)
        topk = "none" if cfg["topk"] is None else str(cfg["topk"])
        load_before = os.getloadavg()
        subprocess.run([sys.executable, __file__, "--child", tmp, topk, str(repeats)], check=True)
        report = json.loads((Path(tmp) / "child.json").read_text())
        ap = np.load(Path(tmp) / "ap.npy")

    loops = {}
    for name_, fn, n in (
        ("straightforward", lambda *a: loop_average_precisions(*a, cfg["topk"], cfg["n_class"]), loop_queries),
        ("tuned", lambda *a: tuned_loop_average_precisions(*a, cfg["topk"]), 3 * loop_queries),
    ):
        n = min(n, cfg["nq"])
        t0 = time.perf_counter()
        loop_ap = fn(q[:n], db, ql[:n], dbl)
        seconds = time.perf_counter() - t0
        loops[name_] = {
            "queries_timed": n,
            "seconds": seconds,
            "ms_per_query": 1000 * seconds / n,
            "extrapolated_seconds_all_queries": seconds * cfg["nq"] / n,
            "extrapolated": n < cfg["nq"],
            "max_abs_diff_vs_project": float(np.abs(ap[:n] - loop_ap).max()),
        }
    load_after = os.getloadavg()
    best = min(report["runs"][0]["seconds"])
    best_1 = min(report["runs"][1]["seconds"])
    for loop in loops.values():
        loop["speedup_of_project"] = loop["extrapolated_seconds_all_queries"] / best
        loop["speedup_of_project_one_thread"] = loop["extrapolated_seconds_all_queries"] / best_1
    return {
        "setting": name,
        **cfg,
        "map": report["map"],
        "tie_aware_map": report["tie_aware_map"],
        "project": report,
        "loops": loops,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }


def markdown(results: list[dict], machine: dict) -> str:
    lines = [
        "# Retrieval metric speed (benchmarks/bench_metrics.py)",
        "",
        f"{machine['usable_cpus']} usable CPUs, numpy {machine['numpy']}. Load average (1, 5, 15 min): "
        f"{load_text(machine['loadavg_start'])} at start, {load_text(machine['loadavg_end'])} at end; the machine was "
        "shared with other jobs, so absolute times are inflated, ratios less so.",
        "",
        "| setting | queries x database | mAP | tie-aware mAP | project s (default threads) | project s (1 thread) "
        "| peak RSS delta MB | loop | loop s, all queries | project speed-up | max abs diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        runs = r["project"]["runs"]
        k = "all" if r["topk"] is None else r["topk"]
        for name, loop in r["loops"].items():
            note = f" (timed on {loop['queries_timed']})" if loop["extrapolated"] else ""
            lines.append(
                f"| {r['setting']} mAP@{k} | {r['nq']} x {r['ndb']} | {r['map']:.4f} | {r['tie_aware_map']:.4f} "
                f"| {min(runs[0]['seconds']):.2f} | {min(runs[1]['seconds']):.2f} "
                f"| {max(runs[0]['peak_rss_delta_mb']):.0f} | {name} "
                f"| {loop['extrapolated_seconds_all_queries']:.1f}{note} "
                f"| {loop['speedup_of_project']:.1f}x | {loop['max_abs_diff_vs_project']:.1e} |"
            )
    lines += [
        "",
        "Project: hybridhash.metrics.average_precisions on packed codes, best of the timed runs, in a fresh",
        "process; peak RSS delta is its peak resident memory above the resident memory before the call.",
        "Loops (one thread, one query at a time, timed on a subset and extrapolated linearly):",
        "straightforward = label inner products for relevance, (bits - q.r) / 2 on +-1 float codes, a full",
        "stable argsort, the AP formula; tuned = popcount of xor, radix argsort of the uint8 distances,",
        "class ids compared on the top K only. Speed-up = loop time for all queries / project time.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--loop-queries", type=int, default=200, help="queries timing the straightforward loop (3x for the tuned one)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the project's metric")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    machine = {
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "loadavg_start": os.getloadavg(),
    }
    results = []
    for name in args.settings:
        r = run_setting(name, SETTINGS[name], args.loop_queries, args.repeats)
        results.append(r)
        runs = r["project"]["runs"]
        print(
            f"{name}: mAP {r['map']:.4f}, tie-aware {r['tie_aware_map']:.4f}; project {min(runs[0]['seconds']):.2f} s "
            f"(runs {', '.join(f'{t:.2f}' for t in runs[0]['seconds'])}; 1 thread {min(runs[1]['seconds']):.2f} s), "
            f"peak RSS +{max(runs[0]['peak_rss_delta_mb']):.0f} MB; load {load_text(r['loadavg_before'])}",
            flush=True,
        )
        for loop_name, loop in r["loops"].items():
            print(
                f"  {loop_name} loop: {loop['ms_per_query']:.2f} ms/query, "
                f"{loop['extrapolated_seconds_all_queries']:.1f} s "
                f"for {r['nq']} queries (timed on {loop['queries_timed']}); project speed-up "
                f"{loop['speedup_of_project']:.1f}x (1 thread {loop['speedup_of_project_one_thread']:.1f}x); "
                f"max abs diff {loop['max_abs_diff_vs_project']:.1e}",
                flush=True,
            )
    machine["loadavg_end"] = os.getloadavg()
    from hybridhash.fileio import atomic_path, write_json

    write_json(args.out / "metrics.json", {"machine": machine, "results": results})
    with atomic_path(args.out / "metrics.md") as tmp:
        tmp.write_text(markdown(results, machine))
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'metrics.md'}")


if __name__ == "__main__":
    main()
