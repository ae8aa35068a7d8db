"""Encoding throughput of hybridhash_base: fused attention against the written-out softmax(QK^T)V.

Both runs use the same model object and weights (only the attention kernel is switched), so the
ratio isolates the attention implementation. The achieved FLOP rate is compared with a large fp32
matrix product measured in the same run, the practical ceiling of this machine. On a GPU (when
one is present) bf16 autocast and torch.compile are measured too, against fp32 plain attention.

    python benchmarks/bench_model.py [--batches 8 64] [--repeats 3] [--model hybridhash_base]

Writes benchmarks/results/model.json and model.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import hybridhash

RESULTS = Path(__file__).parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_forward(model, x, repeats: int, autocast_dtype=None) -> float:
    """Best-of-``repeats`` seconds for one forward pass (after one warm-up pass)."""
    device = x.device
    ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else torch.autocast(device.type, enabled=False))
    best = float("inf")
    with torch.inference_mode(), ctx:
        model(x)
        sync(device)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            sync(device)
            best = min(best, time.perf_counter() - t0)
    return best


def matmul_rate(device: torch.device, n: int = 4096, repeats: int = 5) -> float:
    """fp32 FLOP/s of an n x n matrix product (2 n^3 FLOPs)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def onednn_matmul_rate(n: int = 4096, repeats: int = 5) -> float:
    """fp32 FLOP/s of an n x n product on oneDNN's packed linear (what hybridhash.models.cpu_gemm
    runs CPU inference linears on), or 0.0 where this PyTorch has none."""
    from hybridhash.models import cpu_gemm

    ops = cpu_gemm._op()
    if ops is None:
        return 0.0
    reorder, linear = ops
    a, w = torch.randn(n, n), torch.randn(n, n)
    with torch.inference_mode():
        packed = reorder(w, n)
        linear(a, packed, None, "none", [], "")
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            linear(a, packed, None, "none", [], "")
            best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def count_flops(model, img_size: int) -> int:
    """FLOPs of one image's forward pass (matmuls and convolutions; plain attention so bmm is counted)."""
    from hybridhash.models import cpu_gemm

    fused, gemm = model.config.fused_attn, cpu_gemm._choice
    model.set_fused_attn(False)
    cpu_gemm.set_cpu_gemm("aten")  # the counter knows aten's linear, not oneDNN's
    x = torch.randn(1, 3, img_size, img_size, device=next(model.parameters()).device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    model.set_fused_attn(fused)
    cpu_gemm._choice = gemm
    return counter.get_total_flops()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hybridhash_base")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--out", default=str(RESULTS / "model.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = hybridhash.create_model(args.model, bits=args.bits).eval().to(device)
    size = model.config.img_size
    flops = count_flops(model, size)
    ceiling = matmul_rate(device)
    result = {
        "model": args.model, "bits": args.bits, "img_size": size, "device": str(device),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "loadavg_before": os.getloadavg(),
        "params": model.num_params(), "params_millions": round(model.num_params() / 1e6, 2),
        "gmac_per_image": round(flops / 2 / 1e9, 3),
        "matmul_fp32_gflops": round(ceiling / 1e9, 1),
        "runs": [],
    }
    for batch in args.batches:
        x = torch.randn(batch, 3, size, size, device=device)
        with torch.inference_mode():
            out_fused = model.set_fused_attn(True)(x)
            out_plain = model.set_fused_attn(False)(x)
        max_diff = (out_fused - out_plain).abs().max().item()
        t_plain = time_forward(model.set_fused_attn(False), x, args.repeats)
        t_fused = time_forward(model.set_fused_attn(True), x, args.repeats)
        row = {
            "batch": batch,
            "plain_attention_img_s": round(batch / t_plain, 2),
            "fused_attention_img_s": round(batch / t_fused, 2),
            "speedup_fused_over_plain": round(t_plain / t_fused, 3),
            "max_abs_output_diff": max_diff,
            "fused_fraction_of_matmul_rate": round(flops * batch / t_fused / ceiling, 3),
            "plain_fraction_of_matmul_rate": round(flops * batch / t_plain / ceiling, 3),
        }
        if device.type == "cuda":
            t_bf16 = time_forward(model, x, args.repeats, autocast_dtype=torch.bfloat16)
            compiled = torch.compile(model)
            t_comp = time_forward(compiled, x, args.repeats, autocast_dtype=torch.bfloat16)
            row.update({
                "bf16_fused_img_s": round(batch / t_bf16, 2),
                "bf16_fused_compiled_img_s": round(batch / t_comp, 2),
                "speedup_bf16_compiled_over_fp32_plain": round(t_plain / t_comp, 3),
            })
        result["runs"].append(row)
        print(json.dumps(row))
    # the ceiling is re-measured at the end: on a shared machine the best of both is the honest one
    ceiling_end = matmul_rate(device)
    if ceiling_end > ceiling:
        for row in result["runs"]:
            for key in ("fused_fraction_of_matmul_rate", "plain_fraction_of_matmul_rate"):
                row[key] = round(row[key] * ceiling / ceiling_end, 3)
        ceiling = ceiling_end
        result["matmul_fp32_gflops"] = round(ceiling / 1e9, 1)
    result["loadavg_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# {args.model} encoding throughput ({device}, fp32, inference mode, {size}x{size})",
        "",
        f"{result['params_millions']} M parameters, {result['gmac_per_image']} GMac per image; "
        f"fp32 matmul ceiling {result['matmul_fp32_gflops']} GFLOP/s; {result['threads']} threads; "
        f"load average before {result['loadavg_before'][0]:.2f}.",
        "",
        "| batch | plain attention img/s | fused img/s | fused / plain | share of matmul rate (fused) | max output diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(f"| {r['batch']} | {r['plain_attention_img_s']} | {r['fused_attention_img_s']} | "
                     f"{r['speedup_fused_over_plain']}x | {r['fused_fraction_of_matmul_rate']:.0%} | "
                     f"{r['max_abs_output_diff']:.1e} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())
    return result


if __name__ == "__main__":
    main()
