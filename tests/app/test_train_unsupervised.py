"""The unsupervised methods through the real training loop: fed what they declare (targets, two views),
trained on a folder without labels with label-free model selection, then encoded, indexed, searched
and served; on labelled data both selection scores logged with their rank correlation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import hybridhash
from hybridhash.app.train import TrainConfig, train
from hybridhash.data import load_protocol
from hybridhash.errors import ConfigError
from hybridhash.methods import list_methods, method_class
from hybridhash.metrics.copies import average_ranks, spearman

from tests.helpers.commands import one_error_line, run_cli

UNSUPERVISED = [m for m in list_methods() if method_class(m).trains_on != "labels"]
SMALL = '{"depths": [1, 1, 1]}'  # hybridhash_cpu with one layer per level


@pytest.fixture(scope="module")
def small_digits():
    """15 training, 5 validation and 5 query images per class."""
    return load_protocol("digits", sizes=dict(query=5, train=20), val_fraction=0.25)


@pytest.fixture(scope="module")
def flat_digits(tmp_path_factory):
    """120 digit images (12 per class) as PNG files in one folder: no class folders, no labels."""
    p = load_protocol("digits", sizes=dict(query=2, train=10), val_fraction=0.2)
    root = tmp_path_factory.mktemp("flat")
    n = 0
    for s in (p.train, p.val, p.query):
        for i in range(len(s)):
            s.image(i).save(root / f"img{n:03d}.png")
            n += 1
    return root


def _config(out, **kw) -> TrainConfig:
    base = dict(model="cnn_cpu", bits=(16,), out=str(out), progress=False, threads=1, parallel=1, eval_every=1)
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------------------------
# the rank correlation

def test_average_ranks_and_spearman_by_hand():
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    # ranks a = (2, 3.5, 3.5, 1), b = (1, 2, 3, 4): centred (-0.5, 1, 1, -1.5) and (-1.5, -0.5, 0.5, 1.5);
    # sum of products 0.75 - 0.5 + 0.5 - 2.25 = -1.5, sums of squares 4.5 and 5: rho = -1.5 / sqrt(22.5)
    assert spearman([10, 20, 20, 5], [1, 2, 3, 4]) == pytest.approx(-1.5 / 22.5 ** 0.5)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 30), rng.integers(0, 5, 30)  # many ties
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)


# --------------------------------------------------------------------------------------------
# each method through the loop

@pytest.mark.parametrize("method", UNSUPERVISED)
def test_each_unsupervised_method_trains_through_the_loop(tmp_path, method, small_digits):
    from hybridhash.data.transforms import build_transform

    tf = build_transform(hybridhash.create_model("cnn_cpu").preprocess, train=False)
    x = torch.stack([tf(small_digits.val.image(i)) for i in range(20)])
    seen = []

    def codes(event, trainer, **info):
        if event == "step_end" and info["step"] == 1:
            seen.append(trainer.model.eval().encode(x.to(trainer.device)).clone())
            trainer.model.train()

    results = train(_config(tmp_path / "run", epochs=1, batch_size=16, method=method), protocol=small_digits,
                    callbacks=[codes])
    losses = [h["loss"] for h in results[16].history]
    assert losses and all(np.isfinite(v) for v in losses)
    trained = hybridhash.from_pretrained(tmp_path / "run/bits16/last").eval()
    assert not torch.equal(trained.encode(x), seen[0])  # the steps after the first changed the codes
    record = results[16].history[-1]
    assert 0 < record["val_map"] <= 1 and 0 < record["val_copy_map"] <= 1


def test_the_cibhash_head_is_trained_saved_and_rebuilt(tmp_path, small_digits):
    train(_config(tmp_path / "run", epochs=1, batch_size=16, method="cibhash", method_params={"hidden": 32}),
          protocol=small_digits)
    cfg = json.loads((tmp_path / "run/bits16/best/config.json").read_text())
    assert cfg["head"]["method"] == "cibhash" and cfg["head"]["config"]["hidden"] == 32
    model = hybridhash.from_pretrained(tmp_path / "run/bits16/best")
    assert model.hash_head.to_bits.head[0].out_features == 32


def test_resume_of_an_unsupervised_run_equals_the_uninterrupted_run(tmp_path, small_digits):
    kw = dict(epochs=2, batch_size=16, method="bihalf")
    train(_config(tmp_path / "straight", **kw), protocol=small_digits)
    train(_config(tmp_path / "cut", stop_after_epochs=1, **kw), protocol=small_digits)
    train(_config(tmp_path / "cut", resume=True, **kw), protocol=small_digits)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / r / "bits16/last/model.safetensors")) for r in ("straight", "cut"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    logs = [[json.loads(x) for x in (tmp_path / r / "bits16/log.jsonl").read_text().splitlines()]
            for r in ("straight", "cut")]
    strip = lambda rs: [{k: v for k, v in r.items() if "time" not in k and k != "elapsed"} for r in rs]  # noqa: E731
    assert strip(logs[0]) == strip(logs[1])


def test_labelled_run_logs_both_scores_and_their_rank_correlation(tmp_path, small_digits):
    results = train(_config(tmp_path / "run", epochs=4, batch_size=16, method="bihalf"), protocol=small_digits)
    log = [json.loads(x) for x in (tmp_path / "run/bits16/log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all("val_map" in r and "val_copy_map" in r for r in log)
    summary = json.loads((tmp_path / "run/summary.json").read_text())["results"]["16"]
    assert summary["selected_by"] == "val_map" == results[16].selected_by
    expected = spearmanr([r["val_map"] for r in log], [r["val_copy_map"] for r in log]).statistic
    if np.isnan(expected):
        assert summary["copy_spearman"] is None
    else:
        assert summary["copy_spearman"] == pytest.approx(expected, abs=1e-6)
    best = max(range(4), key=lambda i: (log[i]["val_map"], i))  # ties go to the later epoch
    assert summary["best_epoch"] == best + 1


def test_select_on_copy_picks_the_epoch_by_the_copy_score_where_labels_exist(tmp_path, small_digits):
    results = train(_config(tmp_path / "run", epochs=3, batch_size=16, method="bihalf", select_on="copy"),
                    protocol=small_digits)
    log = [json.loads(x) for x in (tmp_path / "run/bits16/log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and all("val_map" in r and "val_copy_map" in r for r in log)  # both logged
    summary = json.loads((tmp_path / "run/summary.json").read_text())["results"]["16"]
    assert summary["selected_by"] == "val_copy_map" == results[16].selected_by
    best = max(range(3), key=lambda i: (log[i]["val_copy_map"], i))  # ties go to the later epoch
    assert summary["best_epoch"] == best + 1
    assert summary["best_metric"] == pytest.approx(log[best]["val_copy_map"], abs=1e-6)


# --------------------------------------------------------------------------------------------
# a folder without labels, end to end through the command line

def test_a_folder_without_labels_trains_encodes_searches_and_serves(tmp_path, flat_digits, capsys):
    out = tmp_path / "run"
    rc, _, err = run_cli(["train", "--dataset", f"folder:{flat_digits}", "--method", "bihalf", "--model",
                          "hybridhash_cpu", "--model-overrides", SMALL, "--bits", "16", "--epochs", "2",
                          "--batch-size", "16", "--eval-every", "1", "--threads", "1", "--parallel", "1",
                          "--out", out, "--no-progress"], capsys)
    assert rc == 0, err
    log = [json.loads(x) for x in (out / "bits16/log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all("val_copy_map" in r and "val_map" not in r for r in log)
    summary = json.loads((out / "summary.json").read_text())["results"]["16"]
    assert summary["selected_by"] == "val_copy_map" and summary["copy_spearman"] is None
    best = max(range(2), key=lambda i: (log[i]["val_copy_map"], i))
    assert summary["best_epoch"] == best + 1
    assert summary["best_metric"] == pytest.approx(log[best]["val_copy_map"], abs=1e-6)

    codes = tmp_path / "codes"
    rc, _, err = run_cli(["encode", "--checkpoint", out / "bits16/best", "--images", flat_digits, "--collection", codes,
                          "--workers", "0", "--no-progress"], capsys)
    assert rc == 0, err
    assert run_cli(["index", "--collection", codes], capsys)[0] == 0
    query = flat_digits / "img007.png"
    rc, printed, err = run_cli(["search", "--collection", codes, query, "--k", "5", "--json"], capsys)
    assert rc == 0, err
    hits = json.loads(printed)["results"][0]["hits"]
    assert hits[0]["distance"] == 0 and "img007.png" in [h["path"] for h in hits if h["distance"] == 0]

    from fastapi.testclient import TestClient

    from hybridhash.app.serve import create_app
    from hybridhash.retrieval import Retriever

    with TestClient(create_app(Retriever.open(codes)), base_url="http://127.0.0.1:8000") as client:
        r = client.post("/search", files={"image": ("q.png", query.read_bytes(), "image/png")}, data={"k": "5"})
        assert r.status_code == 200, r.text
        body = r.json()["results"]
        assert body[0]["distance"] == 0 and "img007.png" in [h["path"] for h in body if h["distance"] == 0]


# --------------------------------------------------------------------------------------------
# bad input: one line naming what to do

def test_a_supervised_method_on_unlabelled_data_is_refused(tmp_path, flat_digits, capsys):
    rc, _, err = run_cli(["train", "--dataset", f"folder:{flat_digits}", "--method", "dsh", "--bits", "16",
                          "--out", tmp_path / "r"], capsys)
    line = one_error_line(err)
    assert rc == 1 and "dsh trains on labels" in line
    assert all(m in line for m in UNSUPERVISED)
    assert not (tmp_path / "r").exists()
    rc, _, err = run_cli(["train", "--dataset", f"folder:{flat_digits}", "--method", "bihalf", "--bits", "16",
                          "--select-on", "query", "--out", tmp_path / "q"], capsys)
    assert rc == 1 and "--select-on val" in one_error_line(err)


def test_an_odd_batch_for_a_method_that_pairs_halves_is_refused(tmp_path, capsys):
    rc, _, err = run_cli(["train", "--method", "bihalf", "--batch-size", "15", "--bits", "16",
                          "--out", tmp_path / "r"], capsys)
    assert rc == 1 and "--batch-size 16" in one_error_line(err)


def test_views_at_a_size_their_crops_cannot_vary_are_refused(tmp_path, capsys, monkeypatch):
    import dataclasses

    from hybridhash.data.views import min_view_edge
    from hybridhash.methods.cibhash import CIBHash

    # a crop of at least 98% of the area is at least 98% of the edge wide: 50 px leave one pixel out
    narrow = dataclasses.replace(CIBHash.views, crop_scale=(0.98, 1.0))
    assert min_view_edge(narrow) == 50 and min_view_edge(CIBHash.views) == 3
    monkeypatch.setattr(CIBHash, "views", narrow)
    rc, _, err = run_cli(["train", "--method", "cibhash", "--model", "cnn_cpu", "--bits", "16",
                          "--out", tmp_path / "r"], capsys)
    line = one_error_line(err)
    assert rc == 1 and "at least 50 px" in line and "32 px" in line and "img_size" in line
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------
# the published optimiser and the frozen-feature form

def test_the_step_schedule_and_the_published_sgd_settings():
    from hybridhash.app.train import lr_factor, resolve
    from hybridhash.methods import method_defaults

    factors = [lr_factor(s, 1000, 0, "step", steps_per_epoch=10, step_epochs=3, step_factor=0.1)
               for s in (0, 29, 30, 59, 60)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    published = method_defaults("bihalf")
    c = resolve(TrainConfig(method="bihalf", recipe="original"), 224, published.to_dict())
    assert (c.optimizer, c.lr, c.momentum, c.weight_decay, c.schedule, c.lr_step_epochs, c.lr_step_factor) == \
        ("sgd", published.lr, published.momentum, published.weight_decay, "step", published.lr_step_epochs,
         published.lr_step_factor)
    for epoch in (0, 29, 30, 95):  # the trainer's factor is the method's own lr_at
        assert published.lr * lr_factor(epoch * 7, 10**6, 0, "step", steps_per_epoch=7, step_epochs=30,
                                         step_factor=0.1) == pytest.approx(published.lr_at(epoch))


def test_feature_targets_train_the_head_on_a_frozen_backbone(tmp_path, small_digits):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(3)
    save_file(hybridhash.create_model("cnn_cpu", bits=16).state_dict(), str(tmp_path / "weights.safetensors"))
    train(_config(tmp_path / "run", epochs=1, batch_size=16, method="greedyhash_unsup", targets="features",
                  pretrained=str(tmp_path / "weights.safetensors"), recipe="scratch"), protocol=small_digits)
    before, after = load_file(str(tmp_path / "weights.safetensors")), load_file(
        str(tmp_path / "run/bits16/last/model.safetensors"))
    backbone = [k for k in before if not k.startswith("hash_head.") and before[k].is_floating_point()]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)
    assert not torch.equal(before["hash_head.to_bits.weight"], after["hash_head.to_bits.weight"])


def test_feature_targets_need_a_pretrained_network(tmp_path, capsys):
    rc, _, err = run_cli(["train", "--method", "bihalf", "--targets", "features", "--bits", "16",
                          "--out", tmp_path / "r"], capsys)
    assert rc == 1 and "--pretrained" in one_error_line(err)


def test_evaluate_reports_the_copy_score_and_compare_refuses_unlabelled_data(tmp_path, flat_digits, capsys):
    out = tmp_path / "run"
    rc, _, err = run_cli(["train", "--dataset", f"folder:{flat_digits}", "--method", "greedyhash_unsup", "--model",
                          "cnn_cpu", "--bits", "16", "--epochs", "1", "--batch-size", "16", "--threads", "1",
                          "--parallel", "1", "--out", out, "--no-progress"], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["evaluate", "--checkpoint", out, "--out", tmp_path / "eval"], capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "eval/metrics.json").read_text())
    res = doc["results"]["16"]
    assert doc["labelled"] is False and "map" not in res
    codes = np.load(tmp_path / "eval/codes_bits16.npz")
    from hybridhash.metrics import copy_retrieval_map
    from hybridhash.metrics.copies import chance_level

    assert res["copy_map"] == pytest.approx(copy_retrieval_map(codes["query"], codes["copies"]))
    assert res["chance"] == pytest.approx(chance_level(len(codes["query"])))
    rc, _, err = run_cli(["compare", "--dataset", f"folder:{flat_digits}", "--methods", "bihalf", "--bits", "16",
                          "--seeds", "0", "--epochs", "1", "--model", "cnn_cpu", "--out", tmp_path / "grid",
                          "--no-progress"], capsys)
    assert rc == 1 and "has no labels" in one_error_line(err)
