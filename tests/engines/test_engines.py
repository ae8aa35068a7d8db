"""``--runtime``: the same codes from eager PyTorch and from the checkpoint's ONNX export on
onnxruntime and OpenVINO, and which runtime ``auto`` takes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

import hybridhash  # noqa: E402
from hybridhash.app import cli  # noqa: E402
from hybridhash.collection import open_collection  # noqa: E402
from hybridhash.errors import CheckpointError, CheckpointMismatchError, ConfigError  # noqa: E402
from hybridhash import engines  # noqa: E402
from hybridhash.engines import ONNX_NAME, open_encoder, pick_runtime  # noqa: E402
from hybridhash.engines.onnx import OnnxEncoder  # noqa: E402
from hybridhash.engines.openvino import OpenVinoEncoder  # noqa: E402
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


def test_torch_until_an_export_is_beside_the_checkpoint(world, tmp_path, monkeypatch):
    ckpt = _checkpoint(tmp_path / "ckpt")
    assert isinstance(open_encoder(ckpt, "auto"), hybridhash.HybridHash)
    for runtime in ("onnx", "openvino"):
        with pytest.raises(CheckpointError, match=f"no {ONNX_NAME} beside the checkpoint.*hybridhash export"):
            open_encoder(ckpt, runtime)
    assert cli.main(["export", "--checkpoint", str(ckpt), "--no-verify"]) == 0
    assert (ckpt / ONNX_NAME).is_file()
    assert type(open_encoder(ckpt, "auto")) is OpenVinoEncoder  # the fastest measured on a CPU
    assert type(open_encoder(ckpt, "onnx")) is OnnxEncoder
    assert type(open_encoder(ckpt / ONNX_NAME, "auto")) is OpenVinoEncoder
    assert isinstance(open_encoder(ckpt, "auto", "cuda"), hybridhash.HybridHash)  # the export runtimes are CPU only
    assert isinstance(open_encoder(ckpt, "torch"), hybridhash.HybridHash)
    for runtime in ("onnx", "openvino"):
        with pytest.raises(ConfigError, match="CPU only"):
            open_encoder(ckpt, runtime, "cuda")
    with pytest.raises(ConfigError, match="--runtime must be one of"):
        open_encoder(ckpt, "tensorrt")
    with pytest.raises(ConfigError, match="is an ONNX export"):
        open_encoder(ckpt / ONNX_NAME, "torch")
    # without OpenVINO, auto is PyTorch (as fast as onnxruntime or faster), and the export file
    # itself goes to onnxruntime
    monkeypatch.setattr(engines, "_available", lambda name: name == "onnx")
    assert pick_runtime(ckpt, "auto") == "torch" and pick_runtime(ckpt / ONNX_NAME, "auto") == "onnx"
    with pytest.raises(ConfigError, match="needs OpenVINO: pip install 'hybridhash\\[openvino\\]'"):
        pick_runtime(ckpt, "openvino")
    monkeypatch.setattr(engines, "_available", lambda name: False)
    with pytest.raises(ConfigError, match="neither OpenVINO nor onnxruntime"):
        pick_runtime(ckpt / ONNX_NAME, "auto")


def test_openvino_refuses_foreign_files(tmp_path):
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "ab"]
    proto = helper.make_model(helper.make_graph([helper.make_node("Relu", ["a"], ["b"])], "g", spec[:1], spec[1:]))
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(proto.SerializeToString())
    with pytest.raises(CheckpointError, match="not a hybridhash ONNX export"):
        OpenVinoEncoder.open(foreign)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx at all" * 10)
    with pytest.raises(CheckpointError, match="junk.onnx"):
        OpenVinoEncoder.open(junk)
    with pytest.raises(CheckpointError, match="no such ONNX file"):
        OpenVinoEncoder.open(tmp_path / "missing.onnx")


def test_an_export_of_other_weights_is_refused_or_passed_over(tmp_path):
    ckpt = _checkpoint(tmp_path / "ckpt", seed=0)
    other = _checkpoint(tmp_path / "other", seed=1)
    assert cli.main(["export", "--checkpoint", str(other), "--out", str(ckpt / ONNX_NAME), "--no-verify"]) == 0
    for runtime in ("onnx", "openvino"):
        with pytest.raises(CheckpointMismatchError, match="exported from other weights"):
            open_encoder(ckpt, runtime)
    assert isinstance(open_encoder(ckpt, "auto"), hybridhash.HybridHash)


def test_encode_and_search_give_the_same_codes_on_every_runtime(world, capsys):
    ckpt, images = world["ckpt"], world["images"]
    assert cli.main(["export", "--checkpoint", str(ckpt)]) == 0
    outs = {}
    for runtime in ("torch", "onnx", "openvino"):
        out = world["base"] / f"codes_{runtime}"
        assert cli.main(["encode", "--checkpoint", str(ckpt), "--images", str(images), "--collection", str(out),
                         "--workers", "0", "--no-progress", "--runtime", runtime]) == 0
        outs[runtime] = out
    a = open_collection(outs["torch"])
    for runtime in ("onnx", "openvino"):
        b = open_collection(outs[runtime])
        assert a.fingerprint == b.fingerprint and a.count == b.count == 8
        assert np.array_equal(np.asarray(a.codes), np.asarray(b.codes))  # every bit
    capsys.readouterr()
    query = str(images / a.path(3))
    assert cli.main(["search", "--collection", str(outs["onnx"]), query, "--k", "1", "--json", "--runtime", "onnx"]) == 0
    hit = json.loads(capsys.readouterr().out)["results"][0]["hits"][0]
    assert hit["distance"] == 0 and hit["path"] == a.path(3)


def test_openvino_outputs_equal_torch_at_several_batch_sizes(world):
    ckpt = world["ckpt"]
    if not (ckpt / ONNX_NAME).is_file():
        assert cli.main(["export", "--checkpoint", str(ckpt), "--no-verify"]) == 0
    model, enc = open_encoder(ckpt, "torch").eval(), open_encoder(ckpt, "openvino", threads=1)
    torch.manual_seed(3)
    size = model.config.img_size
    for batch in (1, 7):
        x = torch.randn(batch, 3, size, size)
        with torch.inference_mode():
            ref, codes = model(x), model.encode(x)
        assert float((enc(x) - ref).abs().max()) < 1e-4
        assert torch.equal(enc.encode(x), codes)
    assert enc.outputs(torch.zeros(0, 3, size, size)).shape == (0, BITS)


def test_export_verifies_on_openvino_where_onnxruntime_is_missing(tmp_path, capsys, monkeypatch):
    ckpt = _checkpoint(tmp_path / "ckpt")
    monkeypatch.setattr(engines, "onnx_available", lambda: False)
    assert cli.main(["export", "--checkpoint", str(ckpt)]) == 0
    assert "OpenVINO matches PyTorch" in capsys.readouterr().out


_RELEASE_IN_ORDER = """
import gc, signal, subprocess, sys
from hybridhash.engines.openvino import OpenVinoEncoder
signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, as torch's DataLoader leaves one
first = OpenVinoEncoder.open(sys.argv[1])
second = OpenVinoEncoder.open(sys.argv[1])
del first; gc.collect()
del second; gc.collect()
for _ in range(3):
    subprocess.run(["true"], check=True)  # each child's exit delivers SIGCHLD to this thread
print("alive")
"""


def test_encoders_released_in_any_order_leave_signals_deliverable(world, tmp_path):
    """OpenVINO's CPU plugin swaps the alternate signal stack of the thread making a Core and puts the
    old one back when it is released: two Cores released in creation order left a freed stack in place,
    and the next child process's exit killed the process (SIGSEGV). Encoders share one Core."""
    import subprocess
    import sys

    from hybridhash.export import export_onnx

    path = export_onnx(hybridhash.from_pretrained(str(world["ckpt"])), tmp_path / ONNX_NAME)
    run = subprocess.run([sys.executable, "-c", _RELEASE_IN_ORDER, str(path)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "alive", (run.returncode, run.stderr[-2000:])
