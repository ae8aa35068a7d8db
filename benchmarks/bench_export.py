"""Encoding throughput of hybridhash_base on the CPU: eager PyTorch against its ONNX export on onnxruntime.

Sides, all fp32 on the same weights and the same input batches:

- ``torch_fused``: eager PyTorch, inference mode, scaled_dot_product_attention;
- ``torch_plain``: eager PyTorch with the written-out softmax(QK^T)V;
- ``onnxruntime``: the graph of ``hybridhash.export.export_onnx`` in an ``OnnxEncoder`` (CPU provider,
  as many intra-op threads as torch uses);
- ``openvino`` (only with ``--openvino`` and the package importable): the same ONNX file compiled
  for OpenVINO's CPU plugin, for comparison; not a dependency of the project.

Each round times one forward of every side, in an order rotated from round to round, so a change of
load on the shared machine hits all sides alike; a side's figure is its best round (the median is
kept too). Each side's achieved FLOP rate is given as a share of the machine's fp32 matmul rate: the
better of a 4096x4096 product in torch (as bench_model.py) and in onnxruntime, measured at the start
and end of the same run. Batches whose projected time would overrun
``--budget`` seconds are skipped and listed. The load average before and after is recorded.

    python benchmarks/bench_export.py [--batches 1 8 32] [--rounds 3] [--threads N] [--openvino]

Writes benchmarks/results/export.json and export.md. About 2 minutes on 2 quiet cores for batches 1
and 8 (the ONNX export of hybridhash_base alone takes 6 s there); batch 32 doubles that.
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
from hybridhash.engines.onnx import OnnxEncoder
from hybridhash.export import export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import count_flops, matmul_rate  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def ort_matmul_rate(threads: int, n: int = 4096, repeats: int = 5) -> float:
    """fp32 FLOP/s of an n x n MatMul in onnxruntime (its own GEMM, MLAS; on some CPUs faster than
    the BLAS torch uses, so the machine's ceiling is the better of the two)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", spec[:2], spec[2:])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"a": rng.standard_normal((n, n), dtype=np.float32), "b": rng.standard_normal((n, n), dtype=np.float32)}
    session.run(None, feed)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def openvino_runner(path: Path, threads: int):
    """A callable (B, 3, S, S) float32 array -> (B, bits) outputs on OpenVINO's CPU plugin, or None."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return None, None
    from hybridhash.engines.openvino import shared_core

    compiled = shared_core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                      "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    out = compiled.output("outputs")

    def run(x: np.ndarray) -> np.ndarray:
        return request.infer({"images": x})[out]

    return run, ov.__version__


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hybridhash_base")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="threads for every side (default: torch's default)")
    p.add_argument("--budget", type=float, default=240.0, help="seconds; skip batches projected to overrun it")
    p.add_argument("--openvino", action="store_true", help="also time OpenVINO on the same ONNX file")
    p.add_argument("--out", default=str(RESULTS / "export.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    t_start = time.perf_counter()
    load_before = os.getloadavg()

    torch.manual_seed(0)
    model = hybridhash.create_model(args.model, bits=args.bits).eval()
    size = model.config.img_size
    flops = count_flops(model, size)
    torch_mm, ort_mm = matmul_rate(torch.device("cpu")), ort_matmul_rate(threads)
    ceiling = max(torch_mm, ort_mm)
    tmp = tempfile.TemporaryDirectory()
    path = Path(tmp.name) / "model.onnx"
    t0 = time.perf_counter()
    export_onnx(model, path)
    export_s = time.perf_counter() - t0
    enc = OnnxEncoder.open(path, threads=threads)
    ov_run, ov_version = openvino_runner(path, threads) if args.openvino else (None, None)

    def torch_side(fused: bool):
        def run(x: np.ndarray):
            model.set_fused_attn(fused)
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()
        return run

    sides = {"torch_fused": torch_side(True), "torch_plain": torch_side(False), "onnxruntime": enc.outputs}
    if ov_run is not None:
        sides["openvino"] = ov_run

    rows, skipped = [], []
    rng = np.random.default_rng(0)
    for batch in args.batches:
        elapsed = time.perf_counter() - t_start
        if rows:  # project from the last batch's per-image times (warm-up + rounds, every side)
            per_image = sum(1 / rows[-1]["img_s"][s] for s in sides)
            if elapsed + per_image * batch * (args.rounds + 1) > args.budget:
                skipped.append(batch)
                print(f"batch {batch}: skipped, projected past the {args.budget:.0f} s budget", flush=True)
                continue
        x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
        outs = {name: run(x) for name, run in sides.items()}  # warm-up, and the outputs to compare
        ref = outs["torch_fused"]
        times = {name: [] for name in sides}
        order = list(sides)
        for r in range(args.rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                t0 = time.perf_counter()
                sides[name](x)
                times[name].append(time.perf_counter() - t0)
        best = {n: min(t) for n, t in times.items()}
        row = {
            "batch": batch,
            "img_s": {n: round(batch / t, 2) for n, t in best.items()},
            "img_s_median": {n: round(batch / statistics.median(t), 2) for n, t in times.items()},
            "share_of_matmul_rate": {n: round(flops * batch / t / ceiling, 3) for n, t in best.items()},
            "max_abs_output_diff_vs_torch_fused": {n: float(np.abs(o - ref).max()) for n, o in outs.items()
                                                   if n != "torch_fused"},
            "code_agreement_vs_torch_fused": {n: float(np.mean((o >= 0) == (ref >= 0))) for n, o in outs.items()
                                              if n != "torch_fused"},
        }
        row["onnxruntime_over_torch_fused"] = round(best["torch_fused"] / best["onnxruntime"], 3)
        row["onnxruntime_over_torch_plain"] = round(best["torch_plain"] / best["onnxruntime"], 3)
        if "openvino" in best:
            row["openvino_over_onnxruntime"] = round(best["onnxruntime"] / best["openvino"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)

    # the ceiling again at the end: on a shared machine the best of both is the honest one
    torch_mm, ort_mm = max(torch_mm, matmul_rate(torch.device("cpu"))), max(ort_mm, ort_matmul_rate(threads))
    ceiling_end = max(torch_mm, ort_mm)
    if ceiling_end > ceiling:
        for row in rows:
            row["share_of_matmul_rate"] = {n: round(v * ceiling / ceiling_end, 3)
                                           for n, v in row["share_of_matmul_rate"].items()}
        ceiling = ceiling_end
    import onnxruntime

    result = {
        "model": args.model, "bits": args.bits, "img_size": size, "dtype": "float32", "device": "cpu",
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "threads": threads,
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "openvino": ov_version,
        "gmac_per_image": round(flops / 2 / 1e9, 3), "matmul_fp32_gflops": round(ceiling / 1e9, 1),
        "matmul_fp32_gflops_torch": round(torch_mm / 1e9, 1), "matmul_fp32_gflops_onnxruntime": round(ort_mm / 1e9, 1),
        "export_seconds": round(export_s, 1), "onnx_mib": round(path.stat().st_size / 2 ** 20, 1),
        "rounds": args.rounds, "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "runs": rows, "skipped_batches": skipped, "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    tmp.cleanup()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


def to_markdown(r: dict) -> str:
    names = list(r["runs"][0]["img_s"]) if r["runs"] else []
    lines = [
        f"# {r['model']}: eager PyTorch against its ONNX export ({r['device']}, {r['dtype']}, "
        f"{r['img_size']}x{r['img_size']})",
        "",
        f"{r['gmac_per_image']} GMac per image; fp32 matmul ceiling {r['matmul_fp32_gflops']} GFLOP/s "
        f"(4096x4096: torch {r['matmul_fp32_gflops_torch']}, onnxruntime {r['matmul_fp32_gflops_onnxruntime']}); "
        f"{r['threads']} threads on {r['cpu_count']} cores; torch {r['torch']}, onnxruntime {r['onnxruntime']}"
        f"{', openvino ' + r['openvino'] if r['openvino'] else ''}. Best of {r['rounds']} rotated rounds; "
        f"load average {r['loadavg_before'][0]:.2f} before, {r['loadavg_after'][0]:.2f} after. "
        f"Export took {r['export_seconds']} s ({r['onnx_mib']} MiB).",
        "",
        "| batch | " + " | ".join(f"{n} img/s (share of matmul rate)" for n in names)
        + " | onnxruntime / torch fused | onnxruntime / torch plain |"
        + (" openvino / onnxruntime |" if "openvino" in names else ""),
        "|---" * (len(names) + 3 + ("openvino" in names)) + "|",
    ]
    for row in r["runs"]:
        cells = [f"{row['img_s'][n]} ({row['share_of_matmul_rate'][n]:.0%})" for n in names]
        extra = f" {row['openvino_over_onnxruntime']}x |" if "openvino" in names else ""
        lines.append(f"| {row['batch']} | " + " | ".join(cells)
                     + f" | {row['onnxruntime_over_torch_fused']}x | {row['onnxruntime_over_torch_plain']}x |" + extra)
    if r["runs"]:
        diffs = {n: max(row["max_abs_output_diff_vs_torch_fused"][n] for row in r["runs"])
                 for n in r["runs"][0]["max_abs_output_diff_vs_torch_fused"]}
        agree = {n: min(row["code_agreement_vs_torch_fused"][n] for row in r["runs"])
                 for n in r["runs"][0]["code_agreement_vs_torch_fused"]}
        lines += ["", "Largest output difference from torch fused: "
                  + ", ".join(f"{n} {d:.1e} (bits agreeing {agree[n]:.2%})" for n, d in diffs.items()) + "."]
    if r["skipped_batches"]:
        lines += ["", f"Skipped (over the time budget): batch {', '.join(map(str, r['skipped_batches']))}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
