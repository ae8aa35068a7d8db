"""The data package: protocols, splits, split records, readers, safe image loading, transforms, CLI."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.fakes import (CIFAR_NAMES, encoded, noise_image, png_header_only, tiny_image, write_fake_cifar,
                        write_folder, write_list_dir)
from hybridhash.app import cli
from hybridhash.data import DEFAULT_MAX_PIXELS, Protocol, build_transform, check_protocol, load_protocol, open_image
from hybridhash.data.splits import decode_rows, encode_rows, resolve_count
from hybridhash.errors import ConfigError, DataError


def rows_of(s):
    return set(s.rows.tolist())


def class_counts(s):
    return np.bincount(s.labels.argmax(1), minlength=s.labels.shape[1])


@pytest.fixture(scope="module")
def digits():
    return load_protocol("digits", seed=0)


@pytest.fixture(scope="module")
def sk_digits():
    from sklearn.datasets import load_digits
    return load_digits()


# -------------------------------------------------------------------------------- digits
def test_digits_protocol_sizes_and_relations(digits, sk_digits):
    assert isinstance(digits, Protocol)
    assert (digits.n_class, digits.multi_label, digits.topk) == (10, False, None)
    assert len(digits.query) == 200 and len(digits.database) == 1797 - 200 == 1597
    assert len(digits.train) + len(digits.val) == 500 and len(digits.val) == 50
    assert (class_counts(digits.query) == 20).all()
    assert (class_counts(digits.train) + class_counts(digits.val) == 50).all()
    q, db, tr, va = map(rows_of, (digits.query, digits.database, digits.train, digits.val))
    assert not q & db and q | db == set(range(1797))
    assert tr <= db and va <= db and not tr & va
    # labels and pixels against scikit-learn's own arrays, row by row
    for s in digits.sets.values():
        assert s.labels.dtype == np.float32 and s.labels.shape == (len(s), 10)
        np.testing.assert_array_equal(s.labels.argmax(1), sk_digits.target[s.rows])
        assert (s.labels.sum(1) == 1).all()
        assert s.paths is None
    image, target, i = digits.train[7]
    row = digits.train.rows[7]
    assert i == 7 and image.mode == "RGB" and image.size == (8, 8)
    assert target.dtype == torch.float32 and target.shape == (10,) and int(target.argmax()) == sk_digits.target[row]
    expected = np.round(sk_digits.images[row] * 255 / 16).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(np.asarray(image)[..., c], expected)


def test_digits_summary_and_val_fraction(digits):
    summary = digits.summary()
    json.dumps(summary)
    assert summary["sizes"] == {"train": 450, "val": 50, "query": 200, "database": 1597}
    assert summary["topk"] == "all" and summary["pipeline"] == "digits"
    no_val = load_protocol("digits", seed=0, val_fraction=0.0)
    assert len(no_val.val) == 0 and len(no_val.train) == 500
    # the val draw has its own stream: queries and the training pool do not move with it
    assert rows_of(no_val.query) == rows_of(digits.query)
    assert rows_of(no_val.train) == rows_of(digits.train) | rows_of(digits.val)
    with pytest.raises(DataError, match="val_fraction"):
        load_protocol("digits", val_fraction=1.0)


def test_seeded_splits_repeat_and_differ(digits):
    again = load_protocol("digits", seed=0)
    other = load_protocol("digits", seed=1)
    for name in ("train", "val", "query", "database"):
        np.testing.assert_array_equal(again.sets[name].rows, digits.sets[name].rows)
    assert rows_of(other.query) != rows_of(digits.query)
    assert rows_of(other.train) != rows_of(digits.train)
    assert all(np.all(np.diff(s.rows) > 0) for s in digits.sets.values())  # sorted, unique


def test_split_record_round_trip(digits, tmp_path):
    record = digits.split_record()
    path = tmp_path / "split.json"
    path.write_text(json.dumps(record))
    # a different seed and val_fraction are overridden by the record
    again = load_protocol("digits", seed=5, val_fraction=0.3, split_file=path)
    for name in ("train", "val", "query", "database"):
        np.testing.assert_array_equal(again.sets[name].rows, digits.sets[name].rows)
    assert (again.seed, again.val_fraction) == (0, 0.1)
    assert again.split_record() == record

    tampered = dict(record, sets=dict(record["sets"], val=dict(record["sets"]["val"], rows="0-49")))
    path.write_text(json.dumps(tampered))
    with pytest.raises(DataError, match="hash"):
        load_protocol("digits", split_file=path)
    with pytest.raises(DataError, match="not of 'cifar10'"):
        path.write_text(json.dumps(record))
        load_protocol("cifar10", tmp_path, split_file=path)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(DataError, match="not a split record"):
        load_protocol("digits", split_file=tmp_path / "junk.json")


def test_save_split_writes_the_record(digits, tmp_path):
    record = digits.save_split(tmp_path / "s" / "split.json")
    assert json.loads((tmp_path / "s" / "split.json").read_text()) == record
    assert record["sizes"] == {"train": 450, "val": 50, "query": 200, "database": 1597}


def test_row_ranges_round_trip():
    rng = np.random.default_rng(0)
    for n in (0, 1, 5, 300):
        rows = np.sort(rng.choice(1000, size=n, replace=False))
        text = encode_rows(rows)
        np.testing.assert_array_equal(decode_rows(text, 1000), rows)
    assert encode_rows(np.array([0, 1, 2, 5, 7, 8])) == "0-2,5,7-8"
    with pytest.raises(DataError):
        decode_rows("0-2,x", 10)
    with pytest.raises(DataError):
        decode_rows("5,3", 10)
    with pytest.raises(DataError):
        decode_rows("8-10", 10)


def test_resolve_count_rounds_half_up():
    assert [resolve_count(0.1, n, "q") for n in (0, 4, 5, 45, 46)] == [0, 0, 1, 5, 5]
    assert resolve_count(7, 100, "q") == 7
    with pytest.raises(DataError):
        resolve_count(1.5, 10, "q")
    with pytest.raises(DataError):
        resolve_count(-1, 10, "q")


def test_export_images_is_a_list_root(digits, tmp_path):
    written = digits.export_images(tmp_path / "exp")
    assert [len(written[s]) for s in ("query", "train", "database")] == [200, 450, 1597]
    # the PNG files decode to the in-memory pixels, in set order
    for i in (0, 99, 449):
        np.testing.assert_array_equal(np.asarray(open_image(written["train"][i])), np.asarray(digits.train.image(i)))
    assert written["train"][3].split("/")[-2] == str(int(digits.train.labels[3].argmax()))
    listed = load_protocol(f"list:{tmp_path / 'exp'}", val_fraction=0.0)
    assert listed.n_class == 10 and not listed.multi_label
    np.testing.assert_array_equal(listed.query.labels, digits.query.labels)
    np.testing.assert_array_equal(listed.database.labels, digits.database.labels)
    assert listed.database.paths == written["database"]
    # val images are held out of the database used for model selection, by row or by file
    assert rows_of(digits.val_database) == rows_of(digits.database) - rows_of(digits.val)
    listed_val = load_protocol(f"list:{tmp_path / 'exp'}", val_fraction=0.1)
    assert len(listed_val.val) == 50 and len(listed_val.val_database) == 1597 - 50  # 4.5 per class rounds up
    assert not set(listed_val.val_database.paths) & set(listed_val.val.paths)
    np.testing.assert_array_equal(np.asarray(listed.query[5][0]), np.asarray(digits.query[5][0]))


# -------------------------------------------------------------------------------- CIFAR-10
@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    images, classes = write_fake_cifar(root, train_per_class=2, test_per_class=2)  # 12 per class, 120 in all
    return root, images, classes


def test_fake_cifar_is_rejected_by_the_stock_md5_check(fake_cifar):
    # why the loader does not call torchvision's CIFAR10 as is: it re-checks md5 on every load
    from torchvision.datasets import CIFAR10
    with pytest.raises(RuntimeError):
        CIFAR10(fake_cifar[0], train=True, download=False)


@pytest.mark.parametrize("name", ["cifar10", "cifar10-1", "cifar10-2"])
def test_cifar_protocols(fake_cifar, name):
    root, images, classes = fake_cifar
    sizes = dict(query=2) if name == "cifar10-2" else dict(query=2, train=4)
    p = load_protocol(name, root, sizes=sizes, val_fraction=0.25, seed=3)
    assert (p.n_class, p.multi_label, p.topk) == (10, False, None)
    assert p.original_bank_rows == 10000 and p.class_names == CIFAR_NAMES
    q, tr, va, db = map(rows_of, (p.query, p.train, p.val, p.database))
    everything = set(range(120))
    assert (class_counts(p.query) == 2).all()
    assert not q & db and not q & tr and not q & va and not tr & va
    if name == "cifar10":
        assert (class_counts(p.train) + class_counts(p.val) == 4).all()
        assert not (tr | va) & db and q | tr | va | db == everything
        assert len(p.database) == 120 - 20 - 40
    elif name == "cifar10-1":
        assert (class_counts(p.train) + class_counts(p.val) == 4).all()
        assert tr | va <= db and q | db == everything
    else:
        assert db == tr | va and q | db == everything  # training images are the database
        assert (class_counts(p.train) + class_counts(p.val) == 10).all()
    assert (class_counts(p.val) == 1).all() if name != "cifar10-2" else (class_counts(p.val) == 3).all()
    # pixels and labels come from the batch files: train batches first, then the test batch
    for s in p.sets.values():
        np.testing.assert_array_equal(s.labels.argmax(1), classes[s.rows])
    image, target, i = p.database[4]
    np.testing.assert_array_equal(np.asarray(image), images[p.database.rows[4]])
    assert int(target.argmax()) == classes[p.database.rows[4]]


def test_cifar_split_file_detects_changed_data(fake_cifar, tmp_path):
    root, _, _ = fake_cifar
    p = load_protocol("cifar10", root, sizes=dict(query=2, train=4))
    split = tmp_path / "split.json"
    p.save_split(split)
    again = load_protocol("cifar10", root, split_file=split, seed=9)
    np.testing.assert_array_equal(again.train.rows, p.train.rows)
    other = tmp_path / "other"
    write_fake_cifar(other, train_per_class=2, test_per_class=2, seed=1)  # same sizes, other pixels
    with pytest.raises(DataError, match="data changed"):
        load_protocol("cifar10", other, split_file=split)


def test_cifar_errors(fake_cifar, tmp_path):
    root, _, _ = fake_cifar
    with pytest.raises(DataError, match="class 0 has 12 images"):
        load_protocol("cifar10", root)  # the real protocol needs 600 per class
    with pytest.raises(DataError, match="needs a root"):
        load_protocol("cifar10")
    with pytest.raises(DataError, match="data_batch_1"):
        load_protocol("cifar10", tmp_path)
    with pytest.raises(DataError, match="sizes: unknown key"):
        load_protocol("cifar10", root, sizes=dict(database=3))


def test_cifar_check_and_export(fake_cifar, tmp_path, capsys):
    root, images, _ = fake_cifar
    assert cli.main(["data", "check", "cifar10", "--data-root", str(root)]) == 1  # 12 per class, 600 needed
    assert "class 0 has 12 images, the protocol needs 100 query + 500 train" in capsys.readouterr().out
    assert cli.main(["data", "check", "cifar10-1", "--data-root", str(root), "--sizes", "query=2,train=4"]) == 0
    out = capsys.readouterr().out
    assert "query" in out and "OK" in out
    assert cli.main(["data", "check", "cifar10-1", "--data-root", str(root), "--sizes", "query=2,train=4",
                     "--verify-images"]) == 1
    assert "test_batch: md5 differs from the published CIFAR-10 archive" in capsys.readouterr().out
    assert cli.main(["data", "check", "cifar10", "--data-root", str(tmp_path)]) == 1
    assert "data_batch_1: missing" in capsys.readouterr().out

    out_dir = tmp_path / "exp"
    assert cli.main(["data", "export", "cifar10-2", "--data-root", str(root), "--sizes", "query=1",
                     "--sets", "query", "--out", str(out_dir)]) == 0
    lines = (out_dir / "test.txt").read_text().splitlines()
    assert len(lines) == 10 and lines[0].startswith("images/")
    rel, *labels = lines[3].split()
    assert rel.split("/")[1] == CIFAR_NAMES[labels.index("1")]
    row = int(rel.split("/")[-1].split(".")[0])
    np.testing.assert_array_equal(np.asarray(open_image(out_dir / rel)), images[row])


# -------------------------------------------------------------------------------- list files
def _labels(rng, n, width, multi=True):
    if not multi:
        return np.eye(width, dtype=int)[rng.integers(0, width, n)]
    out = (rng.random((n, width)) < 0.3).astype(int)
    out[np.arange(n), rng.integers(0, width, n)] = 1
    return out


@pytest.fixture
def list_dir(tmp_path):
    rng = np.random.default_rng(0)
    sets = {"train.txt": _labels(rng, 10, 5), "test.txt": _labels(rng, 4, 5), "database.txt": _labels(rng, 12, 5)}
    rels = write_list_dir(tmp_path / "lists", sets)
    return tmp_path / "lists", sets, rels


def test_list_protocol_parses_multi_hot(list_dir):
    d, sets, rels = list_dir
    p = load_protocol(f"list:{d}", val_fraction=0.2, seed=1)
    assert p.n_class == 5 and p.multi_label and p.topk is None
    np.testing.assert_array_equal(p.query.labels, sets["test.txt"])
    np.testing.assert_array_equal(p.database.labels, sets["database.txt"])
    assert len(p.val) == 2 and len(p.train) == 8
    assert rows_of(p.train) | rows_of(p.val) == set(range(10)) and not rows_of(p.train) & rows_of(p.val)
    np.testing.assert_array_equal(p.train.labels, sets["train.txt"][p.train.rows])
    assert p.query.paths == [str(d / r) for r in rels["test.txt"]]
    image, target, i = p.database[3]
    np.testing.assert_array_equal(np.asarray(image), np.asarray(tiny_image(14 + 3)))
    np.testing.assert_array_equal(target.numpy(), sets["database.txt"][3])
    # the same directory through root=, with an explicit image root
    q = load_protocol("list", d, image_root=d, val_fraction=0.2, seed=1)
    np.testing.assert_array_equal(q.train.rows, p.train.rows)


def test_list_paths_are_relative_to_the_image_root():
    from hybridhash.data.sets import resolve_path
    # the original concatenates root and path, so a leading "/" does not make a path absolute
    assert resolve_path("/data/nus", "/images/a.jpg") == "/data/nus/images/a.jpg"
    assert resolve_path("/data/nus", "./images/a.jpg") == "/data/nus/images/a.jpg"
    assert resolve_path("/data/nus/", "images/a.jpg") == "/data/nus/images/a.jpg"


def test_named_list_protocol_and_its_width(tmp_path):
    rng = np.random.default_rng(1)
    write_list_dir(tmp_path / "coco", {"train.txt": _labels(rng, 6, 80), "test.txt": _labels(rng, 2, 80),
                                       "database.txt": _labels(rng, 5, 80)}, fmt="jpeg")
    p = load_protocol("coco", tmp_path)  # finds the coco/ sub-folder of a DeepHash-style data folder
    assert (p.n_class, p.multi_label, p.topk) == (80, True, 5000)
    assert p.query[1][0].mode == "RGB"
    with pytest.raises(DataError, match=r"coco/train.txt:1: 80 label entries, expected 21 \(nuswide_21 has 21"):
        load_protocol("nuswide_21", tmp_path / "coco")


def test_list_inconsistent_width_and_bad_labels(list_dir):
    d, sets, rels = list_dir
    lines = (d / "database.txt").read_text().splitlines()
    lines[6] = lines[6] + " 0"
    (d / "database.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"database.txt:7: 6 label entries, expected 5"):
        load_protocol(f"list:{d}")
    lines[6] = lines[6][:-2].rsplit(" ", 1)[0] + " 2"
    (d / "database.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"database.txt:7: label '2' is not 0 or 1"):
        load_protocol(f"list:{d}")


def test_list_split_file_refuses_changed_list(list_dir, tmp_path):
    d, sets, rels = list_dir
    split = tmp_path / "split.json"
    load_protocol(f"list:{d}").save_split(split)
    assert load_protocol(f"list:{d}", split_file=split).train.rows.size == 9
    text = (d / "train.txt").read_text().replace(" 1", " 0", 1)
    (d / "train.txt").write_text(text)
    with pytest.raises(DataError, match="content of train.txt differs"):
        load_protocol(f"list:{d}", split_file=split)


def test_data_check_finds_every_problem(list_dir, capsys):
    d, sets, rels = list_dir
    assert cli.main(["data", "check", f"list:{d}", "--verify-images", "--no-progress"]) == 0
    assert "OK" in capsys.readouterr().out

    (d / rels["database.txt"][2]).unlink()                                      # missing image
    (d / rels["train.txt"][4]).write_bytes(encoded(noise_image(), "PNG")[:200])  # corrupt image
    lines = (d / "test.txt").read_text().splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0]                                       # 4 labels instead of 5
    lines.append(lines[0])                                                      # duplicate path
    (d / "test.txt").write_text("\n".join(lines) + "\n")

    assert cli.main(["data", "check", f"list:{d}", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"database.txt:3: {rels['database.txt'][2]}: missing" in out
    assert "test.txt:2: 4 label entries, expected 5" in out
    assert "test.txt:5: " in out and "duplicate of line 1" in out
    assert "truncated or corrupt" not in out  # not decoded without --verify-images

    assert cli.main(["data", "check", f"list:{d}", "--verify-images", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"train.txt:5: {d / rels['train.txt'][4]}: truncated or corrupt image" in out
    report = check_protocol(f"list:{d}", verify_images=True)
    assert not report.ok and len(report.errors) == 4
    by_set = {s.name: s for s in report.sets}
    assert (by_set["database"].missing, by_set["train"].unreadable, by_set["query"].bad_lines,
            by_set["query"].duplicates) == (1, 1, 1, 1)


def test_data_check_missing_list_file(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("a.png 0 1\n")
    assert cli.main(["data", "check", "list", "--data-root", str(tmp_path), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "test.txt: list file missing" in out and "a.png: missing" in out


# -------------------------------------------------------------------------------- folders
def test_folder_protocol(tmp_path):
    counts = {"cat": 20, "ant": 10, "bee": 31}
    write_folder(tmp_path / "f", counts)
    (tmp_path / "f" / "cat" / "notes.txt").write_text("not an image")
    p = load_protocol(f"folder:{tmp_path / 'f'}", val_fraction=0.0, seed=2)
    assert p.class_names == ["ant", "bee", "cat"] and p.n_class == 3 and p.topk is None
    n = np.array([10, 31, 20])  # sorted class order
    q = np.floor(0.1 * n + 0.5).astype(int)
    t = np.floor(0.5 * (n - q) + 0.5).astype(int)
    np.testing.assert_array_equal(class_counts(p.query), q)
    np.testing.assert_array_equal(class_counts(p.train), t)
    np.testing.assert_array_equal(class_counts(p.database), n - q)
    assert rows_of(p.train) <= rows_of(p.database) and not rows_of(p.query) & rows_of(p.database)
    for path, label in zip(p.database.paths, p.database.labels):
        assert path.split("/")[-2] == p.class_names[int(label.argmax())]
    assert not any(path.endswith(".txt") for path in p.database.paths)
    assert check_protocol(f"folder:{tmp_path / 'f'}", verify_images=True).ok
    encoded_bad = encoded(noise_image(), "JPEG")[:700]
    (tmp_path / "f" / "bee" / "000.png").write_bytes(encoded_bad)
    report = check_protocol("folder", tmp_path / "f", verify_images=True)
    assert len(report.errors) == 1
    assert str(report.errors[0]).startswith(f"{tmp_path / 'f' / 'bee' / '000.png'}: truncated or corrupt image (")
    assert "1 file(s) without an image extension ignored" in report.format()
    (tmp_path / "f" / "dog").mkdir()
    with pytest.raises(DataError, match="dog: class folder has no images"):
        load_protocol("folder", tmp_path / "f")


# -------------------------------------------------------------------------------- open_image
def test_open_image_errors(tmp_path):
    cases = {
        "empty.png": (b"", "empty file"),
        "text.jpg": (b"certainly not an image", "not an image"),
        "trunc.png": (encoded(noise_image(), "PNG")[:1500], "truncated or corrupt"),
        "trunc.jpg": (encoded(noise_image(), "JPEG")[:900], "truncated or corrupt"),
        "bomb.png": (png_header_only(100_000, 100_000), "pixel limit"),
    }
    for fname, (data, reason) in cases.items():
        (tmp_path / fname).write_bytes(data)
        with pytest.raises(DataError, match=reason) as err:
            open_image(tmp_path / fname)
        assert str(tmp_path / fname) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(DataError, match="no such file"):
        open_image(tmp_path / "absent.png")
    with pytest.raises(DataError, match="is a directory"):
        open_image(tmp_path)
    # over our limit but under PIL's hard one: refused from the header, before decoding
    (tmp_path / "big.png").write_bytes(png_header_only(10_000, 10_000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=f"10000x10000 = 100000000 pixels is over the limit of {DEFAULT_MAX_PIXELS}"):
            open_image(tmp_path / "big.png")
    noise_image(64).save(tmp_path / "ok.png")
    assert open_image(tmp_path / "ok.png", max_pixels=64 * 64).size == (64, 64)
    with pytest.raises(DataError, match="4096 pixels is over the limit of 4095"):
        open_image(tmp_path / "ok.png", max_pixels=4095)


def test_open_image_modes_and_sources(tmp_path):
    rgb = noise_image(16)
    for mode in ("L", "RGBA", "P", "CMYK", "1"):
        img = open_image(encoded(rgb.convert(mode), "PNG" if mode != "CMYK" else "JPEG"))
        assert img.mode == "RGB" and img.size == (16, 16)
    np.testing.assert_array_equal(np.asarray(open_image(encoded(rgb, "PNG"))), np.asarray(rgb))
    grey16 = Image.fromarray((np.arange(256, dtype=np.uint16).reshape(16, 16) * 257))
    out = np.asarray(open_image(encoded(grey16, "PNG")))
    np.testing.assert_array_equal(out[..., 0], np.arange(256).reshape(16, 16))  # top byte, not clipped
    with open(tmp_path / "x.png", "wb") as f:
        rgb.save(f, format="PNG")
    with open(tmp_path / "x.png", "rb") as f:
        assert open_image(f).size == (16, 16)
    with pytest.raises(DataError, match="upload.png: not an image"):
        open_image(b"nope", name="upload.png")


# -------------------------------------------------------------------------------- transforms
PRE = {"img_size": 32, "resize": 36, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5], "interpolation": "bilinear"}


def test_transforms_sizes_and_normalisation():
    colour = (200, 100, 50)
    img = Image.new("RGB", (50, 40), colour)
    expected = (np.array(colour) / 255 - np.array(PRE["mean"])) / np.array(PRE["std"])
    for dataset in (None, "coco", "cifar10", "digits"):
        for train in (False, True):
            x = build_transform(PRE, train, dataset)(img)
            assert type(x) is torch.Tensor and x.dtype == torch.float32 and x.shape == (3, 32, 32)
            if dataset == "digits" and train:
                continue  # shifted in from a black border; see the shift test
            np.testing.assert_allclose(x.numpy(), np.broadcast_to(expected[:, None, None], (3, 32, 32)), atol=1e-5)


def test_standard_eval_is_resize_then_center_crop():
    img = noise_image(48)
    x = build_transform(PRE, False, "coco")(img)
    ref = img.resize((36, 36), Image.BILINEAR).crop((2, 2, 34, 34))
    ref = (np.asarray(ref, dtype=np.float32) / 255 - PRE["mean"]) / PRE["std"]
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), ref, atol=1e-5)
    cifar = build_transform(PRE, True, "cifar10-1")(img)  # CIFAR: resize only, even for training
    ref = (np.asarray(img.resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255 - PRE["mean"]) / PRE["std"]
    np.testing.assert_allclose(cifar.permute(1, 2, 0).numpy(), ref, atol=1e-5)


def test_digits_train_shift_is_a_small_translation(digits):
    torch.manual_seed(0)
    pre = dict(PRE, pipeline="digits")
    image = digits.train.image(0)
    base = build_transform(pre, False)(image)
    background = torch.tensor([(0 - m) / s for m, s in zip(pre["mean"], pre["std"])]).view(3, 1, 1)
    padded = torch.nn.functional.pad(base - background, (2, 2, 2, 2))  # zero = background
    shifts = set()
    train = build_transform(pre, True, "coco")  # the preprocess pipeline wins over the dataset
    for _ in range(20):
        x = train(image) - background
        match = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.allclose(padded[:, dy:dy + 32, dx:dx + 32], x, atol=1e-5)]
        assert match, "training image is not a translate of the eval image by at most 2 px"
        shifts.add(match[0])
    assert len(shifts) > 3


def test_transform_config_errors():
    with pytest.raises(ConfigError, match="resize 16 is smaller"):
        build_transform(dict(PRE, resize=16), False)
    with pytest.raises(ConfigError, match="interpolation"):
        build_transform(dict(PRE, interpolation="fancy"), False)
    with pytest.raises(ConfigError, match="lacks 'std'"):
        build_transform({"img_size": 32, "mean": [0, 0, 0]}, False)


def test_with_transform_and_subset(digits):
    tf = build_transform(dict(PRE, pipeline="digits"), False)
    s = digits.query.with_transform(tf)
    x, target, i = s[3]
    assert x.shape == (3, 32, 32) and i == 3 and len(s) == 200
    batch = torch.utils.data.default_collate([s[0], s[1]])
    assert batch[0].shape == (2, 3, 32, 32) and batch[1].shape == (2, 10) and batch[2].tolist() == [0, 1]
    sub = s.subset([5, 7])
    np.testing.assert_array_equal(sub.rows, digits.query.rows[[5, 7]])
    assert sub[1][2] == 1 and torch.equal(sub[1][0], s[7][0])
    with pytest.raises(IndexError):
        s[200]


# -------------------------------------------------------------------------------- CLI
def test_cli_info_list_and_errors(capsys, tmp_path):
    assert cli.main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "nuswide_81_m" in out and "128503" in out
    assert cli.main(["data", "info", "digits", "--json", "--save-split", str(tmp_path / "s.json")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sizes"]["database"] == 1597 and len(summary["split_hash"]) == 64
    assert cli.main(["data", "info", "digits", "--split-file", str(tmp_path / "s.json"), "--seed", "4"]) == 0
    assert "query          200" in capsys.readouterr().out
    assert cli.main(["data", "info", "imagenet"]) == 0
    assert "mAP@1000" in capsys.readouterr().out
    assert cli.main(["data", "info", "nosuchset"]) == 1
    assert "unknown dataset 'nosuchset'" in capsys.readouterr().err
    assert cli.main(["data", "check", "digits"]) == 0
    assert cli.main(["data", "info", f"list:{tmp_path / 'absent'}"]) == 1
    assert "absent: no such directory" in capsys.readouterr().err
    assert cli.main(["data", "info", "folder:"]) == 1
    assert "names no directory" in capsys.readouterr().err
