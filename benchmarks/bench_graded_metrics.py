"""ACG, NDCG and WAP of hybridhash.metrics against a straightforward per-query loop, on synthetic
multi-label codes shaped like learned ones (NUS-WIDE-like: 21 concepts, 1 to 3 labels an image,
an item's code is the prototype of one of its labels with bits flipped at random).

Default: 1000 queries x 20000 database items, 64 bits, K = 100 and K = 5000. The loop is what
the usual evaluation scripts do, one query at a time: shared labels from label inner products,
Hamming distances from +-1 inner products, a full stable argsort, then ACG@K, NDCG@K (its ideal
list from a full sort of the relevances) and WAP@K by numpy on that query's ranked list. Both
sides run in this process on one thread (the project's ``num_threads=1``) and the project's
default threads; the per-query figures are compared. Writes benchmarks/results/graded_metrics.json
and graded_metrics.md. Takes about a minute on 2 idle cores.

    python benchmarks/bench_graded_metrics.py [--queries 1000] [--database 20000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from machine import cpu_model, load_text  # benchmarks/machine.py

RESULTS = Path(__file__).resolve().parent / "results"
N_CLASS = 21
BITS = 64


def synthetic(nq: int, ndb: int, seed: int = 0, flip: float = 0.15):
    """Packed codes and multi-hot labels: (nq, 8) uint8, (ndb, 8) uint8, (nq, 21) int, (ndb, 21) int."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((N_CLASS, BITS)) < 0.5
    weights = 1.0 / np.arange(1, N_CLASS + 1)  # a few frequent concepts, many rare ones
    weights /= weights.sum()

    def make(n: int):
        labels = np.zeros((n, N_CLASS), int)
        count = rng.integers(1, 4, n)
        for j in range(3):  # up to three labels an item, drawn by frequency (repeats merge)
            picked = rng.choice(N_CLASS, n, p=weights)
            labels[np.flatnonzero(count > j), picked[count > j]] = 1
        anchor = np.array([rng.choice(np.flatnonzero(row)) for row in labels])
        bits = prototypes[anchor] ^ (rng.random((n, BITS)) < flip)
        return np.packbits(bits, axis=1), labels

    q, ql = make(nq)
    db, dbl = make(ndb)
    return q, db, ql, dbl


def loop_scores(q: np.ndarray, db: np.ndarray, ql: np.ndarray, dbl: np.ndarray, k: int) -> np.ndarray:
    """The straightforward loop: (nq, 3) ACG@k, NDCG@k, WAP@k, one query at a time."""
    qb = np.unpackbits(q, axis=1).astype(np.float32) * 2 - 1
    rb = np.unpackbits(db, axis=1).astype(np.float32) * 2 - 1
    qlab, rlab = ql.astype(np.float32), dbl.astype(np.float32)
    discount = 1.0 / np.log1p(np.arange(1, k + 1))
    out = np.zeros((len(q), 3))
    for i in range(len(q)):
        shared = rlab @ qlab[i]  # (ndb,)
        dist = 0.5 * (BITS - rb @ qb[i])
        r = shared[np.argsort(dist, kind="stable")[:k]].astype(np.float64)
        ideal = np.sort(shared)[::-1][:k].astype(np.float64)
        dcg, idcg = ((2 ** r - 1) * discount).sum(), ((2 ** ideal - 1) * discount).sum()
        hits = r > 0
        acg_at = np.cumsum(r) / np.arange(1, k + 1)
        out[i] = (r.sum() / k, dcg / idcg if idcg > 0 else 0.0, acg_at[hits].mean() if hits.any() else 0.0)
    return out


def best_of(fn, repeats: int) -> tuple:
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, value


def run(nq: int, ndb: int, ks, repeats: int) -> list:
    from hybridhash.metrics import acgs, graded_scores, ndcgs, weighted_average_precisions

    q, db, ql, dbl = synthetic(nq, ndb)
    results = []
    for k in ks:
        loop_s, loop_times, expected = best_of(lambda: loop_scores(q, db, ql, dbl, k), 1)
        row = {"k": k, "queries": nq, "database": ndb, "loop_seconds": loop_s}
        for threads in (1, None):
            per_query = lambda: np.stack([f(q, db, ql, dbl, k, num_threads=threads)  # noqa: E731
                                          for f in (acgs, ndcgs, weighted_average_precisions)], axis=1)
            seconds, times, got = best_of(per_query, repeats)
            one_pass, _, means = best_of(lambda: graded_scores(q, db, ql, dbl, k, tie_aware=False,
                                                               num_threads=threads), repeats)
            with_ties, _, _ = best_of(lambda: graded_scores(q, db, ql, dbl, k, num_threads=threads), repeats)
            label = "1 thread" if threads == 1 else "default threads"
            row[label] = {"three_functions_seconds": seconds, "runs": times, "graded_scores_seconds": one_pass,
                          "graded_scores_with_tie_aware_seconds": with_ties,
                          "ratio_loop_over_three_functions": loop_s / seconds,
                          "ratio_loop_over_graded_scores": loop_s / one_pass}
            row["max_abs_diff"] = float(np.abs(got - expected).max())
            row["means"] = means
        results.append(row)
        one = row["1 thread"]
        print(f"K={k}: loop {loop_s:.2f} s; project (1 thread) three functions {one['three_functions_seconds']:.3f} s "
              f"({one['ratio_loop_over_three_functions']:.1f}x), graded_scores {one['graded_scores_seconds']:.3f} s "
              f"({one['ratio_loop_over_graded_scores']:.1f}x); max abs diff {row['max_abs_diff']:.1e}", flush=True)
    return results


def markdown(results: list, machine: dict) -> str:
    lines = [
        "# Multi-label metric speed (benchmarks/bench_graded_metrics.py)",
        "",
        f"CPU: {machine['cpu_model']}, {machine['usable_cpus']} usable CPUs, numpy {machine['numpy']}. Load average "
        f"(1, 5, 15 min): {load_text(machine['loadavg_start'])} at start, {load_text(machine['loadavg_end'])} at end "
        "(a shared machine: compare the ratios, not the absolute times).",
        "",
        "| K | queries x database | loop s | threads | ACG+NDCG+WAP functions s | loop / functions "
        "| graded_scores s | loop / graded_scores | graded_scores + tie-aware s | max abs diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        for label in ("1 thread", "default threads"):
            x = r[label]
            lines.append(
                f"| {r['k']} | {r['queries']} x {r['database']} | {r['loop_seconds']:.2f} | {label} "
                f"| {x['three_functions_seconds']:.3f} | {x['ratio_loop_over_three_functions']:.1f}x "
                f"| {x['graded_scores_seconds']:.3f} | {x['ratio_loop_over_graded_scores']:.1f}x "
                f"| {x['graded_scores_with_tie_aware_seconds']:.3f} | {r['max_abs_diff']:.1e} |")
    lines += [
        "",
        "Loop: one query at a time (label inner products, +-1 inner-product distances, a full stable argsort,",
        "a full sort for the ideal list), all queries timed. Project: `acgs`, `ndcgs` and",
        "`weighted_average_precisions` called one after the other, and `graded_scores` (the three in one",
        "pass; and with tie-aware ACG and NDCG), best of the timed runs. Max abs diff: per-query figures,",
        "project against loop.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--database", type=int, default=20000)
    parser.add_argument("--k", type=int, nargs="+", default=[100, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    machine = {"cpu_model": cpu_model(), "usable_cpus": len(os.sched_getaffinity(0)),
               "platform": platform.platform(), "numpy": np.__version__, "loadavg_start": os.getloadavg()}
    t0 = time.perf_counter()
    results = run(args.queries, args.database, args.k, args.repeats)
    machine["loadavg_end"] = os.getloadavg()
    machine["wall_seconds"] = time.perf_counter() - t0
    from hybridhash.fileio import atomic_path, write_json

    write_json(args.out / "graded_metrics.json", {"machine": machine, "results": results})
    with atomic_path(args.out / "graded_metrics.md") as tmp:
        tmp.write_text(markdown(results, machine))
    print(f"wrote {args.out / 'graded_metrics.json'} and {args.out / 'graded_metrics.md'} "
          f"({machine['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
