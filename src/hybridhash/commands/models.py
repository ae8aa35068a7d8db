"""``hybridhash models``: list the presets, or describe one (sizes, parameters, preprocessing)."""
from __future__ import annotations

import json

HELP = "list model presets or describe one"


def configure(p):
    p.add_argument("name", nargs="?", help="a preset to describe (omit to list them all)")
    p.add_argument("--bits", type=int, default=64, help="code length")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    import hybridhash
    from hybridhash.models import build_config

    if not args.name:
        for name in hybridhash.list_models():
            cfg = build_config(name)
            print(f"{name:24s} {cfg.img_size:4d}px patch {cfg.patch_size}  dims {list(cfg.embed_dims)}  "
                  f"heads {list(cfg.num_heads)}  depths {list(cfg.depths)}")
        return 0
    model = hybridhash.create_model(args.name, bits=args.bits)
    info = {"name": args.name, "params": model.num_params(), "config": model.config.to_dict(),
            "preprocess": model.preprocess}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{args.name}: {info['params'] / 1e6:.2f} M parameters, {args.bits} bits")
        for k, v in model.config.to_dict().items():
            print(f"  {k:18s} {v}")
    return 0
