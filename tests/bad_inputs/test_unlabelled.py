"""Mistaken requests around hashing without labels: one-line errors, nothing written, nothing changed.

A supervised method on a folder without labels, a selection or a comparison that needs labels it
does not have, a training-free baseline with fewer training images than its bits need or on a
network without pre-hash features, a two-view method at an image size its crops cannot vary,
frozen-feature targets without a network to copy, an odd batch for a method that pairs halves.
Each case gives the exact culprit and what to do, and leaves the data folder and the output alone.
"""
from __future__ import annotations

import pytest

from hybridhash.data import load_protocol
from tests.helpers.commands import one_error_line, run_cli, snapshot_digests as snapshot

SMALL = ["--model", "hybridhash_cpu", "--model-overrides", '{"depths": [1, 1, 1]}']
QUIET = ["--epochs", "1", "--no-progress", "--threads", "1", "--parallel", "1", "--device", "cpu"]
PIXELS = ["--model", "pixels", "--model-overrides", '{"img_size": 8}']


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """40 digit images in one folder: no class folders, so no labels."""
    p = load_protocol("digits", sizes=dict(query=1, train=4), val_fraction=0.25)
    root = tmp_path_factory.mktemp("flat")
    images = [s.image(i) for s in (p.train, p.val, p.query) for i in range(len(s))]
    for n, image in enumerate(images[:40]):
        image.save(root / f"img{n:03d}.png")
    return root


@pytest.fixture(scope="module")
def shallow_checkpoint(tmp_path_factory):
    """A fitted lsh run on pixels: its network is a projection, with no pre-hash features of its own."""
    from hybridhash.app import cli

    out = tmp_path_factory.mktemp("lsh") / "run"
    assert cli.main(["train", "--method", "lsh", *PIXELS, "--bits", "16", "--out", str(out), "--no-progress"]) == 0
    return out / "bits16" / "best"


CASES = {
    "supervised method, no labels": (
        lambda d, c: ["train", "--method", "dsh", "--dataset", f"folder:{d}", *SMALL, "--bits", "8", *QUIET],
        ["--method dsh trains on labels", "has none", "choose a method that trains without labels", "bihalf"]),
    "select on the queries' labels, no labels": (
        lambda d, c: ["train", "--method", "bihalf", "--dataset", f"folder:{d}", "--select-on", "query", *SMALL,
                      "--bits", "8", *QUIET],
        ["--select-on query", "has none", "use --select-on val"]),
    "compare, no labels": (
        lambda d, c: ["compare", "--dataset", f"folder:{d}", "--methods", "bihalf", "--bits", "8", "--seeds", "0",
                      "--epochs", "1", "--no-progress"],
        ["has no labels", "reports mAP", "val_copy_map"]),
    "baseline, fewer training images than bits": (
        lambda d, c: ["train", "--method", "itq", "--dataset", f"folder:{d}", *PIXELS, "--bits", "64",
                      "--no-progress"],
        ["itq: 64 bits need at least 65 training images", "use fewer --bits", "lsh"]),
    "baseline on a network without pre-hash features": (
        lambda d, c: ["train", "--method", "pcah", "--model", str(c), "--bits", "8", "--no-progress"],
        ["no pre-hash features", "--model pixels"]),
    "two views at an image size whose crops cannot vary": (
        lambda d, c: ["train", "--method", "cibhash", "--model", "cnn_cpu", "--model-overrides",
                      '{"img_size": 2}', "--bits", "8", *QUIET],
        ["cibhash: its two views differ by a random crop", "the model takes 2 px", "larger --model-overrides img_size"]),
    "frozen-feature targets without a network": (
        lambda d, c: ["train", "--method", "bihalf", "--targets", "features", *SMALL, "--bits", "8", *QUIET],
        ["--targets features", "none is given", "--pretrained imagenet", "--targets pixels"]),
    "odd batch for a method that pairs halves": (
        lambda d, c: ["train", "--method", "bihalf", "--batch-size", "5", *SMALL, "--bits", "8", *QUIET],
        ["--batch-size 5", "batches must be even", "--batch-size 6"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_in_one_line_with_nothing_written(case, flat, shallow_checkpoint, tmp_path, capsys):
    argv, culprits = CASES[case]
    out = tmp_path / "out"
    before, ckpt_before = snapshot(flat), snapshot(shallow_checkpoint)
    rc, _, err = run_cli(argv(flat, shallow_checkpoint) + ["--out", out], capsys)
    assert rc != 0
    message = one_error_line(err)
    for culprit in culprits:
        assert culprit in message, (culprit, message)
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    assert snapshot(flat) == before and snapshot(shallow_checkpoint) == ckpt_before
