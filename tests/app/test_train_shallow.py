"""``train --method lsh|pcah|itq|sh``: fitted baselines as ordinary runs and checkpoints.

Digits at 8 px through ``--model pixels`` (192 features, 450 training images): every fit takes
well under a second. Codes are checked against numpy re-computations of the formulas of
docs/baselines.md from the saved tensors and independently read pixels.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import hybridhash
from hybridhash import metrics as M
from hybridhash.app import cli
from hybridhash.codes import pack_pm1
from hybridhash.collection import open_collection
from hybridhash.data import load_protocol
from hybridhash.models.shallow import ShallowHashModel
from tests.helpers.collections import make_images
from tests.helpers.commands import one_error_line, run_cli

BITS = 32
PIXELS = ["--model", "pixels", "--model-overrides", '{"img_size": 8}']
METHODS = ("lsh", "pcah", "itq", "sh")


def fit_args(out, method, *extra):
    return ["train", "--method", method, *PIXELS, "--bits", str(BITS), "--out", str(out), "--device", "cpu",
            "--threads", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("shallow")
    out = {}
    for method in METHODS:
        assert cli.main(fit_args(base / method, method)) == 0
        out[method] = base / method
    return out


@pytest.fixture(scope="module")
def train_pixels(runs):
    """The training images of the run's split as numpy features (n, 192) float64: RGB / 255, channel-major."""
    protocol = load_protocol("digits", split_file=str(runs["itq"] / "split.json"))
    pixels = np.stack([np.asarray(protocol.train.image(i), dtype=np.float64) / 255.0
                       for i in range(len(protocol.train))])  # (n, 8, 8, 3)
    return protocol, pixels.transpose(0, 3, 1, 2).reshape(len(pixels), -1)


def checkpoint(run, bits=BITS):
    return run / f"bits{bits}" / "best"


def model_codes(model, protocol, subset="train"):
    """The checkpoint's codes of a set's images through its own eval pipeline, int8 (n, bits)."""
    from hybridhash.engines.encoding import encode_images
    from hybridhash.data.transforms import eval_transform

    return encode_images(model, getattr(protocol, subset).with_transform(eval_transform(model)), batch_size=97)


def numpy_scores(method, t, x):
    """The baselines' scores (docs/baselines.md) from the saved tensors, numpy float64 (n, bits)."""
    if method in ("lsh", "pcah"):
        return (x - t["mean"]) @ t["projection"]
    if method == "itq":
        return (x - t["mean"]) @ t["projection"] @ t["rotation"]
    modes = t["modes"]
    j = modes.argmax(1)
    q = modes[np.arange(len(j)), j]
    low, high = t["minimum"], t["maximum"]
    v = x @ t["projection"]
    return np.cos(q * np.pi * (v[:, j] - low[j]) / (high - low)[j])


def head(run):
    return {k[len("head."):]: v.numpy() for k, v in load_file(str(checkpoint(run) / "model.safetensors")).items()
            if k.startswith("head.")}


# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_a_fit_writes_an_ordinary_run(runs, method):
    run = runs[method]
    for name in ("run.json", "split.json", "summary.json", f"bits{BITS}/log.jsonl", f"bits{BITS}/method.json",
                 f"bits{BITS}/best/model.safetensors", f"bits{BITS}/last/config.json"):
        assert (run / name).is_file(), name
    record = json.loads((run / f"bits{BITS}" / "method.json").read_text())
    assert record["method"] == method and record["family"] == "shallow" and record["facts"]["n_train"] == 450
    log = [json.loads(line) for line in (run / f"bits{BITS}" / "log.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())["results"][str(BITS)]
    assert len(log) == 1 and log[0]["val_map"] == pytest.approx(summary["best_metric"], abs=1e-6)
    best = (checkpoint(run) / "model.safetensors").read_bytes()
    assert best == (run / f"bits{BITS}" / "last" / "model.safetensors").read_bytes()
    model = hybridhash.from_pretrained(checkpoint(run))
    assert isinstance(model, ShallowHashModel) and model.bits == BITS and model.config.preset == f"{method}-pixels"


@pytest.mark.parametrize("method", METHODS)
def test_checkpoint_codes_are_the_baselines_codes_and_the_formula(runs, train_pixels, method):
    protocol, x = train_pixels
    model = hybridhash.from_pretrained(checkpoint(runs[method]))
    codes = model_codes(model, protocol)
    images = torch.stack([model_transform(model)(protocol.train.image(i)) for i in range(len(protocol.train))])
    with torch.inference_mode():
        features = model.forward_features(images)
    np.testing.assert_allclose(features.numpy(), x, atol=1e-6)  # the pixels, independently read
    np.testing.assert_array_equal(codes, model.baseline().encode(features).numpy())  # bit for bit
    s = numpy_scores(method, head(runs[method]), features.double().numpy())
    expected = np.where(s > 0, 1, -1) if method == "sh" else np.where(s >= 0, 1, -1)
    differ = codes != expected
    # float64 sums in another order may differ in the last digits: only a score next to 0 may flip
    assert not differ.any() or np.abs(s[differ]).max() < 1e-9


def model_transform(model):
    from hybridhash.data.transforms import eval_transform

    return eval_transform(model)


def test_itq_rotation_is_orthogonal_and_quantizes_better_than_pcah(runs, train_pixels):
    _, x = train_pixels
    itq, pcah = head(runs["itq"]), head(runs["pcah"])
    r = itq["rotation"]
    np.testing.assert_allclose(r.T @ r, np.eye(BITS), atol=1e-10)
    np.testing.assert_allclose(itq["projection"], pcah["projection"])  # the same PCA under both
    v = (x - pcah["mean"]) @ pcah["projection"]  # (n, K)
    pcah_error = ((np.where(v >= 0, 1.0, -1.0) - v) ** 2).sum() / len(v)
    z = v @ r
    itq_error = ((np.where(z >= 0, 1.0, -1.0) - z) ** 2).sum() / len(z)
    assert itq_error <= pcah_error
    recorded = itq["quantization_error"]
    assert recorded[-1] == pytest.approx(itq_error, rel=1e-6) and (np.diff(recorded) <= 1e-9).all()


def test_codes_are_balanced_as_the_definitions_say(runs, train_pixels):
    protocol, x = train_pixels
    fraction = {}
    for method in METHODS:
        codes = model_codes(hybridhash.from_pretrained(checkpoint(runs[method])), protocol)
        fraction[method] = (codes == 1).mean(0)  # (bits,) share of +1 per bit on the training images
    # pcah, itq: projections of the centred rows have mean 0 along every direction, so no bit is
    # constant; a bit with under 5% of either sign would be a degenerate direction
    for method in ("pcah", "itq"):
        assert ((fraction[method] > 0.05) & (fraction[method] < 0.95)).all(), (method, fraction[method])
    # lsh: W^T (x - mean) has mean 0 for any W, so bits are +1 about half of the time on average
    assert 0.35 < fraction["lsh"].mean() < 0.65 and ((fraction["lsh"] > 0) & (fraction["lsh"] < 1)).all()
    # sh: a frequency-1 mode is cos(pi (v - min) / R): +1 at the row of the minimum, -1 at the maximum's
    modes = head(runs["sh"])["modes"]
    first = modes.max(1) == 1
    assert first.any() and ((fraction["sh"][first] > 0) & (fraction["sh"][first] < 1)).all()


def test_evaluate_encode_search_and_onnx_use_the_checkpoint(runs, tmp_path, capsys):
    run = runs["itq"]
    rc, _, err = run_cli(["evaluate", "--checkpoint", run, "--out", tmp_path / "eval", "--no-progress"], capsys)
    assert rc == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"][str(BITS)]
    model = hybridhash.from_pretrained(checkpoint(run))
    protocol = load_protocol("digits", split_file=str(run / "split.json"))
    q, d = model_codes(model, protocol, "query"), model_codes(model, protocol, "database")
    expected = M.mean_average_precision(q, d, protocol.query.labels.argmax(1), protocol.database.labels.argmax(1))
    assert metrics["map"] == pytest.approx(expected, abs=1e-9)

    images = tmp_path / "images"
    paths = make_images(images)
    rc, _, err = run_cli(["encode", "--checkpoint", checkpoint(run), "--images", images, "--collection",
                          tmp_path / "codes", "--workers", "0", "--no-progress"], capsys)
    assert rc == 0, err
    from PIL import Image

    from hybridhash.data.transforms import eval_transform

    batch = torch.stack([eval_transform(model)(Image.open(images / p).convert("RGB")) for p in paths])
    np.testing.assert_array_equal(open_collection(tmp_path / "codes").codes, pack_pm1(model.encode(batch).numpy()))
    assert cli.main(["index", "--collection", str(tmp_path / "codes")]) == 0
    capsys.readouterr()
    rc, out, err = run_cli(["search", "--collection", tmp_path / "codes", "--checkpoint", checkpoint(run), "--k", "3",
                            "--json", images / paths[4]], capsys)
    assert rc == 0, err
    first = json.loads(out)["results"][0]["hits"][0]
    assert first["path"] == paths[4] and first["distance"] == 0  # the query itself, at distance 0


@pytest.mark.parametrize("method", METHODS)
def test_onnx_export_gives_the_pytorch_codes(runs, tmp_path, capsys, method):
    pytest.importorskip("onnxruntime")
    from hybridhash.engines.onnx import OnnxEncoder

    run = runs[method]
    rc, _, err = run_cli(["export", "--checkpoint", checkpoint(run), "--out", tmp_path / "m.onnx"], capsys)
    assert rc == 0, err
    model = hybridhash.from_pretrained(checkpoint(run))
    protocol = load_protocol("digits", split_file=str(run / "split.json"))
    images = torch.stack([model_transform(model)(protocol.database.image(i)) for i in range(len(protocol.database))])
    onnx = OnnxEncoder.open(tmp_path / "m.onnx")
    np.testing.assert_array_equal(onnx.encode(images).numpy(), model.encode(images).numpy())


def test_same_seed_same_checkpoint_bytes(runs, tmp_path):
    # the recorded run re-run (train --config RUN): the same options, so the same bytes
    assert cli.main(["train", "--config", str(runs["itq"]), "--out", str(tmp_path / "again")]) == 0
    a, b = checkpoint(runs["itq"]), checkpoint(tmp_path / "again")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    ca, cb = (json.loads((d / "config.json").read_text()) for d in (a, b))
    for c in (ca, cb):
        c["extra"]["train_config"].pop("out")
    assert ca == cb
    assert cli.main(fit_args(tmp_path / "other", "itq", "--seed", "1")) == 0
    assert (checkpoint(tmp_path / "other") / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()


def test_pre_hash_features_of_a_trained_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    cnn = hybridhash.create_model("cnn_cpu", bits=16).eval()
    cnn.save_pretrained(str(tmp_path / "cnn"))
    rc, _, err = run_cli(["train", "--method", "pcah", "--model", tmp_path / "cnn", "--bits", "16", "--out",
                          tmp_path / "run", "--device", "cpu", "--threads", "1", "--no-progress"], capsys)
    assert rc == 0, err
    model = hybridhash.from_pretrained(checkpoint(tmp_path / "run", 16)).eval()
    x = torch.rand(5, 3, 32, 32)
    with torch.inference_mode():
        np.testing.assert_array_equal(model.forward_features(x).numpy(), cnn.forward_features(x).numpy())
        np.testing.assert_array_equal(model.encode(x).numpy(),
                                      model.baseline().encode(cnn.forward_features(x)).numpy())


def _refusal(capsys, argv, out=None):
    rc, _, err = run_cli(argv, capsys)
    assert rc != 0
    if out is not None:
        assert not out.exists()
    return one_error_line(err)


def test_bad_input_is_one_line(runs, tmp_path, capsys):
    out = tmp_path / "x"
    msg = _refusal(capsys, fit_args(out, "pcah", "--epochs", "3", "--lr", "0.1"), out)
    assert "training-free" in msg and "--epochs, --lr do not apply" in msg
    msg = _refusal(capsys, fit_args(out, "itq")[:-3] + ["--bits", "256", "--no-progress"], out)
    assert "256 bits need at least 256 features, got 192" in msg
    msg = _refusal(capsys, ["train", "--method", "pcah", "--model", "pixels", "--model-overrides",
                            '{"img_size": 80}', "--bits", "16", "--out", out], out)
    assert "19200 features" in msg and "at most 16384" in msg
    msg = _refusal(capsys, ["train", "--method", "lsh", "--model", checkpoint(runs["lsh"]), "--bits", "16", "--out",
                            out], out)
    assert "no pre-hash features" in msg
    msg = _refusal(capsys, fit_args(out, "lsh", "--pretrained", "imagenet"), out)
    assert "pixels" in msg and "drop --pretrained" in msg
    folder = tmp_path / "shapes"
    make_images(folder)  # 24 images in 3 classes
    msg = _refusal(capsys, ["train", "--method", "itq", *PIXELS, "--dataset", f"folder:{folder}", "--data-root",
                            folder, "--bits", "32", "--out", out], out)
    assert "itq: 32 bits need at least 33 training images" in msg
    msg = _refusal(capsys, fit_args(out, "itq", "--method-params", '{"iterationz": 3}'), out)
    assert "iterationz" in msg


def test_select_on_query_scores_what_evaluate_scores(tmp_path, capsys):
    assert cli.main(fit_args(tmp_path / "run", "lsh", "--select-on", "query")) == 0
    log = json.loads((tmp_path / "run" / f"bits{BITS}" / "log.jsonl").read_text())
    rc, _, err = run_cli(["evaluate", "--checkpoint", tmp_path / "run", "--out", tmp_path / "eval", "--no-progress"],
                         capsys)
    assert rc == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["results"][str(BITS)]
    assert log["query_map"] == pytest.approx(metrics["map"], abs=1e-6)


def test_a_fit_logs_the_label_free_copy_score_beside_val_map(runs):
    """The fit is scored as a trained epoch is: val mAP, and the copy score of its val images (each
    image's seeded augmented copy found among the val originals), recomputed here from the codes."""
    import hybridhash
    from hybridhash.data.views import seeded_copies
    from hybridhash.engines.encoding import encode_images
    from hybridhash.metrics.copies import copy_retrieval_map

    run = runs["itq"]
    log = json.loads((run / f"bits{BITS}" / "log.jsonl").read_text())
    summary = json.loads((run / "summary.json").read_text())["results"][str(BITS)]
    assert summary["selected_by"] == "val_map" and summary["best_metric"] == pytest.approx(log["val_map"], abs=1e-6)
    protocol = load_protocol("digits", split_file=str(run / "split.json"))
    model = hybridhash.from_pretrained(checkpoint(run))
    originals = model_codes(model, protocol, "val")
    copies = encode_images(model, seeded_copies(protocol.val, model.preprocess, 0, protocol.name), batch_size=97)
    assert log["val_copy_map"] == pytest.approx(copy_retrieval_map(originals, copies), abs=1e-6)


@pytest.mark.parametrize("where", ["unlabelled", "select_on_copy"])
def test_a_fit_without_labels_is_scored_by_the_copy_score(tmp_path, capsys, where):
    """On a folder without labels (or with --select-on copy) the fit's score is the copy score: no
    val_map is made up from missing labels."""
    if where == "unlabelled":
        p = load_protocol("digits", sizes=dict(query=2, train=10), val_fraction=0.2)
        folder = tmp_path / "flat"
        folder.mkdir()
        images = [s.image(i) for s in (p.train, p.val, p.query, p.database) for i in range(len(s))]
        for n, image in enumerate(images):
            image.save(folder / f"img{n:03d}.png")
        extra = ["--dataset", f"folder:{folder}"]
    else:
        extra = ["--select-on", "copy"]
    rc, printed, err = run_cli(fit_args(tmp_path / "run", "itq", *extra), capsys)
    assert rc == 0, err
    log = json.loads((tmp_path / "run" / f"bits{BITS}" / "log.jsonl").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["results"][str(BITS)]
    assert summary["selected_by"] == "val_copy_map"
    assert summary["best_metric"] == pytest.approx(log["val_copy_map"], abs=1e-6)
    assert ("val_map" in log) == (where == "select_on_copy")
    assert f"val copy mAP {log['val_copy_map']:.4f}" in printed
