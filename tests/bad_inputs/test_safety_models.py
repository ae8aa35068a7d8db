"""Checkpoints and exports under bad or mismatched inputs: configs that describe another or an absurd
network, non-finite values, newer formats, weights swapped under an old config, exports that are
unreadable, inconsistent or of another architecture. Each test uses a tiny checkpoint (32 px)."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

import hybridhash  # noqa: E402
from hybridhash import engines  # noqa: E402
from hybridhash.app import cli  # noqa: E402
from hybridhash.errors import CheckpointError, CheckpointMismatchError, ConfigError, HybridHashError  # noqa: E402
from hybridhash.engines import ONNX_NAME, open_encoder  # noqa: E402
from hybridhash.engines.onnx import OnnxEncoder  # noqa: E402
from hybridhash.models import build_config, factory  # noqa: E402
from hybridhash.engines.openvino import OpenVinoEncoder  # noqa: E402

from tests.helpers.commands import one_line_error  # noqa: E402

BITS = 32
pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def save_checkpoint(path: Path, name: str = "hybridhash_cpu", seed: int = 0, **overrides) -> Path:
    """A tiny untrained checkpoint whose hash layer has a large scale (outputs well away from 0)."""
    torch.manual_seed(seed)
    model = hybridhash.create_model(name, bits=BITS, **overrides).eval()
    torch.nn.init.normal_(model.hash_head.to_bits.weight, std=0.3)
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("cnn") / "model", "cnn_cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, base) -> Path:
    """A copy of ``base`` with its verified export beside it."""
    ckpt = tmp_path_factory.mktemp("exported") / "model"
    shutil.copytree(base, ckpt)
    assert cli.main(["export", "--checkpoint", str(ckpt)]) == 0
    return ckpt


def copy_with_config(src: Path, dst: Path, **edits) -> Path:
    """A copy of checkpoint ``src`` whose config.json ``config`` has ``edits`` applied (top-level
    keys when given as ``top=dict``)."""
    shutil.copytree(src, dst)
    meta = json.loads((dst / "config.json").read_text())
    meta.update(edits.pop("top", {}))
    meta["config"].update(edits)
    (dst / "config.json").write_text(json.dumps(meta))  # Python writes NaN/Infinity as JSON extensions
    return dst


def assert_config_value_refused(src: Path, tmp_path: Path, capsys, field: str, value) -> None:
    """A copy of checkpoint ``src`` with config ``field`` set to ``value`` is refused on loading (the
    error names the field) and by ``hybridhash export`` (exit 1, one error line naming the field)."""
    ckpt = copy_with_config(src, tmp_path / "ckpt", **{field: value})
    with pytest.raises(CheckpointError, match=field):
        hybridhash.from_pretrained(ckpt)
    assert cli.main(["export", "--checkpoint", str(ckpt), "--no-verify"]) == 1
    assert field in one_line_error(capsys)


def edit_metadata(src: Path, dst: Path, **values) -> Path:
    """A copy of export ``src`` with some ``hybridhash.*`` metadata values replaced."""
    proto = onnx.load(str(src))
    for entry in proto.metadata_props:
        key = entry.key[len("hybridhash."):]
        if key in values:
            entry.value = values[key]
    dst.write_bytes(proto.SerializeToString())
    return dst


def _metadata(path: Path) -> dict:
    return {p.key[len("hybridhash."):]: p.value for p in onnx.load(str(path)).metadata_props}


def only_on_meta(monkeypatch, arch: str) -> None:
    """Make building ``arch``'s network anywhere but on the meta device an error, so a test fails
    at the point where a real allocation would have happened (instead of making it)."""
    cfg_cls, net = factory.ARCHS[arch]

    def guarded(cfg, *args, **kwargs):
        if torch.get_default_device().type != "meta":
            raise AssertionError(f"{arch} network built on {torch.get_default_device()} from an unchecked config")
        return net(cfg, *args, **kwargs)

    monkeypatch.setitem(factory.ARCHS, arch, (cfg_cls, guarded))


# --------------------------------------------------------------------------------------------
# 10. a config.json describing a far larger network than its weights allocates nothing

@pytest.mark.parametrize("arch, edits", [
    ("hybridhash", dict(embed_dims=[8192] * 3, num_heads=[8] * 3, depths=[128] * 3)),
    ("cnn", dict(widths=[4096] * 8)),
], ids=["hybridhash", "cnn"])
def test_an_oversized_config_is_refused_before_the_network_is_built(tmp_path, base, cnn, monkeypatch, capsys,
                                                                     arch, edits):
    ckpt = copy_with_config(base if arch == "hybridhash" else cnn, tmp_path / "big", **edits)
    only_on_meta(monkeypatch, arch)
    with pytest.raises(CheckpointMismatchError) as err:
        hybridhash.from_pretrained(ckpt)
    assert str(ckpt) in str(err.value) and "model.safetensors" in str(err.value)
    assert cli.main(["export", "--checkpoint", str(ckpt), "--no-verify"]) == 1
    assert "not of the same model" in one_line_error(capsys)
    assert not (ckpt / ONNX_NAME).exists()


def test_tensor_shapes_are_read_from_the_header_without_loading(base):
    from hybridhash.models.weights import read_shapes

    shapes = read_shapes(base / "model.safetensors")
    want = {k: tuple(v.shape) for k, v in load_file(str(base / "model.safetensors")).items()}
    assert {k: tuple(v.shape) for k, v in shapes.items()} == want
    assert all(v.device.type == "meta" for v in shapes.values())


# --------------------------------------------------------------------------------------------
# 11. preprocessing sizes are bounded wherever a preprocessing dict is read

def test_the_resize_edge_is_bounded_in_transforms_and_configs():
    from hybridhash.data.transforms import build_transform
    from hybridhash.limits import MAX_RESIZE

    pre = dict(img_size=32, mean=[0.5] * 3, std=[0.5] * 3, interpolation="bilinear")
    build_transform({**pre, "resize": MAX_RESIZE}, train=False)
    with pytest.raises(ConfigError, match=f"resize {MAX_RESIZE + 1} .*{MAX_RESIZE}"):
        build_transform({**pre, "resize": MAX_RESIZE + 1}, train=False)
    for name in ("hybridhash_cpu", "cnn_cpu"):
        with pytest.raises(ConfigError, match="crop_pct"):
            build_config(name, img_size=2048, crop_pct=0.1)
        build_config(name, img_size=2048, crop_pct=1.0)


def test_an_export_asking_for_a_huge_resize_is_refused_at_open(tmp_path, exported):
    src = exported / ONNX_NAME
    pre = json.loads(_metadata(src)["preprocess"])
    pre["resize"] = 30000
    bad = edit_metadata(src, tmp_path / "model.onnx", preprocess=json.dumps(pre))
    for encoder in (OnnxEncoder, OpenVinoEncoder):
        with pytest.raises(CheckpointError, match="resize 30000"):
            encoder.open(bad)


def test_a_checkpoint_whose_crop_resizes_past_the_limit_is_refused(tmp_path, base, capsys):
    ckpt = copy_with_config(base, tmp_path / "ckpt", img_size=2048, crop_pct=0.1)
    with pytest.raises(CheckpointError, match="crop_pct"):
        hybridhash.from_pretrained(ckpt)


# --------------------------------------------------------------------------------------------
# 14. describing a model builds it on the meta device only

def test_describing_a_model_allocates_no_network(monkeypatch, capsys):
    import timm

    from hybridhash.models.backbone import BackboneHash
    from hybridhash.models.hybridhash import HybridHash

    small = hybridhash.create_model("hybridhash_cpu", bits=BITS).num_params()
    with torch.device("meta"):
        vit = timm.create_model("vit_large_patch16_224", num_classes=0)
    vit_params = sum(p.numel() for p in vit.parameters()) + vit.num_features * BITS + BITS  # + the hash layer
    for cls in (BackboneHash, HybridHash):
        real = cls.__init__

        def guarded(self, *args, _real=real, **kwargs):
            if torch.get_default_device().type != "meta":
                raise AssertionError("the network was built for real to be described")
            _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", guarded)
    for name, want in (("hybridhash_cpu", small), ("vit_large_patch16_224", vit_params)):
        assert cli.main(["models", name, "--bits", str(BITS), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["params"] == want
    assert cli.main(["models", "vit_giant_patch14_224", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] > 1e9


# --------------------------------------------------------------------------------------------
# 15. the fingerprint is the weights' own, not what config.json says

@pytest.fixture
def swapped(tmp_path, base):
    """``base``'s config.json (and its fingerprint) over the weights of another seed."""
    other = save_checkpoint(tmp_path / "other", seed=1)
    ckpt = tmp_path / "swapped"
    shutil.copytree(base, ckpt)
    shutil.copyfile(other / "model.safetensors", ckpt / "model.safetensors")
    return ckpt, json.loads((other / "config.json").read_text())["fingerprint"]


def test_the_fingerprint_is_computed_from_the_weights(swapped, base):
    ckpt, other_fp = swapped
    old_fp = json.loads((base / "config.json").read_text())["fingerprint"]
    assert old_fp != other_fp
    assert hybridhash.from_pretrained(ckpt).fingerprint == other_fp
    assert hybridhash.from_pretrained(base).fingerprint == old_fp


def test_a_collection_refuses_other_weights_under_an_old_config(tmp_path, base, swapped, capsys):
    from tests.bad_inputs.test_collections import make_flat

    ckpt, _ = swapped
    images, out = tmp_path / "images", tmp_path / "codes"
    names = make_flat(images, 2)
    assert cli.main(["encode", "--checkpoint", str(base), "--images", str(images), "--collection", str(out),
                     "--workers", "0", "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["search", "--collection", str(out), "--checkpoint", str(ckpt), str(images / names[0])]) == 1
    assert "encoded by model" in one_line_error(capsys)


def test_auto_does_not_pair_other_weights_with_the_old_export(tmp_path, exported, caplog):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(exported, ckpt)
    save_checkpoint(tmp_path / "other", seed=1)
    shutil.copyfile(tmp_path / "other" / "model.safetensors", ckpt / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="hybridhash.engines"):
        model = open_encoder(ckpt, "auto")
    assert isinstance(model, hybridhash.HybridHash) and "other weights" in caplog.text
    with pytest.raises(CheckpointMismatchError, match="other weights"):
        open_encoder(ckpt, "openvino")


def test_the_weights_fingerprint_is_kept_until_the_file_changes(tmp_path, base, monkeypatch):
    from hybridhash.models import weights

    ckpt = tmp_path / "ckpt"
    shutil.copytree(base, ckpt)
    file = ckpt / "model.safetensors"
    first = weights.weights_fingerprint(file)
    assert first == json.loads((base / "config.json").read_text())["fingerprint"]

    def no_hashing():
        raise AssertionError("hashed again")

    monkeypatch.setattr(weights.hashlib, "sha256", no_hashing)
    assert weights.weights_fingerprint(file) == first  # from the cache
    state = load_file(str(file))
    state["hash_head.to_bits.bias"] += 1
    save_file(state, str(file))
    with pytest.raises(AssertionError, match="hashed again"):
        weights.weights_fingerprint(file)
    monkeypatch.undo()
    assert weights.weights_fingerprint(file) not in (first, None)


# --------------------------------------------------------------------------------------------
# 16. non-finite config values and weights are refused

@pytest.mark.parametrize("arch, field, value", [
    ("hybridhash", "mean", [math.nan, 0.5, 0.5]),
    ("hybridhash", "std", [0.5, math.inf, 0.5]),
    ("hybridhash", "layer_norm_eps", math.nan),
    ("cnn", "mean", [0.5, math.nan, 0.5]),
    ("cnn", "drop_rate", math.nan),
])
def test_non_finite_config_values_are_refused(tmp_path, base, cnn, capsys, arch, field, value):
    assert_config_value_refused(base if arch == "hybridhash" else cnn, tmp_path, capsys, field, value)


def test_non_finite_weights_are_refused(tmp_path, base, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(base, ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    state["levels.1.pos_embed"][0, 0, 3, 1] = math.nan
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match="levels.1.pos_embed"):
        hybridhash.from_pretrained(ckpt)
    assert cli.main(["export", "--checkpoint", str(ckpt), "--no-verify"]) == 1
    assert "not finite" in one_line_error(capsys)


# --------------------------------------------------------------------------------------------
# 20. a checkpoint of a newer format is refused

@pytest.mark.parametrize("version", [99, "1", 1.5, None])
def test_a_newer_or_malformed_format_version_is_refused(tmp_path, base, version):
    ckpt = copy_with_config(base, tmp_path / "ckpt", top={"format_version": version})
    with pytest.raises(CheckpointError, match="format_version|format version"):
        hybridhash.from_pretrained(ckpt)


# --------------------------------------------------------------------------------------------
# 22. every architecture exports, and a failed export is never left where auto finds it

def test_a_cnn_checkpoint_exports_and_runs_on_auto(tmp_path, cnn, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(cnn, ckpt)
    assert cli.main(["export", "--checkpoint", str(ckpt)]) == 0, capsys.readouterr().err
    enc = open_encoder(ckpt, "auto")
    assert isinstance(enc, OpenVinoEncoder)
    model = hybridhash.from_pretrained(ckpt).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x)
    assert float((enc(x) - ref).abs().max()) < 1e-4
    assert enc.fingerprint == model.fingerprint and enc.config.to_dict() == model.config.to_dict()


def test_a_timm_checkpoint_exports(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "ckpt", "test_resnet", img_size=32)
    assert cli.main(["export", "--checkpoint", str(ckpt)]) == 0, capsys.readouterr().err
    enc = OnnxEncoder.open(ckpt / ONNX_NAME)
    assert enc.config.backbone == "test_resnet" and enc.img_size == 32


def test_a_failed_export_leaves_no_file_for_auto(tmp_path, base, capsys, monkeypatch):
    from hybridhash.app.commands import export as export_command

    ckpt = tmp_path / "ckpt"
    shutil.copytree(base, ckpt)

    def disagree(model, path, **_):
        raise HybridHashError(f"{path}: the exported graph disagrees with PyTorch")

    monkeypatch.setattr(export_command, "verify", disagree)
    assert cli.main(["export", "--checkpoint", str(ckpt)]) == 1
    assert "disagrees" in one_line_error(capsys)
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors"]
    assert isinstance(open_encoder(ckpt, "auto"), hybridhash.HybridHash)


# --------------------------------------------------------------------------------------------
# 23. auto falls back to PyTorch over an unreadable export, with a warning

@pytest.mark.parametrize("damage", ["junk", "truncated", "bad-metadata"])
def test_auto_runs_pytorch_over_an_unreadable_export(tmp_path, exported, caplog, damage):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(exported, ckpt)
    target = ckpt / ONNX_NAME
    if damage == "junk":
        target.write_bytes(b"\x00not onnx at all" * 10)
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:
        edit_metadata(exported / ONNX_NAME, target, bits="zero")
    with caplog.at_level(logging.WARNING, logger="hybridhash.engines"):
        model = open_encoder(ckpt, "auto")
    assert isinstance(model, hybridhash.HybridHash)
    assert str(target) in caplog.text and "PyTorch" in caplog.text
    with pytest.raises(CheckpointError, match=ONNX_NAME):
        open_encoder(ckpt, "openvino")


# --------------------------------------------------------------------------------------------
# 29. an export's metadata must agree with its graph's input

def test_metadata_img_size_other_than_the_graph_input_is_refused_at_open(tmp_path, exported):
    src = exported / ONNX_NAME
    meta = _metadata(src)
    pre, cfg = json.loads(meta["preprocess"]), json.loads(meta["config"])
    pre["img_size"] = pre["resize"] = cfg["img_size"] = 64
    bad = edit_metadata(src, tmp_path / "model.onnx", img_size="64", preprocess=json.dumps(pre),
                        config=json.dumps(cfg))
    for encoder in (OnnxEncoder, OpenVinoEncoder):
        with pytest.raises(CheckpointError, match=r"input .*32.*64|64.*input .*32"):
            encoder.open(bad)


# --------------------------------------------------------------------------------------------
# 30. out-of-range numbers in config.json are one-line errors

@pytest.mark.parametrize("arch, field, value", [
    ("hybridhash", "mlp_ratio", 1e308),
    ("hybridhash", "mlp_ratio", -4),
    ("hybridhash", "drop_rate", 5),
    ("hybridhash", "drop_path_rate", -1),
    ("hybridhash", "layer_norm_eps", -1),
    ("hybridhash", "in_chans", 100000),
    ("cnn", "drop_rate", 5),
])
def test_out_of_range_config_numbers_are_one_line_errors(tmp_path, base, cnn, capsys, arch, field, value):
    assert_config_value_refused(base if arch == "hybridhash" else cnn, tmp_path, capsys, field, value)
    with pytest.raises(ConfigError, match=field):
        build_config("hybridhash_cpu" if arch == "hybridhash" else "cnn_cpu", **{field: value})


# --------------------------------------------------------------------------------------------
# OpenVINO's refusals start with the reason

def test_openvino_refusal_starts_with_the_reason(tmp_path, exported):
    proto = onnx.load(str(exported / ONNX_NAME))
    next(n for n in proto.graph.node if n.op_type == "Tanh").op_type = "NoSuchOp"
    bad = tmp_path / "model.onnx"
    bad.write_bytes(proto.SerializeToString())
    with pytest.raises(CheckpointError) as err:
        OpenVinoEncoder.open(bad)
    msg = str(err.value)
    prefix = f"{bad}: OpenVINO could not compile it ("
    assert msg.startswith(prefix) and "\n" not in msg
    reason = msg[len(prefix):]
    assert "NoSuchOp" in reason and not reason.startswith(("Exception from", "Check ")), msg
    assert ".cpp:" not in reason, msg
