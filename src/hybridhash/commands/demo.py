"""``hybridhash demo``: the smallest honest end-to-end run on the embedded digits."""
from __future__ import annotations

HELP = "run the end-to-end demo on scikit-learn's digits"


def configure(p):
    p.add_argument("--count", type=int, default=8, help="digits to encode")
    p.add_argument("--bits", type=int, default=16)


def run(args) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    import hybridhash

    torch.manual_seed(0)
    digits = load_digits()
    model = hybridhash.create_model("hybridhash_cpu", bits=args.bits).eval()
    x = torch.tensor(digits.images[: args.count], dtype=torch.float32) / 16.0  # (n, 8, 8)
    x = F.interpolate(x[:, None], size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean = torch.tensor(model.preprocess["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocess["std"]).view(1, 3, 1, 1)
    codes = model.encode((x - mean) / std).numpy()
    print(f"{model.config.preset}: {model.num_params() / 1e6:.2f} M parameters, untrained, {args.bits} bits")
    for label, code in zip(digits.target[: args.count], codes):
        print(f"digit {label}: {''.join('1' if c > 0 else '0' for c in code)}")
    return 0
