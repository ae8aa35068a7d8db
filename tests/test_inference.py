"""``--runtime``: the same codes from eager PyTorch and from the checkpoint's ONNX export, and which
runtime ``auto`` takes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import hybridhash  # noqa: E402
from hybridhash import cli  # noqa: E402
from hybridhash.collection import open_collection  # noqa: E402
from hybridhash.errors import CheckpointError, CheckpointMismatchError, ConfigError  # noqa: E402
from hybridhash.export import OnnxEncoder  # noqa: E402
from hybridhash.inference import ONNX_NAME, open_encoder  # noqa: E402
from tests.helpers.encoding import make_images  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
BITS = 32


def _checkpoint(path, seed=0):
    torch.manual_seed(seed)
    model = hybridhash.create_model("hybridhash_cpu", bits=BITS).eval()
    torch.nn.init.normal_(model.hash_head.to_bits.weight, std=0.3)  # outputs well away from 0
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("runtimes")
    ckpt = _checkpoint(base / "ckpt")
    images = base / "images"
    make_images(images, per_class=2, classes=4, bad=False)
    return {"base": base, "ckpt": ckpt, "images": images}


def test_torch_until_an_export_is_beside_the_checkpoint(world, tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt")
    assert isinstance(open_encoder(ckpt, "auto"), hybridhash.HybridHash)
    with pytest.raises(CheckpointError, match=f"no {ONNX_NAME} beside the checkpoint.*hybridhash export"):
        open_encoder(ckpt, "onnx")
    assert cli.main(["export", "--checkpoint", str(ckpt), "--no-verify"]) == 0
    assert (ckpt / ONNX_NAME).is_file()
    assert isinstance(open_encoder(ckpt, "auto"), OnnxEncoder)
    assert isinstance(open_encoder(ckpt, "auto", "cuda"), hybridhash.HybridHash)  # onnxruntime is CPU only here
    assert isinstance(open_encoder(ckpt, "torch"), hybridhash.HybridHash)
    with pytest.raises(ConfigError, match="CPU only"):
        open_encoder(ckpt, "onnx", "cuda")
    with pytest.raises(ConfigError, match="--runtime must be one of"):
        open_encoder(ckpt, "tensorrt")


def test_an_export_of_other_weights_is_refused_or_passed_over(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", seed=0)
    other = _checkpoint(tmp_path / "other", seed=1)
    assert cli.main(["export", "--checkpoint", str(other), "--out", str(ckpt / ONNX_NAME), "--no-verify"]) == 0
    with pytest.raises(CheckpointMismatchError, match="exported from other weights"):
        open_encoder(ckpt, "onnx")
    assert isinstance(open_encoder(ckpt, "auto"), hybridhash.HybridHash)


def test_encode_and_search_give_the_same_codes_on_both_runtimes(world, capsys):
    ckpt, images = world["ckpt"], world["images"]
    assert cli.main(["export", "--checkpoint", str(ckpt)]) == 0
    outs = {}
    for runtime in ("torch", "onnx"):
        out = world["base"] / f"codes_{runtime}"
        assert cli.main(["encode", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(out),
                         "--workers", "0", "--no-progress", "--runtime", runtime]) == 0
        outs[runtime] = out
    a, b = open_collection(outs["torch"]), open_collection(outs["onnx"])
    assert a.fingerprint == b.fingerprint and a.count == b.count == 8
    assert np.array_equal(np.asarray(a.codes), np.asarray(b.codes))  # every bit
    capsys.readouterr()
    query = str(images / a.path(3))
    assert cli.main(["search", "--index", str(outs["onnx"]), query, "--k", "1", "--json", "--runtime", "onnx"]) == 0
    hit = json.loads(capsys.readouterr().out)["results"][0]["hits"][0]
    assert hit["distance"] == 0 and hit["path"] == a.path(3)
