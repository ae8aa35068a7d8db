"""Images without labels as datasets: a flat folder, a folder tree under ``images:``, a list file of
paths only. Their splits are seeded fractions, recorded and re-created like any other; a class layout
keeps its labels."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from hybridhash.data import check_protocol, load_protocol
from hybridhash.errors import DataError


def write_flat(root, n, start=0):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        Image.fromarray(np.full((6, 6, 3), i % 250, np.uint8)).save(root / f"photo {i:03d}.png")
    return root


def all_rows(p):
    return {name: set(s.rows.tolist()) for name, s in p.sets.items()}


def test_a_flat_folder_is_a_dataset_without_labels(tmp_path):
    root = write_flat(tmp_path / "photos", 50)
    (root / "notes.txt").write_text("not an image")
    p = load_protocol(f"folder:{root}", seed=3)
    assert not p.labelled and p.summary()["labelled"] is False and p.warnings == []
    files = sorted(f for f in os.listdir(root) if f.endswith(".png"))
    # 10% queries (5), the other 45 the database; half of those 45 (round half up or down) train + val
    assert len(p.query) == 5 and len(p.database) == 45
    assert all_rows(p)["query"].isdisjoint(all_rows(p)["database"])
    assert all_rows(p)["train"] | all_rows(p)["val"] <= all_rows(p)["database"]
    assert len(p.train) + len(p.val) in (22, 23) and len(p.val) >= 1
    assert sorted(os.path.basename(x) for s in ("query", "database") for x in p.sets[s].paths) == files
    # seeded: the same seed draws the same rows, another seed others
    assert all_rows(load_protocol(f"folder:{root}", seed=3)) == all_rows(p)
    assert all_rows(load_protocol(f"folder:{root}", seed=4)) != all_rows(p)


def test_images_takes_a_folder_tree_or_a_list_of_paths(tmp_path):
    root = write_flat(tmp_path / "tree" / "2024" / "may", 12)
    write_flat(tmp_path / "tree" / "2025", 8, start=100)
    tree = load_protocol(f"images:{tmp_path / 'tree'}", seed=0)
    assert not tree.labelled and len(tree.query) + len(tree.database) == 20
    # the same folder under folder: is the class layout (two classes: 2024 and 2025)
    classes = load_protocol(f"folder:{tmp_path / 'tree'}", seed=0)
    assert classes.labelled and classes.class_names == ["2024", "2025"]

    listed = tmp_path / "list.txt"
    names = [f"tree/2024/may/photo {i:03d}.png" for i in range(12)]
    listed.write_text("\n".join(names[:6]) + "\n\n  \n" + "\n".join(names[6:]) + "\n")
    p = load_protocol(f"images:{listed}", seed=0)
    assert not p.labelled and len(p.query) + len(p.database) == 12
    got = sorted(p.query.paths + p.database.paths)
    assert got == sorted(str(tmp_path / n) for n in names)  # spaces kept, blank lines skipped
    assert p.query.image(0).size == (6, 6)


def test_a_recorded_split_is_re_created_and_a_changed_folder_refused(tmp_path):
    root = write_flat(tmp_path / "photos", 30)
    p = load_protocol(f"folder:{root}", seed=1)
    record = tmp_path / "split.json"
    p.save_split(record)
    again = load_protocol(f"folder:{root}", split_file=record)
    assert all_rows(again) == all_rows(p) and not again.labelled
    write_flat(root, 1, start=30)  # one photo more
    with pytest.raises(DataError, match="changed since the split was recorded"):
        load_protocol(f"folder:{root}", split_file=record)


@pytest.mark.parametrize("case", ["missing", "empty_dir", "not_utf8", "nul"])
def test_bad_sources_are_one_line_errors(tmp_path, case):
    if case == "missing":
        source, match = tmp_path / "nowhere", "no such directory or list file"
    elif case == "empty_dir":
        source, match = tmp_path / "empty", "holds no images"
        source.mkdir()
    elif case == "not_utf8":
        source, match = tmp_path / "list.txt", "not UTF-8"
        source.write_bytes(b"a.png\n\xff\xfe.png\n")
    else:
        source, match = tmp_path / "list.txt", "NUL"
        source.write_bytes(b"a.png\nb\x00.png\n")
    with pytest.raises(DataError, match=match) as err:
        load_protocol(f"images:{source}", seed=0)
    assert "\n" not in str(err.value)


def test_check_reports_a_flat_folder_and_its_split(tmp_path):
    root = write_flat(tmp_path / "photos", 20)
    report = check_protocol(f"folder:{root}", verify_images=True)
    assert report.errors == []
    by_name = {s.name: s for s in report.sets}
    assert by_name["all"].images == 20 and by_name["all"].n_class == 0
    assert by_name["query"].images == 2 and by_name["database"].images == 18
    (root / "photo 005.png").write_bytes(b"not a png")
    broken = check_protocol(f"images:{root}", verify_images=True)
    assert [os.path.basename(e.where) for e in broken.errors] == ["photo 005.png"]
