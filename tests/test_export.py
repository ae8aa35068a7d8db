"""``hybridhash export`` and OnnxEncoder: the ONNX graph against the PyTorch model it came from."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import hybridhash  # noqa: E402
from hybridhash.app import cli  # noqa: E402
from hybridhash.data.transforms import build_transform, with_pipeline  # noqa: E402
from hybridhash.app.encode import encode_collection, model_preprocess  # noqa: E402
from hybridhash.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from hybridhash.engines.encoding import encode_images  # noqa: E402
from hybridhash.engines.exported import is_project_onnx, read_metadata  # noqa: E402
from hybridhash.engines.onnx import OnnxEncoder  # noqa: E402
from hybridhash.export import export_onnx  # noqa: E402
from hybridhash.limits import ONNX_OPSET, ONNX_OPSET_CAP  # noqa: E402
from hybridhash.models import model_fingerprint  # noqa: E402
from hybridhash.retrieval import Retriever, load_or_build_index  # noqa: E402

BITS = 24


def spread_model(seed: int = 0, bits: int = BITS, **overrides) -> torch.nn.Module:
    """An untrained hybridhash_cpu whose hash layer has a large scale, so outputs lie well away from 0
    (a code compared bit for bit must not sit on float error) and differ between images."""
    torch.manual_seed(seed)
    model = hybridhash.create_model("hybridhash_cpu", bits=bits, **overrides).eval()
    torch.nn.init.normal_(model.hash_head.to_bits.weight, std=0.3)
    return model


def sample_images(n_random: int = 48, size: int = 32) -> torch.Tensor:
    """>= 64 preprocessed images: normal noise, constants, ramps, checkerboards, stripes and
    pictures of shapes through the model's own eval transform."""
    g = torch.Generator().manual_seed(1)
    out = [torch.randn(n_random, 3, size, size, generator=g)]
    ramp = torch.linspace(-2, 2, size)
    structured = [torch.zeros(3, size, size), torch.full((3, size, size), 2.0), torch.full((3, size, size), -2.0),
                  ramp.view(1, 1, -1).expand(3, size, size), ramp.view(1, -1, 1).expand(3, size, size)]
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for cell in (1, 2, 4, 8):
        board = (((yy // cell) + (xx // cell)) % 2).float() * 4 - 2
        structured.append(board.expand(3, size, size))
    structured.append(torch.stack([torch.sin(xx / 3.0), torch.cos(yy / 5.0), torch.sin((xx + yy) / 7.0)]) * 2)
    tf = build_transform(hybridhash.create_model("hybridhash_cpu").preprocess, train=False)
    for i in range(6):
        img = Image.new("RGB", (40, 48), (30 * i, 255 - 40 * i, 90))
        img.paste((250, 20 * i, 10), (4 * i, 6, 4 * i + 18, 30))
        structured.append(tf(img))
    out.append(torch.stack(structured))
    x = torch.cat(out).contiguous()
    assert x.shape[0] >= 64
    return x


@pytest.fixture(scope="module")
def exported(one_thread, tmp_path_factory):
    model = spread_model()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return model, path, OnnxEncoder.open(path, threads=1)


def check_against_torch(model, enc, x: torch.Tensor, batch: int) -> None:
    with torch.inference_mode():
        ref = model(x)  # (N, bits)
    # float error is ~1e-7: an output this far from 0 has one right sign
    assert float(ref.abs().min()) > 1e-5, "test model has outputs too close to 0 for an exact code test"
    ref_codes = model.encode(x).numpy()
    assert len(np.unique(ref_codes, axis=0)) >= min(10, x.shape[0] // 2)  # the codes tell images apart
    got_out, got_codes = [], []
    for i in range(0, x.shape[0], batch):
        got_out.append(enc.outputs(x[i:i + batch]))
        got_codes.append(enc.encode(x[i:i + batch]).numpy())
    out, codes = np.concatenate(got_out), np.concatenate(got_codes)
    assert codes.dtype == np.int8 and codes.shape == (x.shape[0], model.bits)
    assert np.array_equal(codes, ref_codes)
    assert np.array_equal(codes, np.where(out >= 0, 1, -1).astype(np.int8))  # graph codes follow its outputs
    assert np.abs(out - ref.numpy()).max() < 1e-4


@pytest.mark.parametrize("batch", [1, 7])
def test_codes_and_outputs_equal_torch_at_any_batch(exported, batch):
    model, _, enc = exported
    check_against_torch(model, enc, sample_images(), batch)


def test_plain_attention_exports_the_same_function(one_thread, tmp_path):
    model = spread_model(seed=3).set_fused_attn(False)
    enc = OnnxEncoder.open(export_onnx(model, tmp_path / "plain.onnx"), threads=1)
    check_against_torch(model, enc, sample_images(n_random=56), 7)
    assert model.config.fused_attn is False  # the caller's model is left as it was


def test_an_output_of_exactly_zero_is_plus_one(one_thread, tmp_path):
    model = spread_model(seed=2)
    with torch.no_grad():  # bits 0 and 5 see nothing: their output is tanh(0) = 0 for every image
        for b in (0, 5):
            model.hash_head.to_bits.weight[b] = 0
            model.hash_head.to_bits.bias[b] = 0
    x = sample_images()[:9]
    enc = OnnxEncoder.open(export_onnx(model, tmp_path / "zero.onnx"), threads=1)
    out, codes = enc.outputs(x), enc.encode(x).numpy()
    assert np.all(out[:, [0, 5]] == 0) and np.all(codes[:, [0, 5]] == 1)
    assert np.array_equal(codes, model.encode(x).numpy())


def test_export_leaves_the_model_untouched(one_thread, tmp_path):
    model = spread_model(seed=4).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx")
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_metadata_round_trip(exported):
    model, path, enc = exported
    assert enc.bits == BITS and enc.fingerprint == model_fingerprint(model)
    assert enc.preprocess == model_preprocess(model)
    assert enc.config.to_dict() == model.config.to_dict() and enc.config.preset == "hybridhash_cpu"
    # read independently of the encoder, with the onnx package
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["hybridhash.bits"] == str(BITS)
    pre = json.loads(props["hybridhash.preprocess"])
    assert pre["img_size"] == 32 and pre["interpolation"] == "bilinear"
    assert [float(v) for v in props["hybridhash.mean"].split(",")] == pytest.approx(list(model.config.mean))
    assert [float(v) for v in props["hybridhash.std"].split(",")] == pytest.approx(list(model.config.std))
    assert props["hybridhash.img_size"] == "32"
    assert read_metadata(path)["fingerprint"] == enc.fingerprint and is_project_onnx(path)
    # the batch dimension is free, the rest fixed
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.input]
    assert dims == [["batch", 3, 32, 32]]
    outs = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.output}
    assert outs == {"outputs": ["batch", BITS], "codes": ["batch", BITS]}


def test_fixed_batch_export(one_thread, tmp_path):
    model = spread_model(seed=5)
    path = export_onnx(model, tmp_path / "fixed.onnx", batch_dynamic=False)
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    x = sample_images()[:3]
    enc = OnnxEncoder.open(path, threads=1)
    assert np.array_equal(np.concatenate([enc.encode(x[i:i + 1]).numpy() for i in range(3)]), model.encode(x).numpy())


def test_encoder_stands_in_for_the_model(exported, tmp_path):
    """The encoders the project already has accept the OnnxEncoder in place of the torch model."""
    model, _, enc = exported
    x = sample_images()[:20]
    assert np.array_equal(encode_images(enc, x, batch_size=6), encode_images(model, x, batch_size=6))
    folder = tmp_path / "imgs"
    for i in range(5):
        (folder / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (36, 30), (50 * i, 200 - 30 * i, 20 + 40 * i)).save(folder / str(i % 2) / f"{i}.png")
    a = encode_collection(folder, tmp_path / "a", model=enc, workers=0, progress=False, batch_size=2)
    b = encode_collection(folder, tmp_path / "b", model=model, workers=0, progress=False, batch_size=2)
    assert a.fingerprint == b.fingerprint == enc.fingerprint and a.preprocess == b.preprocess
    assert np.array_equal(a.codes, b.codes) and a.count == 5
    # a Retriever on the torch-encoded collection takes the ONNX encoder as its model
    torch_r = Retriever(model, b, load_or_build_index(b))
    onnx_r = Retriever(enc, b, load_or_build_index(b))
    queries = sorted(str(p) for p in folder.rglob("*.png"))[:3]
    assert np.array_equal(onnx_r.encode_images(queries), torch_r.encode_images(queries))
    assert [[h.id for h in hits] for hits in onnx_r.search(queries, k=3)] == \
        [[h.id for h in hits] for hits in torch_r.search(queries, k=3)]


def test_bad_input_and_empty_batch(exported):
    _, _, enc = exported
    with pytest.raises(DataError, match=r"\(B, 3, 32, 32\)"):
        enc.encode(torch.zeros(2, 3, 16, 16))
    assert enc.encode(torch.zeros(0, 3, 32, 32)).shape == (0, BITS)
    with pytest.raises(ConfigError, match="CPU"):
        enc.to("cuda")
    assert enc.to("cpu").eval() is enc


def foreign_onnx(path):
    """A valid ONNX model this project did not write: y = x."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


def test_foreign_and_broken_files_are_refused(tmp_path):
    foreign = foreign_onnx(tmp_path / "other.onnx")
    with pytest.raises(CheckpointError) as err:
        OnnxEncoder.open(foreign)
    msg = str(err.value)
    assert str(foreign) in msg and "not a hybridhash ONNX export" in msg and "\n" not in msg
    assert not is_project_onnx(foreign) and read_metadata(foreign) == {}
    junk = tmp_path / "junk.onnx"
    junk.write_text("these are not a graph\n")
    with pytest.raises(CheckpointError, match="junk.onnx: not a readable ONNX model"):
        OnnxEncoder.open(junk)
    assert not is_project_onnx(junk)
    with pytest.raises(CheckpointError, match="no such ONNX file"):
        OnnxEncoder.open(tmp_path / "missing.onnx")


def with_metadata(src, dst, **changes):
    proto = onnx.load(str(src))
    for entry in proto.metadata_props:
        if entry.key[len("hybridhash."):] in changes:
            entry.value = changes[entry.key[len("hybridhash."):]]
    onnx.save(proto, str(dst))
    return dst


def test_malformed_or_newer_metadata_is_refused(exported, tmp_path):
    _, path, enc = exported
    opts = enc.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    quiet = OnnxEncoder.open(path, threads=2, spinning=False).session.get_session_options()
    assert quiet.intra_op_num_threads == 2 and quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    cases = {"preprocess": ("{not json", "malformed hybridhash metadata"),
             "bits": ("12", "inconsistent hybridhash metadata"),
             "format_version": ("99", "newer than this hybridhash reads")}
    for key, (value, message) in cases.items():
        bad = with_metadata(path, tmp_path / f"{key}.onnx", **{key: value})
        with pytest.raises(CheckpointError, match=message) as err:
            OnnxEncoder.open(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------
# the command

@pytest.fixture(scope="module")
def checkpoint(one_thread, tmp_path_factory):
    """A checkpoint directory as training writes it, recording the digits pipeline."""
    model = spread_model(seed=7, bits=16)
    d = tmp_path_factory.mktemp("ckpt") / "best"
    model.save_pretrained(str(d), preprocess=with_pipeline(model.preprocess, "digits"))
    return d


def test_cli_writes_a_graph_of_the_checkpoint(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "onnxruntime matches PyTorch" in printed
    model = hybridhash.from_pretrained(checkpoint)
    enc = OnnxEncoder.open(out, threads=1)
    assert enc.fingerprint == model.fingerprint and enc.bits == 16
    assert enc.preprocess["pipeline"] == "digits" and enc.preprocess == model_preprocess(model)
    x = sample_images()
    assert np.array_equal(enc.encode(x).numpy(), model.encode(x).numpy())
    # an export of the project is replaced without --force
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--no-verify", "--opset", "18"]) == 0
    assert onnx.load(str(out)).opset_import[0].version == 18


def test_cli_run_directory_needs_bits_when_it_holds_several(one_thread, tmp_path, capsys):
    for bits in (8, 16):
        spread_model(seed=bits, bits=bits).save_pretrained(str(tmp_path / "run" / f"bits{bits}" / "best"))
    out = tmp_path / "m.onnx"
    assert cli.main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--bits" in err and err.count("\n") == 1
    assert cli.main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(out), "--bits", "8",
                     "--no-verify"]) == 0
    assert OnnxEncoder.open(out).bits == 8


def test_cli_does_not_overwrite_user_files(checkpoint, tmp_path, capsys):
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes\n")
    foreign = foreign_onnx(tmp_path / "other.onnx")
    foreign_bytes = foreign.read_bytes()
    for target in (notes, foreign):
        assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(target)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {target} exists") and "--force" in err and err.count("\n") == 1
    assert notes.read_text() == "my notes\n" and foreign.read_bytes() == foreign_bytes
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(notes), "--force", "--no-verify"]) == 0
    assert is_project_onnx(notes)
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err


def test_cli_refuses_an_old_opset(checkpoint, tmp_path, capsys):
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--opset", "13"]) == 1
    assert capsys.readouterr().err == f"error: --opset must be an integer from {ONNX_OPSET} to {ONNX_OPSET_CAP}, got 13\n"
    assert not (tmp_path / "m.onnx").exists()
    assert cli.main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--opset", "99"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not 99" in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.iterdir())  # no temporary file left


def test_cli_missing_or_foreign_checkpoint(tmp_path, capsys):
    assert cli.main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "m.onnx")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"name": "something else"}\n')
    assert cli.main(["export", "--checkpoint", str(tmp_path / "other"), "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "not a hybridhash checkpoint" in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------------------------------------
# a network of the real presets' widths and heads (NesT-T), at a small input

def test_tiny_preset_at_32px(one_thread, tmp_path):
    torch.manual_seed(11)
    model = hybridhash.create_model("hybridhash_tiny", bits=32, img_size=32, patch_size=2).eval()
    torch.nn.init.normal_(model.hash_head.to_bits.weight, std=0.3)
    enc = OnnxEncoder.open(export_onnx(model, tmp_path / "tiny.onnx"), threads=1)
    check_against_torch(model, enc, sample_images()[:21], 7)


def test_a_method_head_exports_the_same_function(one_thread, tmp_path):
    """A model with cibhash's two-layer head in place of its bits layer, saved, loaded and exported."""
    from hybridhash.models.heads import attach_method_head

    model = spread_model()
    torch.manual_seed(5)
    assert attach_method_head(model, "cibhash", {"hidden": 48})
    for layer in (model.hash_head.to_bits.head[0], model.hash_head.to_bits.head[2]):
        torch.nn.init.normal_(layer.weight, std=0.3)
    model.eval().save_pretrained(str(tmp_path / "ckpt"))
    loaded = hybridhash.from_pretrained(tmp_path / "ckpt").eval()
    x = sample_images()
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    enc = OnnxEncoder.open(export_onnx(loaded, tmp_path / "head.onnx"), threads=1)
    check_against_torch(loaded, enc, x, 7)
