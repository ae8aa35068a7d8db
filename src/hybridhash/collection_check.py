"""Checks a code collection passes when it is opened (:class:`~hybridhash.collection.Collection`):
every manifest field of the right type and range, and paths.txt lines that are where the offsets
say, UTF-8, and free of the characters no stored file name has. Whatever reads a collection
afterwards (the retriever, the index, the service's items and thumbnails) can trust them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from .errors import DataError

# The manifest's fields besides format, version, bits and count (checked first), each absent or null
# (an older collection, no labels, no pixel limit) or of this type; integers as (int, least value).
OPTIONAL_FIELDS: Dict[str, Any] = {
    "fingerprint": str, "checkpoint": str, "preset": str, "image_root": str, "source": str,
    "images_sha256": str, "codes_sha256": str, "created": str, "preprocess": dict, "shards": list, "files": list,
    "num_classes": (int, 0), "skipped": (int, 0), "max_pixels": (int, 1), "shard_size": (int, 1),
    "generation": (int, 0), "next_id": (int, 0), "update": dict,
}
# paths.txt is read in pieces of whole lines of about this many bytes
_PIECE = 1 << 24


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def manifest_int(mpath: Path, m: Dict[str, Any], key: str, least: int) -> int:
    """``m[key]`` when it is an integer of at least ``least`` (not a bool), else DataError naming ``mpath``."""
    value = m.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise DataError(f"{mpath}: {key} is {_shown(value)}, expected an integer of at least {least}")
    return value


def check_fields(mpath: Path, m: Dict[str, Any]) -> None:
    """DataError naming ``mpath`` and the field for a field of :data:`OPTIONAL_FIELDS` of another type
    or out of range, or a text field holding a NUL (some name files, and no file name has one)."""
    for key, kind in OPTIONAL_FIELDS.items():
        value = m.get(key)
        if value is None:
            continue
        if isinstance(kind, tuple):
            manifest_int(mpath, m, key, kind[1])
        elif not isinstance(value, kind):
            raise DataError(f"{mpath}: {key} is {_shown(value)}, expected {kind.__name__} or null; "
                            f"encode the images again")
        elif kind is str and "\0" in value:
            raise DataError(f"{mpath}: {key} holds a NUL character; encode the images again")


def check_offsets(mpath: Path, paths_file: Path, offsets_file: Path, off: np.ndarray, count: int) -> None:
    """The offsets ``off`` of ``offsets_file`` must be (count + 1,), start at 0, never decrease and end
    at the size of ``paths_file``; then the lines themselves (:func:`check_paths_file`)."""
    size = paths_file.stat().st_size
    why = None
    if off.ndim != 1 or off.shape[0] != count + 1:
        why = f"{offsets_file} has shape {tuple(off.shape)}, expected ({count + 1},)"
    elif int(off[0]) != 0 or int(off[-1]) != size:
        why = f"{offsets_file} spans bytes {int(off[0])}..{int(off[-1])} of {paths_file}, which has {size}"
    elif count and bool((np.diff(off) < 1).any()):
        why = f"{offsets_file} is not increasing"
    if why:
        raise DataError(f"{mpath}: says {count} items, but {why}; encode the images again")
    if count:
        check_paths_file(paths_file, offsets_file, np.asarray(off))


def check_ids(mpath: Path, ids_file: Path, ids: Optional[np.ndarray], count: int, next_id: int) -> None:
    """Item ids int64 (count,) must increase strictly from at least 0 and stay below the manifest's
    ``next_id`` (without ids, the rows are the ids, so ``next_id`` must be at least ``count``)."""
    if ids is None:
        if next_id < count:
            raise DataError(f"{mpath}: next_id {next_id} is below the count {count}; encode the images again")
        return
    if count and (int(ids[0]) < 0 or int(ids[-1]) >= next_id or bool((np.diff(ids) < 1).any())):
        raise DataError(f"{ids_file}: item ids are not increasing from 0 up to below next_id {next_id}; "
                        f"encode the images again with --no-resume")


def check_paths_file(paths_file: Path, offsets_file: Path, off: np.ndarray) -> None:
    """DataError naming ``paths_file`` (and the item) unless it holds exactly one line per item, each
    ending where the offsets ``off`` int64 (count + 1,) say (already known to run from 0 to the file
    size, increasing), in UTF-8, without a NUL or a carriage return: the encoder stores no such name,
    and a NUL fails every file call made with the path."""
    count = off.shape[0] - 1
    text = np.memmap(paths_file, dtype=np.uint8, mode="r")  # (size,)
    try:
        if bool((text[off[1:] - 1] != ord("\n")).any()):
            raise DataError(f"{paths_file}: a line does not end where {offsets_file} says; encode the images again")
        i = 0
        while i < count:  # items [i, j) per piece
            j = max(i + 1, int(np.searchsorted(off, off[i] + _PIECE, side="right")) - 1)
            piece = text[off[i]:off[j]].tobytes()
            if piece.count(b"\n") != j - i:
                raise DataError(f"{paths_file}: a path holds a line break; encode the images again")
            for char, name in ((b"\0", "a NUL"), (b"\r", "a carriage return")):
                if char in piece:
                    item = i + piece[:piece.index(char)].count(b"\n")
                    raise DataError(f"{paths_file}: the path of item {item} holds {name} character, which no "
                                    f"stored file name has; encode the images again")
            try:
                piece.decode("utf-8")
            except UnicodeDecodeError as err:
                item = i + piece[:err.start].count(b"\n")
                raise DataError(f"{paths_file}: the path of item {item} is not UTF-8; encode the images again") from None
            i = j
    finally:
        del text
