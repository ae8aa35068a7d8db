"""``hybridhash`` commands run in-process by the tests, and what they leave: the exit status and
output, the one line a refused command prints, and the files of a folder (to compare before and after)."""
from __future__ import annotations

import hashlib
from pathlib import Path

from hybridhash.app import cli


def run_cli(argv, capsys):
    """(exit status, stdout, stderr) of ``hybridhash ARGV`` run in-process."""
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def one_error_line(err: str) -> str:
    """The stderr of a refused command: exactly one line, ``error: ...``; returns the message."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0][len("error: "):]


def one_line_error(capsys) -> str:
    """The captured stderr of a refused command: exactly one line, ``error: ...``; returns the line."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def snapshot(directory: Path) -> dict:
    """{relative path: bytes} of every file under ``directory``."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def snapshot_digests(directory: Path) -> dict:
    """{relative path: sha256} of every file under ``directory``."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}
