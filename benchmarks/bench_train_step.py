"""One training step of HybridHash against the original code's model, on the same weights and batch.

A step is what the trainer does per batch: forward in train mode (DropPath active), a loss on the
tanh of the raw hash-layer outputs, backward, RMSprop step. The original model (its
``model/HybridHash.py``, from the folder given as ``--original``; never part of this project) is
built first, its state dict is converted with ``hybridhash.convert_original_state_dict`` and loaded
strictly into ours, and the two eval-mode outputs are compared as a check that the weights match.
Then each round times one step of each side, the order alternating from round to round, so a change
of load on the shared machine hits both alike; a side's figure is its best round (medians kept too).
``ours`` runs as the trainer does (linears on the GEMM the process chose, see
hybridhash.models.cpu_gemm); ``ours_mkl`` is the same model and optimiser with every linear on
PyTorch's own GEMM, to show what that choice gives; ``ours_bf16`` is our step as the trainer runs it
under bf16 autocast (fp32 master weights; the trainer's choice where the CPU has AVX512-BF16 or
AMX-BF16; on a CPU without them it is emulated, far slower, and timed only with ``--bf16``).

    python benchmarks/bench_train_step.py --original /tmp/orig_hybridhash [--model hybridhash_base]
        [--batch 8] [--rounds 3] [--bf16 | --no-bf16]

Without ``--original`` (or when the folder lacks model/HybridHash.py) only our step is timed and the
comparison is skipped with the reason. Writes benchmarks/results/train_step.json and train_step.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from machine import cpu_model

import hybridhash
from hybridhash.precision import cpu_has_bf16_units, unit_flags

RESULTS = Path(__file__).resolve().parent / "results"


def load_original(folder: Path):
    """Import the original ``model/HybridHash.py`` from ``folder``; returns the module.

    Its imports name helpers a current timm no longer has (``timm.models.layers.helpers``) and a
    feature-extraction module of its own repository used only for a decorator; both are stubbed so
    the file imports unchanged.
    """
    import timm.models.layers as layers

    if not hasattr(layers, "helpers"):
        layers.helpers = types.ModuleType("timm.models.layers.helpers")
    fx = types.ModuleType("utils.fx_features")
    fx.register_notrace_function = lambda fn: fn
    sys.modules.setdefault("utils", types.ModuleType("utils"))
    sys.modules["utils.fx_features"] = fx
    spec = importlib.util.spec_from_file_location("original_hybridhash", folder / "model" / "HybridHash.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_original(module, cfg):
    return module.HybridHash({"n_class": 10, "patch_size": cfg.patch_size, "img_size": cfg.img_size,
                              "in_chans": cfg.in_chans, "bit": cfg.bits},
                             embed_dims=cfg.embed_dims, num_heads=cfg.num_heads, depths=cfg.depths,
                             drop_path_rate=cfg.drop_path_rate)


def make_step(model, x, raw: bool, precision: str = "fp32"):
    """A closure running one training step; ``raw``: the model's forward takes ``activate=False``;
    ``precision``: the trainer's ``bf16`` autocast or ``fp32``."""
    from hybridhash.environment import precision_autocast

    opt = torch.optim.RMSprop(model.parameters(), lr=1e-5, weight_decay=1e-5)

    def step() -> float:
        model.train()
        with precision_autocast(x.device, precision):
            h = model(x, activate=False).float() if raw else None
        u = torch.tanh(h) if raw else model(x)  # the original's forward ends in its tanh
        loss = (u - u.detach().sign()).pow(2).mean()  # any loss of the codes: its cost is nothing
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", default=None, help="folder holding the original code (model/HybridHash.py)")
    p.add_argument("--model", default="hybridhash_base")
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="time the bf16 autocast step too (default: where the CPU has bf16 units)")
    p.add_argument("--out", default=str(RESULTS / "train_step.json"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    ours = hybridhash.create_model(args.model, bits=args.bits)
    cfg = ours.config
    x = torch.randn(args.batch, 3, cfg.img_size, cfg.img_size)
    result = {"model": args.model, "bits": args.bits, "batch": args.batch, "img_size": cfg.img_size,
              "cpu": cpu_model(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "fused_attn": cfg.fused_attn,
              "loadavg_before": os.getloadavg()}
    sides = {}
    folder = Path(args.original) if args.original else None
    if folder is None or not (folder / "model" / "HybridHash.py").is_file():
        result["original_skipped"] = ("no --original given" if folder is None
                                      else f"{folder}/model/HybridHash.py does not exist")
        print("original skipped:", result["original_skipped"])
    else:
        theirs = build_original(load_original(folder), cfg)
        ours.load_state_dict(hybridhash.convert_original_state_dict(theirs.state_dict()), strict=True)
        with torch.no_grad():
            probe = x[:2]
            diff = (ours.eval()(probe) - theirs.eval()(probe)).abs().max().item()
        result["max_abs_eval_output_diff"] = diff
        print(f"eval outputs, ours against original: max abs diff {diff:.2e}")
        sides["original"] = make_step(theirs, x, raw=False)
    from hybridhash.models import cpu_gemm

    chosen = cpu_gemm.cpu_gemm()
    ours_step = make_step(ours, x, raw=True)

    def on(gemm):
        def step():
            cpu_gemm.set_cpu_gemm(gemm)
            return ours_step()
        return step

    sides["ours"] = on(chosen)  # as the trainer runs: linears on the GEMM the process chose
    if chosen != "aten":
        sides["ours_mkl"] = on("aten")  # the same model with every linear on PyTorch's own GEMM
    if args.bf16 or (args.bf16 is None and cpu_has_bf16_units()):  # the same weights, its own optimiser; under autocast every linear is PyTorch's
        bf16 = make_step(ours, x, raw=True, precision="bf16")
        sides["ours_bf16"] = lambda: (cpu_gemm.set_cpu_gemm(chosen), bf16())[1]
    result["cpu_gemm"] = chosen
    result["unit_flags"], result["bf16_units"] = list(unit_flags()), cpu_has_bf16_units()
    for name, step in sides.items():  # warm-up: allocator, optimiser state
        step()
    times = {name: [] for name in sides}
    names = list(sides)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - t0)
        print(f"round {r}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names))
    result["loadavg_after"] = os.getloadavg()
    result["seconds"] = {n: {"best": round(min(t), 3), "median": round(statistics.median(t), 3),
                             "all": [round(v, 3) for v in t]} for n, t in times.items()}
    if "original" in times:
        result["ours_over_original_time_best"] = round(min(times["ours"]) / min(times["original"]), 3)
        result["ours_over_original_time_median"] = round(
            statistics.median(times["ours"]) / statistics.median(times["original"]), 3)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Training step: {args.model}, batch {args.batch}, {cfg.img_size} px (CPU)", "",
             f"CPU {result['cpu']}; bf16/int8 unit flags: {', '.join(result['unit_flags']) or 'none'}. "
             f"forward (train mode) + backward + RMSprop; {result['threads']} threads; torch {torch.__version__}; "
             f"{args.rounds} alternating rounds after one warm-up step each; load average "
             f"{result['loadavg_before'][0]:.2f} before, {result['loadavg_after'][0]:.2f} after.", ""]
    if "original_skipped" in result:
        lines += [f"Original not timed: {result['original_skipped']}.", ""]
    else:
        lines += [f"Same weights (converted from the original's state dict); eval outputs differ by at most "
                  f"{result['max_abs_eval_output_diff']:.1e}.", ""]
    lines += ["| side | best s/step | median s/step | images/s (best) |", "|---|---|---|---|"]
    for n, s in result["seconds"].items():
        lines.append(f"| {n} | {s['best']} | {s['median']} | {args.batch / s['best']:.2f} |")
    if "ours_over_original_time_best" in result:
        lines += ["", f"Time ours / original: {result['ours_over_original_time_best']} (best), "
                      f"{result['ours_over_original_time_median']} (median); below 1 means ours is faster."]
    if "ours_bf16" in result["seconds"]:
        units = "on the CPU's bf16 units" if result["bf16_units"] else "emulated (this CPU has no bf16 units)"
        lines += ["", f"ours_bf16: bf16 autocast, fp32 master weights, {units}; time ours_bf16 / ours "
                      f"{result['seconds']['ours_bf16']['best'] / result['seconds']['ours']['best']:.3f} (best)."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())
    return result


if __name__ == "__main__":
    main()
