"""The table of a comparison grid (:mod:`.compare`): one row per method and code length, mean and
sample std over seeds of the figures in each cell's own ``eval/metrics.json``, beside a
random-projection LSH floor on the same splits; written as ``table.md``, ``table.csv``,
``table.json``, two figures and ``report.html`` under the grid's ``out``.

Only finished cells are read; the others are listed as missing. Cells of one seed must record one
split and every cell one dataset and model, or the table is refused.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .. import rundir as R
from ...errors import ConfigError, DataError, HybridHashError
from ...fileio import atomic_path, read_json, write_json
from ...metrics.graded import STABLE, TIE_AWARE
from ...models.features import PIXELS
from ..evaluation import GRADED
from .floors import FLOOR_BASELINE
from .grid import CELL_NAME, METRICS_NAME, Cell, Grid, cell_state, claim_grid
from .selectors import saw_labels

FLOOR = "floor: LSH (pixels)"
FLOOR_DIR = "floor-lsh"
# options that make two cells another comparison, not two points of one
SAME_KEYS = ("dataset", "val_fraction", "select_on")
# ... and these, within the trained cells and within the fitted ones (a baseline has its own features)
NETWORK_KEYS = ("model", "model_overrides", "pretrained")
BASELINE_FAMILY = "baseline"
FIGURES = ("map_vs_bits.png", "pr_curve.png")
FAMILY_NOTE = ("Families: symmetric methods learn from pairs or triplets of network codes; asymmetric ones (ADSH) "
               "also learn codes of the labelled training set directly from its labels, which symmetric ones do "
               "not use that way; central ones (CSQ, DPN) pull each image to a fixed hash centre of its class; classification ones "
               "(GreedyHash) learn their codes through a classifier on them.")


@dataclass
class Finished:
    """What a finished cell left: its metrics.json, resolved options (run.json), summary and cell.json."""

    cell: Cell
    metrics: Dict[str, Any]
    config: Dict[str, Any]
    summary: Dict[str, Any] = field(default_factory=dict)
    record: Dict[str, Any] = field(default_factory=dict)


def _read_optional(path: Path) -> Dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def collect(grid: Grid) -> tuple:
    """(finished cells, [(missing cell, "partial" | "missing")]), checked to form one comparison."""
    done: List[Finished] = []
    missing = []
    for cell in grid.cells():
        state = cell_state(cell, grid.bits)
        if state != "done":
            missing.append((cell, state))
            continue
        done.append(Finished(cell, read_json(cell.metrics_path), read_json(cell.directory / R.RUN_NAME)["config"],
                             _read_optional(cell.directory / R.SUMMARY_NAME).get("results", {}),
                             _read_optional(cell.directory / CELL_NAME)))
    check_one_comparison(done)
    return done, missing


def check_one_comparison(done: Sequence[Finished]) -> None:
    """Refuse cells of one seed on different splits, or cells of different data or models."""
    for seed in sorted({f.cell.seed for f in done}):
        first = {}
        for f in done:
            if f.cell.seed == seed:
                first.setdefault(f.metrics.get("split_hash"), f.cell.name)
        if len(first) > 1:
            shown = ", ".join(f"{name} on {str(h)[:12]}" for h, name in first.items())
            raise ConfigError(f"seed {seed}: cells were evaluated on different splits ({shown}); every method of a "
                              "seed must share one split: re-run the odd cell or use another --out")
    from ...methods import is_training_free

    groups = [(SAME_KEYS, done)] + [(NETWORK_KEYS, [f for f in done if is_training_free(f.cell.method) == fits])
                                    for fits in (False, True)]
    for keys, cells in groups:
        for key in keys:
            seen = {}
            for f in cells:
                value = f.config.get(key)
                if key == "select_on" and value == "copy":  # the same split, scored without its labels
                    value = "val"
                seen.setdefault(repr(value), f.cell.name)
            if len(seen) > 1:
                shown = ", ".join(f"{name} has {value}" for value, name in seen.items())
                raise ConfigError(f"cells differ in {key} ({shown}); a comparison needs one {key}: use another --out")


def _stats(values: Sequence[float]) -> Dict[str, Any]:
    """{"values", "mean", "std"}: the sample std (ddof 1), None for a single value."""
    v = [float(x) for x in values]
    return {"values": v, "mean": float(np.mean(v)) if v else None,
            "std": float(np.std(v, ddof=1)) if len(v) > 1 else None}


def _family(method: str) -> str:
    from ...methods import create_method, is_training_free

    return BASELINE_FAMILY if is_training_free(method) else create_method(method, 8, 1, 1).family


def features_label(config: Dict[str, Any]) -> str:
    """The feature network a fit's run.json records, in words: "pixels (32 px, bilinear)" or its name."""
    from ...models.features import PIXELS

    if config.get("model") == PIXELS:
        o = config.get("model_overrides") or {}
        return f"raw pixels at {o.get('img_size', 'default')} px ({o.get('interpolation', 'bilinear')})"
    pretrained = f", {config['pretrained']} weights" if config.get("pretrained") else ""
    return f"{config.get('model')}{pretrained}"


def recipe_label(f: Finished) -> str:
    """"published", "shared scratch" or "same-optimizer", with the settings the cell's run.json records."""
    from ...methods import method_class
    from ..train.recipe import SCRATCH_MAX_IMG, TrainConfig, scratch_recipe
    from ..train.run import published_settings

    from ...methods import is_training_free

    c = f.config
    if is_training_free(f.cell.method):
        return f"fit, no training loop, on {features_label(c)}"
    settings = {k: c.get(k) for k in ("optimizer", "lr", "weight_decay", "batch_size")}
    text = f"{c.get('optimizer')}, lr {c.get('lr'):g}, wd {c.get('weight_decay'):g}, batch {c.get('batch_size')}"
    if f.record.get("same_optimizer"):
        return f"same-optimizer ({text})"
    if c.get("recipe") == "scratch":
        # the four settings compared do not depend on the image size
        expected = scratch_recipe(SCRATCH_MAX_IMG, f.cell.method)
        cls = method_class(f.cell.method)
        adapted = [what for what, changed in (("lr scaled", cls.scratch_lr_scale != 1.0),
                                              ("its batch", cls.scratch_batch_size is not None)) if changed]
        kind = "shared scratch" + (f" ({', '.join(adapted)})" if adapted else "")
    else:
        expected = published_settings(TrainConfig.from_dict(c))
        kind = "published"
    same = all(expected.get(k) == v for k, v in settings.items())
    return f"{kind if same else 'set by hand'} ({text})"


def schedule_note(f: Finished, grid: Grid) -> Optional[str]:
    """How the cell's method was adapted to this run (its ``table_note``, e.g. ADSH's schedule scaled to
    the training set), from the cell's run.json; None when it says nothing."""
    from ...methods import is_training_free, method_class

    if is_training_free(f.cell.method):
        return None
    c, cls = f.config, method_class(f.cell.method)
    n = int(read_json(f.cell.directory / R.RUN_NAME).get("protocol", {}).get("sizes", {}).get("train", 0)) or 1
    config = cls.Config.from_dict(c.get("method_params", {}), cls.name)
    return cls.table_note(config, c, grid.method_params.get(cls.name, {}), n, CELL_NAME)


# --------------------------------------------------------------------------------------------
# the LSH floor, one per seed, on that seed's split

def floor_metrics(grid: Grid, seed: int, split_hash: str, cell: Cell, protocol=None) -> Dict[str, Any]:
    """OUT/floor-lsh/seed<s>/metrics.json: random-projection LSH of the pixels on the split of ``cell``
    (or ``protocol``), computed once per split and set of code lengths."""
    from ...data import load_protocol
    from ..evaluation import class_ids_or_multihot, retrieval_metrics
    from .floors import lsh_codes, pixel_vectors

    path = Path(grid.out) / FLOOR_DIR / f"seed{seed}" / METRICS_NAME
    if path.is_file():
        doc = read_json(path)
        if doc.get("split_hash") == split_hash and all(str(b) in doc.get("results", {}) for b in grid.bits):
            return doc
    if protocol is None or protocol.split_record()["hash"] != split_hash:
        c = read_json(cell.directory / R.RUN_NAME)["config"]
        protocol = load_protocol(c["dataset"], c.get("root"), image_root=c.get("image_root"),
                                 split_file=str(cell.directory / R.SPLIT_NAME), max_pixels=grid.max_pixels)
    try:
        tr, q, db = (pixel_vectors(s) for s in (protocol.train, protocol.query, protocol.database))
    except ValueError as err:  # images of several sizes have no common pixel vector
        raise DataError(f"{protocol.name}: no pixel LSH floor ({err})") from None
    ql = class_ids_or_multihot(protocol.query.labels, protocol.multi_label)
    dl = class_ids_or_multihot(protocol.database.labels, protocol.multi_label)
    results = {}
    for b in grid.bits:
        qc, dc = lsh_codes(tr, q, db, bits=b, seed=seed)
        results[str(b)] = retrieval_metrics(qc, dc, ql, dl, protocol.topk, graded=bool(protocol.multi_label))
    doc = {"dataset": protocol.name, "split_hash": split_hash, "seed": seed,
           "topk": "all" if protocol.topk is None else protocol.topk, "results": results}
    write_json(path, doc)
    return doc


# --------------------------------------------------------------------------------------------
# the table

def _row(name: str, family: str, bits: int, seeds: List[int], results: List[Dict[str, Any]],
         seconds: List[float], epochs: List[Any], recipes: List[str], cells: List[str]) -> Dict[str, Any]:
    # the multi-label figures (ACG, NDCG, WAP, tie-aware ACG and NDCG) where every cell of the row has them
    graded = {key: _stats([r[key] for r in results]) for key in STABLE + TIE_AWARE if all(key in r for r in results)}
    return {"method": name, "family": family, "bits": bits, "seeds": seeds, "n": len(seeds), "cells": cells,
            "map": _stats([r["map"] for r in results]),
            "map_tie_aware": _stats([r["map_tie_aware"] for r in results]), **graded,
            "precision_within_radius": _stats([r["precision_within_radius"] for r in results]),
            "train_seconds": _stats(seconds), "epochs": sorted(set(epochs), key=str),
            "recipe": " / ".join(dict.fromkeys(recipes))}


def build_table(grid: Grid, protocols: Optional[Dict[int, Any]] = None, floor: bool = True) -> Dict[str, Any]:
    """The table document (what ``table.json`` holds); see the module docstring."""
    from ...methods import is_training_free

    done, missing = collect(grid)
    extra: List[str] = []
    floors: Dict[int, Dict[str, Any]] = {}
    fits = [f for f in done if is_training_free(f.cell.method)]
    if floor and any(f.cell.method == FLOOR_BASELINE and f.config.get("model") == PIXELS for f in fits):
        floor = False  # the floor's own baseline on the pixels is a row already
        extra.append(f"No separate LSH floor: the {FLOOR_BASELINE} row is that baseline on the training pixels.")
    if floor:
        for seed in grid.seeds:
            first = next((f for f in done if f.cell.seed == seed), None)
            if first is None:
                continue
            try:
                floors[seed] = floor_metrics(grid, seed, first.metrics["split_hash"], first.cell,
                                             (protocols or {}).get(seed))
            except (HybridHashError, OSError) as err:
                extra.append(f"LSH floor of seed {seed} not computed: {err}")
    rows = []
    for b in grid.bits:
        for m in grid.methods:
            mine = sorted((f for f in done if f.cell.method == m), key=lambda f: f.cell.seed)
            if mine:
                rows.append(_row(m, _family(m), b, [f.cell.seed for f in mine],
                                 [f.metrics["results"][str(b)] for f in mine],
                                 [f.summary[str(b)]["seconds"] for f in mine if str(b) in f.summary],
                                 [_epochs(f, b) for f in mine], [recipe_label(f) for f in mine],
                                 [f.cell.name for f in mine]))
        if floors:
            seeds = sorted(floors)
            rows.append(_row(FLOOR, "floor", b, seeds, [floors[s]["results"][str(b)] for s in seeds], [], [], [],
                             [f"{FLOOR_DIR}/seed{s}" for s in seeds]))
    trained = [f for f in done if not is_training_free(f.cell.method)]
    label_free = [m for m in grid.methods if any(f.cell.method == m for f in done) and not saw_labels(m)]
    first = (trained or done or [None])[0]
    if label_free:
        extra.append(label_free_note(label_free, fits, first.config.get("select_on")))
    res0 = first.metrics["results"][str(grid.bits[0])] if first else {}
    topk = first.metrics.get("topk", "all") if first else "all"
    for f in done:
        note = schedule_note(f, grid)
        if note and note not in extra:
            extra.append(note)
    return {
        "dataset": first.config.get("dataset") if first else grid.dataset,
        "model": first.config.get("model") if first else grid.model,
        "model_overrides": first.config.get("model_overrides") if first else grid.model_overrides,
        "topk": topk, "n_query": res0.get("n_query"), "n_database": res0.get("n_database"),
        "select_on": first.config.get("select_on") if first else None,
        "same_optimizer": grid.same_optimizer, "bits": list(grid.bits), "methods": list(grid.methods),
        "seeds": list(grid.seeds), "rows": rows,
        "missing": [{"cell": c.name, "state": s} for c, s in missing],
        "notes": [FAMILY_NOTE, *extra],
    }


def _epochs(f: Finished, bits: int) -> Any:
    """The cell's epochs: as asked of a training loop; 0 for a fit, as its summary records."""
    from ...methods import is_training_free

    if is_training_free(f.cell.method):
        return f.summary.get(str(bits), {}).get("epochs", 0)
    return f.config.get("epochs")


def label_free_note(methods: Sequence[str], fits: Sequence[Finished], select_on: Optional[str]) -> str:
    """The note on rows whose training never read a label, and on the features the baselines were fitted on."""
    from ...methods import is_training_free

    families = ", ".join(dict.fromkeys(_family(m) for m in methods))
    text = f"Rows of family {families} ({', '.join(methods)}) saw no labels in training; the labels served evaluation"
    trained = [m for m in methods if not is_training_free(m)]
    if trained and select_on == "query":  # the queries' labels chose their epochs
        text += f", but the queries' mAP chose the epoch of {', '.join(trained)}"
    elif trained:  # compare selects label-free rows on the copy score (Grid.config_for)
        text += (f"; the epoch of {', '.join(trained)} was chosen by the label-free copy score on the validation "
                 f"split (each image's augmented copy found among the originals), so no label was read")
    text += "."
    features = sorted({features_label(f.config) for f in fits})
    if features:
        text += f" The training-free baselines were fitted on {' / '.join(features)} of the training images."
    return text


def _graded_keys(doc: Dict[str, Any]) -> List[str]:
    """The multi-label figures some row of the table has (none on single-label data)."""
    return [key for key in GRADED if any(key in r for r in doc["rows"])]


def _pm(stat: Dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.4f}" + (f" ± {stat['std']:.4f}" if stat["std"] is not None else "")


def header(doc: Dict[str, Any]) -> str:
    k = doc["topk"]
    sel = {"val": "the validation split", "copy": "the validation split", "query": "the queries (not a fair protocol)"
           }.get(doc["select_on"], "n/a")
    recipe = ("--same-optimizer: one optimiser setting imposed on every method." if doc["same_optimizer"] else
              "Each method under its recipe: its published settings when fine-tuning, the project's shared scratch "
              "recipe from random weights.")
    overrides = f" {json.dumps(doc['model_overrides'])}" if doc["model_overrides"] else ""
    return (f"{doc['dataset']}, model {doc['model']}{overrides}: mAP@{k} of "
            f"{doc['n_query']} queries against {doc['n_database']} database images, model of each code length "
            f"selected on {sel}; mean ± sample std over seeds (each seed its own split, shared by every method). "
            f"{recipe}")


def table_cells(doc: Dict[str, Any]) -> tuple:
    """(column names, rows of display strings) of the table."""
    k = doc["topk"]
    graded = _graded_keys(doc)
    cols = ["method", "family", "bits", f"mAP@{k}", f"tie-aware mAP@{k}", *(f"{GRADED[g]}@{k}" for g in graded),
            "P(r<=2)", "train s", "epochs", "recipe", "seeds"]
    rows = []
    for r in doc["rows"]:
        secs = r["train_seconds"]["mean"]
        rows.append([r["method"], r["family"], str(r["bits"]), _pm(r["map"]), _pm(r["map_tie_aware"]),
                     *(_pm(r[g]) if g in r else "-" for g in graded),
                     f"{r['precision_within_radius']['mean']:.4f}", "-" if secs is None else f"{secs:.1f}",
                     ",".join(map(str, r["epochs"])) or "-", r["recipe"] or "-", str(r["n"])])
    return cols, rows


def notes(doc: Dict[str, Any]) -> List[str]:
    """The notes under the table, the missing cells last."""
    out = list(doc["notes"])
    if doc["missing"]:
        out.append("missing (not finished): " + ", ".join(f"{m['cell']} ({m['state']})" for m in doc["missing"]))
    return out


def markdown(doc: Dict[str, Any]) -> str:
    """The table as Markdown, with its header and notes."""
    cols, rows = table_cells(doc)
    lines = [f"# Comparison: {doc['dataset']}, {doc['model']}", "", header(doc), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", *[f"- {n}" for n in notes(doc)]]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("method", "family", "bits", "map_mean", "map_std", "map_tie_aware_mean", "map_tie_aware_std",
               "precision_within_radius_mean", "train_seconds_mean", "epochs", "recipe", "n_seeds", "seeds")


def csv_text(doc: Dict[str, Any]) -> str:
    """One CSV line per row; floats at full precision, an undefined std empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    graded = _graded_keys(doc)
    w.writerow(CSV_COLUMNS + tuple(f"{g}_{s}" for g in graded for s in ("mean", "std")))
    blank = (lambda v: "" if v is None else repr(v))
    for r in doc["rows"]:
        w.writerow([r["method"], r["family"], r["bits"], blank(r["map"]["mean"]), blank(r["map"]["std"]),
                    blank(r["map_tie_aware"]["mean"]), blank(r["map_tie_aware"]["std"]),
                    blank(r["precision_within_radius"]["mean"]), blank(r["train_seconds"]["mean"]),
                    " ".join(map(str, r["epochs"])), r["recipe"], r["n"], " ".join(map(str, r["seeds"])),
                    *(blank(r.get(g, {}).get(s)) for g in graded for s in ("mean", "std"))])
    return buf.getvalue()


def write_report(grid: Grid, protocols: Optional[Dict[int, Any]] = None, floor: bool = True) -> Dict[str, Any]:
    """Build the table and write table.md, table.csv, table.json, the figures and report.html under
    ``grid.out``; returns the table document."""
    from .. import report

    claim_grid(grid.out)
    doc = build_table(grid, protocols, floor)
    out = Path(grid.out)
    write_json(out / "table.json", doc)
    for name, text in (("table.md", markdown(doc)), ("table.csv", csv_text(doc))):
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)
    k, rows = doc["topk"], doc["rows"]
    if rows:
        series: Dict[str, Dict[int, tuple]] = {}
        for r in rows:
            series.setdefault(r["method"], {})[r["bits"]] = (r["map"]["mean"], r["map"]["std"])
        report.plot_mean_std_vs_bits(series, out / FIGURES[0], ylabel=f"mAP@{k}", dashed=[FLOOR],
                                     title=f"{doc['dataset']}: mAP@{k} (mean ± std over seeds)")
        report.plot_pr_by_name(_pr_curves(grid, max(grid.bits)), out / FIGURES[1], dashed=[FLOOR],
                               title=f"{doc['dataset']}, {max(grid.bits)} bits: precision-recall")
    cols, cells = table_cells(doc)
    report.write_html(out / "report.html", f"Comparison: {doc['dataset']}, {doc['model']}", [
        {"heading": "Table", "text": header(doc), "table": {"columns": cols, "rows": cells},
         "images": list(FIGURES) if rows else []},
        {"heading": "Notes", "pre": "\n".join(notes(doc))}])
    return doc


def _pr_curves(grid: Grid, bits: int) -> Dict[str, Dict[str, Any]]:
    """{name: pr_curve} at ``bits``: each method's cell of the first finished seed, and that seed's floor."""
    curves = {}
    for m in grid.methods:
        for s in grid.seeds:
            cell = Cell(0, m, s, Path(grid.out) / m / f"seed{s}")
            if cell_state(cell, grid.bits) == "done":
                curves[f"{m} (seed {s})"] = read_json(cell.metrics_path)["results"][str(bits)]["pr_curve"]
                break
    for s in grid.seeds:
        path = Path(grid.out) / FLOOR_DIR / f"seed{s}" / METRICS_NAME
        if path.is_file() and str(bits) in read_json(path)["results"]:
            curves[FLOOR] = read_json(path)["results"][str(bits)]["pr_curve"]
            break
    return curves
