"""One home per concept: a scan of src/ (ast) for second definitions of what has one home (Hamming
distances and top k, images -> codes, the limits, packing, model listing and fingerprints, the
engines, the environment), and the one images -> codes function against the model's own forward."""
from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

import hybridhash
from hybridhash.engines.encoding import encode_batch, encode_images
from hybridhash.models import list_models, model_fingerprint

SRC = Path(__file__).resolve().parents[1] / "src" / "hybridhash"


def _trees() -> Dict[str, ast.AST]:
    return {str(p.relative_to(SRC)): ast.parse(p.read_text(), str(p)) for p in sorted(SRC.rglob("*.py"))}


TREES = _trees()


def _defs() -> Dict[str, List[str]]:
    """Every function and class defined anywhere (methods too) -> the files defining it."""
    found = defaultdict(list)
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found[node.name].append(path)
    return found


def _assigned() -> Dict[str, List[str]]:
    """Every module-level (or class-level) name bound by an assignment -> the files binding it."""
    found = defaultdict(list)
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                targets = [t for target in node.targets for t in ast.walk(target)]
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            else:
                continue
            for t in targets:
                if isinstance(t, ast.Name) and t.id.isupper():
                    found[t.id].append(path)
    return found


def _names_anywhere(name: str) -> List[str]:
    """Files where ``name`` is defined, bound, imported or aliased under that name, or read."""
    hits = []
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name) \
                    or (isinstance(node, ast.Name) and node.id == name) \
                    or (isinstance(node, ast.Attribute) and node.attr == name) \
                    or (isinstance(node, ast.alias) and name in (node.name, node.asname)):
                hits.append(path)
    return sorted(set(hits))


def _calls(path: str) -> List[str]:
    """Names of what the file calls: ``f(...)`` -> "f", ``x.f(...)`` -> ".f"."""
    out = []
    for node in ast.walk(TREES[path]):
        if isinstance(node, ast.Call):
            f = node.func
            out.append(f.id if isinstance(f, ast.Name) else f".{f.attr}" if isinstance(f, ast.Attribute) else "")
    return out


def test_the_scan_sees_the_whole_package():
    assert len(TREES) > 60 and "codes.py" in TREES and "app/evaluation.py" in TREES


# ---------------------------------------------------------------------------------------------
# Hamming distances and the top k


def test_one_hamming_distances_and_one_top_k():
    defs = _defs()
    assert defs["hamming_distances"] == ["codes.py"]
    pattern = re.compile(r"_?((hamming_)?top_?k|top_results|(k_?)?nearest\w*|\w*knn\w*)")
    top_k_like = {name: files for name, files in defs.items() if pattern.fullmatch(name)}
    assert top_k_like == {"hamming_topk": ["codes.py"], "topk": ["codes.py"]}  # PackedDatabase.topk, its kernel


def test_every_ranking_is_made_in_codes():
    sorting = {".argsort", ".lexsort", ".argpartition", "argsort", "lexsort", "argpartition"}
    found = {path: sorted(set(_calls(path)) & sorting) for path in TREES if path != "codes.py"}
    assert {p: c for p, c in found.items() if c} == {}


# ---------------------------------------------------------------------------------------------
# images -> codes


def test_one_images_to_codes_path():
    defs = _defs()
    assert defs["encode_batch"] == ["engines/encoding.py"]
    assert [f for f in defs["encode_images"] if f != "retrieval.py"] == ["engines/encoding.py"]
    for path in ("app/evaluation.py", "app/encode/shards.py", "retrieval.py"):
        text = (SRC / path).read_text()
        assert "engines.encoding import encode_" in text, path
        # none of them runs a model on images, applies the sign rule or sets up autocast itself
        own = set(_calls(path)) & {".encode", "binarize", "autocast_context", ".to"}
        assert own <= {".to"}, (path, own)
    # the model goes to its device in the callers; a batch of images only in encode_batch
    assert "x.to(" not in (SRC / "retrieval.py").read_text()
    assert 'batch["images"].to(' not in (SRC / "app/encode/shards.py").read_text()


def _spread_model(seed: int = 0) -> torch.nn.Module:
    """A small untrained network whose outputs lie away from 0, so codes compare bit for bit."""
    torch.manual_seed(seed)
    model = hybridhash.create_model("hybridhash_cpu", bits=16, depths=(1, 1, 1)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "hash" in name and p.dim() == 2:
                p.mul_(50.0)
    return model


def _forward_one_by_one(model, x: torch.Tensor) -> np.ndarray:
    """The model's own forward, one image at a time, as float64 (n, bits)."""
    with torch.no_grad():
        return np.concatenate([model(x[i:i + 1]).double().numpy() for i in range(x.shape[0])])


def test_encode_batch_is_the_models_forward_and_the_sign_rule():
    model = _spread_model()
    x = torch.randn(5, 3, 32, 32)
    u = _forward_one_by_one(model, x)  # (5, 16)
    assert np.abs(u).min() > 1e-3  # no output within float error of 0: the codes are well defined
    expected = np.where(u >= 0, 1, -1)  # the sign rule, written here
    outputs = encode_batch(model, x, outputs=True)
    codes = encode_batch(model, x)
    assert outputs.dtype == np.float32 and outputs.shape == (5, 16)
    np.testing.assert_allclose(outputs, u, atol=1e-4, rtol=0)
    assert codes.dtype == np.int8 and np.array_equal(codes, expected)
    assert np.array_equal(encode_batch(model, x, device="cpu", amp=True), expected)  # no autocast on a CPU
    zero = torch.nn.Linear(3 * 32 * 32, 4)
    torch.nn.init.zeros_(zero.weight), torch.nn.init.zeros_(zero.bias)
    assert encode_batch(zero, x.flatten(1)).tolist() == [[1] * 4] * 5  # an output of exactly 0 is +1


class _Images(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int):
        return self.x[i], i  # an image, then anything (a label)


def test_encode_images_over_batches_and_data_sets_equals_the_forward():
    model = _spread_model(1).train()
    x = torch.randn(7, 3, 32, 32)
    u = _forward_one_by_one(model.eval(), x)
    model.train()
    expected = np.where(u >= 0, 1, -1)
    for images in (x, _Images(x)):
        for batch_size in (1, 3, 7, 20):
            codes = encode_images(model, images, batch_size=batch_size)
            assert codes.dtype == np.int8 and np.array_equal(codes, expected), batch_size
    # another batch shape takes other float32 rounding paths: equal to float error only
    np.testing.assert_allclose(encode_images(model, x, batch_size=3, outputs=True), u, atol=1e-4, rtol=0)
    assert model.training  # evaluated in eval mode, handed back as it came
    empty = encode_images(model, x[:0])
    assert empty.shape == (0, 16) and empty.dtype == np.int8


# ---------------------------------------------------------------------------------------------
# limits, packing, listing, fingerprints, the environment, the engines


@pytest.mark.parametrize("name", ["IMAGENET_MEAN", "IMAGENET_STD", "MAX_IMG_SIZE", "MAX_K", "K_CAP",
                                  "MAX_PIXELS", "MAX_EMBED_DIM", "MAX_DEPTH", "MAX_MLP_RATIO", "MAX_CNN_WIDTH"])
def test_each_limit_is_defined_once_in_limits(name):
    assert _assigned()[name] == ["limits.py"]


def test_max_k_names_one_thing():
    """K_CAP: the largest k any search accepts; MAX_K: the service's default --max-k (the index has none)."""
    from hybridhash import index, limits
    from hybridhash.app.serve import app

    assert index.check_k(limits.K_CAP) == limits.K_CAP
    with pytest.raises(hybridhash.errors.ConfigError, match=f"at most {limits.K_CAP}"):
        index.check_k(limits.K_CAP + 1)
    assert not hasattr(index, "MAX_K") and app.DEFAULT_MAX_K == limits.MAX_K <= limits.K_CAP


def test_one_strict_and_one_lenient_packer():
    assert _names_anywhere("pack_codes") == []  # no name for two rules
    defs = _defs()
    assert defs["pack_pm1"] == ["codes.py"] and defs["as_packed"] == ["codes.py"]


def test_one_model_listing():
    assert _names_anywhere("list_presets") == [] and _defs()["list_models"] == ["models/registry.py"]
    assert list_models(arch="cnn") == ["cnn_cpu"]
    hybrid = list_models()
    assert hybrid and all(n.startswith("hybridhash_") for n in hybrid)
    assert list_models(arch="*") == sorted(hybrid + ["cnn_cpu"])
    assert list_models("*tiny", arch="*") == ["hybridhash_tiny"]


def test_one_fingerprint_that_is_never_kept_on_the_model():
    from hybridhash.models import fingerprint_state_dict

    assert _names_anywhere("fingerprint_of") == [] and _defs()["model_fingerprint"] == ["models/weights.py"]
    model = _spread_model(2)
    first = model_fingerprint(model)
    assert first == fingerprint_state_dict(model.state_dict()) and getattr(model, "fingerprint", None) is None
    with torch.no_grad():  # a training step changes the weights: the fingerprint follows them
        next(model.parameters()).add_(1.0)
    assert model_fingerprint(model) != first == model_fingerprint(_spread_model(2))
    model.fingerprint = "recorded"  # what a loaded checkpoint or an export carries
    assert model_fingerprint(model) == "recorded"


def test_the_environment_has_one_module_and_one_record():
    assert not any(Path(p).name == "runtime.py" for p in TREES)
    assert "environment.py" in TREES and _names_anywhere("DistInfo") == []
    assert _defs()["DistEnv"] == ["environment.py"]


def test_the_engines_live_together():
    defs = _defs()
    assert defs["OnnxEncoder"] == ["engines/onnx.py"] and defs["OpenVinoEncoder"] == ["engines/openvino.py"]
    assert defs["open_encoder"] == ["engines/__init__.py"] and defs["pick_runtime"] == ["engines/__init__.py"]
    assert defs["export_onnx"] == ["export.py"]
    assert not any(Path(p).stem in ("inference", "openvino_encoder") for p in TREES)
    # no engine reaches into another file's private names
    private = []
    for path, tree in TREES.items():
        if path.startswith("engines/") or path == "export.py":
            private += [f"{path}: {a.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                        and node.level for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []
