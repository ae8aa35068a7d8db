"""``hybridhash evaluate``: metrics.json against a direct recomputation, figures, the retrieval picture."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import hybridhash
from hybridhash.app import cli
from hybridhash import metrics as M
from hybridhash.data import load_protocol
from hybridhash.data.transforms import build_transform, with_pipeline
from hybridhash.app.evaluation import retrieval_metrics
from hybridhash.app.rundir import find_checkpoints
from hybridhash.app.report import GREEN, RED, pick_queries, retrieval_picture
from hybridhash.codes import hamming_topk
from tests.helpers.fakes import write_multilabel_lists

SMALL = {"depths": [1, 1, 1]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as training leaves it: split.json and bits{N}/best for two code lengths.

    The models are untrained, with a hash layer at a larger scale so that their codes differ
    between images and the ranking has few ties.
    """
    root = tmp_path_factory.mktemp("run")
    p = load_protocol("digits", sizes=dict(query=4, train=10), val_fraction=0.2)
    p.save_split(root / "split.json")
    for bits in (8, 24):
        torch.manual_seed(bits)
        model = hybridhash.create_model("hybridhash_cpu", bits=bits, **SMALL)
        torch.nn.init.normal_(model.hash_head.to_bits.weight, std=1.0)
        model.save_pretrained(str(root / f"bits{bits}" / "best"), preprocess=with_pipeline(model.preprocess, "digits"),
                              epoch=3, dataset="digits")
    return root


def direct_codes(model, dataset):
    tf = build_transform(with_pipeline(model.preprocess, "digits"), train=False)
    return model.eval().encode(torch.stack([tf(dataset.image(i)) for i in range(len(dataset))])).numpy()


def test_metrics_json_matches_a_direct_recomputation(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--checkpoint", str(run_dir), "--out", str(out), "--queries", "3"]) == 0
    printed = capsys.readouterr().out
    assert "mAP@all" in printed and "ACG" not in printed  # single-label: no multi-label figures
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["dataset"] == "digits" and sorted(doc["results"]) == ["24", "8"]
    p = load_protocol("digits", split_file=str(run_dir / "split.json"))
    assert doc["split_hash"] == p.split_record()["hash"]
    for bits in (8, 24):
        model = hybridhash.from_pretrained(run_dir / f"bits{bits}" / "best")
        q, d = direct_codes(model, p.query), direct_codes(model, p.database)
        saved = np.load(out / f"codes_bits{bits}.npz")
        assert np.array_equal(saved["query"], q) and np.array_equal(saved["database"], d)
        r = doc["results"][str(bits)]
        assert r["n_query"] == len(p.query) and r["n_database"] == len(p.database)
        assert r["map"] == pytest.approx(M.mean_average_precision(q, d, p.query.labels, p.database.labels), abs=1e-12)
        assert r["map_tie_aware"] == pytest.approx(
            M.tie_aware_mean_average_precision(q, d, p.query.labels, p.database.labels), abs=1e-12)
        # precision within radius 2 by brute force
        dist = (bits - q.astype(int) @ d.T.astype(int)) // 2
        rel = p.query.labels @ p.database.labels.T > 0
        within = dist <= 2
        prec = np.where(within.sum(1) > 0, (within & rel).sum(1) / np.maximum(within.sum(1), 1), 0.0)
        assert r["precision_within_radius"] == pytest.approx(prec.mean(), abs=1e-12)
        assert len(r["pr_curve"]["radius"]) == bits + 1
        assert r["precision_at_n"]["n"][-1] == len(p.database)
        assert r["epoch"] == 3
        assert not {"acg", "ndcg", "wap", "acg_tie_aware", "ndcg_tie_aware"} & set(r)
    for name in ("pr_curve.png", "precision_at_n.png", "map_vs_bits.png", "retrieval_bits8.png", "retrieval_bits24.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_one_checkpoint_and_default_out(run_dir, tmp_path, monkeypatch):
    ck = find_checkpoints(run_dir / "bits8")
    assert list(ck) == [8] and ck[8].name == "best"
    assert list(find_checkpoints(run_dir / "bits8" / "best")) == [8]
    assert cli.main(["evaluate", "--checkpoint", str(run_dir / "bits8" / "best"), "--out", str(tmp_path / "one"),
                     "--queries", "0"]) == 0
    doc = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert list(doc["results"]) == ["8"]
    assert not (tmp_path / "one" / "map_vs_bits.png").exists()  # one code length: no curve over bits


def test_bad_checkpoint_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nothing" in err and "\n" not in err
    (tmp_path / "empty").mkdir()
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    assert "holds no checkpoint" in capsys.readouterr().err


def test_top_results_and_metrics_on_hand_made_codes():
    q = np.array([[1, 1, 1, 1], [-1, -1, -1, -1]])
    d = np.array([[-1, -1, -1, -1], [1, 1, 1, -1], [1, 1, 1, 1], [1, 1, -1, -1]])
    assert hamming_topk(q, d, k=3)[1].tolist() == [[2, 1, 3], [0, 3, 1]]  # ties by database index
    r = retrieval_metrics(q, d, np.array([0, 1]), np.array([1, 0, 0, 1]), curves=True)
    # query 0: relevant items at ranks 1, 2 (rows 2, 1) -> AP 1; query 1: rows 0, 3 at ranks 1, 2 -> AP 1
    assert r["map"] == 1.0 and r["precision_at_n"]["precision"][0] == 1.0


def test_retrieval_picture_frames_relevant_green_and_others_red(tmp_path):
    img = Image.new("RGB", (8, 8), (200, 200, 200))
    path = retrieval_picture([img, img], [[img, img], [img, img]], [[True, False], [False, True]],
                             tmp_path / "r.png", tile=32)
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB"))
    greens = np.all(px == GREEN, axis=-1)
    reds = np.all(px == RED, axis=-1)
    assert greens.any() and reds.any()
    # first row: the green frame lies left of the red one; second row the reverse
    h = px.shape[0] // 2
    assert np.nonzero(greens[:h])[1].mean() < np.nonzero(reds[:h])[1].mean()
    assert np.nonzero(greens[h:])[1].mean() > np.nonzero(reds[h:])[1].mean()
    assert pick_queries(np.array([0, 0, 1, 2, 1]), 4) == [0, 2, 3, 1]


# --------------------------------------------------------------------------------------------
# multi-label data: ACG, NDCG and WAP beside mAP


def test_multilabel_evaluation_reports_acg_ndcg_wap(tmp_path, capsys):
    sets = write_multilabel_lists(tmp_path / "lists")
    torch.manual_seed(0)
    model = hybridhash.create_model("hybridhash_cpu", bits=16, **SMALL)
    torch.nn.init.normal_(model.hash_head.to_bits.weight, std=1.0)
    model.save_pretrained(str(tmp_path / "bits16" / "best"))
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "bits16" / "best"), "--out", str(out),
                     "--dataset", f"list:{tmp_path / 'lists'}", "--queries", "0"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((out / "metrics.json").read_text())
    r = doc["results"]["16"]
    codes = np.load(out / "codes_bits16.npz")
    args = (codes["query"], codes["database"], sets["test.txt"], sets["database.txt"])
    expected = {"acg": M.mean_acg(*args), "ndcg": M.mean_ndcg(*args), "wap": M.weighted_mean_average_precision(*args),
                "acg_tie_aware": M.tie_aware_mean_acg(*args), "ndcg_tie_aware": M.tie_aware_mean_ndcg(*args),
                "map": M.mean_average_precision(*args)}
    for key, value in expected.items():
        assert r[key] == pytest.approx(value, abs=1e-12), key
    assert doc["topk"] == "all" and 0 < r["acg"] and 0 < r["ndcg"] < 1
    header, row = printed.splitlines()[1:3]
    assert header.split() == ["bits", "mAP", "tie-aware", "P@r<=2", "ACG@all", "NDCG@all", "WAP@all"]
    assert row.split()[-3:] == [f"{r['acg']:.4f}", f"{r['ndcg']:.4f}", f"{r['wap']:.4f}"]

