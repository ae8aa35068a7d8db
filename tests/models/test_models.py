"""The model package: fixtures of the original code, presets, weights in and out, clear errors."""
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import hybridhash
from hybridhash.errors import CheckpointError, CheckpointMismatchError, ConfigError
from hybridhash.models import HybridHashConfig, load_nest_weights, read_config

DATA = Path(__file__).parents[1] / "fixtures"


def _fixture(bits):
    meta = json.loads((DATA / f"hybridhash_small_b{bits}.json").read_text())
    tensors = load_file(str(DATA / f"hybridhash_small_b{bits}.safetensors"))
    state = {k[len("state_dict."):]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    model = hybridhash.create_model(
        "hybridhash_base", bits=meta["bit"], img_size=meta["img_size"], patch_size=meta["patch_size"],
        embed_dims=meta["embed_dims"], num_heads=meta["num_heads"], depths=meta["depths"],
        mlp_ratio=meta["mlp_ratio"], qkv_bias=meta["qkv_bias"], layer_norm_eps=meta["layer_norm_eps"],
        interaction_heads=meta["interaction_heads"])
    return meta, tensors, state, model


@pytest.mark.parametrize("bits", [16, 64])
@pytest.mark.parametrize("fused", [True, False])
def test_original_fixture_reproduced(bits, fused, device):
    meta, tensors, state, model = _fixture(bits)
    model.load_state_dict(hybridhash.convert_original_state_dict(state), strict=True)
    model.set_fused_attn(fused).eval().to(device)
    torch.backends.cudnn.allow_tf32 = False  # full fp32 convolutions where the device has TF32
    x = tensors["input"].to(device)
    with torch.no_grad():
        out = model(x).cpu()
    assert out.shape == tensors["output"].shape == (2, bits)
    assert (out - tensors["output"]).abs().max().item() <= meta["tolerance_abs"]
    codes = model.encode(x).cpu()
    assert torch.equal(codes, torch.where(tensors["output"] >= 0, 1, -1).to(torch.int8))


def test_convert_drops_fclayer_and_dataparallel_prefix():
    _, _, state, model = _fixture(16)
    wrapped = {"module." + k: v for k, v in state.items()}
    converted = hybridhash.convert_original_state_dict(wrapped)
    assert not any(k.startswith("FcLayer") for k in converted)
    assert set(converted) == set(model.state_dict())
    with pytest.raises(CheckpointError, match="not a parameter of the original"):
        hybridhash.convert_original_state_dict({"classifier.weight": torch.zeros(1)})


def test_spatial_tokens_differ_from_original():
    _, tensors, state, model = _fixture(16)
    spatial = hybridhash.create_model("hybridhash_base", bits=16, embed_dims=(32, 64, 128), num_heads=(1, 2, 4),
                                      depths=(1, 1, 2), global_tokens="spatial")
    converted = hybridhash.convert_original_state_dict(state)
    model.load_state_dict(converted)
    spatial.load_state_dict(converted)  # same parameters, only the token layout differs
    with torch.no_grad():
        a, b = model.eval()(tensors["input"]), spatial.eval()(tensors["input"])
    assert (a - b).abs().max() > 1e-4


def test_spatial_tokens_are_one_per_block():
    # with spatial tokens, permuting the blocks of the pooled map permutes the tokens the same way
    from hybridhash.models.hybridhash import _tokens
    x = torch.randn(2, 8, 4, 4)
    t = _tokens(x, "spatial")
    assert torch.equal(t[:, 5], x[:, :, 1, 1])
    t = _tokens(x, "original")
    assert torch.equal(t.reshape(2, -1), x.reshape(2, -1))  # memory order, no permute


def test_base_parameter_count():
    model = hybridhash.create_model("hybridhash_base", bits=64)
    # the original's 55.62 M less its unused 512*64+64 = 32,832-parameter FcLayer
    assert model.num_params() == 55_586_240
    assert round(model.num_params() / 1e6, 2) == 55.59


def test_registry():
    names = hybridhash.list_models()
    for n in ("hybridhash_base", "hybridhash_base_full", "hybridhash_small", "hybridhash_tiny", "hybridhash_cpu"):
        assert n in names
    assert hybridhash.list_models("*tiny") == ["hybridhash_tiny"]
    with pytest.raises(ConfigError, match="unknown model"):
        hybridhash.create_model("resnet_no_such_net")  # neither a preset nor a timm model (resnet50 is one)
    with pytest.raises(ConfigError, match="unknown model options"):
        hybridhash.create_model("hybridhash_cpu", embed_dim=3)


@pytest.mark.parametrize("name", hybridhash.list_models())
def test_every_preset_forward_backward_small(name, device):
    # each preset's own widths and heads, shrunk to 32 px and one layer per level so it runs fast
    cfg = hybridhash.models.build_config(name)
    model = hybridhash.create_model(name, bits=16, img_size=32, patch_size=2, depths=(1, 1, 1),
                                    drop_path_rate=0.1).to(device)
    assert model.config.embed_dims == cfg.embed_dims
    x = torch.randn(2, 3, 32, 32, device=device)
    out = model(x)
    assert out.shape == (2, 16) and out.abs().max() < 1
    out.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert model.hash_head.to_bits.weight.grad.abs().sum() > 0
    assert model.levels[1].pool.global_attention.qkv.weight.grad.abs().sum() > 0


def test_cpu_preset_and_sizes_derived():
    model = hybridhash.create_model("hybridhash_cpu", bits=32)
    cfg = model.config
    assert (cfg.img_size, cfg.patch_size, cfg.block_size) == (32, 2, 4)
    assert model.levels[0].pos_embed.shape == (1, 16, 16, 32)
    assert model.levels[1].pool.global_attention.pos_embed_glo.shape == (1, 16, 64)
    assert model.levels[2].pool.global_attention.pos_embed_glo.shape == (1, 4, 128)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 32)
    # another size: 64 px, patch 4 -> G 16, b 4
    m64 = hybridhash.create_model("hybridhash_cpu", img_size=64, patch_size=4)
    assert m64(torch.randn(1, 3, 64, 64)).shape == (1, 64)


def test_bad_image_size_errors():
    with pytest.raises(ConfigError, match="patch grid"):
        hybridhash.create_model("hybridhash_cpu", img_size=36, patch_size=2)  # 18x18 grid, 4 blocks/edge
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        hybridhash.create_model("hybridhash_cpu", img_size=33)
    with pytest.raises(ConfigError, match="global attention"):
        hybridhash.create_model("hybridhash_cpu", embed_dims=(32, 60, 128), num_heads=(2, 4, 8))
    with pytest.raises(ConfigError, match="global_tokens"):
        hybridhash.create_model("hybridhash_cpu", global_tokens="rows")


def test_fused_and_plain_attention_agree():
    model = hybridhash.create_model("hybridhash_cpu", bits=64).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        a = model.set_fused_attn(True)(x)
        b = model.set_fused_attn(False)(x)
    assert (a - b).abs().max() < 1e-5


def test_init_follows_spec():
    model = hybridhash.create_model("hybridhash_cpu")
    w = model.levels[0].transformer_encoder[0].mlp.fc1.weight
    assert abs(w.std().item() - 0.02) < 0.003 and w.abs().max() <= 2.0
    assert torch.all(model.levels[0].transformer_encoder[0].mlp.fc1.bias == 0)
    assert torch.all(model.levels[1].pool.global_attention.pos_embed_glo == 0)
    assert model.levels[0].pos_embed.std() > 0.01


# ---- the project format ---------------------------------------------------------------------

def test_save_and_load_pretrained_roundtrip(tmp_path):
    model = hybridhash.create_model("hybridhash_cpu", bits=48, global_tokens="spatial").eval()
    model.save_pretrained(tmp_path / "ckpt", epoch=3)
    meta = read_config(tmp_path / "ckpt")
    assert meta["bits"] == 48 and meta["preset"] == "hybridhash_cpu" and meta["extra"] == {"epoch": 3}
    assert meta["preprocess"]["img_size"] == 32 and len(meta["preprocess"]["mean"]) == 3
    loaded = hybridhash.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.fingerprint == meta["fingerprint"]
    assert not list((tmp_path / "ckpt").glob(".*.tmp"))  # atomic writes leave nothing behind


def test_checkpoint_of_other_bits_or_preset_refused(tmp_path):
    hybridhash.create_model("hybridhash_cpu", bits=32).save_pretrained(tmp_path / "b32")
    with pytest.raises(CheckpointMismatchError, match="32-bit"):
        hybridhash.from_pretrained(tmp_path / "b32", bits=64)
    with pytest.raises(CheckpointMismatchError, match="hybridhash_cpu checkpoint"):
        hybridhash.from_pretrained(tmp_path / "b32", preset="hybridhash_tiny")
    # loading its weights into a model of another bit length / another size: one-line errors
    state = load_file(str(tmp_path / "b32" / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="makes 32-bit codes, the model 64-bit"):
        hybridhash.models.load_checked(hybridhash.create_model("hybridhash_cpu", bits=64), state, "b32")
    with pytest.raises(CheckpointMismatchError, match="differ in shape") as err:
        hybridhash.models.load_checked(
            hybridhash.create_model("hybridhash_cpu", bits=32, embed_dims=(64, 128, 256)), state, "b32")
    assert "\n" not in str(err.value)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    (tmp_path / "junk.pth").write_text("hello")
    (tmp_path / "empty.pth").write_bytes(b"")
    for name in ("junk.safetensors", "junk.pth", "empty.pth", "missing.pth"):
        with pytest.raises(CheckpointError) as err:
            hybridhash.models.read_state_dict(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="not a hybridhash checkpoint"):
        hybridhash.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError):
        hybridhash.create_model("hybridhash_cpu", pretrained=str(tmp_path / "junk.pth"))


# ---- ImageNet NesT weights ------------------------------------------------------------------

def _nest_state(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kw).state_dict()


def test_nest_base_weights_load_into_base(tmp_path):
    nest = _nest_state("nest_base")
    path = tmp_path / "nest_base.safetensors"
    save_file({k: v.contiguous() for k, v in nest.items()}, str(path))
    model = hybridhash.create_model("hybridhash_base", bits=64, pretrained=str(path))
    report = model.load_report
    own = model.state_dict()
    # every shared tensor lands with its value
    for k in report.loaded:
        assert torch.equal(own[k], nest[k]), k
    assert len(report.loaded) == len([k for k in nest if k in own])
    # exactly the two global branches and the hash head keep their init
    assert set(report.left_at_init_groups) == {
        "levels.1.pool (global branch)", "levels.2.pool (global branch)", "hash_head"}
    assert all(".conv_glo." in k or ".global_attention." in k or k.startswith("hash_head.")
               for k in report.left_at_init)
    # NesT-B's last five layers of level 2 and the classifier are dropped
    groups = report.dropped_groups
    assert groups["head (classifier)"] == 2
    assert groups["levels.2.transformer_encoder beyond the configured depth"] == 5 * 12
    assert sum(groups.values()) == len(report.dropped) == 62
    assert "left at init" in str(report) and "hash_head" in str(report)


def test_nest_tiny_pth_loads_into_tiny_and_resizes_positions(tmp_path):
    nest = _nest_state("nest_tiny")
    path = tmp_path / "nest_tiny.pth"
    torch.save({"state_dict": nest}, path)
    model = hybridhash.create_model("hybridhash_tiny", bits=16, img_size=112, pretrained=str(path))
    report = model.load_report
    assert len(report.resized) == 3 and not any("transformer_encoder" in k for k in report.dropped)
    own = model.state_dict()
    for k in report.loaded:
        if k not in report.resized:
            assert torch.equal(own[k], nest[k]), k
    assert own["levels.0.pos_embed"].shape == (1, 16, 49, 96)
    # a NesT of another width is refused, naming the culprit
    with pytest.raises(CheckpointMismatchError, match="does not fit hybridhash_base"):
        load_nest_weights(hybridhash.create_model("hybridhash_base"), nest)


def test_config_roundtrip():
    cfg = hybridhash.models.build_config("hybridhash_small", bits=32, drop_path_rate=0.1)
    assert HybridHashConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.preprocess["resize"] == 256 and cfg.block_size == 14


# --------------------------------------------------------------------------------------------
# a hashing method's own head (cibhash's two-layer encoder) in place of the bits layer

def test_method_head_on_a_feature_map_is_the_head_at_each_position_then_the_mean():
    from hybridhash.models.heads import MethodHead

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    x = torch.randn(2, 5, 3, 4)
    y = MethodHead(mlp, spatial=True)(x)  # (2, 3, 3, 4)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                assert torch.allclose(y[b, :, i, j], mlp(x[b, :, i, j]), atol=1e-6)
    flat = torch.randn(6, 5)
    assert torch.equal(MethodHead(mlp, spatial=False)(flat), mlp(flat))


@pytest.mark.parametrize("name", ["hybridhash_cpu", "cnn_cpu"])
def test_a_method_head_is_saved_and_rebuilt(tmp_path, name):
    from hybridhash.models.heads import attach_method_head

    torch.manual_seed(0)
    model = hybridhash.create_model(name, bits=16)
    assert attach_method_head(model, "cibhash", {"hidden": 24})
    assert not attach_method_head(hybridhash.create_model(name, bits=16), "bihalf")  # keeps the model's layer
    model.eval().save_pretrained(str(tmp_path / "m"))
    record = json.loads((tmp_path / "m/config.json").read_text())["head"]
    assert record["method"] == "cibhash" and record["config"] == {"hidden": 24}
    state = load_file(str(tmp_path / "m/model.safetensors"))
    assert tuple(state["hash_head.to_bits.head.0.weight"].shape) == (24, record["in_features"])
    loaded = hybridhash.from_pretrained(tmp_path / "m").eval()
    x = torch.randn(5, 3, 32, 32)
    plain = hybridhash.create_model(name, bits=16).eval()
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
        assert not torch.equal(loaded(x), plain(x))


def test_a_broken_head_record_is_a_one_line_checkpoint_error(tmp_path):
    from hybridhash.models.heads import attach_method_head

    model = hybridhash.create_model("cnn_cpu", bits=16)
    attach_method_head(model, "cibhash", {"hidden": 8})
    model.save_pretrained(str(tmp_path / "m"))
    cfg = json.loads((tmp_path / "m/config.json").read_text())
    for head in ({"method": "nosuch", "in_features": cfg["head"]["in_features"]},
                 {**cfg["head"], "in_features": 3}, {**cfg["head"], "config": {"hidden": 9}}, "cibhash"):
        (tmp_path / "m/config.json").write_text(json.dumps({**cfg, "head": head}))
        with pytest.raises((CheckpointError, CheckpointMismatchError)) as err:
            hybridhash.from_pretrained(tmp_path / "m")
        assert "\n" not in str(err.value)
    del cfg["head"]  # the weights of a head, a config without it
    (tmp_path / "m/config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError):
        hybridhash.from_pretrained(tmp_path / "m")
