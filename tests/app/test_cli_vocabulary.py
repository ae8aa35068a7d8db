"""One command-line vocabulary: every command's options, collected from ``cli.build_parser()``, use
one name per concept (``--collection``, ``--image-root``, ``--data-root``, ``--progress``,
``--workers`` for processes, ``--threads`` for threads, ``--max-pixels``); every number has a range
that the parser enforces in one line; the spellings they replaced still parse to the same
destination with exactly one deprecation line; ``train --config`` re-runs a recorded run."""
from __future__ import annotations

import argparse
import json
import math

import pytest

from hybridhash.app import cli
from hybridhash.app.commands.options import Bounded, current_spellings
from hybridhash.errors import ConfigError
from hybridhash.fileio import read_json
from hybridhash.limits import MAX_PIXELS
from tests.helpers.commands import one_error_line, run_cli, snapshot


def leaf_parsers() -> dict:
    """{command words: parser} of every command that runs, nested ones (``data check``) included."""
    found = {}

    def walk(parser: argparse.ArgumentParser, words: tuple) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            found[words] = parser
        for action in subs:
            for name, sub in action.choices.items():
                walk(sub, words + (name,))

    walk(cli.build_parser(), ())
    return found


PARSERS = leaf_parsers()


def options(parser) -> list:
    """The options of ``parser`` a user may give (not ``-h``, not the hidden deprecated flags)."""
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)
            and not (a.help == argparse.SUPPRESS and getattr(a, "deprecated", None))]


def primary(action) -> str:
    return current_spellings(action)[0]


def every_option():
    for words, parser in PARSERS.items():
        for action in options(parser):
            yield words, parser, action


# the name of each concept, its destination, and what the commands called it before
CONCEPTS = {
    "collection": "--collection",
    "image_root": "--image-root",
    "root": "--data-root",
    "progress": "--progress",
    "workers": "--workers",
    "threads": "--threads",
    "max_pixels": "--max-pixels",
}
RETIRED = {"--root", "--codes", "--index", "--quiet", "--no-progress"}
DEPRECATED = {  # (command, old spelling): what it is now
    (("encode",), "--out"): "--collection", (("index",), "--codes"): "--collection",
    (("search",), "--index"): "--collection", (("serve",), "--index"): "--collection",
    (("encode",), "--root"): "--image-root", (("serve",), "--root"): "--image-root",
    (("train",), "--root"): "--data-root", (("evaluate",), "--root"): "--data-root",
    (("compare",), "--root"): "--data-root", (("data", "info"), "--root"): "--data-root",
    (("data", "check"), "--root"): "--data-root", (("data", "export"), "--root"): "--data-root",
    (("train",), "--quiet"): "--no-progress", (("compare",), "--quiet"): "--no-progress",
    (("demo",), "--quiet"): "--no-progress", (("data", "check"), "--workers"): "--threads",
}


def test_every_command_is_collected():
    assert set(PARSERS) == {("models",), ("methods",), ("data", "list"), ("data", "info"), ("data", "check"),
                            ("data", "export"), ("train",), ("evaluate",), ("compare",), ("encode",), ("export",),
                            ("index",), ("search",), ("serve",), ("demo",)}


def test_one_name_per_concept_and_one_concept_per_name():
    names_of, dests_of = {}, {}
    for words, _, action in every_option():
        names_of.setdefault(action.dest, set()).add(primary(action))
        dests_of.setdefault(primary(action), set()).add(action.dest)
        assert primary(action) not in RETIRED, (words, action.option_strings)
    assert {d: n for d, n in names_of.items() if len(n) > 1} == {}
    assert {n: d for n, d in dests_of.items() if len(d) > 1} == {}
    for dest, name in CONCEPTS.items():
        assert names_of[dest] == {name}


def test_collections_are_named_collection_and_out_is_never_one():
    takes = {words for words, _, a in every_option() if a.dest == "collection"}
    assert takes == {("encode",), ("index",), ("search",), ("serve",)}
    for words, _, action in every_option():
        if "--out" in current_spellings(action):
            assert action.dest == "out", words


def test_progress_is_one_switch_wherever_there_are_progress_bars():
    having = set()
    for words, _, action in every_option():
        if action.dest == "progress":
            having.add(words)
            assert isinstance(action, argparse.BooleanOptionalAction) and action.default is True, words
            assert action.option_strings == ["--progress", "--no-progress"], words
    assert having == {("train",), ("evaluate",), ("compare",), ("encode",), ("demo",), ("data", "check")}


def test_workers_are_processes_and_threads_are_threads():
    seen = set()
    for words, _, action in every_option():
        if primary(action) in ("--workers", "--threads"):
            seen.add(primary(action))
            word = "processes" if primary(action) == "--workers" else "threads"
            assert word in action.help and ("threads" if word == "processes" else "processes") not in action.help, \
                (words, action.help)
    assert seen == {"--workers", "--threads"}


def test_max_pixels_on_every_command_that_decodes_images():
    having = {words for words, _, a in every_option() if a.dest == "max_pixels"}
    assert having == {("train",), ("evaluate",), ("compare",), ("encode",), ("search",), ("serve",),
                      ("data", "check")}
    for words, _, action in every_option():
        if action.dest == "max_pixels":
            assert action.default == MAX_PIXELS, words


def test_every_option_says_what_it_is():
    for words, _, action in every_option():
        if action.help == argparse.SUPPRESS:
            assert action.dest == "stop_after_epochs", (words, action.option_strings)  # a test hook
            continue
        assert action.help and len(action.help) > 8, (words, action.option_strings)


def test_help_names_only_current_spellings():
    for (words, old), new in DEPRECATED.items():
        text = PARSERS[words].format_help()
        invocations = [line.split()[0] for line in text.splitlines() if line.startswith("  -")]
        assert old not in invocations and old not in text.split("\n\n")[0], (words, old)  # usage, options
        if new != "--no-progress":
            assert f"(formerly {old}" in " ".join(text.split()), (words, old)


def test_a_missing_collection_names_its_current_spelling(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["index"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.splitlines()[-1] == "hybridhash index: error: the following arguments are required: --collection"


# --------------------------------------------------------------------------------------------
# numbers

def minimal_argv(parser) -> list:
    """Arguments that satisfy ``parser``'s required options and positionals (values not checked there)."""
    argv = []
    for action in parser._actions:
        if not action.option_strings and action.dest != "help":
            argv.append("x")
    for action in parser._actions:
        if action.option_strings and action.required:
            argv += [primary(action), "x"]
    return argv


def numeric_options():
    for words, parser, action in every_option():
        if action.nargs == 0:
            continue
        default = action.default
        if isinstance(action.type, Bounded) or action.type in (int, float) or (
                isinstance(default, (int, float)) and not isinstance(default, bool)):
            yield pytest.param(words, primary(action), id=f"{' '.join(words)} {primary(action)}")


def allowed(bounds, value: float) -> bool:
    """Whether ``value`` lies in ``bounds``, worked out here from its ends."""
    if not math.isfinite(value):
        return False
    if bounds.low is not None and (value <= bounds.low if bounds.low_open else value < bounds.low):
        return False
    return bounds.high is None or (value < bounds.high if bounds.high_open else value <= bounds.high)


@pytest.mark.parametrize("words, name", list(numeric_options()))
def test_every_number_has_a_range_the_parser_enforces(words, name, capsys):
    parser = PARSERS[words]
    action = next(a for a in options(parser) if primary(a) == name)
    assert isinstance(action.type, Bounded), f"{' '.join(words)} {name} has no range"
    bounds = action.type.bounds
    assert action.type.kind is float or bounds.high is not None
    for text in ("-1", "0", str(10 ** 30), "1e400", "nan", "inf"):
        argv = [*words, *minimal_argv(parser), name, text]
        try:
            value = action.type.kind(text)
        except ValueError:  # "nan" for an integer: argparse's own usage error
            with pytest.raises(SystemExit) as stop:
                cli.main(argv)
            assert stop.value.code == 2
            assert f"argument {name}: expected an integer, got {text!r}" in capsys.readouterr().err
            continue
        if allowed(bounds, value):
            assert getattr(parser.parse_args(argv[len(words):]), action.dest) in (value, [value])
            continue
        assert cli.main(argv) == 1, (name, text)
        message = one_error_line(capsys.readouterr().err)
        assert message.startswith(f"{name} must be ") and message.endswith(f"got {value!r}"), message


# --------------------------------------------------------------------------------------------
# the spellings of before

def deprecated_spellings():
    for words, parser in PARSERS.items():
        for action in parser._actions:
            for old, new in (getattr(action, "deprecated", None) or {}).items():
                yield pytest.param(words, old, new, id=f"{' '.join(words)} {old}")


def test_the_spellings_of_before_are_all_kept():
    found = {(v.values[0], v.values[1]): v.values[2] for v in deprecated_spellings()}
    assert found == DEPRECATED


@pytest.mark.parametrize("words, old, new", list(deprecated_spellings()))
def test_an_old_spelling_parses_to_the_same_destination_with_one_warning(words, old, new, capsys):
    parser = PARSERS[words]
    action = next(a for a in parser._actions if old in (getattr(a, "deprecated", None) or {}))
    base = [a for a in minimal_argv(parser)]
    if action.required:  # minimal_argv gave the new spelling: give the old one instead
        i = base.index(new)
        del base[i:i + 2]
    value = [] if action.nargs == 0 else ["3" if isinstance(action.type, Bounded) else "some/dir"]
    with_old = parser.parse_args([*base, old, *value])
    err = capsys.readouterr().err
    assert err == f"warning: {old} is deprecated; use {new}\n"
    with_new = parser.parse_args([*base, new, *value])
    assert capsys.readouterr().err == ""
    assert vars(with_old) == vars(with_new)
    dest = action.dest
    assert getattr(with_old, dest) == (False if new == "--no-progress" else
                                       3 if isinstance(action.type, Bounded) else "some/dir")


def test_a_deprecated_spelling_through_the_command_warns_once_then_runs(tmp_path, capsys):
    rc, out, err = run_cli(["index", "--codes", tmp_path / "nowhere"], capsys)
    assert rc == 1
    lines = err.splitlines()
    assert lines[0] == "warning: --codes is deprecated; use --collection" and len(lines) == 2
    assert lines[1].startswith("error: ") and "nowhere" in lines[1]


# --------------------------------------------------------------------------------------------
# train --config

TINY = ["--model", "hybridhash_cpu", "--model-overrides", '{"depths": [1, 1, 1]}', "--epochs", "2",
        "--eval-every", "1", "--batch-size", "16", "--bits", "8", "--no-progress", "--threads", "1",
        "--parallel", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """A tiny training run on the digits, made by the command line: (run directory, its run.json)."""
    run = tmp_path_factory.mktemp("config") / "first"
    assert cli.main(["train", "--out", str(run), "--seed", "3", *TINY]) == 0
    return run, read_json(run / "run.json")


def summary_results(run) -> dict:
    return {b: {k: r[k] for k in ("epochs", "best_epoch", "best_metric")}
            for b, r in read_json(run / "summary.json")["results"].items()}


@pytest.mark.usefixtures("one_thread")
def test_a_recorded_run_runs_again_from_its_run_json(recorded_run, tmp_path, capsys):
    first, record = recorded_run
    again = tmp_path / "again"
    rc, _, err = run_cli(["train", "--config", first / "run.json", "--out", again], capsys)
    assert rc == 0, err
    second = read_json(again / "run.json")
    assert second["config"] == {**record["config"], "out": str(again)}
    assert second["config"]["seed"] == 3 and second["config"]["epochs"] == 2  # not the defaults
    assert second["protocol"] == record["protocol"]
    # on a CPU with one thread training is deterministic: the same epochs, the same selection and mAP
    assert summary_results(again) == summary_results(first)


@pytest.mark.usefixtures("one_thread")
def test_the_command_line_overrides_the_recorded_options(recorded_run, tmp_path, capsys):
    first, record = recorded_run
    again = tmp_path / "again"
    rc, _, err = run_cli(["train", "--out", again, "--epochs", "1", "--config", first], capsys)  # a run directory
    assert rc == 0, err
    config = read_json(again / "run.json")["config"]
    assert config["epochs"] == 1
    assert {k: v for k, v in config.items() if k not in ("epochs", "out")} == \
        {k: v for k, v in record["config"].items() if k not in ("epochs", "out")}


def test_the_recorded_run_directory_is_not_run_into_again(recorded_run, capsys):
    first, _ = recorded_run
    before = snapshot(first)
    rc, _, err = run_cli(["train", "--config", first], capsys)
    assert rc == 1 and one_error_line(err).startswith(f"{first} already holds a run")
    assert snapshot(first) == before


def _bad_record(tmp_path, record) -> str:
    path = tmp_path / "run.json"
    path.write_text(record if isinstance(record, str) else json.dumps(record))
    return str(path)


@pytest.mark.parametrize("record, message", [
    ("{not json", "--config {path}: not JSON; name the run.json of a training run, or its directory"),
    ("[" * 100000 + "]" * 100000, "--config {path}: JSON nested too deeply to read; is this the right file?"),
    ([1, 2], "--config {path}: not the run.json of a hybridhash training run; name the run.json of a training "
             "run, or its directory"),
    ({"config": {"epochs": 1}}, "--config {path}: not the run.json of a hybridhash training run; name the "
                                "run.json of a training run, or its directory"),
    ({"hybridhash": "0", "config": {"epochs": "ten"}},
     "--config {path}: --epochs must be an integer from 1 to 4294967295, got 'ten'"),
    ({"hybridhash": "0", "config": {"bits": [12]}},
     "--config {path}: --bits must be a multiple of 8 between 8 and 256, got 12"),
    ({"hybridhash": "0", "config": {"bits": 16}}, "--config {path}: --bits must be a list of values, got 16"),
    ({"hybridhash": "0", "config": {"lr": float("nan")}}, "--config {path}: --lr must be a finite number > 0, got nan"),
    ({"hybridhash": "0", "config": {"optimizer": "lbfgs"}},
     "--config {path}: --optimizer must be one of rmsprop, adamw, adam, sgd, got 'lbfgs'"),
    ({"hybridhash": "0", "config": {"model_overrides": [1]}},
     "--config {path}: --model-overrides must be a JSON object, got [1]"),
    ({"hybridhash": "0", "config": {"resume": "yes"}}, None),  # not repeated: ignored
    ({"hybridhash": "0", "config": {"amp": 1}}, "--config {path}: --amp must be true or false, got 1"),
    ({"hybridhash": "0", "config": {"rm_rf": True}}, "--config {path}: unknown option 'rm_rf'; is this the right "
                                                     "file?"),
])
def test_a_foreign_or_corrupt_record_is_one_line_and_nothing_is_written(tmp_path, capsys, record, message):
    path = _bad_record(tmp_path, record)
    out = tmp_path / "run"
    if message is None:  # the record passes; stop where training would begin
        argv = ["train", "--config", path, "--out", out, "--epochs", "0"]
        message = "--epochs must be an integer from 1 to 4294967295, got 0"
    else:
        argv = ["train", "--config", path, "--out", out]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 1 and one_error_line(err) == message.format(path=path)
    assert not out.exists()


def test_a_missing_record_or_a_directory_without_one_is_one_line(tmp_path, capsys):
    rc, _, err = run_cli(["train", "--config", tmp_path / "nope.json"], capsys)
    assert rc == 1 and one_error_line(err) == (f"--config {tmp_path / 'nope.json'}: no such file; name the run.json "
                                               f"of a training run, or its directory")
    rc, _, err = run_cli(["train", "--config", tmp_path], capsys)
    assert rc == 1 and one_error_line(err).startswith(f"--config {tmp_path / 'run.json'}: no such file")


def test_a_record_of_before_the_progress_switch_is_read(tmp_path):
    from hybridhash.app.commands.train import recorded_options

    path = _bad_record(tmp_path, {"hybridhash": "0", "config": {"quiet": True, "epochs": 3}})
    assert recorded_options(path) == {"progress": False, "epochs": 3}
    with pytest.raises(ConfigError, match="not the run.json"):
        recorded_options(_bad_record(tmp_path, {"hybridhash": "0", "config": None}))


def test_a_record_of_before_amp_could_be_unset_chooses_again(tmp_path):
    from hybridhash.app.commands.train import recorded_options

    # the recipe's amp true of an older record meant "where the device has bf16": now left unset
    old = {"hybridhash": "0", "config": {"amp": True, "epochs": 3}}
    assert recorded_options(_bad_record(tmp_path, old)) == {"amp": None, "epochs": 3}
    # a record that says which precision it chose gave amp as it reads
    for amp in (True, False, None):
        new = {"hybridhash": "0", "precision": {"name": "fp32"}, "config": {"amp": amp}}
        assert recorded_options(_bad_record(tmp_path, new)) == {"amp": amp}


@pytest.mark.parametrize("given, amp", [([], None), (["--amp"], True), (["--no-amp"], False)])
def test_amp_is_a_three_way_switch(given, amp):
    from hybridhash.app.commands.train import config_from_args

    args = cli.build_parser().parse_args(["train", *given])
    assert config_from_args(args).amp is amp


def test_config_without_a_file_is_a_usage_error_and_an_abbreviation_still_reads_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--config"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == "hybridhash train: error: argument --config: expected one argument"
    path = _bad_record(tmp_path, {"hybridhash": "0", "config": {"epochs": "ten"}})
    rc, _, err = run_cli(["train", "--conf", path, "--out", tmp_path / "run"], capsys)  # argparse's own prefixes
    assert rc == 1 and one_error_line(err) == f"--config {path}: --epochs must be an integer from 1 to 4294967295, got 'ten'"


# --------------------------------------------------------------------------------------------
# --max-pixels acts where images are decoded

@pytest.fixture
def six_pixel_folder(tmp_path):
    """Two classes of four 6 x 6 images (36 pixels each)."""
    from tests.helpers.fakes import write_folder

    write_folder(tmp_path / "photos", {"cat": 4, "dog": 4})
    return tmp_path / "photos"


def test_data_check_decodes_under_max_pixels(six_pixel_folder, capsys):
    argv = ["data", "check", f"folder:{six_pixel_folder}", "--verify-images", "--no-progress"]
    rc, out, _ = run_cli([*argv, "--max-pixels", "36"], capsys)
    assert rc == 0 and out.splitlines()[-1] == "OK"
    rc, out, _ = run_cli([*argv, "--max-pixels", "35"], capsys)
    assert rc == 1 and out.count("6x6 = 36 pixels is over the limit of 35") == 8


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_training_and_evaluation_decode_under_max_pixels(six_pixel_folder, tmp_path, capsys, command):
    import hybridhash

    if command == "train":
        argv = ["train", *TINY, "--out", tmp_path / "run"]
    else:
        ckpt = tmp_path / "ckpt"
        hybridhash.create_model("hybridhash_cpu", bits=8, depths=(1, 1, 1)).save_pretrained(str(ckpt))
        argv = ["evaluate", "--checkpoint", ckpt, "--device", "cpu", "--queries", "1", "--out", tmp_path / "eval"]
    argv += ["--dataset", f"folder:{six_pixel_folder}", "--max-pixels", "35"]
    rc, _, err = run_cli(argv, capsys)
    assert rc == 1 and one_error_line(err).endswith("6x6 = 36 pixels is over the limit of 35"), err
