"""Per-image encoding rate of hybridhash_base by batch size: torch's attention paths, the automatic
micro-batching of eval mode, and the ONNX export on onnxruntime (CPU, fp32, inference mode).

Sides, on the same weights and the same input batch:

- ``torch_fused``: the whole batch in one forward pass, fused attention (4-D flash kernel);
- ``torch_plain``: the whole batch in one pass, written-out softmax(QK^T)V;
- ``torch_auto``: what ``model.encode`` / ``encode_images`` do by default: fused attention, a batch
  larger than ``CPU_MICRO_BATCH`` run in chunks of it (identical to ``torch_fused`` up to that size,
  so not timed again there);
- ``onnxruntime``: ``export_onnx`` + ``OnnxEncoder`` with as many threads as torch.

Each round times one pass of every side, the order rotated from round to round so that a change of
load on the shared machine hits all sides alike; a side's figure is its best round (medians kept).
Batches of 32 and more get ``--big-rounds`` rounds (default 1: a pass of batch 64 takes about half a
minute per side on 2 cores). The achieved FLOP rate is given as a share of two fp32 4096x4096
matmul rates measured in the same run (best of start and end): torch's (as bench_model.py) and
onnxruntime's (as bench_export.py). Warm-up is one batch-1 pass per side.

    python benchmarks/bench_encode_model.py [--batches 1 8 32 64] [--rounds 2] [--big-rounds 1]

Writes benchmarks/results/encode_model.json and encode_model.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hybridhash
from hybridhash.export import OnnxEncoder, export_onnx
from hybridhash.models.hybridhash import CPU_MICRO_BATCH

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import ort_matmul_rate  # noqa: E402
from bench_model import count_flops, matmul_rate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hybridhash_base")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--big-rounds", type=int, default=1, help="rounds for batches of 32 and more")
    p.add_argument("--out", default=str(RESULTS / "encode_model.json"))
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    torch.manual_seed(0)
    model = hybridhash.create_model(args.model, bits=args.bits).eval()
    size = model.config.img_size
    flops = count_flops(model, size)
    torch_mm, ort_mm = matmul_rate(torch.device("cpu")), ort_matmul_rate(threads)
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "model.onnx"
    export_onnx(model, path)
    enc = OnnxEncoder.open(path, threads=threads)

    def torch_side(fused: bool, micro_batch):
        def run(x: np.ndarray) -> np.ndarray:
            model.set_fused_attn(fused).micro_batch = micro_batch
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()
        return run

    all_sides = {"torch_fused": torch_side(True, 0), "torch_plain": torch_side(False, 0),
                 "torch_auto": torch_side(True, None), "onnxruntime": enc.outputs}
    rng = np.random.default_rng(0)
    warm = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    for run in all_sides.values():
        run(warm)
    rows = []
    for batch in args.batches:
        sides = {n: s for n, s in all_sides.items() if n != "torch_auto" or batch > CPU_MICRO_BATCH}
        rounds = args.big_rounds if batch >= 32 else args.rounds
        x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
        times = {n: [] for n in sides}
        outs = {}
        order = list(sides)
        for r in range(rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                t0 = time.perf_counter()
                outs[name] = sides[name](x)
                times[name].append(time.perf_counter() - t0)
        if "torch_auto" not in sides:
            times["torch_auto"] = times["torch_fused"]  # the same computation at this size
        best = {n: min(t) for n, t in times.items()}
        ref = outs["torch_plain"]
        rows.append({
            "batch": batch, "rounds": rounds,
            "img_s": {n: round(batch / t, 3) for n, t in best.items()},
            "img_s_median": {n: round(batch / statistics.median(t), 3) for n, t in times.items()},
            "seconds_all": {n: [round(v, 2) for v in t] for n, t in times.items()},
            "max_abs_output_diff_vs_torch_plain": {n: float(np.abs(o - ref).max()) for n, o in outs.items()
                                                   if n != "torch_plain"},
            "codes_identical_to_torch_plain": {n: bool(((o >= 0) == (ref >= 0)).all()) for n, o in outs.items()
                                               if n != "torch_plain"},
        })
        print(json.dumps(rows[-1]), flush=True)
    torch_mm = max(torch_mm, matmul_rate(torch.device("cpu")))
    ort_mm = max(ort_mm, ort_matmul_rate(threads))
    for row in rows:
        rate = {n: flops * v for n, v in row["img_s"].items()}
        row["share_of_torch_matmul_rate"] = {n: round(v / torch_mm, 3) for n, v in rate.items()}
        row["share_of_onnxruntime_matmul_rate"] = {n: round(v / ort_mm, 3) for n, v in rate.items()}
    import onnxruntime

    result = {"model": args.model, "bits": args.bits, "img_size": size, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "threads": threads,
              "cpu_micro_batch": CPU_MICRO_BATCH, "gflop_per_image": round(flops / 1e9, 3),
              "matmul_fp32_gflops": {"torch": round(torch_mm / 1e9, 1), "onnxruntime": round(ort_mm / 1e9, 1)},
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "seconds": round(time.perf_counter() - t_start, 1), "runs": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    names = list(all_sides)
    lines = [f"# {args.model} encoding rate by batch size (cpu, fp32, inference mode, {size}x{size})", "",
             f"{result['gflop_per_image']} GFLOP per image; fp32 4096x4096 matmul rate in this run: torch "
             f"{result['matmul_fp32_gflops']['torch']} GFLOP/s, onnxruntime {result['matmul_fp32_gflops']['onnxruntime']} "
             f"GFLOP/s; {threads} threads; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}. "
             f"Load average {load_before[0]:.2f} before, {result['loadavg_after'][0]:.2f} after "
             f"(a shared 2-core machine); whole run {result['seconds']} s. torch_auto is fused attention in "
             f"chunks of {CPU_MICRO_BATCH} (the same pass as torch_fused up to batch {CPU_MICRO_BATCH}).", "",
             "Each cell: images/s (best round), share of the torch matmul rate / share of the onnxruntime one.", "",
             "| batch | rounds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{r['img_s'][n]} ({r['share_of_torch_matmul_rate'][n]:.0%} / "
                 f"{r['share_of_onnxruntime_matmul_rate'][n]:.0%})" for n in names]
        lines.append(f"| {r['batch']} | {r['rounds']} | " + " | ".join(cells) + " |")
    lines += ["", "Largest output difference from torch_plain (same batch): " + "; ".join(
        f"batch {r['batch']}: " + ", ".join(f"{n} {d:.1e}" for n, d in r["max_abs_output_diff_vs_torch_plain"].items())
        for r in rows),
        "Codes identical to torch_plain: " + ("yes, every side and batch" if all(
            all(r["codes_identical_to_torch_plain"].values()) for r in rows) else "NO, see the json")]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())
    return result


if __name__ == "__main__":
    main()
