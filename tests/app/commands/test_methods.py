"""Small commands: ``hybridhash methods`` lists every registered method with its family and
published settings, describes one, and refuses an unknown name in one line."""
from __future__ import annotations

import json

from hybridhash.app import cli
from hybridhash.methods import SHALLOW, create_method, list_methods


def test_methods_lists_every_method_with_its_family(capsys):
    assert cli.main(["methods", "--json"]) == 0
    infos = json.loads(capsys.readouterr().out)
    shallow = {i["name"]: i for i in infos if i["family"] == "shallow"}
    assert sorted(shallow) == sorted(SHALLOW) and all(i["trains_on"] == "features" for i in shallow.values())
    assert [i["name"] for i in infos] == list_methods() + sorted(SHALLOW)
    for i in infos[:len(list_methods())]:
        m = create_method(i["name"], bits=64, n_class=10, num_train=100)
        assert i["family"] == m.family and i["defaults"] == m.defaults.to_dict() and i["trains_on"] == m.trains_on
    assert {i["name"]: i["family"] for i in infos}["adsh"] == "asymmetric"
    assert cli.main(["methods"]) == 0
    table = capsys.readouterr().out
    unsupervised = [i["name"] for i in infos if i["trains_on"] in ("targets", "views")]
    assert unsupervised and f"without labels (data with or without them; see docs/unsupervised.md): " \
        f"{', '.join(unsupervised)}." in table
    assert "shallow: training-free baselines" in table


def test_methods_describes_one_and_refuses_an_unknown_name(capsys):
    assert cli.main(["methods", "csq"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("csq (central, activation tanh)") and "lam=0.0001" in out
    assert cli.main(["methods", "itq"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("itq (shallow, activation sign)") and "iterations=50" in out and "pixels" in out
    assert cli.main(["methods", "nope"]) == 1
    assert capsys.readouterr().err == (
        "error: unknown method 'nope'; known: " + ", ".join(list_methods()) + "\n")
