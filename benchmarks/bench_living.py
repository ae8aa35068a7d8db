"""Updating a living collection against encoding it from scratch, side by side in one run.

A folder of N (default 100,000) small PNG images is made from scikit-learn's digits (each digit
jittered: shifted by up to 2 px, its contrast and a background level drawn per image, upscaled to
32 px; 10 class folders), in a temporary folder that is removed afterwards. It is encoded with
``hybridhash_cpu`` (64 bits, random initialisation: the speed does not depend on training, and
the codes are as deterministic as a trained model's) by ``encode_collection`` (the baseline), a flat
index is saved, then 1% of the images are added, 1% removed and 1% rewritten in place, and the same
``encode_collection`` call updates the collection (the figure). The update's time is split into
listing the folder, stat-ing the files and comparing them, encoding, writing the new generation and
updating the index. The updated codes of a sample of the new and rewritten images are checked
against a fresh encode of those files.

Writes benchmarks/results/living.json and living.md (with ``lscpu``'s model name and the load
average). The target: the update takes at most 5% of the full encode's time.

    python benchmarks/bench_living.py [--images 100000] [--workers 2] [--batch 256] [--kind flat]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from machine import cpu_model  # benchmarks/machine.py

RESULTS = Path(__file__).resolve().parent / "results"
SHARE = 0.01  # added, removed and changed, each


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def _write(job) -> int:
    """Write images ``job = (folder, first, count, seed)``: digit (first + j) jittered, as PNG."""
    folder, first, count, seed = job
    images, target = _digits()
    rng = np.random.default_rng(seed)
    for j in range(first, first + count):
        k = j % len(images)
        a = np.roll(images[k], (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
        a = np.clip(a * rng.uniform(10, 16) + rng.uniform(0, 60), 0, 255).astype(np.uint8)
        img = Image.fromarray(a).resize((32, 32), Image.BILINEAR).convert("RGB")
        path = Path(folder) / str(int(target[k])) / f"img_{j:07d}.png"
        img.save(path, compress_level=1)
    return count


def make_images(folder: Path, first: int, count: int, workers: int, seed: int = 0) -> float:
    """Write ``count`` images numbered from ``first`` under ``folder/<digit>/``; returns the seconds."""
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    step = max(1, -(-count // (8 * workers)))
    jobs = [(str(folder), s, min(step, first + count - s), seed + s) for s in range(first, first + count, step)]
    with Pool(workers) as pool:
        assert sum(pool.map(_write, jobs)) == count
    return time.perf_counter() - t0


def main() -> None:
    import hybridhash
    from hybridhash.app.encode import encode_collection
    from hybridhash.retrieval import build_index

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="decoding processes")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--kind", default="flat", choices=["flat", "ivf"], help="the saved index")
    ap.add_argument("--tmp", default=None, help="where the temporary folder goes (default: the system's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    n, delta = args.images, max(1, int(args.images * SHARE))
    tmp = Path(tempfile.mkdtemp(prefix="bench_living_", dir=args.tmp))
    try:
        images, out = tmp / "images", tmp / "codes"
        made = make_images(images, 0, n, args.workers)
        print(f"made {n} images in {made:.1f} s", flush=True)
        torch.manual_seed(0)
        ckpt = tmp / "ckpt"
        hybridhash.create_model("hybridhash_cpu", bits=64).save_pretrained(str(ckpt))
        model = hybridhash.from_pretrained(ckpt).eval()
        kw = dict(model=model, workers=args.workers, batch_size=args.batch, progress=False)

        t0 = time.perf_counter()
        col = encode_collection(images, out, ckpt, **kw)
        full = time.perf_counter() - t0
        assert col.count == n, col.count
        print(f"full encode: {full:.1f} s ({n / full:.0f} images/s)", flush=True)
        t0 = time.perf_counter()
        index = build_index(col, args.kind)
        index.save(col.index_path, codes_sha256=col.codes_sha256)
        index_build = time.perf_counter() - t0

        rng = np.random.default_rng(1)
        files = sorted(images.rglob("*.png"))
        pick = rng.choice(len(files), 2 * delta, replace=False)
        removed, changed = [files[i] for i in pick[:delta]], [files[i] for i in pick[delta:]]
        for p in removed:
            p.unlink()
        t_changes = time.perf_counter()
        for p in changed:
            old = p.stat().st_mtime_ns
            a = np.asarray(Image.open(p))[::-1].copy()  # the image upside down: new content, same size
            Image.fromarray(a).save(p, compress_level=1)
            os.utime(p, ns=(old + 10**9, old + 10**9))
        make_images(images, n, delta, args.workers, seed=99)
        changes_s = time.perf_counter() - t_changes

        reports = []
        t0 = time.perf_counter()
        col = encode_collection(images, out, ckpt, report=reports.append, **kw)
        update = time.perf_counter() - t0
        r = reports[0]
        assert (r.added, r.removed, r.changed, r.kept) == (delta, delta, delta, n - 2 * delta), r
        assert col.count == n and r.index == args.kind

        # a sample of the new and rewritten images against a fresh encode of just those files
        rel = sorted([str(p.relative_to(images)) for p in changed[:50]] +
                     [f"{d}/{f.name}" for d in range(10) for f in sorted((images / str(d)).glob("img_*.png"))
                      if int(f.stem[4:]) >= n][:50])
        (tmp / "sample.txt").write_text("".join(f"{p}\n" for p in rel))
        fresh = encode_collection(tmp / "sample.txt", tmp / "fresh", ckpt, root=images, **kw)
        by_path = dict(zip(col.all_paths(), map(bytes, np.asarray(col.codes))))
        assert all(by_path[fresh.path(i)] == bytes(np.asarray(fresh.codes[i])) for i in range(fresh.count))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    sec = r.seconds
    parts = {"list the folder": sec.get("list", 0.0), "stat and compare": sec.get("stat", 0.0),
             "encode": sec.get("encode", 0.0), "write the generation": sec.get("write", 0.0),
             "update the index": sec.get("index", 0.0)}
    parts["other (plan, shards, open)"] = max(0.0, update - sum(parts.values()))
    result = {
        "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "loadavg_before": [round(v, 2) for v in load_before],
                    "loadavg_after": [round(v, 2) for v in os.getloadavg()]},
        "settings": {"images": n, "added": delta, "removed": delta, "changed": delta, "preset": "hybridhash_cpu",
                     "bits": 64, "init": "random", "workers": args.workers, "batch": args.batch,
                     "index": args.kind, "image": "32x32 RGB PNG from the digits, jittered"},
        "make_images_seconds": round(made, 1),
        "full_encode_seconds": round(full, 2),
        "full_images_per_s": round(n / full, 1),
        "index_build_seconds": round(index_build, 2),
        "update_seconds": round(update, 2),
        "update_over_full": round(update / full, 4),
        "target": 0.05,
        "update_parts_seconds": {k: round(v, 3) for k, v in parts.items()},
        "update_parts_share": {k: round(v / update, 3) for k, v in parts.items()},
        "sample_checked": len(rel),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "living.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "living.md").write_text(to_markdown(result))
    print(to_markdown(result))


def to_markdown(r: dict) -> str:
    m, s = r["machine"], r["settings"]
    lines = [
        "# Living collections: an update against a full encode",
        "",
        f"{m['cpu_model']}, {m['cpu_count']} CPUs, {m['torch_threads']} torch threads, {s['workers']} decoding "
        f"workers, torch {m['torch']}; load average before {m['loadavg_before']}, after {m['loadavg_after']}.",
        "",
        f"{s['images']} images ({s['image']}), {s['preset']} {s['bits']} bits ({s['init']} initialisation), batch "
        f"{s['batch']}, a saved {s['index']} index; then {s['added']} added, {s['removed']} removed and "
        f"{s['changed']} rewritten in place, and the same `encode_collection` call run again.",
        "",
        "| | seconds | images/s | share of the full encode |",
        "| --- | --- | --- | --- |",
        f"| full encode (baseline) | {r['full_encode_seconds']} | {r['full_images_per_s']} | 1 |",
        f"| update (1% + 1% + 1%) | {r['update_seconds']} | | {r['update_over_full']} (target at most "
        f"{r['target']}) |",
        "",
        "| step of the update | seconds | share |",
        "| --- | --- | --- |",
    ]
    for k, v in r["update_parts_seconds"].items():
        lines.append(f"| {k} | {v} | {r['update_parts_share'][k]} |")
    lines += ["", f"Codes of {r['sample_checked']} new and rewritten images checked against a fresh encode of "
              f"those files. Making the images took {r['make_images_seconds']} s; the whole benchmark "
              f"{r['wall_seconds']} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
