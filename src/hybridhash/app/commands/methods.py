"""``hybridhash methods``: the hashing methods, their family and published settings, or one's
hyper-parameters (what ``train --method NAME --method-params JSON`` accepts)."""
from __future__ import annotations

import json

HELP = "list the hashing methods (family, published settings) or describe one"


def configure(p):
    p.add_argument("name", nargs="?", help="a method to describe (omit to list them all)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _describe(name: str) -> dict:
    from hybridhash.methods import create_method

    m = create_method(name, bits=64, n_class=10, num_train=100)
    return {"name": name, "family": m.family, "trains_on": m.trains_on, "activation": m.activation,
            "defaults": m.defaults.to_dict(),
            "hyper_parameters": m.config.to_dict(), "doc": " ".join((type(m.config).__doc__ or "").split())}


def run(args) -> int:
    from hybridhash.methods import list_methods

    names = [args.name] if args.name else list_methods()
    infos = [_describe(n) for n in names]
    if args.json:
        print(json.dumps(infos[0] if args.name else infos, indent=2))
        return 0
    if not args.name:
        w = max(len("method"), *(len(i["name"]) for i in infos))
        print(f"{'method':{w}s} {'family':12s} {'trains on':9s} {'activation':10s} {'optimiser':9s} {'lr':>8s} "
              f"{'wd':>8s} {'batch':>5s} {'epochs':>6s}")
        for i in infos:
            d = i["defaults"]
            print(f"{i['name']:{w}s} {i['family']:12s} {i['trains_on']:9s} {i['activation']:10s} {d['optimizer']:9s} "
                  f"{d['lr']:8.1e} {d['weight_decay']:8.1e} {d['batch_size']:5d} {d['epochs']:6d}")
        print("published settings apply when fine-tuning a pretrained model (the original recipe); models trained "
              "from scratch on small images share the scratch recipe. `hybridhash methods NAME` lists one's "
              "hyper-parameters.")
        from hybridhash.app.train.build import TRAINER_FEEDS

        waiting = [i["name"] for i in infos if i["trains_on"] not in TRAINER_FEEDS]
        if waiting:
            print(f"not trained by `train` or `compare` yet (they train on target features or two views, which the "
                  f"training loop does not feed): {', '.join(waiting)}.")
        return 0
    i = infos[0]
    print(f"{i['name']} ({i['family']}, activation {i['activation']}): {i['doc']}")
    print(f"trains on: {i['trains_on']}")
    print("published settings: " + ", ".join(f"{k} {v}" for k, v in i["defaults"].items()))
    print("hyper-parameters (--method-params JSON): "
          + ", ".join(f"{k}={v!r}" for k, v in i["hyper_parameters"].items()))
    return 0
