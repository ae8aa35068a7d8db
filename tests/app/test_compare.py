"""``hybridhash compare``: a grid of methods x seeds on one split per seed, resumed cell by cell,
sharded, tabulated from the cells' own metrics.json."""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import shutil

import numpy as np
import pytest

from hybridhash.app import cli
from hybridhash import metrics as M
from hybridhash.data import load_protocol
from hybridhash.errors import ConfigError
from hybridhash.fileio import read_json, write_json
from hybridhash.app.compare.floors import lsh_codes, pixel_vectors
from hybridhash.app.commands.compare import parse_shard
from hybridhash.app.compare.grid import Grid, cell_state
from hybridhash.app.compare.report import Finished, recipe_label, schedule_note, write_report

# hybridhash_cpu with one layer per level: learns on a few digits in seconds
SMALL = {"depths": [1, 1, 1]}
ARGS = ["compare", "--methods", "hybridhash", "dsh", "--bits", "16", "--seeds", "0", "1", "--epochs", "1",
        "--model-overrides", json.dumps(SMALL), "--threads", "1", "--no-progress"]


def _cli(argv):
    """(exit code, stdout, stderr) of the in-process CLI."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def _files(directory):
    """{relative path: (mtime_ns, bytes)} of every file under ``directory``."""
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def grid_out(tmp_path_factory):
    """A 2-method x 1-bit x 2-seed grid run through the CLI on the digits protocol (1 epoch)."""
    out = tmp_path_factory.mktemp("compare") / "grid"
    rc, printed, err = _cli(ARGS + ["--out", str(out)])
    assert rc == 0, err
    return out, printed


@pytest.fixture(scope="module")
def small_digits():
    """15 training, 5 validation and 5 query images per class."""
    return load_protocol("digits", sizes=dict(query=5, train=20), val_fraction=0.25)


def test_table_holds_the_cells_own_metrics(grid_out):
    out, printed = grid_out
    doc = read_json(out / "table.json")
    rows = {(r["method"], r["bits"]): r for r in doc["rows"]}
    assert set(rows) == {("hybridhash", 16), ("dsh", 16), ("floor: LSH (pixels)", 16)}
    with open(out / "table.csv") as f:
        csv_rows = {(r["method"], int(r["bits"])): r for r in csv.DictReader(f)}
    for method in ("hybridhash", "dsh"):
        cells = [read_json(out / method / f"seed{s}" / "eval" / "metrics.json")["results"]["16"] for s in (0, 1)]
        summaries = [read_json(out / method / f"seed{s}" / "summary.json")["results"]["16"] for s in (0, 1)]
        row = rows[(method, 16)]
        assert row["family"] == "symmetric" and row["seeds"] == [0, 1] and row["n"] == 2
        for key in ("map", "map_tie_aware", "precision_within_radius"):
            values = np.array([c[key] for c in cells])
            assert row[key]["values"] == [c[key] for c in cells]  # the very numbers of each metrics.json
            assert row[key]["mean"] == pytest.approx(values.mean(), abs=1e-12)
            sample_std = np.sqrt(((values - values.mean()) ** 2).sum() / (len(values) - 1))
            assert row[key]["std"] == pytest.approx(sample_std, abs=1e-12)
        assert float(csv_rows[(method, 16)]["map_mean"]) == pytest.approx(row["map"]["mean"], abs=1e-15)
        assert row["train_seconds"]["mean"] == pytest.approx(np.mean([s["seconds"] for s in summaries]))
        assert row["recipe"].startswith("shared scratch (adamw") and row["epochs"] == [1]
        # the printed table shows the same mean
        assert f"| {method} | symmetric | 16 | {row['map']['mean']:.4f} ± {row['map']['std']:.4f} |" in printed
    # every method of a seed on one split
    for s in (0, 1):
        hashes = {read_json(out / m / f"seed{s}" / "eval" / "metrics.json")["split_hash"] for m in ("hybridhash", "dsh")}
        assert len(hashes) == 1
        assert read_json(out / "floor-lsh" / f"seed{s}" / "metrics.json")["split_hash"] in hashes
    # the floor: LSH of the pixels on each seed's split, recomputed here
    floor = []
    for s in (0, 1):
        p = load_protocol("digits", split_file=str(out / "dsh" / f"seed{s}" / "split.json"))
        tr, q, db = (pixel_vectors(x) for x in (p.train, p.query, p.database))
        qc, dc = lsh_codes(tr, q, db, bits=16, seed=s)
        floor.append(M.mean_average_precision(qc, dc, p.query.labels, p.database.labels))
    assert rows[("floor: LSH (pixels)", 16)]["map"]["mean"] == pytest.approx(np.mean(floor), abs=1e-9)
    assert doc["missing"] == [] and any("asymmetric" in n for n in doc["notes"])
    for name in ("table.md", "map_vs_bits.png", "pr_curve.png", "report.html"):
        assert (out / name).is_file()
    assert [line.split(":")[0] for line in printed.splitlines() if line.startswith("[")] == [
        "[1/4] hybridhash/seed0", "[1/4] hybridhash/seed0", "[2/4] dsh/seed0", "[2/4] dsh/seed0",
        "[3/4] hybridhash/seed1", "[3/4] hybridhash/seed1", "[4/4] dsh/seed1", "[4/4] dsh/seed1"]


def test_rerun_skips_the_finished_cells_without_rewriting_them(grid_out):
    out, _ = grid_out
    before = {m: _files(out / m) for m in ("hybridhash", "dsh")}
    rc, printed, err = _cli(ARGS + ["--out", str(out)])
    assert rc == 0, err
    assert printed.count("finished earlier, skipped") == 4 and ": training" not in printed
    assert {m: _files(out / m) for m in ("hybridhash", "dsh")} == before


def test_cells_of_one_seed_on_two_splits_are_refused(grid_out, tmp_path):
    out = tmp_path / "grid"
    shutil.copytree(grid_out[0], out)
    rc, printed, err = _cli(["compare", "--report-only", "--out", str(out)])  # the recorded grid
    assert rc == 0 and "| dsh | symmetric | 16 |" in printed
    path = out / "dsh" / "seed1" / "eval" / "metrics.json"
    write_json(path, {**read_json(path), "split_hash": "f" * 64})
    rc, printed, err = _cli(["compare", "--report-only", "--out", str(out)])
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: seed 1: cells were evaluated on different splits") and "dsh/seed1" in err


def test_a_cell_trained_with_other_options_is_refused_before_any_work(grid_out, tmp_path):
    out = tmp_path / "grid"
    shutil.copytree(grid_out[0], out)
    before = _files(out)
    rc, _, err = _cli(ARGS + ["--epochs", "2", "--out", str(out)])
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert "hybridhash/seed0 was trained with epochs=1, this grid asks for 2" in err
    assert _files(out) == before


def test_interrupted_grid_resumes_cell_by_cell(tmp_path, small_digits):
    grid = Grid(methods=("hybridhash", "dsh"), bits=(16,), seeds=(0,), out=str(tmp_path / "grid"),
                model_overrides=SMALL, epochs=2, threads=1, parallel=1, progress=False)
    first, second = grid.cells()

    class Killed(Exception):
        pass

    def kill(event, trainer, **info):  # the second cell dies after its first saved epoch
        if event == "epoch_end" and trainer.config.method == "dsh" and info["epoch"] == 1:
            raise Killed

    lines = []
    with pytest.raises(Killed):
        grid.run(protocols={0: small_digits}, callbacks=[kill], echo=lines.append)
    assert cell_state(first, grid.bits) == "done" and cell_state(second, grid.bits) == "partial"
    doc = write_report(grid, floor=False)  # the table reads what is finished and names the rest
    assert [r["method"] for r in doc["rows"]] == ["hybridhash"]
    assert doc["missing"] == [{"cell": "dsh/seed0", "state": "partial"}]
    done_files = _files(first.directory)
    log_before = (second.directory / "bits16" / "log.jsonl").read_text().splitlines()
    assert len(log_before) == 1

    lines.clear()
    outcomes = grid.run(protocols={0: small_digits}, echo=lines.append)
    assert [o["skipped"] for o in outcomes] == [True, False]
    assert "[2/2] dsh/seed0: resuming 16 bits" in lines
    assert _files(first.directory) == done_files
    log_after = (second.directory / "bits16" / "log.jsonl").read_text().splitlines()
    assert len(log_after) == 2 and log_after[0] == log_before[0]  # continued from epoch 1, not restarted
    doc = write_report(grid, floor=False)
    assert doc["missing"] == [] and [r["method"] for r in doc["rows"]] == ["hybridhash", "dsh"]
    assert doc["rows"][1]["map"]["values"] == [read_json(second.metrics_path)["results"]["16"]["map"]]


def test_shards_split_the_cells_disjointly_and_completely():
    grid = Grid(methods=("hybridhash", "dsh", "adsh"), bits=(16,), seeds=(0, 1, 2), out="g")
    every = [(c.index, c.method, c.seed) for c in grid.cells()]
    assert every == [(k, m, s) for k, (s, m) in enumerate((s, m) for s in (0, 1, 2)
                                                            for m in ("hybridhash", "dsh", "adsh"))]
    for n in (1, 2, 4, 9, 10):
        shards = [[(c.index, c.method, c.seed) for c in grid.cells((i, n))] for i in range(n)]
        assert sorted(x for shard in shards for x in shard) == every  # each cell in exactly one shard
        assert all(c[0] % n == i for i, shard in enumerate(shards) for c in shard)
    assert parse_shard("1/3") == (1, 3)
    for bad in ("2/2", "-1/2", "1/0", "x", "1/2/3"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


@pytest.mark.parametrize("extra, message", [
    (["--lr", "0.01"], "--lr needs --same-optimizer"),
    (["--methods", "nosuch"], "unknown method 'nosuch'"),
    (["--methods", "all", "dsh"], "'all' stands alone"),
    (["--methods", "dsh", "dsh"], "lists a method twice"),
    (["--methods", "bihalf", "nosuch"], "known: adsh, bihalf,"),
    (["--methods", "nosuch"], "lsh, pcah, sh; or a selector: all, supervised, symmetric, asymmetric, central, classification, "
                             "unsupervised, baselines"),
    (["--methods", "all", "baselines"], "'all' stands alone"),
    (["--methods", "lsh", "--baseline-model", "nosuch"], "--baseline-model: unknown model 'nosuch'"),
    (["--methods", "lsh", "--baseline-pretrained", "imagenet"], "--baseline-pretrained: pixels"),
    (["--methods", "dsh", "lsh", "--method-params", '{"lsh": {"nosuch": 1}}'], "nosuch"),
    (["--method-params", '{"nosuch": {}}'], "--method-params: unknown method 'nosuch'"),
    (["--method-params", '{"dsh": {"nosuch": 1}}'], "nosuch"),
    (["--shard", "2/2"], "--shard"),
    (["--bits", "16", "16"], "twice"),
])
def test_bad_options_get_one_line(tmp_path, extra, message):
    rc, _, err = _cli(ARGS + ["--out", str(tmp_path / "g"), *extra])
    assert rc == 1 and len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "g").exists()


def test_same_optimizer_imposes_one_setting_and_the_table_says_so():
    methods = ("hybridhash", "dsh", "adsh", "cnnh")

    def settings(grid):
        return [tuple(getattr(grid.resolved(grid.config_for(c), 450), k)
                      for k in ("optimizer", "lr", "weight_decay", "batch_size")) for c in grid.cells()]

    # published settings under the original recipe (docs/methods.md), one imposed setting with --same-optimizer
    published = Grid(methods=methods, seeds=(0,), train_options={"recipe": "original"})
    assert settings(published) == [("rmsprop", 2.5e-5, 1e-5, 64), ("rmsprop", 1e-5, 1e-5, 64),
                                   ("adam", 1e-4, 1e-5, 64), ("adam", 1e-5, 0.0, 128)]
    same = Grid(methods=methods, seeds=(0,), train_options={"recipe": "original"}, same_optimizer=True, lr=3e-4)
    assert settings(same) == [("rmsprop", 3e-4, 1e-5, 64)] * 4
    scratch = Grid(methods=methods, seeds=(0,))  # from random weights every method shares the scratch recipe
    assert settings(scratch) == [("adamw", 2e-3, 1e-4, 16)] * 4
    cell = published.cells()[1]
    as_trained = published.resolved(published.config_for(cell), 450).to_dict()
    assert recipe_label(Finished(cell, {}, as_trained)) == "published (rmsprop, lr 1e-05, wd 1e-05, batch 64)"
    assert recipe_label(Finished(cell, {}, as_trained, record={"same_optimizer": True})).startswith("same-optimizer")
    cell = scratch.cells()[1]
    assert recipe_label(Finished(cell, {}, scratch.resolved(scratch.config_for(cell), 450).to_dict())) == \
        "shared scratch (adamw, lr 0.002, wd 0.0001, batch 16)"


def test_adsh_note_gives_its_scaled_schedule(tmp_path):
    grid = Grid(methods=("adsh",), seeds=(0,), out=str(tmp_path))
    cell = grid.cells()[0]
    config = grid.resolved(grid.config_for(cell), 450).to_dict()
    write_json(cell.directory / "run.json", {"config": config, "protocol": {"sizes": {"train": 450}}})
    # 30 scratch epochs over 450 images = 13500 image-steps = 10 iterations x 3 epochs x 450 images
    note = schedule_note(Finished(cell, {}, config), grid)
    assert note.startswith("adsh: 10 outer iterations x 3 epochs over samples of 450 of the 450 training images "
                           "= 30 trainer epochs (iterations scaled")


def test_all_is_every_method_the_loop_can_feed():
    from hybridhash.app.commands.compare import configure, grid_from_args
    from hybridhash.methods import list_methods, method_class

    parser = argparse.ArgumentParser()
    configure(parser)
    grid = grid_from_args(parser.parse_args(["--methods", "all"]))
    every = list_methods()
    # a method outside the default grid (a partial port) is left out too, by what it declares
    assert list(grid.methods) == [m for m in every if method_class(m).trains_on == "labels"
                                  and method_class(m).in_default_grid]
    assert len(grid.methods) < len(every)  # the unsupervised ones are left out, by what they train on
    assert all(method_class(m).family != "unsupervised" for m in grid.methods)
    grid.check()


def test_report_only_needs_a_grid(tmp_path):
    rc, _, err = _cli(["compare", "--report-only", "--out", str(tmp_path / "none")])
    assert rc == 1 and err.startswith("error: --report-only:") and "holds no comparison grid" in err


# ---------------------------------------------------------------------------------------------
# the unsupervised family and the training-free baselines in the same grid

FAMILY_ARGS = ["compare", "--methods", "bihalf", "baselines", "--bits", "16", "--seeds", "0", "--epochs", "1",
               "--model-overrides", json.dumps({**SMALL, "img_size": 16}), "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def family_grid(tmp_path_factory):
    """bihalf (1 epoch) and lsh pcah itq sh (fitted on 16 px pixels) on one seed of digits, by the CLI."""
    out = tmp_path_factory.mktemp("families") / "grid"
    rc, printed, err = _cli(FAMILY_ARGS + ["--out", str(out)])
    assert rc == 0, err
    return out, printed


def _pixels(dataset, size):
    """RGB pixels in [0, 1] at ``size`` x ``size`` (PIL bilinear), channel by channel: (N, 3 * size * size)."""
    from PIL import Image

    rows = [np.asarray(dataset.image(i).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
            .transpose(2, 0, 1).ravel() / 255.0 for i in range(len(dataset))]
    return np.stack(rows)


def test_baselines_and_unsupervised_rows_in_one_table(family_grid):
    import torch

    from hybridhash.methods.shallow import make_shallow

    out, printed = family_grid
    doc = read_json(out / "table.json")
    rows = {r["method"]: r for r in doc["rows"]}
    assert set(rows) == {"bihalf", "itq", "lsh", "pcah", "sh"}  # lsh is a row: no second LSH floor
    assert rows["bihalf"]["family"] == "unsupervised" and rows["bihalf"]["epochs"] == [1]
    p = load_protocol("digits", split_file=str(out / "lsh" / "seed0" / "split.json"))
    tr, q, db = (torch.as_tensor(_pixels(s, 16)) for s in (p.train, p.query, p.database))
    for name in ("itq", "lsh", "pcah", "sh"):
        row = rows[name]
        assert row["family"] == "baseline" and row["epochs"] == [0]
        assert row["recipe"] == "fit, no training loop, on raw pixels at 16 px (bilinear)"
        summary = read_json(out / name / "seed0" / "summary.json")["results"]["16"]
        assert row["train_seconds"]["mean"] == pytest.approx(summary["seconds"]) and summary["epochs"] == 0
        config = read_json(out / name / "seed0" / "run.json")["config"]
        assert config["model"] == "pixels" and config["epochs"] is None and config["lr"] is None
        # the same baseline fitted here on the same split's pixels, scored by the metrics module
        baseline = make_shallow(name, 16, seed=0)
        baseline.fit(lambda: iter((tr,)), tr.shape[1])
        expected = M.mean_average_precision(baseline.encode(q).numpy(), baseline.encode(db).numpy(),
                                            p.query.labels, p.database.labels)
        assert row["map"]["mean"] == pytest.approx(expected, abs=1e-9), name
        assert f"| {name} | baseline | 16 | {row['map']['mean']:.4f} |" in printed
    note = next(n for n in doc["notes"] if "saw no labels" in n)
    assert "(bihalf, itq, lsh, pcah, sh) saw no labels in training" in note and "fitted on raw pixels at 16 px" in note
    assert "the epoch of bihalf was chosen by the label-free copy score on the validation split" in note
    # ... and so it was: bihalf's run selected on val_copy_map, its log holding the true val_map beside it
    bihalf = read_json(out / "bihalf" / "seed0" / "summary.json")["results"]["16"]
    assert bihalf["selected_by"] == "val_copy_map"
    assert read_json(out / "bihalf" / "seed0" / "run.json")["config"]["select_on"] == "copy"
    log = [json.loads(line) for line in (out / "bihalf" / "seed0" / "bits16" / "log.jsonl").read_text().splitlines()]
    best = max(range(len(log)), key=lambda i: (log[i]["val_copy_map"], i))
    assert all("val_map" in r for r in log) and bihalf["best_epoch"] == log[best]["epoch"]
    assert any("No separate LSH floor" in n for n in doc["notes"])
    assert read_json(out / "grid.json")["methods"] == ["bihalf", "itq", "lsh", "pcah", "sh"]


def test_family_grid_resumes_a_cut_fit_and_reports_from_its_record(family_grid, tmp_path):
    out = tmp_path / "grid"
    shutil.copytree(family_grid[0], out)
    shutil.rmtree(out / "sh" / "seed0" / "eval")  # cut after its fit: evaluated, not refitted
    shutil.rmtree(out / "pcah" / "seed0" / "eval")  # cut during its fit (no summary yet): fitted again, whole
    (out / "pcah" / "seed0" / "summary.json").unlink()
    kept = {m: _files(out / m) for m in ("bihalf", "itq", "lsh")}
    sh_fit = _files(out / "sh" / "seed0" / "bits16")
    rc, printed, err = _cli(FAMILY_ARGS + ["--out", str(out)])
    assert rc == 0, err
    assert "sh/seed0: evaluating the fit of 16 bits" in printed and "pcah/seed0: fitting 16 bits" in printed
    assert printed.count("finished earlier, skipped") == 3
    assert {m: _files(out / m) for m in ("bihalf", "itq", "lsh")} == kept
    assert _files(out / "sh" / "seed0" / "bits16") == sh_fit
    before = read_json(family_grid[0] / "table.json")["rows"]
    assert [r["map"] for r in read_json(out / "table.json")["rows"]] == [r["map"] for r in before]
    rc, printed, err = _cli(["compare", "--report-only", "--out", str(out)])
    assert rc == 0, err
    assert "| pcah | baseline | 16 |" in printed and "| bihalf | unsupervised | 16 |" in printed


def test_selectors_expand_by_what_methods_declare():
    from hybridhash.app.commands.compare import configure, grid_from_args
    from hybridhash.methods import SHALLOW, is_training_free, list_methods, method_class

    parser = argparse.ArgumentParser()
    configure(parser)

    def methods(*words):
        return list(grid_from_args(parser.parse_args(["--methods", *words])).methods)

    named_only = [m for m in list_methods() if not method_class(m).in_default_grid]  # run only when named
    every = [m for m in list_methods() if m not in named_only]
    supervised = [m for m in every if method_class(m).trains_on == "labels"]
    unsupervised = methods("unsupervised")
    assert methods("supervised") == methods("all") == supervised
    assert unsupervised and sorted(unsupervised + supervised) == every  # the selectable methods, split in two
    assert named_only and all(methods(m) == [m] for m in named_only)
    assert all(method_class(m).family == "unsupervised" for m in unsupervised)
    baselines = methods("baselines")
    assert baselines == sorted(SHALLOW) == ["itq", "lsh", "pcah", "sh"] and all(map(is_training_free, baselines))
    assert methods("hybridhash", "baselines") == ["hybridhash", *baselines]
    assert methods("unsupervised", "baselines") == unsupervised + baselines
    assert methods("dsh", "supervised") == ["dsh", *[m for m in supervised if m != "dsh"]]  # dsh once, first
    # the families partition the selectable methods, each selector bringing its own
    families = {f: methods(f) for f in ("symmetric", "asymmetric", "central", "classification", "unsupervised")}
    assert sorted(sum(families.values(), [])) == every
    assert all(method_class(m).family == f for f, ms in families.items() for m in ms)
    assert {"csq", "dpn", "mdshc"} <= set(families["central"]) and "adsh" in families["asymmetric"]
    assert methods("central", "baselines") == families["central"] + baselines


def test_baseline_cells_get_no_training_loop_options():
    from hybridhash.app.train.fit import TRAINING_ONLY, check_fit_options
    from hybridhash.app.train.recipe import TrainConfig

    grid = Grid(methods=("dsh", "itq"), seeds=(0,), epochs=3, same_optimizer=True, lr=1e-3,
                train_options={"recipe": "original", "select_on": "query"}, method_params={"itq": {"iterations": 5}})
    grid.check()
    dsh, itq = (grid.config_for(c) for c in grid.cells())
    assert dsh.epochs == 3 and dsh.lr == 1e-3 and dsh.recipe == "original"
    assert all(getattr(itq, k) == getattr(TrainConfig(), k) for k in TRAINING_ONLY)
    check_fit_options(itq)
    assert itq.select_on == "query" and itq.method_params == {"iterations": 5}
    assert (itq.model, itq.model_overrides["img_size"]) == ("pixels", 32)  # hybridhash_cpu's input size
    other = Grid(methods=("itq",), seeds=(0,), baseline_model="cnn_cpu")
    assert (other.config_for(other.cells()[0]).model, other.config_for(other.cells()[0]).model_overrides) == (
        "cnn_cpu", {})
    assert Grid.from_dict(json.loads(json.dumps(other.to_dict()))).baseline_model == "cnn_cpu"


# ---------------------------------------------------------------------------------------------
# multi-label data: ACG, NDCG and WAP beside mAP in the table


def test_multilabel_grid_carries_acg_ndcg_wap(tmp_path):
    from tests.helpers.fakes import write_multilabel_lists

    lists = tmp_path / "lists"
    sets = write_multilabel_lists(lists, seed=3)
    out = tmp_path / "grid"
    rc, printed, err = _cli(["compare", "--methods", "pcah", "--bits", "8", "--seeds", "0", "--dataset",
                             f"list:{lists}", "--threads", "1", "--no-progress", "--out", str(out)])
    assert rc == 0, err
    doc = read_json(out / "table.json")
    rows = {r["method"]: r for r in doc["rows"]}
    assert set(rows) == {"pcah", "floor: LSH (pixels)"} and doc["topk"] == "all"
    graded = ("acg", "ndcg", "wap", "acg_tie_aware", "ndcg_tie_aware")
    for name, metrics in (("pcah", out / "pcah" / "seed0" / "eval" / "metrics.json"),
                          ("floor: LSH (pixels)", out / "floor-lsh" / "seed0" / "metrics.json")):
        cell = read_json(metrics)["results"]["8"]
        for key in graded:
            assert rows[name][key]["values"] == [cell[key]], (name, key)
    # the cell's figures from its saved codes and the list files' labels
    codes = np.load(out / "pcah" / "seed0" / "eval" / "codes_bits8.npz")
    args = (codes["query"], codes["database"], sets["test.txt"], sets["database.txt"])
    for key, fn in (("acg", M.mean_acg), ("ndcg", M.mean_ndcg), ("wap", M.weighted_mean_average_precision)):
        assert rows["pcah"][key]["mean"] == pytest.approx(fn(*args), abs=1e-12), key
    r = rows["pcah"]
    assert "| method | family | bits | mAP@all | tie-aware mAP@all | ACG@all | NDCG@all | WAP@all | P(r<=2) |" in printed
    assert f"| {r['map']['mean']:.4f} | {r['map_tie_aware']['mean']:.4f} | {r['acg']['mean']:.4f} | " \
           f"{r['ndcg']['mean']:.4f} | {r['wap']['mean']:.4f} |" in printed
    with open(out / "table.csv") as f:
        csv_row = next(row for row in csv.DictReader(f) if row["method"] == "pcah")
    assert float(csv_row["ndcg_mean"]) == pytest.approx(r["ndcg"]["mean"], abs=1e-15) and csv_row["ndcg_std"] == ""
