"""Encoding throughput (images/s) of hybridhash_cpu (32 px) and hybridhash_base (224 px) on the CPU.

Two figures per preset and batch size, fp32, eval mode, inference mode:

- model: pre-decoded, preprocessed tensors straight into ``model.encode`` (the model's throughput;
  the in-run baseline);
- pipeline: ``hybridhash.app.encode.encode_collection`` end to end on JPEG files on disk (discovery,
  DataLoader workers decoding and resizing, the forward, packing, shard writes, the merge).

pipeline / model is the share of the model's speed the whole encoder keeps: the pipeline's overhead
shows as the gap below 1. Source images are synthetic 256x256 JPEGs (smooth colour fields with
noise, about the size of a web thumbnail), the same files for both presets. The machine is shared:
the load average before and after is recorded beside the figures.
Writes benchmarks/results/encode.json and encode.md. About 3 minutes on 2 cores (most of it
hybridhash_base, whose batch of 64 alone is one long forward).

    python benchmarks/bench_encode.py [--threads N] [--workers 2] [--base64-images 64]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import hybridhash
from hybridhash.app.encode import encode_collection

RESULTS = Path(__file__).resolve().parent / "results"


def make_jpegs(folder: Path, n: int, size: int = 256, seed: int = 0) -> None:
    """``n`` smooth-noise RGB JPEGs of ``size`` px (quality 90) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = rng.random((8, 8, 3)) * 255
        img = Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BICUBIC)
        a = np.asarray(img, dtype=np.float32) + rng.normal(0, 12, (size, size, 3))
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(folder / f"img_{i:05d}.jpg", quality=90)


def time_model(model, img_size: int, batch: int, seconds: float) -> dict:
    """images/s of ``model.encode`` on random (batch, 3, S, S) tensors: whole batches until ``seconds``
    have passed (at least one), after a warm-up batch of min(batch, 8)."""
    x = torch.randn(batch, 3, img_size, img_size)
    model.encode(x[:8])
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < seconds:
        model.encode(x)  # (batch, bits) int8
        n += batch
    dt = time.perf_counter() - t0
    return {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 2)}


def time_pipeline(model, ckpt: Path, images: Path, n: int, batch: int, workers: int) -> dict:
    """images/s of the whole encoder on the first ``n`` files of ``images`` (a fresh output each time)."""
    with tempfile.TemporaryDirectory() as tmp:
        listfile = Path(tmp) / "list.txt"
        files = sorted(p.name for p in images.iterdir())[:n]
        listfile.write_text("".join(f"{f}\n" for f in files))
        t0 = time.perf_counter()
        col = encode_collection(listfile, Path(tmp) / "codes", ckpt, model=model, root=images, batch_size=batch,
                                workers=workers, progress=False)
        dt = time.perf_counter() - t0
        assert col.count == n, (col.count, n)
    return {"images": n, "seconds": round(dt, 3), "images_per_s": round(n / dt, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="DataLoader decoding workers")
    ap.add_argument("--model-seconds", type=float, default=8.0, help="time each model-only figure at least this long")
    ap.add_argument("--cpu-images", type=int, default=1024, help="pipeline images for hybridhash_cpu")
    ap.add_argument("--base-images", type=int, default=16, help="pipeline images for hybridhash_base at batch 8")
    # one batch of 64 at 224 px is a long forward on 2 cores; its pipeline run is opt-in
    ap.add_argument("--base64-images", type=int, default=0, help="pipeline images for hybridhash_base at batch 64")
    ap.add_argument("--bits", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    t_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = tmp / "jpegs"
        make_jpegs(images, max(args.cpu_images, args.base_images, args.base64_images))
        # (preset, batch, pipeline images; 0 skips the pipeline)
        configs = [("hybridhash_cpu", 64, args.cpu_images), ("hybridhash_cpu", 8, args.cpu_images),
                   ("hybridhash_base", 8, args.base_images), ("hybridhash_base", 64, args.base64_images)]
        model, ckpt = None, None
        for preset, b, n in configs:
            if model is None or model.config.preset != preset:
                torch.manual_seed(0)
                ckpt = tmp / preset
                hybridhash.create_model(preset, bits=args.bits).save_pretrained(str(ckpt))
                model = hybridhash.from_pretrained(ckpt).eval()
            size = model.preprocess["img_size"]
            r = time_model(model, size, b, args.model_seconds)
            rows.append({"preset": preset, "img_size": size, "batch": b, "mode": "model", **r})
            print(rows[-1], flush=True)
            if n:
                r = time_pipeline(model, ckpt, images, n, b, args.workers)
                rows.append({"preset": preset, "img_size": size, "batch": b, "mode": "pipeline",
                             "workers": args.workers, **r})
                print(rows[-1], flush=True)
    ratios = []
    for p in rows:
        if p["mode"] != "pipeline":
            continue
        m = next(r for r in rows if r["mode"] == "model" and r["preset"] == p["preset"] and r["batch"] == p["batch"])
        ratios.append({"preset": p["preset"], "batch": p["batch"],
                       "pipeline_over_model": round(p["images_per_s"] / m["images_per_s"], 3)})
    out = {
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_before": [round(v, 2) for v in load_before],
                    "loadavg_after": [round(v, 2) for v in os.getloadavg()]},
        "settings": {"bits": args.bits, "model_seconds": args.model_seconds, "dtype": "float32", "source_images": "256x256 JPEG, quality 90",
                     "workers": args.workers},
        "results": rows,
        "ratios": ratios,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "encode.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "encode.md").write_text(to_markdown(out))
    print(to_markdown(out))


def to_markdown(out: dict) -> str:
    m = out["machine"]
    lines = [
        "# Encoding throughput (CPU, fp32, inference mode)",
        "",
        f"{m['cpu_count']} CPUs, {m['torch_threads']} torch threads, {out['settings']['workers']} decoding workers, "
        f"torch {m['torch']}; load average before {m['loadavg_before']}, after {m['loadavg_after']} "
        f"(a shared machine: absolute figures drift with the load, the ratio less).",
        "",
        "model: preprocessed tensors into `model.encode`. pipeline: `encode_collection` on 256x256 JPEG "
        "files (decode, resize, forward, pack, shards, merge).",
        "",
        "| preset | input | batch | mode | images | seconds | images/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in out["results"]:
        lines.append(f"| {r['preset']} | {r['img_size']} px | {r['batch']} | {r['mode']} | {r['images']} | "
                     f"{r['seconds']} | {r['images_per_s']} |")
    lines += ["", "| preset | batch | pipeline / model |", "| --- | --- | --- |"]
    for r in out["ratios"]:
        lines.append(f"| {r['preset']} | {r['batch']} | {r['pipeline_over_model']} |")
    lines += ["", f"Whole benchmark: {out['wall_seconds']} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
