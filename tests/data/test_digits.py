"""The digits pools and the protocol derived from them, ``digits_hard``: sizes and classes, clean
training images apart from distorted queries and database, determinism per seed, the split record,
export, check, and a short train + evaluate."""
from __future__ import annotations

import json

import numpy as np
import pytest

import hybridhash
from hybridhash import metrics as M
from hybridhash.app import cli
from hybridhash.data import build_transform, check_protocol, load_protocol, open_image
from hybridhash.data.digits import CLEAN, DISTORTED
from hybridhash.data.distort import distort, upscale
from hybridhash.data.protocols import PROTOCOLS
from hybridhash.data.transforms import with_pipeline
from hybridhash.errors import DataError

SPEC = PROTOCOLS["digits_hard"]


@pytest.fixture(scope="module")
def sk():
    from sklearn.datasets import load_digits
    bunch = load_digits()
    grey = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # as the digits pool scales them
    return grey, bunch.target


@pytest.fixture(scope="module")
def hard():
    return load_protocol("digits_hard", seed=0)


def rows(s):
    return set(s.rows.tolist())


def test_sizes_classes_and_sources(hard, sk):
    _, target = sk
    per_class = np.bincount(target, minlength=10)
    count = {name: np.bincount(s.labels.argmax(1), minlength=10) for name, s in hard.sets.items()}
    assert np.all(count["query"] == SPEC.query)
    assert np.all(count["train"] + count["val"] == SPEC.train)
    assert np.all(count["val"] == 2)  # 0.1 of 15 rounds half up
    assert np.all(count["database"] == per_class - SPEC.query - SPEC.train)
    assert {k: len(v) for k, v in hard.sets.items()} == {"train": 130, "val": 20, "query": 200, "database": 1447}
    # every image once: training images (val included) never among the queries or the database
    assert rows(hard.train) | rows(hard.val) | rows(hard.query) | rows(hard.database) == set(range(1797))
    assert sum(len(s) for s in hard.sets.values()) == 1797
    assert not (rows(hard.train) | rows(hard.val)) & (rows(hard.query) | rows(hard.database))
    assert hard.train.pool.name == CLEAN
    assert {hard.val.pool.name, hard.query.pool.name, hard.database.pool.name} == {DISTORTED}
    for s in hard.sets.values():  # labels unchanged: the class of each image's row
        assert np.array_equal(s.labels.argmax(1), target[s.rows]) and np.all(s.labels.sum(1) == 1)
    assert hard.pipeline == "digits" and hard.summary()["distortion"]["size"] == 32
    assert hard.val_database is not None and not rows(hard.val_database) & rows(hard.val)


def test_distortion_really_applied(hard, sk):
    grey, _ = sk
    clean, distorted = hard.pools[CLEAN].images, hard.pools[DISTORTED].images
    assert clean.shape == distorted.shape == (1797, 32, 32, 3)
    assert np.array_equal(clean[..., 0], upscale(grey, 32))  # the training images only resampled
    assert np.array_equal(distorted[..., 0], distort(grey, SPEC.distortion, 0))  # drawn with the split seed
    changed = np.abs(clean.astype(int) - distorted.astype(int)).reshape(1797, -1)
    assert np.all(changed.max(1) > 0)
    assert np.mean(changed) > 10  # grey levels: not a rounding difference
    img = np.asarray(hard.query.image(0))
    assert img.shape == (32, 32, 3) and np.array_equal(img, distorted[hard.query.rows[0]])


def test_same_seed_same_protocol_other_seed_other_one(hard):
    again = load_protocol("digits_hard", seed=0)
    assert again.split_record() == hard.split_record()
    assert np.array_equal(again.pools[DISTORTED].images, hard.pools[DISTORTED].images)
    other = load_protocol("digits_hard", seed=1)
    assert rows(other.query) != rows(hard.query)
    a, b = hard.pools[DISTORTED].images, other.pools[DISTORTED].images
    assert np.all(np.any((a != b).reshape(1797, -1), axis=1))  # every image distorted anew
    assert np.array_equal(hard.pools[CLEAN].images, other.pools[CLEAN].images)


def test_split_record_round_trip_and_edited_seed(hard, tmp_path):
    record = hard.save_split(tmp_path / "split.json")
    assert record["distortion"] == {"size": 32, "rotation": SPEC.distortion.rotation, "scale": SPEC.distortion.scale,
                                    "shear": SPEC.distortion.shear, "shift": SPEC.distortion.shift,
                                    "occlusion": SPEC.distortion.occlusion, "noise": SPEC.distortion.noise}
    again = load_protocol("digits_hard", split_file=tmp_path / "split.json", seed=5)  # the record's seed wins
    assert again.split_record() == record
    assert np.array_equal(again.query.labels, hard.query.labels)
    edited = dict(record, seed=1)  # pixels drawn with another seed than the fingerprint's
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    with pytest.raises(DataError, match="fingerprint"):
        load_protocol("digits_hard", split_file=tmp_path / "edited.json")
    with pytest.raises(DataError, match="not of 'digits'"):
        load_protocol("digits", split_file=tmp_path / "split.json")


def test_export_keeps_the_pools_apart(hard, tmp_path):
    written = hard.export_images(tmp_path / "exp", sets=("query", "train"))
    assert written["train"][0].split("/")[-3] == CLEAN and written["query"][0].split("/")[-3] == DISTORTED
    for i in (0, 7):
        assert np.array_equal(np.asarray(open_image(written["query"][i])), np.asarray(hard.query.image(i)))
        assert np.array_equal(np.asarray(open_image(written["train"][i])), np.asarray(hard.train.image(i)))


def test_check_and_cli(capsys):
    report = check_protocol("digits_hard")
    assert report.ok and not report.warnings  # the published sizes are what seed 0 draws
    assert cli.main(["data", "info", "digits_hard", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sizes"]["database"] == 1447 and summary["distortion"]["noise"] == SPEC.distortion.noise
    assert cli.main(["data", "list"]) == 0
    assert "digits_hard" in capsys.readouterr().out


def test_train_and_evaluate_on_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--dataset", "digits_hard", "--model", "hybridhash_cpu", "--model-overrides",
                     '{"depths": [1, 1, 1]}', "--bits", "16", "--epochs", "1", "--out", str(run), "--no-progress",
                     "--threads", "1", "--parallel", "1", "--seed", "1"]) == 0
    assert json.loads((run / "run.json").read_text())["protocol"]["distortion"]["size"] == 32
    assert cli.main(["evaluate", "--checkpoint", str(run), "--out", str(tmp_path / "eval")]) == 0
    capsys.readouterr()
    doc = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    r = doc["results"]["16"]
    assert doc["dataset"] == "digits_hard" and (r["n_query"], r["n_database"]) == (200, 1447)
    p = load_protocol("digits_hard", seed=1)
    model = hybridhash.from_pretrained(run / "bits16" / "best").eval()
    tf = build_transform(with_pipeline(model.preprocess, "digits_hard"), train=False)

    def codes(s):
        import torch
        return model.encode(torch.stack([tf(s.image(i)) for i in range(len(s))])).numpy()

    q, d = codes(p.query), codes(p.database)
    assert r["map"] == pytest.approx(M.mean_average_precision(q, d, p.query.labels, p.database.labels), abs=1e-9)
