"""Models beside HybridHash: timm backbones with a linear hash layer, and the small CNN.

Tiny timm test models (test_resnet, test_vit) at 32 px keep these fast; the trainer runs on
a few digits.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import hybridhash
from hybridhash.app import cli
from hybridhash.codes import binarize
from hybridhash.data import load_protocol
from hybridhash.errors import CheckpointError, CheckpointMismatchError, ConfigError
from hybridhash.methods import list_methods
from hybridhash.models import BackboneConfig, BackboneHash, CnnConfig, CnnHash, build_config, list_models, read_config
from hybridhash.app.train import TrainConfig, train


def _timm_state(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).state_dict()


# --------------------------------------------------------------------------------------------
# the networks

@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "cnn_cpu"])
def test_forward_backward_encode(name):
    torch.manual_seed(0)
    model = hybridhash.create_model(name, bits=16, img_size=32)
    assert model.bits == 16 and model.preprocess["img_size"] == 32
    x = torch.randn(3, 3, 32, 32)
    model.eval()
    raw = model(x, activate=False)
    out = model(x)
    assert raw.shape == out.shape == (3, 16)
    torch.testing.assert_close(out, torch.tanh(raw))  # the tanh outputs are the raw ones squashed
    # the raw outputs are the linear hash layer applied to the pooled features
    feats = model.forward_features(x)
    torch.testing.assert_close(raw, feats @ model.hash_head.to_bits.weight.T + model.hash_head.to_bits.bias)
    codes = model.encode(x)
    assert codes.dtype == torch.int8 and torch.equal(codes, binarize(out))
    assert set(codes.unique().tolist()) <= {-1, 1}
    model.train()
    model(x).sum().backward()
    assert model.hash_head.to_bits.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.fingerprint is None and model.checkpoint_meta == {} and model.load_report is None


def test_backbone_config_follows_timm_and_overrides():
    cfg = build_config("test_vit", bits=32)
    pcfg = timm.models.get_pretrained_cfg("test_vit").to_dict()
    assert isinstance(cfg, BackboneConfig) and cfg.backbone == "test_vit" and cfg.bits == 32
    assert cfg.img_size == pcfg["input_size"][-1] and cfg.mean == tuple(pcfg["mean"])
    assert cfg.crop_pct == pcfg["crop_pct"] and cfg.interpolation == pcfg["interpolation"]
    assert cfg.preprocess == {"img_size": 160, "resize": round(160 / 0.95), "mean": [0.5] * 3, "std": [0.5] * 3,
                              "interpolation": "bicubic", "in_chans": 3}
    # a ViT is built for the asked image size: 32 px with patches of 16 is a 2x2 grid
    model = hybridhash.create_model("test_vit", bits=16, img_size=32)
    assert tuple(model.backbone.patch_embed.grid_size) == (2, 2)
    assert "backbone.pos_embed" in model.no_weight_decay() and "backbone.cls_token" in model.no_weight_decay()
    assert hybridhash.create_model("test_resnet", bits=16).no_weight_decay() == set()
    assert BackboneConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    model.set_fused_attn(False)
    assert not any(getattr(m, "fused_attn", False) for m in model.modules())
    hybridhash.create_model("cnn_cpu", bits=16).set_fused_attn(False)  # nothing to switch: no error


def test_cnn_preset():
    cfg = build_config("cnn_cpu", bits=32)
    assert isinstance(cfg, CnnConfig) and cfg.preset == "cnn_cpu" and cfg.widths == (32, 64, 128, 256)
    assert cfg.preprocess == {"img_size": 32, "resize": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
                              "interpolation": "bilinear", "in_chans": 3}
    model = hybridhash.create_model("cnn_cpu", bits=32)
    # 3x3 convs without bias + BN (2 per channel) + the 256 -> 32 hash layer, counted by hand
    convs = [(3, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256)]
    expected = sum(9 * a * b + 2 * b for a, b in convs) + 256 * 32 + 32
    assert model.num_params() == expected and 0.3e6 < expected < 1e6
    assert "cnn_cpu" in list_models(arch="*") and "cnn_cpu" not in hybridhash.list_models()
    with pytest.raises(CheckpointError, match="no ImageNet weights"):
        hybridhash.create_model("cnn_cpu", pretrained="imagenet")


def test_unknown_names_and_options_are_one_line_errors(capsys):
    with pytest.raises(ConfigError) as err:
        hybridhash.create_model("resnet_no_such_net")
    assert str(err.value) == ("unknown model 'resnet_no_such_net': not a hybridhash preset and not a timm model; "
                              "see `hybridhash models`")
    with pytest.raises(ConfigError, match="unknown model options.*patch_size"):
        build_config("test_resnet", patch_size=4)
    with pytest.raises(ConfigError, match="unknown model options.*depths"):
        build_config("cnn_cpu", depths=(1,))
    with pytest.raises(ConfigError, match="interpolation"):
        build_config("test_resnet", interpolation="lanczos")
    with pytest.raises(ConfigError, match="img_size 30 is not a multiple of test_vit's patch size 16"):
        hybridhash.create_model("test_vit", img_size=30)
    assert cli.main(["models", "resnet_no_such_net"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown model 'resnet_no_such_net'") and "\n" not in err


# --------------------------------------------------------------------------------------------
# checkpoints

@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "cnn_cpu"])
def test_save_and_load_roundtrip(tmp_path, name):
    torch.manual_seed(0)
    model = hybridhash.create_model(name, bits=24, img_size=32).eval()
    with torch.no_grad():  # BN statistics that are not the init, so that buffers round-trip too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    model.save_pretrained(str(tmp_path / "ck"), epoch=1)
    meta = read_config(tmp_path / "ck")
    arch = "cnn" if name == "cnn_cpu" else "timm"
    assert meta["arch"] == arch and meta["preset"] == name and meta["bits"] == 24
    assert meta["preprocess"] == model.preprocess
    back = hybridhash.from_pretrained(tmp_path / "ck", bits=24, preset=name).eval()
    assert type(back) is type(model) and back.config == model.config
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back(x), model(x))
    assert back.fingerprint == meta["fingerprint"] == hybridhash.models.model_fingerprint(model)
    with pytest.raises(CheckpointMismatchError, match="hybridhash_cpu was asked for"):
        hybridhash.from_pretrained(tmp_path / "ck", preset="hybridhash_cpu")


def test_hybridhash_checkpoints_keep_loading(tmp_path):
    model = hybridhash.create_model("hybridhash_cpu", bits=16, depths=(1, 1, 1)).eval()
    model.save_pretrained(str(tmp_path / "ck"))
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["arch"] == "hybridhash"
    del meta["arch"]  # as checkpoints written before there were other architectures
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    back = hybridhash.from_pretrained(tmp_path / "ck")
    assert isinstance(back, hybridhash.HybridHash)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(back(x), model(x))


def test_bad_arch_in_config_is_refused(tmp_path):
    hybridhash.create_model("cnn_cpu", bits=16).save_pretrained(str(tmp_path / "ck"))
    path = tmp_path / "ck" / "config.json"
    meta = json.loads(path.read_text())
    for arch, config, match in (("vgg", meta["config"], "arch 'vgg'"),
                                ("timm", {**meta["config"]}, "unknown model options"),
                                ("cnn", {**meta["config"], "widths": [10 ** 9]}, "widths")):
        path.write_text(json.dumps({**meta, "arch": arch, "config": config}))
        with pytest.raises(CheckpointError, match=match):
            hybridhash.from_pretrained(tmp_path / "ck")
    timm_meta = {**meta, "arch": "timm", "config": {"backbone": "no_such_net", "bits": 16}}
    path.write_text(json.dumps(timm_meta))
    with pytest.raises(CheckpointError, match="unknown model 'no_such_net'"):
        hybridhash.from_pretrained(tmp_path / "ck")


# --------------------------------------------------------------------------------------------
# timm weights

def test_timm_state_dict_file_loads_with_an_exact_report(tmp_path):
    state = _timm_state("test_resnet")
    path = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = hybridhash.create_model("test_resnet", bits=16, img_size=32, pretrained=str(path))
    report = model.load_report
    classifier = timm.models.get_pretrained_cfg("test_resnet").classifier  # "fc"
    head = {k for k in state if k.startswith(classifier + ".")}
    assert head == {"fc.weight", "fc.bias"}
    assert sorted(report.dropped) == sorted(head)
    assert sorted(report.loaded) == sorted(f"backbone.{k}" for k in state if k not in head)
    assert report.left_at_init == ["hash_head.to_bits.weight", "hash_head.to_bits.bias"]
    assert report.resized == [] and report.source == str(path)
    own = model.state_dict()
    for k in state:
        if k not in head:
            assert torch.equal(own[f"backbone.{k}"], state[k]), k
    # the backbone then computes what timm's own model computes, before its classifier
    ref = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    ref.load_state_dict({k: v for k, v in state.items() if k not in head})
    x = torch.randn(2, 3, 32, 32)
    model.eval(), ref.eval()
    torch.testing.assert_close(model.forward_features(x), ref(x))
    assert "left at init 2" in str(report)


def test_timm_pth_with_other_grid_resizes_position_embeddings(tmp_path):
    state = _timm_state("test_vit")  # built for 160 px: a 10x10 grid
    path = tmp_path / "vit.pth"
    torch.save({"state_dict": state}, path)
    model = hybridhash.create_model("test_vit", bits=16, img_size=32, pretrained=str(path))
    report = model.load_report
    assert report.resized == ["backbone.pos_embed"]
    assert model.backbone.pos_embed.shape == (1, 1 + 4, state["pos_embed"].shape[-1])
    # the class token's embedding is kept as it is
    torch.testing.assert_close(model.backbone.pos_embed[:, :1], state["pos_embed"][:, :1])
    assert sorted(report.dropped) == ["head.bias", "head.weight"]
    # a state dict of another network is refused, naming a culprit
    with pytest.raises(CheckpointMismatchError, match="does not fit test_vit"):
        hybridhash.create_model("test_vit", bits=16, img_size=32, pretrained=_timm_state("test_vit", embed_dim=32,
                                                                                        num_heads=2))
    with pytest.raises(CheckpointMismatchError, match="no tensor matches"):
        hybridhash.create_model("test_vit", bits=16, img_size=32, pretrained={"x.weight": torch.zeros(2)})


def test_imagenet_weights_come_through_timm(monkeypatch):
    # no network here: timm's pretrained model is stood in for by the same model built without weights
    seen = {}
    real = timm.create_model

    def fake(name, pretrained=False, **kw):
        if pretrained:
            seen.update(name=name, **kw)
            torch.manual_seed(1)
            pretrained = False
        return real(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(timm, "create_model", fake)
    model = hybridhash.create_model("test_vit", bits=16, img_size=32, pretrained="imagenet")
    assert seen["name"] == "test_vit" and seen["img_size"] == 32 and "num_classes" not in seen
    assert model.load_report.source == "timm:test_vit"
    assert sorted(model.load_report.dropped) == ["head.bias", "head.weight"]
    assert model.load_report.left_at_init == ["hash_head.to_bits.weight", "hash_head.to_bits.bias"]


# --------------------------------------------------------------------------------------------
# through the trainer, evaluation and encoding

@pytest.fixture(scope="module")
def small_digits():
    return load_protocol("digits", sizes=dict(query=3, train=10), val_fraction=0.2)


def _config(out, **kw) -> TrainConfig:
    base = dict(model="cnn_cpu", bits=(16,), out=str(out), progress=False, threads=1, parallel=1, eval_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _images(root, per_class=2):
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i in np.flatnonzero(digits.target == c)[:per_class]:
            a = (digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(a).resize((32, 32), Image.BILINEAR).convert("RGB").save(root / str(c) / f"{i}.png")


@pytest.mark.slow
def test_cnn_trains_from_scratch_then_evaluates_and_encodes(tmp_path, small_digits):
    from hybridhash.app.encode import encode_collection
    from hybridhash.app.evaluation import evaluate_checkpoints

    results = train(_config(tmp_path / "run", epochs=3), protocol=small_digits)
    losses = [h["loss"] for h in results[16].history]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.05  # (1.55 -> 1.40 here; epoch 1 warms up)
    ckpt = tmp_path / "run" / "bits16" / "best"
    meta = read_config(ckpt)
    assert meta["arch"] == "cnn" and meta["extra"]["train_config"]["recipe"] == "scratch"
    model = hybridhash.from_pretrained(ckpt)
    assert isinstance(model, CnnHash)

    doc = evaluate_checkpoints(tmp_path / "run", tmp_path / "eval", n_queries=2)
    r = doc["results"]["16"]
    assert r["n_query"] == len(small_digits.query) and 0.0 <= r["map"] <= 1.0

    _images(tmp_path / "images")
    col = encode_collection(tmp_path / "images", tmp_path / "codes", ckpt, workers=0, progress=False)
    assert col.count == 20 and col.fingerprint == model.fingerprint
    # the collection's codes are the model's codes of the same images
    from hybridhash.data.transforms import build_transform

    tf = build_transform(meta["extra"]["preprocess"], train=False)
    paths = sorted((tmp_path / "images").rglob("*.png"), key=lambda p: str(p.relative_to(tmp_path / "images")))
    codes = model.eval().encode(torch.stack([tf(Image.open(p).convert("RGB")) for p in paths]))
    assert col.codes.shape == (20, 2)  # 16 bits packed into 2 bytes
    assert sorted(map(tuple, np.asarray(col.codes))) == sorted(map(tuple, np.packbits(codes.numpy() > 0, axis=1)))


@pytest.mark.parametrize("method", list_methods())
def test_every_method_trains_on_the_cnn(tmp_path, method, small_digits):
    # 16 of the 80 training images per step: the five steps of one epoch (ADSH sets its own
    # epoch count from its iterations), then a checkpoint
    results = train(_config(tmp_path / "run", epochs=1, batch_size=16, method=method), protocol=small_digits)
    losses = [h["loss"] for h in results[16].history]
    assert losses and all(np.isfinite(v) for v in losses)
    assert hybridhash.from_pretrained(tmp_path / "run" / "bits16" / "last").config.preset == "cnn_cpu"


def test_fingerprint_covers_zero_dim_tensors():
    # BatchNorm's num_batches_tracked is a 0-dim int64 tensor; its value is part of the fingerprint
    from hybridhash.models import fingerprint_state_dict

    a = {"w": torch.ones(2, 3), "n": torch.tensor(3)}
    b = {"w": torch.ones(2, 3), "n": torch.tensor(4)}
    assert fingerprint_state_dict(a) != fingerprint_state_dict(b)
    assert fingerprint_state_dict(a) == fingerprint_state_dict({k: v.clone() for k, v in a.items()})


def test_models_command_lists_the_cnn_and_describes_timm_models(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "cnn_cpu" in out and "hybridhash_base" in out and "any timm model name" in out
    assert cli.main(["models", "test_resnet", "--bits", "16", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["arch"] == "timm" and info["config"]["backbone"] == "test_resnet"
    assert info["params"] == hybridhash.create_model("test_resnet", bits=16).num_params()
    assert info["preprocess"] == build_config("test_resnet", bits=16).preprocess


def test_a_timm_backbone_trains_through_the_trainer(tmp_path, small_digits):
    from hybridhash.app.train.optim import param_groups

    results = train(_config(tmp_path / "run", model="test_vit", model_overrides={"img_size": 32}, epochs=1,
                            method="dpsh"), protocol=small_digits)
    assert np.isfinite(results[16].history[0]["loss"])
    model = hybridhash.from_pretrained(tmp_path / "run" / "bits16" / "last")
    assert isinstance(model, BackboneHash) and model.preprocess["img_size"] == 32
    assert read_config(tmp_path / "run" / "bits16" / "last")["extra"]["train_config"]["recipe"] == "scratch"
    # the position embedding and class token are not decayed, as timm marks them
    decay, no_decay = param_groups(model, 0.1)
    assert any(p is model.backbone.pos_embed for p in no_decay["params"])
    assert not any(p is model.backbone.pos_embed for p in decay["params"])


def test_config_naming_another_timm_model_is_refused_before_it_is_built(tmp_path, monkeypatch):
    hybridhash.create_model("test_resnet", bits=16).save_pretrained(str(tmp_path / "ck"))
    path = tmp_path / "ck" / "config.json"
    meta = json.loads(path.read_text())
    big = build_config("resnet50", bits=16).to_dict()  # 24 M parameters against test_resnet's 0.37 M
    path.write_text(json.dumps({**meta, "config": big, "preset": "resnet50"}))
    built = []
    real_init = BackboneHash.__init__

    def spy(self, config=None, **kw):
        built.append(torch.empty(0).device.type)  # the default device while the network is made
        real_init(self, config, **kw)

    monkeypatch.setattr(BackboneHash, "__init__", spy)
    with pytest.raises(CheckpointMismatchError, match="not a checkpoint of this resnet50 model.*not of the same model"):
        hybridhash.from_pretrained(tmp_path / "ck")
    assert built == ["meta"]  # only the size check made it, on the meta device
