"""Encode a protocol's sets with a model and score the retrieval (the metrics are defined in docs/faithfulness.md, "Metrics").

``retrieval_metrics`` computes every figure of ``metrics.json`` from codes and labels;
``evaluate_model`` encodes a protocol's queries and database (:func:`hybridhash.engines.encoding.encode_images`,
the one images -> codes path) and scores them.
"""
from __future__ import annotations

import os
import logging
import time
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

from .. import metrics as M
from ..metrics.graded import STABLE
from . import rundir as R
from ..codes import hamming_topk
from ..engines.encoding import encode_images
from ..environment import pick_device
from ..errors import DataError

_log = logging.getLogger(__name__)

# the multi-label figures at the protocol's K shown in tables (acg -> ACG, ndcg -> NDCG, wap -> WAP)
GRADED = {key: key.upper() for key in STABLE}

# points of the precision@N curve, capped at the database size
PRECISION_AT_N = (1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


def _ns(n_database: int) -> list:
    ns = [n for n in PRECISION_AT_N if n <= n_database]
    if n_database not in ns and n_database < PRECISION_AT_N[-1]:
        ns.append(n_database)
    return ns


def retrieval_metrics(query_codes: np.ndarray, database_codes: np.ndarray, query_labels: np.ndarray,
                      database_labels: np.ndarray, topk: Optional[int] = None, *, curves: bool = True,
                      radius: int = 2, graded: bool = False) -> Dict[str, Any]:
    """Every figure of a retrieval evaluation.

    Args:
        query_codes, database_codes: +-1 (n, bits).
        query_labels, database_labels: multi-hot (n, C) or class ids (n,).
        topk: the protocol's K (None: the whole database).
        curves: also compute the PR curve over Hamming radius and precision@N.
        graded: also the multi-label figures at K (relevance = labels shared).

    Returns:
        dict: ``map`` (mAP@K with ties broken by database index), ``map_tie_aware`` (mAP@K averaged
        over the orders of equal distances), ``topk`` ("all" or K), ``precision_within_radius``
        (at ``radius``), with ``curves`` the ``pr_curve`` {radius, precision, recall} and
        ``precision_at_n`` {n, precision} lists, and with ``graded`` ``acg``, ``ndcg``, ``wap``
        (ACG@K, NDCG@K, weighted mAP@K), ``acg_tie_aware`` and ``ndcg_tie_aware``.
    """
    if len(query_codes) == 0 or len(database_codes) == 0:
        raise DataError(f"cannot score retrieval with {len(query_codes)} queries and {len(database_codes)} "
                        "database items")
    args = (query_codes, database_codes, query_labels, database_labels)
    out: Dict[str, Any] = {
        "topk": "all" if topk is None else int(topk),
        "n_query": int(len(query_codes)),
        "n_database": int(len(database_codes)),
        "map": M.mean_average_precision(*args, topk=topk),
        "map_tie_aware": M.tie_aware_mean_average_precision(*args, topk=topk),
    }
    if graded:
        out.update(M.graded_scores(*args, topk=topk))
    if curves:
        r, p, rc = M.precision_recall_by_radius(*args)
        out["radius"] = radius
        out["precision_within_radius"] = float(p[min(radius, p.size - 1)])
        out["pr_curve"] = {"radius": r.tolist(), "precision": p.tolist(), "recall": rc.tolist()}
        ns = _ns(len(database_codes))
        out["precision_at_n"] = {"n": ns, "precision": M.precision_at_n(*args, ns).tolist()}
    return out


def class_ids_or_multihot(labels: np.ndarray, multi_label: bool) -> np.ndarray:
    """Single-label multi-hot rows as class ids (the cheaper form for the metrics); multi-label as is."""
    labels = np.asarray(labels)
    return labels.argmax(1) if (not multi_label and labels.ndim == 2) else labels


def evaluate_model(model: torch.nn.Module, protocol, *, batch_size: int = 256, device: str = "cpu",
                   workers: int = 0, amp: bool = False, curves: bool = True, progress: bool = False,
                   transform=None) -> Dict[str, Any]:
    """Encode ``protocol.query`` and ``protocol.database`` with ``model``, then score them.

    ``transform`` is the eval pipeline (default: the model's, see ``hybridhash.data.transforms.eval_transform``).
    Returns :func:`retrieval_metrics`'s dict plus ``codes`` {"query", "database"} (int8 arrays)
    and ``encode_seconds``.
    """
    if transform is None:
        from ..data.transforms import eval_transform

        transform = eval_transform(model)
    t0 = time.perf_counter()
    codes = {}
    for name in ("query", "database"):
        ds = getattr(protocol, name).with_transform(transform)
        codes[name] = encode_images(model, ds, batch_size=batch_size, device=device, workers=workers, amp=amp,
                                    progress=f"encode {name}" if progress else None)
    t1 = time.perf_counter()
    ql = class_ids_or_multihot(protocol.query.labels, protocol.multi_label)
    dl = class_ids_or_multihot(protocol.database.labels, protocol.multi_label)
    out = retrieval_metrics(codes["query"], codes["database"], ql, dl, protocol.topk, curves=curves,
                            graded=bool(protocol.multi_label))
    out["encode_seconds"] = t1 - t0
    out["codes"] = codes
    return out


# --------------------------------------------------------------------------------------------
# checkpoints of a run -> metrics.json and figures

def load_eval_protocol(checkpoint: "Path", *, dataset: Optional[str] = None, root=None, image_root=None,
                       split_file=None, seed: int = 0, download: bool = False, max_pixels: Optional[int] = None):
    """The protocol to evaluate on: the training run's recorded split unless another dataset is named.
    ``max_pixels``: the largest image decoded (None: the project's limit)."""
    import os
    from pathlib import Path

    from ..data import load_protocol
    from ..errors import ConfigError
    from ..fileio import read_json

    limit = {} if max_pixels is None else {"max_pixels": max_pixels}
    run_dir = R.find_run_dir(Path(checkpoint).resolve())
    saved: Dict[str, Any] = {}
    if run_dir is not None and (run_dir / R.RUN_NAME).is_file():
        saved = read_json(run_dir / R.RUN_NAME).get("config", {})
    if split_file is None and run_dir is not None:
        recorded = read_json(run_dir / R.SPLIT_NAME).get("name")
        if dataset is None or dataset == recorded:
            split_file = run_dir / R.SPLIT_NAME
            dataset = recorded
    if split_file is not None:
        if dataset is None:
            dataset = read_json(split_file).get("name")
        same = dataset == saved.get("dataset")
        root = root if root is not None else (saved.get("root") if same else None)
        image_root = image_root if image_root is not None else (saved.get("image_root") if same else None)
        return load_protocol(dataset, root, image_root=image_root, split_file=os.fspath(split_file),
                             download=download, **limit)
    if dataset is None:
        raise ConfigError(f"{checkpoint}: no recorded split beside it; name the data with --dataset")
    return load_protocol(dataset, root, image_root=image_root, seed=seed, download=download, **limit)


def evaluate_checkpoints(checkpoint, out, *, protocol=None, dataset: Optional[str] = None, root=None,
                         image_root=None, split_file=None, seed: int = 0, device: str = "auto",
                         batch_size: int = 256, workers: int = 0, n_queries: int = 6, k: int = 10,
                         progress: bool = False, download: bool = False,
                         max_pixels: Optional[int] = None, precision: str = "fp32") -> Dict[str, Any]:
    """Evaluate every checkpoint under ``checkpoint`` and write ``out/metrics.json`` and figures.

    Writes ``metrics.json`` ({"dataset", "split_hash", "results": {bits: retrieval_metrics + checkpoint
    facts}}), ``pr_curve.png``, ``precision_at_n.png``, ``map_vs_bits.png`` (two or more code lengths)
    and ``retrieval_bits{N}.png`` (``n_queries`` queries with their top ``k``), and the codes as
    ``codes_bits{N}.npz`` (query, database). ``max_pixels``: the largest image decoded (None: the
    project's limit). ``precision``: the PyTorch models' (fp32, bf16 or auto; each checkpoint's
    figure is recorded as ``precision``). Returns the metrics document.
    """
    from pathlib import Path

    from ..fileio import disk_full
    from ..precision import check_runtime_precision

    check_runtime_precision("torch", precision)  # int8 refused before any work
    from ..outdir import check_claim, claim

    dev = pick_device(device)  # an unusable --device is refused before any work
    ckpts = R.find_checkpoints(checkpoint)
    out = Path(out)
    check_claim(out, "evaluation", legacy=is_evaluation_dir)  # a folder of other files: refused before any work
    if protocol is None:
        protocol = load_eval_protocol(next(iter(ckpts.values())), dataset=dataset, root=root,
                                      image_root=image_root, split_file=split_file, seed=seed, download=download,
                                      max_pixels=max_pixels)
    claim(out, "evaluation", legacy=is_evaluation_dir)
    # every file is written whole or not at all; a full disk names the directory and what is kept
    with disk_full(out, "no file was left half written; files of an earlier evaluation there are as they were"):
        return _evaluate_into(out, ckpts, protocol, dev, batch_size, workers, progress, n_queries, k, precision)


def _evaluate_into(out, ckpts, protocol, dev, batch_size: int, workers: int, progress: bool, n_queries: int,
                   k: int, precision: str = "fp32") -> Dict[str, Any]:
    """The body of :func:`evaluate_checkpoints` once ``out`` is claimed: evaluate, write, return the document."""
    from . import report
    from ..collection import save_npz
    from ..data.transforms import eval_transform
    from ..fileio import write_json
    from ..engines import auto_precision
    from ..engines.pytorch import set_precision
    from ..models import from_pretrained

    if not getattr(protocol, "labelled", True):
        return _evaluate_unlabelled(out, ckpts, protocol, dev, batch_size, workers, progress)
    results: Dict[int, Dict[str, Any]] = {}
    for bits, ck in ckpts.items():
        model = from_pretrained(ck, map_location=str(dev))
        chosen = auto_precision(ck, "torch", str(dev)) if precision == "auto" else precision
        set_precision(model, chosen, str(dev))
        res = evaluate_model(model, protocol, batch_size=batch_size, device=str(dev), workers=workers,
                             progress=progress, transform=eval_transform(model))
        res["precision"] = chosen
        codes = res.pop("codes")
        save_npz(out / f"codes_bits{bits}.npz", query=codes["query"], database=codes["database"])
        res.update(_provenance(model, ck))
        results[bits] = res
        _retrieval_figure(protocol, codes, out / f"retrieval_bits{bits}.png", n_queries, k)
    doc = {"dataset": protocol.name, "split_hash": protocol.split_record()["hash"],
           "topk": "all" if protocol.topk is None else protocol.topk,
           "results": {str(b): r for b, r in results.items()},
           "warnings": list(getattr(protocol, "warnings", []))}
    write_json(out / "metrics.json", doc)
    report.plot_pr_curves(results, out / "pr_curve.png", f"{protocol.name}: precision-recall")
    report.plot_precision_at_n(results, out / "precision_at_n.png", f"{protocol.name}: precision@N")
    if len(results) > 1:
        tk = doc["topk"]
        report.plot_map_vs_bits({"mAP": {b: r["map"] for b, r in results.items()},
                                 "tie-aware mAP": {b: r["map_tie_aware"] for b, r in results.items()}},
                                out / "map_vs_bits.png", ylabel=f"mAP@{tk}", title=f"{protocol.name}: mAP@{tk}")
    return doc


def copy_score(model: torch.nn.Module, dataset, *, seed: int = 0, batch_size: int = 256, device="cpu",
               workers: int = 0, progress: bool = False, transform=None, dataset_name=None,
               originals: Optional[np.ndarray] = None, amp: bool = False, preprocess=None) -> Dict[str, Any]:
    """The label-free score of ``model`` on ``dataset`` (a ``RetrievalSet``): each image's fixed
    augmented copy (seeded by ``seed`` and its row) retrieved among the originals
    (:func:`hybridhash.metrics.copy_retrieval_map`), with the chance level and the codes.
    ``originals``: the dataset's codes when the caller has them already (n, bits); ``preprocess``:
    the copies' pipeline (default the model's)."""
    from ..data.transforms import eval_transform
    from ..data.views import seeded_copies
    from ..metrics.copies import chance_level, copy_retrieval_map

    if originals is None:
        originals = encode_images(model, dataset.with_transform(transform or eval_transform(model)),
                                  batch_size=batch_size, device=device, workers=workers, amp=amp,
                                  progress="encode originals" if progress else None)
    copy_codes = encode_images(model, seeded_copies(dataset, preprocess or model.preprocess, seed, dataset_name),
                               batch_size=batch_size, device=device, workers=workers, amp=amp,
                               progress="encode copies" if progress else None)
    return {"copy_map": copy_retrieval_map(originals, copy_codes), "chance": chance_level(len(originals)),
            "n": len(originals), "codes": {"originals": originals, "copies": copy_codes}}


def _provenance(model: torch.nn.Module, checkpoint) -> Dict[str, Any]:
    """Where an evaluated model came from: its checkpoint, fingerprint, epoch and training data."""
    extra = (getattr(model, "checkpoint_meta", {}) or {}).get("extra", {})
    return {"checkpoint": str(checkpoint), "fingerprint": getattr(model, "fingerprint", None),
            "epoch": extra.get("epoch"), "trained_on": extra.get("dataset")}


def _evaluate_unlabelled(out, ckpts, protocol, dev, batch_size: int, workers: int, progress: bool) -> Dict[str, Any]:
    """Data without labels has no mAP: each checkpoint's copy score on the query images instead."""
    from ..collection import save_npz
    from ..fileio import write_json
    from ..models import from_pretrained

    results: Dict[int, Dict[str, Any]] = {}
    for bits, ck in ckpts.items():
        model = from_pretrained(ck, map_location=str(dev))
        res = copy_score(model, protocol.query, seed=protocol.seed, batch_size=batch_size, device=str(dev),
                         workers=workers, progress=progress, dataset_name=protocol.name)
        codes = res.pop("codes")
        save_npz(out / f"codes_bits{bits}.npz", query=codes["originals"], copies=codes["copies"])
        res.update(_provenance(model, ck))
        results[bits] = res
    doc = {"dataset": protocol.name, "split_hash": protocol.split_record()["hash"], "labelled": False,
           "score": "copy_map: each query image's augmented copy retrieved among the query images (no labels)",
           "results": {str(b): r for b, r in results.items()}, "warnings": list(getattr(protocol, "warnings", []))}
    write_json(out / "metrics.json", doc)
    return doc


def is_evaluation_dir(directory) -> bool:
    """True for a directory evaluation wrote before it marked its directories (its metrics.json)."""
    from pathlib import Path

    from ..fileio import read_json

    try:
        doc = read_json(Path(directory) / "metrics.json")
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("results"), dict) and "split_hash" in doc


def _retrieval_figure(protocol, codes: Dict[str, np.ndarray], path, n_queries: int, k: int) -> None:
    from . import report

    if n_queries <= 0:
        return
    qrows = report.pick_queries(protocol.query.labels, n_queries)
    _, top = hamming_topk(codes["query"][np.asarray(qrows)], codes["database"], k)  # (n, k) database rows
    ql, dl = protocol.query.labels, protocol.database.labels
    relevant = [[bool((ql[q] * dl[j]).sum() > 0) for j in row] for q, row in zip(qrows, top)]
    names = protocol.class_names

    def caption(labels_row):
        ids = np.flatnonzero(labels_row > 0)
        return ",".join(names[i] if names else str(i) for i in ids[:2])

    report.retrieval_picture([protocol.query.image(q) for q in qrows],
                             [[protocol.database.image(int(j)) for j in row] for row in top], relevant, path,
                             query_captions=[caption(ql[q]) for q in qrows],
                             result_captions=[[caption(dl[int(j)]) for j in row] for row in top])
