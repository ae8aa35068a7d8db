"""``hybridhash methods``: the hashing methods, their family and published settings, or one's
hyper-parameters (what ``train --method NAME --method-params JSON`` accepts)."""
from __future__ import annotations

import json

HELP = "list the hashing methods (family, published settings) or describe one"


def configure(p):
    p.add_argument("name", nargs="?", help="a method to describe (omit to list them all)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _describe_baseline(name: str) -> dict:
    """A training-free baseline: fitted by ``train`` on the features of --model, no optimiser."""
    from hybridhash.methods.shallow import shallow_class

    cls = shallow_class(name)
    return {"name": name, "family": "shallow", "trains_on": "features", "activation": "sign",
            "fits_on": "the training images' features under --model: pixels, a model's pre-hash features (a timm "
                       "backbone, --pretrained imagenet on a machine that can download), or a checkpoint directory",
            "defaults": None, "hyper_parameters": cls.Config().to_dict(), "doc": cls.summary + "."}


def _describe(name: str) -> dict:
    from hybridhash.methods import create_method, is_training_free

    if is_training_free(name):
        return _describe_baseline(name)
    m = create_method(name, bits=64, n_class=10, num_train=100)
    return {"name": name, "family": m.family, "trains_on": m.trains_on, "activation": m.activation,
            "defaults": m.defaults.to_dict(),
            "hyper_parameters": m.config.to_dict(), "doc": " ".join((type(m.config).__doc__ or "").split())}


def run(args) -> int:
    from hybridhash.methods import SHALLOW, list_methods

    names = [args.name] if args.name else list_methods() + sorted(SHALLOW)
    infos = [_describe(n) for n in names]
    if args.json:
        print(json.dumps(infos[0] if args.name else infos, indent=2))
        return 0
    if not args.name:
        w = max(len("method"), *(len(i["name"]) for i in infos))
        f = max(len("family"), *(len(i["family"]) for i in infos))
        print(f"{'method':{w}s} {'family':{f}s} {'trains on':9s} {'activation':10s} {'optimiser':9s} {'lr':>8s} "
              f"{'wd':>8s} {'batch':>5s} {'epochs':>6s}")
        for i in infos:
            d = i["defaults"]
            if d is None:  # a training-free baseline: nothing to optimise
                print(f"{i['name']:{w}s} {i['family']:{f}s} {i['trains_on']:9s} {i['activation']:10s} {'fitted':9s} "
                      f"{'-':>8s} {'-':>8s} {'-':>5s} {'-':>6s}")
                continue
            print(f"{i['name']:{w}s} {i['family']:{f}s} {i['trains_on']:9s} {i['activation']:10s} {d['optimizer']:9s} "
                  f"{d['lr']:8.1e} {d['weight_decay']:8.1e} {d['batch_size']:5d} {d['epochs']:6d}")
        print("published settings apply when fine-tuning a pretrained model (the original recipe); models trained "
              "from scratch on small images share the scratch recipe. `hybridhash methods NAME` lists one's "
              "hyper-parameters.")
        if any(i["defaults"] is None for i in infos):
            print("shallow: training-free baselines, fitted by `train --method NAME --model pixels` (or a model's "
                  "pre-hash features) in one pass over the training images.")
        unsupervised = [i["name"] for i in infos if i["trains_on"] in ("targets", "views")]
        if unsupervised:
            print(f"without labels (data with or without them; see docs/unsupervised.md): {', '.join(unsupervised)}.")
        return 0
    i = infos[0]
    print(f"{i['name']} ({i['family']}, activation {i['activation']}): {i['doc']}")
    if i["defaults"] is None:
        print(f"fitted, not trained, on {i['fits_on']}")
        print("options (--method-params JSON): "
              + (", ".join(f"{k}={v!r}" for k, v in i["hyper_parameters"].items()) or "none"))
        return 0
    print(f"trains on: {i['trains_on']}")
    print("published settings: " + ", ".join(f"{k} {v}" for k, v in i["defaults"].items()))
    print("hyper-parameters (--method-params JSON): "
          + ", ".join(f"{k}={v!r}" for k, v in i["hyper_parameters"].items()))
    return 0
