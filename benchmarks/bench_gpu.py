"""GPU figures in one short run: a training step of hybridhash_base against the original code's, and
encoding throughput.

Training step (forward in train mode, loss on the codes, backward, RMSprop), batch 64, 224 px:

- ``ours_bf16``: bf16 autocast, fused attention (the trainer's GPU setting);
- ``ours_bf16_compiled``: the same model under ``torch.compile`` (compile time reported apart);
- ``original_fp16``: the original code's model (``--original`` folder, as bench_train_step.py) with
  fp16 autocast and a GradScaler, as its training script runs; same weights, converted.

Encoding (``model.encode`` in inference mode): images/s at batch 64 and 256, fp32 and bf16 autocast.
Each side's figure is the median of ``--steps`` timed steps after ``--warmup`` untimed ones, sides
alternating by round. The whole run is sized to stay under about 8 minutes on one H100/H200-class GPU.

    python benchmarks/bench_gpu.py --original /path/to/HybridHash [--batch 64] [--steps 20]

Without CUDA it writes nothing and says so (``--device cpu --model hybridhash_cpu`` runs the same
code on the CPU, small, to check the script itself). Writes benchmarks/results/gpu.json and gpu.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import hybridhash

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import build_original, load_original  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model, x, *, dtype, raw: bool, scaler=None):
    """One optimiser step under autocast ``dtype`` (None: fp32); ``raw``: forward takes ``activate=False``."""
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-5, weight_decay=1e-5)
    device = x.device

    def step() -> None:
        model.train()
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            u = torch.tanh(model(x, activate=False)) if raw else model(x)
            loss = (u.float() - u.detach().float().sign()).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    return step


def encode_side(model, x, dtype):
    def run() -> None:
        ctx = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            model.eval().encode(x)
    return run


def time_sides(sides: dict, device, warmup: int, steps: int) -> dict:
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {n: [] for n in sides}
    names = list(sides)
    for r in range(steps):
        for n in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            sides[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
    return {n: {"median_s": round(statistics.median(t), 5), "best_s": round(min(t), 5)} for n, t in times.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", default=None, help="folder holding the original code (model/HybridHash.py)")
    p.add_argument("--model", default="hybridhash_base")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--encode-batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out", default=str(RESULTS / "gpu.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA GPU here (run it on a GPU machine; --device cpu checks the script)")
        return {"skipped": "no CUDA GPU"}
    t_start = time.perf_counter()
    torch.manual_seed(0)
    ours = hybridhash.create_model(args.model, bits=64).to(device)
    cfg = ours.config
    x = torch.randn(args.batch, 3, cfg.img_size, cfg.img_size, device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"model": args.model, "batch": args.batch, "img_size": cfg.img_size, "device": name,
              "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup}
    train = {"ours_bf16": train_step(ours, x, dtype=torch.bfloat16, raw=True)}
    if args.original and (Path(args.original) / "model" / "HybridHash.py").is_file():
        try:  # a one-off GPU run should keep its other figures if the original cannot run this preset
            theirs = build_original(load_original(Path(args.original)), cfg).to(device)
            ours.load_state_dict(hybridhash.convert_original_state_dict(theirs.state_dict()), strict=True)
            scaler = torch.amp.GradScaler(device.type) if device.type == "cuda" else None
            step = train_step(theirs, x, dtype=torch.float16 if scaler else None, raw=False, scaler=scaler)
            step()
            train["original_fp16"] = step
        except Exception as err:  # noqa: BLE001 - reported in the results, not hidden
            result["original_skipped"] = f"the original code failed: {type(err).__name__}: {str(err)[:200]}"
            print(result["original_skipped"])
    else:
        result["original_skipped"] = "no --original folder with model/HybridHash.py"
    if not args.no_compile:
        compiled = torch.compile(ours)
        t0 = time.perf_counter()
        step = train_step(compiled, x, dtype=torch.bfloat16, raw=True)
        step()
        sync(device)
        result["compile_s"] = round(time.perf_counter() - t0, 1)
        train["ours_bf16_compiled"] = step
    result["train"] = time_sides(train, device, args.warmup, args.steps)
    for n, r in result["train"].items():
        r["img_s"] = round(args.batch / r["median_s"], 1)
    if "original_fp16" in result["train"]:
        base = result["train"]["original_fp16"]["median_s"]
        for n, r in result["train"].items():
            r["speed_vs_original"] = round(base / r["median_s"], 3)
    enc = {}
    for b in args.encode_batches:
        xb = torch.randn(b, 3, cfg.img_size, cfg.img_size, device=device)
        for dname, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            enc[f"batch{b}_{dname}"] = encode_side(ours, xb, dtype)
    result["encode"] = time_sides(enc, device, args.warmup, max(3, args.steps // 2))
    for n, r in result["encode"].items():
        b = int(n[len("batch"):].split("_")[0])
        r["img_s"] = round(b / r["median_s"], 1)
    if device.type == "cuda":
        result["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# GPU: {args.model}, {cfg.img_size} px, on {name}", "",
             f"torch {torch.__version__}; medians of {args.steps} steps after {args.warmup} warm-up, sides "
             f"alternating; whole run {result['seconds']} s" + (f"; compile {result['compile_s']} s" if
                                                                "compile_s" in result else "") + ".", "",
             f"Training step, batch {args.batch}:", "", "| side | s/step | images/s | speed vs original |",
             "|---|---|---|---|"]
    for n, r in result["train"].items():
        lines.append(f"| {n} | {r['median_s']} | {r['img_s']} | {r.get('speed_vs_original', '-')} |")
    if "original_skipped" in result:
        lines += ["", f"Original not timed: {result['original_skipped']}."]
    lines += ["", "Encoding (`model.encode`, inference mode):", "", "| side | s/batch | images/s |", "|---|---|---|"]
    for n, r in result["encode"].items():
        lines.append(f"| {n} | {r['median_s']} | {r['img_s']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())
    return result


if __name__ == "__main__":
    main()
