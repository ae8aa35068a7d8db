"""The registry: every registered method has its test file (one ``Test<Method>`` suite each), names
and hyper-parameters are checked, the published settings are the keyword defaults."""
from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest
import torch

from hybridhash.errors import CheckpointMismatchError, ConfigError, DataError
from hybridhash.methods import Method, UnsupervisedMethod, create_method, list_methods, method_class, register_method

HERE = Path(__file__).parent


def _suites() -> dict:
    """{method name: test file} of the ``MethodSuite`` subclasses in tests/methods/test_*.py."""
    found = {}
    for path in sorted(HERE.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", "") == "MethodSuite" for b in node.bases):
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", "") == "name":
                        found[stmt.value.value] = path.name
    return found


def test_every_registered_method_has_its_test_file_and_suite():
    suites = _suites()
    assert sorted(suites) == list_methods()
    assert all(file == f"test_{name}.py" for name, file in suites.items()), suites


def test_registry_lists_methods_by_pattern():
    names = list_methods()
    assert names == sorted(names) and len(names) >= 10
    assert list_methods("d*") == [n for n in names if fnmatch.fnmatch(n, "d*")] and list_methods("d*")
    assert all(method_class(n).name == n for n in names)


def test_bad_names_and_hyper_parameters_raise_config_errors():
    with pytest.raises(ConfigError, match="unknown method 'nope'; known: adsh, bihalf, cibhash, cnnh"):
        create_method("nope", bits=16, n_class=2, num_train=4)
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        method_class("nope")
    with pytest.raises(ConfigError, match="unknown hyper-parameter 'alhpa' for dsh; valid: alpha, margin_factor"):
        create_method("dsh", bits=16, n_class=2, num_train=4, alhpa=1.0)
    with pytest.raises(ConfigError, match="schedule must be one of epoch, iteration"):
        create_method("hashnet", bits=16, n_class=2, num_train=4, schedule="linear")
    with pytest.raises(ConfigError, match="gamma must be like 200.0"):
        create_method("adsh", bits=16, n_class=2, num_train=4, gamma="big")
    with pytest.raises(ConfigError, match="num_samples must be > 0"):
        create_method("adsh", bits=16, n_class=2, num_train=4, num_samples=0)
    with pytest.raises(ConfigError, match="bits must be a positive integer"):
        create_method("dpsh", bits=0, n_class=2, num_train=4)
    with pytest.raises(ConfigError, match="bank_rows 3 is smaller"):
        create_method("hybridhash", bits=16, n_class=2, num_train=4, bank_rows=3)
    method = create_method("dsh", bits=16, n_class=2, num_train=4)
    with pytest.raises(DataError, match="index holds rows outside"):
        method.loss(torch.zeros(2, 16), torch.zeros(2, 2), torch.tensor([0, 4]))
    with pytest.raises(DataError, match=r"h must be \(B, 16\)"):
        method.loss(torch.zeros(2, 8), torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(CheckpointMismatchError, match="shape"):
        create_method("dsh", bits=16, n_class=2, num_train=5).load_state_tensors(method.state_tensors())
    with pytest.raises(ConfigError, match="prepare"):
        create_method("cnnh", bits=16, n_class=2, num_train=4).loss(torch.zeros(1, 16), torch.zeros(1, 2), torch.tensor([0]))


def test_published_defaults_are_the_keyword_defaults():
    assert create_method("dsh", bits=64, n_class=10, num_train=5000).config.to_dict() == {
        "alpha": 0.1, "margin_factor": 2.0, "pairs": "bank"}  # the bank, as DeepHash-pytorch
    assert create_method("hashnet", bits=64, n_class=10, num_train=50).config.alpha == 0.1
    adsh = create_method("adsh", bits=64, n_class=10, num_train=5000)
    assert (adsh.config.gamma, adsh.config.num_samples, adsh.config.epochs_per_iteration, adsh.config.iterations) == (200.0, 2000, 3, 50)
    assert adsh.defaults.epochs == adsh.total_epochs == 150 and adsh.defaults.optimizer == "adam"
    assert create_method("adsh", bits=8, n_class=2, num_train=50, iterations=4).total_epochs == 12
    assert create_method("hybridhash", bits=64, n_class=10, num_train=50).defaults.lr == 2.5e-5
    assert create_method("cnnh", bits=8, n_class=2, num_train=5).defaults.optimizer == "adam"


@pytest.mark.parametrize("base,declared,message", [
    (Method, {"family": "supervised"}, "has family 'supervised'"),
    (Method, {"trains_on": "pixels"}, "trains on 'pixels'; expected one of"),
    (Method, {"trains_on": "targets"}, "exactly when it is not an UnsupervisedMethod"),
    (UnsupervisedMethod, {"trains_on": "labels"}, "exactly when it is not an UnsupervisedMethod"),
    (UnsupervisedMethod, {"trains_on": "views"}, "declares their augmentation"),
    (UnsupervisedMethod, {"views": method_class("cibhash").views}, "declares their augmentation"),
])
def test_a_method_that_declares_what_cannot_be_fed_is_not_registered(base, declared, message):
    attrs = {"name": "made_up", "family": "unsupervised" if base is UnsupervisedMethod else "symmetric", **declared}
    with pytest.raises(ConfigError, match=message):
        register_method(type("MadeUp", (base,), attrs))
    assert "made_up" not in list_methods()
