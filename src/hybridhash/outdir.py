"""Output directories the project owns, so that it never overwrites or deletes someone else's files.

A command writes into a directory only when the directory is new, empty, or carries the project's
marker ``DIR/.hybridhash-output.json`` of the same kind ("train", "evaluation", "compare", "demo",
"data export"). :func:`claim` checks this and writes the marker; anything else is refused in one
line. Directories written before the marker existed are recognised by a test the caller passes
(``legacy``: e.g. a run directory's ``run.json``) and marked on the spot.

The marker also lists the entries a command made at the top of the directory (:func:`note_made`,
recorded before they are written), so that a later run removes exactly those
(:func:`remove_made`) and nothing a person put beside them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

from .errors import DataError
from .fileio import read_json, write_json
from .locking import LOCK_NAME

MARKER = ".hybridhash-output.json"
FORMAT = "hybridhash-output"
VERSION = 1

PathLike = Union[str, os.PathLike]


def read_marker(directory: PathLike) -> Optional[Dict[str, Any]]:
    """The marker of ``directory`` if the project wrote one there, else None."""
    path = Path(directory) / MARKER
    if not path.is_file() or path.is_symlink():
        return None
    try:
        m = read_json(path)
    except (OSError, ValueError, UnicodeDecodeError, DataError):
        return None
    return m if isinstance(m, dict) and m.get("format") == FORMAT and isinstance(m.get("kind"), str) else None


def _own_entry(name: str) -> bool:
    """Entries the project itself may leave in a directory it is about to claim: the writer's lock and
    the marker's temporary file (another rank may be writing the marker this moment)."""
    return name == LOCK_NAME or (name.startswith(f".{MARKER}.") and name.endswith(".tmp"))


def is_empty(directory: PathLike) -> bool:
    """True when ``directory`` holds nothing but the project's own lock or marker leftovers."""
    return all(_own_entry(e.name) for e in os.scandir(directory))


def check_claim(directory: PathLike, kind: str, *, legacy: Optional[Callable[[Path], bool]] = None,
                option: str = "--out") -> Optional[Dict[str, Any]]:
    """Refuse (DataError) unless ``directory`` may be written as a ``kind`` output; writes nothing.

    Returns the directory's marker, or None where there is none yet (new, empty or ``legacy``).
    """
    directory = Path(directory)
    if not directory.exists():
        return None
    if not directory.is_dir():
        raise DataError(f"{option} {directory} exists and is not a directory; choose a new directory")
    marker = read_marker(directory)
    if marker is not None:
        if marker["kind"] != kind:
            raise DataError(f"{option} {directory} holds hybridhash {marker['kind']} output, not {kind} output; "
                            f"choose another directory")
        return marker
    if is_empty(directory) or (legacy is not None and legacy(directory)):
        return None
    raise DataError(f"{option} {directory} is not empty and is not a hybridhash {kind} directory (no {MARKER}); "
                    f"choose an empty or new directory")


def claim(directory: PathLike, kind: str, *, legacy: Optional[Callable[[Path], bool]] = None,
          option: str = "--out") -> Dict[str, Any]:
    """Make ``directory`` (created if missing) a ``kind`` output of the project, or refuse in one line.

    New, empty (but for the project's lock), already marked as ``kind``, or recognised by
    ``legacy(directory)`` as written by an earlier version: marked and returned. Anything else:
    DataError naming the directory, and nothing is written.
    """
    directory = Path(directory)
    marker = check_claim(directory, kind, legacy=legacy, option=option)
    if marker is None:
        directory.mkdir(parents=True, exist_ok=True)
        marker = {"format": FORMAT, "version": VERSION, "kind": kind, "made": []}
        write_json(directory / MARKER, marker)
    return marker


def note_made(directory: PathLike, names: Iterable[str]) -> None:
    """Record that the project is about to create ``names`` (entries of ``directory`` that do not exist
    yet), so that :func:`remove_made` may remove them later. Call it before writing them."""
    directory = Path(directory)
    marker = read_marker(directory)
    if marker is None:
        raise DataError(f"{directory}: not claimed as a hybridhash output directory")
    made = _made(marker)
    made += [n for n in names if n not in made]
    write_json(directory / MARKER, {**marker, "made": made})


def _made(marker: Dict[str, Any]) -> List[str]:
    made = marker.get("made")
    return [n for n in made if isinstance(n, str)] if isinstance(made, list) else []


def _safe_name(name: Any) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..", MARKER, LOCK_NAME) and "/" not in name \
        and "\\" not in name and "\0" not in name


def remove_made(directory: PathLike, names: Iterable[str]) -> List[str]:
    """Remove those of ``names`` (the entries the command can make) that the marker of ``directory``
    says the project made; a name the marker lists beyond ``names`` is ignored (a hand-edited marker
    cannot name anything else) and a symbolic link put in place of one is left alone. Returns the
    names removed."""
    directory = Path(directory)
    marker = read_marker(directory)
    if marker is None:
        return []
    removed = []
    allowed = {n for n in names if _safe_name(n)}
    for name in [n for n in _made(marker) if n in allowed]:
        path = directory / name
        if path.is_symlink() or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(name)
    write_json(directory / MARKER, {**marker, "made": [n for n in _made(marker) if n not in removed]})
    return removed
