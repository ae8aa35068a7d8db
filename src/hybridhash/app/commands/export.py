"""``hybridhash export``: a checkpoint -> an ONNX graph with its preprocessing and code length."""
from __future__ import annotations

import argparse

HELP = "export a checkpoint as an ONNX graph for onnxruntime, OpenVINO and other runtimes"
DESCRIPTION = (
    "Write the model of a project checkpoint as an ONNX graph: input 'images' (B, 3, S, S) float32, "
    "already resized, cropped and normalised; outputs 'outputs' (B, bits) float32 (the tanh outputs "
    "before the sign) and 'codes' (B, bits) int8 +-1 (an output >= 0 is +1). The batch dimension is "
    "free. The file's metadata_props carry what a consumer needs: hybridhash.bits, "
    "hybridhash.fingerprint (the model identity code collections record), hybridhash.preprocess "
    "(JSON: img_size, resize, mean, std, interpolation, pipeline) and the same fields as plain strings. "
    "Before the file is put in place, the graph is run on a few random images and compared with PyTorch. "
    "An existing --out is replaced only if it is an ONNX export of this project, or with --force. "
    "Needs the optional packages onnx and onnxruntime (pip install 'hybridhash[onnx]'); OpenVINO "
    "(pip install 'hybridhash[openvino]') runs the same file with --runtime openvino. "
    "With --calibrate DATASET it also writes the int8 quantization model.int8.onnx (calibrated on training "
    "images of DATASET) and calibration.json beside the export: for every runtime and precision this machine "
    "runs, the share of code bits equal to fp32's on held-out query images, the mAP change where DATASET "
    "has labels, and the speed; --precision auto reads them (docs/precision.md).")


def configure(p):
    from hybridhash.limits import ONNX_OPSET as DEFAULT_OPSET, ONNX_OPSET_CAP

    from .options import add_option, bounded
    from .vocabulary import code_length

    p.add_argument("--checkpoint", required=True,
                   help="project checkpoint directory (model.safetensors, config.json), or a run directory "
                        "(its bits*/best, else last)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the export format")
    p.add_argument("--out", default=None, help="the file to write (default: model.onnx in the checkpoint directory, "
                                                "where --runtime auto finds it)")
    add_option(p, "--bits", type=code_length(), default=None,
               help="which code length, when --checkpoint is a run directory holding several")
    add_option(p, "--opset", type=bounded(int, DEFAULT_OPSET, ONNX_OPSET_CAP), default=DEFAULT_OPSET,
               help=f"ONNX opset version ({DEFAULT_OPSET} or later; the installed torch says how far it goes)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="run the written graph with onnxruntime (else OpenVINO) and compare it with PyTorch")
    p.add_argument("--force", action="store_true", help="replace --out even if it is not a hybridhash export")
    from hybridhash.configs import COUNT

    from .options import from_bounds
    from .vocabulary import add_image_root

    p.add_argument("--calibrate", metavar="DATASET", default=None,
                   help="also quantize to int8 and measure each precision against fp32 on DATASET (a protocol "
                        "name, folder:DIR or list:DIR): its training images calibrate int8, its queries (and "
                        "database, for mAP) are the held-out images")
    add_option(p, "--calibrate-images", type=from_bounds(COUNT), default=256, metavar="N",
               help="held-out query images measured (the database for mAP: 2N; int8 is calibrated on N "
                    "training images)")
    # --data-root as every command names it, without the old --root spelling export never had
    add_option(p, "--data-root", dest="root", default=None, metavar="DIR", help="DATASET's folder, for --calibrate")
    add_image_root(p, help="where DATASET's list-file paths start, for --calibrate")



def _checkpoint(path: str, bits):
    from hybridhash.errors import CheckpointError
    from hybridhash.app.rundir import find_checkpoints

    found = find_checkpoints(path)
    if bits is not None:
        if bits not in found:
            raise CheckpointError(f"{path} holds no {bits}-bit checkpoint (it has {', '.join(map(str, found))} bits)")
        return found[bits]
    if len(found) > 1:
        raise CheckpointError(f"{path} holds checkpoints for {', '.join(map(str, found))} bits; choose one with --bits")
    return next(iter(found.values()))


def _check_out(out, force: bool) -> None:
    from hybridhash.errors import ConfigError
    from hybridhash.engines.exported import is_project_onnx

    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; name the .onnx file to write")
    if out.exists() and not force and not is_project_onnx(out):
        raise ConfigError(f"--out {out} exists and is not a hybridhash ONNX export; "
                          f"choose another path or pass --force to replace it")


def verify(model, path, n: int = 2, seed: int = 0):
    """(runtime name, largest |runtime - torch| output) on ``n`` random images, run by onnxruntime
    or, where only it is installed, OpenVINO; an error if they disagree."""
    import torch

    from hybridhash.codes import binarize
    from hybridhash.errors import HybridHashError
    from hybridhash.engines import onnx_available, openvino_available
    from hybridhash.engines.onnx import OnnxEncoder
    from hybridhash.engines.openvino import OpenVinoEncoder

    use_ov = not onnx_available() and openvino_available()
    name = "OpenVINO" if use_ov else "onnxruntime"
    enc = (OpenVinoEncoder if use_ov else OnnxEncoder).open(path)
    s = model.config.img_size
    x = torch.randn(n, model.config.in_chans, s, s, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = model.eval()(x)
    got = enc(x)
    diff = float((got - ref).abs().max())
    codes_ref = binarize(ref)
    # a code may flip only where the torch output is within float error of 0
    flipped = (enc.encode(x) != codes_ref) & (ref.abs() > 1e-4)
    if diff > 1e-3 or bool(flipped.any()):
        raise HybridHashError(f"{path}: the exported graph disagrees with PyTorch on {name} (max output "
                              f"difference {diff:.2e}); please report this with the model's config")
    return name, diff


def run(args) -> int:
    from pathlib import Path

    from hybridhash.errors import HybridHashError
    from hybridhash.export import export_onnx
    from hybridhash.fileio import atomic_path
    from hybridhash.engines import ONNX_NAME
    from hybridhash.models import from_pretrained

    ckpt = _checkpoint(args.checkpoint, args.bits)
    out = Path(args.out) if args.out is not None else Path(ckpt) / ONNX_NAME
    _check_out(out, args.force)
    model = from_pretrained(ckpt).eval()
    note = ""
    # written and verified beside --out, then renamed onto it: a graph that fails verification is
    # never where `--runtime auto` would find it
    with atomic_path(out) as tmp:
        export_onnx(model, tmp, opset=args.opset)
        if args.verify:
            try:
                name, diff = verify(model, tmp)
            except HybridHashError as err:  # named after the file it would have been
                raise HybridHashError(f"{out} not written: {str(err).replace(f'{tmp}: ', '')}") from None
            note = f"; {name} matches PyTorch (max output difference {diff:.1e})"
    size = out.stat().st_size / 2 ** 20
    print(f"wrote {out} ({model.config.preset}, {model.bits} bits, fingerprint {model.fingerprint}, "
          f"{size:.1f} MiB, opset {args.opset}){note}")
    if args.calibrate is not None:
        calibrate_on(ckpt, out, model, args)
    return 0


def _images(dataset, transform, n: int):
    """The first ``n`` images of a RetrievalSet, preprocessed: float32 (n', 3, S, S), and their labels."""
    import torch

    n = min(n, len(dataset))
    ds = dataset.with_transform(transform)
    return torch.stack([ds[i][0] for i in range(n)]) if n else None, dataset.labels[:n]


def calibrate_on(ckpt, out, model, args) -> None:
    """Quantize ``out`` to int8 on DATASET's training images and measure every path on its queries
    (``hybridhash.calibration``); prints one line per path."""
    from hybridhash.app.evaluation import class_ids_or_multihot
    from hybridhash.calibration import calibrate
    from hybridhash.data import load_protocol
    from hybridhash.data.transforms import eval_transform
    from hybridhash.engines import CALIBRATION_NAME
    from hybridhash.errors import DataError

    protocol = load_protocol(args.calibrate, args.root, image_root=args.image_root)
    tf, n = eval_transform(model), args.calibrate_images
    queries, q_labels = _images(protocol.query, tf, n)
    train, _ = _images(protocol.train, tf, n)
    if queries is None or train is None:
        raise DataError(f"--calibrate {args.calibrate}: needs query and training images, has "
                        f"{len(protocol.query)} and {len(protocol.train)}")
    labelled = getattr(protocol, "labelled", True)
    database, d_labels = _images(protocol.database, tf, 2 * n) if labelled else (None, None)
    if labelled:
        q_labels = class_ids_or_multihot(q_labels, protocol.multi_label)
        d_labels = class_ids_or_multihot(d_labels, protocol.multi_label)
    doc = calibrate(ckpt, out.parent, queries, query_labels=q_labels if labelled else None, database=database,
                    database_labels=d_labels, topk=protocol.topk, calibration_images=train.numpy(),
                    dataset=protocol.name)
    for e in doc["paths"]:
        m = "" if e["map"] is None else f", mAP {e['map']:.4f} ({e['map_change']:+.4f})"
        print(f"  {e['runtime']:>8} {e['precision']:>4}: bit agreement {e['agreement']:.4f}{m}, "
              f"{e['images_per_s']:.1f} images/s")
    print(f"wrote {out.parent / CALIBRATION_NAME} ({doc['held_out']} held-out images of {doc['dataset']})")
