"""Per-image encoding rate of hybridhash_base by batch size: torch's two CPU GEMMs and attention
forms, the default path of ``model.encode``, and the ONNX export on onnxruntime and OpenVINO (CPU, fp32,
inference mode).

Sides, on the same weights and the same input batch:

- ``mkl_fused``: the whole batch in one pass, fused attention, linears on PyTorch's own fp32 GEMM
  (MKL): the model as it ran before models/cpu_gemm.py;
- ``mkl_plain``: the same with the written-out softmax(QK^T)V (the reference for differences);
- ``onednn_fused``: the whole batch in one pass, fused attention, linears on oneDNN's packed GEMM;
- ``default``: what ``model.encode`` / ``encode_images`` do with no setting touched: the GEMM the
  process chose (``cpu_gemm()``), fused attention, a batch larger than ``CPU_MICRO_BATCH`` in chunks
  of it (the same pass as ``onednn_fused`` up to that size when oneDNN was chosen, so not timed again);
- ``onnxruntime``: ``export_onnx`` + ``OnnxEncoder`` with as many threads as torch;
- ``openvino``: the same file on ``OpenVinoEncoder`` (fp32), when OpenVINO is installed.

Each round times one pass of every side at every batch size (batch 1: the mean of 8 passes), all
interleaved and the order turned from round to round, so that a change of load or clock on the
shared machine hits all sides and batch sizes alike; a cell's figure is its best round (medians kept).
The achieved FLOP rate is given as a share of the machine's fp32 matmul rate: the best 4096x4096
product of MKL (torch's ``a @ b``), oneDNN and onnxruntime, each measured at the start and at the
end of the run (best of both), and as a share of MKL's alone. Warm-up is one batch-1 pass per side.

    python benchmarks/bench_encode_model.py [--batches 1 8 32 64] [--rounds 3]

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
from hybridhash.engines import openvino_available
from hybridhash.engines.onnx import OnnxEncoder
from hybridhash.engines.openvino import OpenVinoEncoder
from hybridhash.export import export_onnx
from hybridhash.models import cpu_gemm
from hybridhash.models.hybridhash import CPU_MICRO_BATCH

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export import ort_matmul_rate  # noqa: E402
from bench_model import count_flops, matmul_rate, onednn_matmul_rate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine_rates(threads: int) -> dict:
    """fp32 FLOP/s of a 4096x4096 product on each GEMM this machine offers the model."""
    return {"mkl": matmul_rate(torch.device("cpu")), "onednn": onednn_matmul_rate(),
            "onnxruntime": ort_matmul_rate(threads)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hybridhash_base")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "encode_model.json"))
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    default_gemm = cpu_gemm.cpu_gemm()  # what this process chose on its own
    torch.manual_seed(0)
    model = hybridhash.create_model(args.model, bits=args.bits).eval()
    size = model.config.img_size
    flops = count_flops(model, size)
    rates = machine_rates(threads)
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "model.onnx"
    export_onnx(model, path)
    enc = OnnxEncoder.open(path, threads=threads)

    def torch_side(gemm: str, fused: bool, micro_batch):
        def run(x: np.ndarray) -> np.ndarray:
            cpu_gemm.set_cpu_gemm(gemm)
            model.set_fused_attn(fused).micro_batch = micro_batch
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()
        return run

    all_sides = {"mkl_fused": torch_side("aten", True, 0), "mkl_plain": torch_side("aten", False, 0),
                 "onednn_fused": torch_side("onednn", True, 0), "default": torch_side(default_gemm, True, None),
                 "onnxruntime": enc.outputs}
    if openvino_available():
        all_sides["openvino"] = OpenVinoEncoder.open(path, threads=threads).outputs
    if cpu_gemm._op() is None:
        del all_sides["onednn_fused"]
    same_as_default = "onednn_fused" if default_gemm == "onednn" else "mkl_fused"
    rng = np.random.default_rng(0)
    warm = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    for run in all_sides.values():
        run(warm)
    # every (batch, side) cell is timed once per round, the cells of all batches interleaved and
    # their order turned from round to round: a drift of the shared machine's speed then hits every
    # batch size and side alike, so batch sizes compare as fairly as sides do
    sides_of = {b: [n for n in all_sides if n != "default" or b > CPU_MICRO_BATCH] for b in args.batches}
    xs = {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in args.batches}
    reps = {b: max(1, CPU_MICRO_BATCH // b) for b in args.batches}  # small batches: several passes per timing
    cells = [(b, n) for b in args.batches for n in sides_of[b]]
    times = {b: {n: [] for n in sides_of[b]} for b in args.batches}
    outs = {b: {} for b in args.batches}
    for r in range(args.rounds):
        k = (r * len(cells)) // max(args.rounds, 1)
        order = cells[k:] + cells[:k]
        for b, name in (order if r % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            for _ in range(reps[b]):
                outs[b][name] = all_sides[name](xs[b])
            times[b][name].append((time.perf_counter() - t0) / reps[b])
        print(f"round {r + 1}/{args.rounds} done, {time.perf_counter() - t_start:.0f} s", flush=True)
    rows = []
    for batch in args.batches:
        t = times[batch]
        if "default" not in t:
            t["default"] = t[same_as_default]  # the same computation at this size
        ref = outs[batch]["mkl_plain"]
        rows.append({
            "batch": batch, "rounds": args.rounds, "passes_per_timing": reps[batch],
            "img_s": {n: round(batch / min(v), 3) for n, v in t.items()},
            "img_s_median": {n: round(batch / statistics.median(v), 3) for n, v in t.items()},
            "seconds_all": {n: [round(x, 3) for x in v] for n, v in t.items()},
            "max_abs_output_diff_vs_mkl_plain": {n: float(np.abs(o - ref).max()) for n, o in outs[batch].items()
                                                 if n != "mkl_plain"},
            "codes_identical_to_mkl_plain": {n: bool(((o >= 0) == (ref >= 0)).all())
                                             for n, o in outs[batch].items() if n != "mkl_plain"},
        })
        print(json.dumps(rows[-1]), flush=True)
    cpu_gemm.set_cpu_gemm(default_gemm)
    rates = {k: max(v, rates[k]) for k, v in machine_rates(threads).items()}
    machine = max(rates.values())
    for row in rows:
        row["share_of_machine_matmul_rate"] = {n: round(flops * v / machine, 3) for n, v in row["img_s"].items()}
        row["share_of_mkl_matmul_rate"] = {n: round(flops * v / rates["mkl"], 3) for n, v in row["img_s"].items()}
    import onnxruntime

    versions = {"onnxruntime": onnxruntime.__version__}
    if openvino_available():
        import openvino

        versions["openvino"] = openvino.__version__
    result = {"model": args.model, "bits": args.bits, "img_size": size, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, **versions, "threads": threads,
              "cpu_micro_batch": CPU_MICRO_BATCH, "default_cpu_gemm": default_gemm,
              "gflop_per_image": round(flops / 1e9, 3),
              "matmul_fp32_gflops": {k: round(v / 1e9, 1) for k, v in rates.items()},
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "seconds": round(time.perf_counter() - t_start, 1), "runs": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    names = list(all_sides)
    mm = result["matmul_fp32_gflops"]
    lines = [f"# {args.model} encoding rate by batch size (cpu, fp32, inference mode, {size}x{size})", "",
             f"{result['gflop_per_image']} GFLOP per image. fp32 4096x4096 matmul rate in this run: MKL {mm['mkl']}, "
             f"oneDNN {mm['onednn']}, onnxruntime {mm['onnxruntime']} GFLOP/s; the machine's rate is the best of "
             f"them, {max(mm.values())} GFLOP/s. {threads} threads; torch {torch.__version__}, "
             + ", ".join(f"{k} {v}" for k, v in versions.items())
             + f". Load average {load_before[0]:.2f} before, {result['loadavg_after'][0]:.2f} after (a shared "
             f"2-core machine); whole run {result['seconds']} s. `default` is `model.encode` "
             f"untouched: linears on {default_gemm} (the process's own choice), fused attention, chunks of "
             f"{CPU_MICRO_BATCH} (the same pass as {same_as_default} up to batch {CPU_MICRO_BATCH}).", "",
             "Each cell: images/s (best round), share of the machine's matmul rate / share of MKL's.", "",
             "| batch | rounds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{r['img_s'][n]} ({r['share_of_machine_matmul_rate'][n]:.0%} / "
                 f"{r['share_of_mkl_matmul_rate'][n]:.0%})" for n in names]
        lines.append(f"| {r['batch']} | {r['rounds']} | " + " | ".join(cells) + " |")
    lines += ["", "Largest output difference from mkl_plain (same batch): " + "; ".join(
        f"batch {r['batch']}: " + ", ".join(f"{n} {d:.1e}" for n, d in r["max_abs_output_diff_vs_mkl_plain"].items())
        for r in rows),
        "Codes identical to mkl_plain: " + ("yes, every side and batch" if all(
            all(r["codes_identical_to_mkl_plain"].values()) for r in rows) else "NO, see the json")]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())
    return result


if __name__ == "__main__":
    main()
