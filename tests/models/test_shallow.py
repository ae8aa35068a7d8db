"""The fitted baselines' network (:mod:`hybridhash.models.shallow`) and its feature networks
(:mod:`hybridhash.models.features`): the head's sign rules, pre-hash features of registry models.
Fits through ``train`` and the checkpoints they write are tested in tests/app/test_train_shallow.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hybridhash.errors import ConfigError
from hybridhash.methods import make_shallow
from hybridhash.models.features import feature_network
from hybridhash.models.shallow import ShallowHashModel, ShallowHead


def test_the_head_keeps_each_rule_for_a_score_of_zero():
    x = torch.randn(20, 10, dtype=torch.float64)
    pcah = make_shallow("pcah", 8).fit(lambda: iter([x]), 10)
    head = ShallowHead(pcah.config())
    with torch.no_grad():
        for k, v in pcah.state_tensors().items():
            getattr(head, k).copy_(v)
    at_mean = pcah.tensors["mean"][None]  # every projection of the mean is exactly 0: +1 under >= 0
    assert (head(at_mean) > 0).all() and (pcah.encode(at_mean) == 1).all()
    # a rule's zeros and scores too small for float32 keep their side: > 0 (SH's) makes exact zeros -1
    scores = torch.tensor([[0.0, 1e-300, -1e-300, 2.0]], dtype=torch.float64)
    for strict, expected in ((True, [-1, 1, -1, 1]), (False, [1, 1, -1, 1])):
        head.kind = type("Rule", (), {"strict": strict, "score": classmethod(lambda cls, t, f: scores)})
        h = head(torch.zeros(1, 10))
        assert h.dtype == torch.float32 and torch.where(h >= 0, 1, -1).tolist() == [expected]
        assert torch.where(torch.tanh(h) >= 0, 1, -1).tolist() == [expected]  # forward's activation keeps them


def test_pre_hash_features_of_registry_models():
    timm_net = feature_network("test_resnet", img_size=32)
    hh = feature_network("hybridhash_cpu")
    with torch.inference_mode():
        assert timm_net(torch.rand(2, 3, 32, 32)).shape == (2, timm_net.n_features)
        y = torch.rand(2, 3, hh.config.img_size, hh.config.img_size)
        # HybridHash's pre-hash features: its last feature map, averaged over the positions
        np.testing.assert_allclose(hh(y).numpy(), hh.net.forward_features(y).mean((2, 3)).numpy())


def test_a_model_is_rebuilt_from_its_fit_and_refuses_a_mismatched_config():
    net = feature_network("pixels", img_size=4)
    x = torch.rand(30, 3, 4, 4)
    itq = make_shallow("itq", 16, seed=3).fit(lambda: iter([net(x)]), net.n_features)
    model = ShallowHashModel.from_fit(net, itq).eval()
    np.testing.assert_array_equal(model.encode(x).numpy(), itq.encode(net(x)).numpy())
    again = ShallowHashModel(model.config)
    again.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(again.encode(x).numpy(), model.encode(x).numpy())
    bad = dict(model.config.to_dict(), baseline=dict(model.config.baseline, n_features=47))
    with pytest.raises(ConfigError, match="48 wide, the baseline was fitted on 47"):
        ShallowHashModel(type(model.config).from_dict(bad))
    state = dict(model.state_dict(), **{"head.rotation": torch.full((16, 16), float("nan"), dtype=torch.float64)})
    with pytest.raises(Exception, match="non-finite"):
        again.load_state_dict(state)


def test_a_tampered_checkpoint_is_refused_in_one_line(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    import hybridhash
    from hybridhash.errors import CheckpointError

    net = feature_network("pixels", img_size=4)
    x = torch.rand(40, 3, 4, 4)
    sh = make_shallow("sh", 16).fit(lambda: iter([net(x)]), net.n_features)
    ShallowHashModel.from_fit(net, sh).save_pretrained(str(tmp_path / "sh"))
    loaded = hybridhash.from_pretrained(tmp_path / "sh").eval()
    np.testing.assert_array_equal(loaded.encode(x).numpy(), sh.encode(net(x)).numpy())
    # the config says another width than the weights hold
    meta = json.loads((tmp_path / "sh" / "config.json").read_text())
    meta["config"]["baseline"]["n_features"] = 47
    (tmp_path / "sh" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a usable model config"):
        hybridhash.from_pretrained(tmp_path / "sh")
    meta["config"]["baseline"]["n_features"] = 48
    (tmp_path / "sh" / "config.json").write_text(json.dumps(meta))
    # modes no fit gives: two frequencies in one row
    state = load_file(str(tmp_path / "sh" / "model.safetensors"))
    state["head.modes"] = state["head.modes"].clone()
    state["head.modes"][0] = 1
    save_file(state, str(tmp_path / "sh" / "model.safetensors"), metadata={"format": "hybridhash"})
    with pytest.raises(CheckpointError, match="one positive frequency per row") as err:
        hybridhash.from_pretrained(tmp_path / "sh")
    assert "\n" not in str(err.value)
