"""``hybridhash demo --quick``: the whole pipeline end to end in seconds (a smoke test, not a result)."""
from __future__ import annotations

import json

from hybridhash.app import cli


def test_demo_quick_writes_the_table_and_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    table = [line.split() for line in printed.splitlines() if line.strip().split()[:1] in (["16"], ["32"])]
    assert [row[0] for row in table] == ["16", "32"] and all(len(row) == 5 for row in table)
    doc = json.loads((out / "eval" / "metrics.json").read_text())
    # the printed mAP is the evaluated one
    assert [float(row[1]) for row in table] == [round(doc["results"][b]["map"], 4) for b in ("16", "32")]
    html = (out / "report.html").read_text()
    for fig in ("eval/map_vs_bits_floors.png", "eval/pr_curve.png", "eval/precision_at_n.png",
                "eval/retrieval_bits32.png"):
        assert fig in html and (out / fig).is_file()
    assert "floor" in html
    # the digits as files, for indexing and search
    assert len((out / "data" / "database.txt").read_text().splitlines()) == doc["results"]["16"]["n_database"]
