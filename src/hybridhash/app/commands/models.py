"""``hybridhash models``: list the presets, or describe one (sizes, parameters, preprocessing).

Any timm model name works as a model too (a timm backbone with a linear hash layer).
"""
from __future__ import annotations

import json

HELP = "list model presets or describe one (any timm model name works too)"


def configure(p):
    p.add_argument("name", nargs="?", help="a preset or timm model to describe (omit to list the presets)")
    from .options import add_option
    from .vocabulary import code_length

    add_option(p, "--bits", type=code_length(), default=64, help="code length")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    import hybridhash
    from hybridhash.models import HybridHashConfig, build_config, list_models

    if not args.name:
        for name in list_models(arch="*"):
            cfg = build_config(name)
            if isinstance(cfg, HybridHashConfig):
                print(f"{name:24s} {cfg.img_size:4d}px patch {cfg.patch_size}  dims {list(cfg.embed_dims)}  "
                      f"heads {list(cfg.num_heads)}  depths {list(cfg.depths)}")
            else:
                print(f"{name:24s} {cfg.img_size:4d}px {cfg.arch}  widths {list(cfg.widths)}")
        print("any timm model name (e.g. resnet50, vit_base_patch16_224) also works: a timm backbone with a "
              "linear hash layer; `hybridhash models NAME` describes one")
        return 0
    import torch

    with torch.device("meta"):  # shapes only: describing a 1B-parameter ViT allocates nothing
        model = hybridhash.create_model(args.name, bits=args.bits)
    info = {"name": args.name, "arch": getattr(model.config, "arch", "hybridhash"), "params": model.num_params(),
            "config": model.config.to_dict(), "preprocess": model.preprocess}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{args.name}: {info['params'] / 1e6:.2f} M parameters, {args.bits} bits ({info['arch']})")
        for k, v in model.config.to_dict().items():
            print(f"  {k:18s} {v}")
        print(f"  {'preprocess':18s} {model.preprocess}")
    return 0
