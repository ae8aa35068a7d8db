"""The layout of a training run's directory, one home for its file names, swaps and logs.

    RUN/split.json        the protocol's split (shared by every code length)
    RUN/run.json          the resolved options, versions, world size
    RUN/summary.json      what each code length left behind
    RUN/bits{N}/log.jsonl one JSON line per epoch
    RUN/bits{N}/last/     model + training_state.safetensors (what --resume continues from)
    RUN/bits{N}/best/     the model selected on the validation split (or the queries)

Checkpoint directories are written beside their place and swapped in whole, so a crash never
leaves one half-written. Used by training and by evaluation; imports nothing heavy.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ..errors import CheckpointError

from ..fileio import loads_json

SPLIT_NAME = "split.json"
RUN_NAME = "run.json"
SUMMARY_NAME = "summary.json"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"  # inside a checkpoint directory
BEST, LAST = "best", "last"


def bits_dir(run_dir: os.PathLike, bits: int) -> Path:
    return Path(run_dir) / f"bits{bits}"


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the complete directory ``tmp`` at ``final``; ``final`` is never half-written.

    A crash between the two renames leaves ``.{name}.old`` beside it, which :func:`resolve_ckpt_dir`
    picks up.
    """
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def resolve_ckpt_dir(path: Path) -> Optional[Path]:
    """``path`` if it is a complete checkpoint directory, else the one a crash mid-swap left."""
    if path.is_dir():
        return path
    old = path.with_name(f".{path.name}.old")
    return old if old.is_dir() else None


def fresh_tmp(final: Path) -> Path:
    """An empty directory beside ``final`` to write its next version into."""
    tmp = final.with_name(f".{final.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


@contextmanager
def saving(final: Path) -> Iterator[Path]:
    """Yield an empty directory to write the next version of checkpoint directory ``final`` into, and
    swap it in when the block ends. On a failed write the partial directory is removed and the
    previous ``final`` stays as it was; a full disk becomes one line naming ``final``."""
    tmp = fresh_tmp(final)
    try:
        yield tmp
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {final.name}/ is kept" if resolve_ckpt_dir(final) else f"no {final.name}/ was saved"
            raise CheckpointError(f"no space left on device while saving {final}: free space and continue with "
                                  f"--resume; {kept}") from None
        raise  # another failure names its own file
    replace_dir(tmp, final)


def pick_checkpoint(bits_directory: Path) -> Optional[Path]:
    """``best/`` of a code length's directory, else ``last/``, else None."""
    for name in (BEST, LAST):
        if (bits_directory / name / CONFIG_NAME).is_file():
            return bits_directory / name
    return None


def held_run(run_dir: Path) -> List[str]:
    """What in ``run_dir`` says it holds a run: its ``run.json``, ``summary.json``, ``bits{N}`` with a
    saved epoch."""
    names = [n for n in (RUN_NAME, SUMMARY_NAME) if (run_dir / n).exists()]
    if run_dir.is_dir():
        names += sorted(d.name for d in run_dir.glob("bits*") if resolve_ckpt_dir(d / LAST) is not None)
    return names


def load_run_protocol(config, run_dir: Path):
    """The protocol of a run with options ``config`` (a ``TrainConfig``): from its ``split.json`` when
    there is one (resume), else drawn anew."""
    from ..data import load_protocol

    split = run_dir / SPLIT_NAME
    kw = dict(root=config.root, image_root=config.image_root, download=config.download, max_pixels=config.max_pixels)
    if split.exists():
        return load_protocol(config.dataset, split_file=str(split), **kw)
    return load_protocol(config.dataset, seed=config.seed, val_fraction=config.val_fraction, **kw)


def is_run_dir(directory: Path) -> bool:
    """True for a run directory training wrote (its ``run.json`` records the options), marked or not."""
    from ..fileio import read_json

    try:
        record = read_json(Path(directory) / RUN_NAME)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(record, dict) and isinstance(record.get("config"), dict) and "hybridhash" in record


def find_run_dir(checkpoint: Path) -> Optional[Path]:
    """The run directory (holding ``split.json``) a checkpoint lies in, if any."""
    for d in [checkpoint, *checkpoint.parents][:4]:
        if (d / SPLIT_NAME).is_file():
            return d
    return None


# --------------------------------------------------------------------------------------------
# the per-epoch log

def read_log(directory: Path) -> List[Dict[str, Any]]:
    """The records of ``directory/log.jsonl``, skipping a line cut by a crash."""
    path = Path(directory) / LOG_NAME
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(loads_json(line, str(path)))
        except ValueError:
            pass
    return out


def trim_log(directory: Path, epoch: int, write: bool = True) -> List[Dict[str, Any]]:
    """Keep the records of epochs up to ``epoch`` (a killed run may have logged later ones)."""
    kept = [r for r in read_log(directory) if r.get("epoch", 0) <= epoch]
    path = Path(directory) / LOG_NAME
    if write and path.exists():
        from ..fileio import write_bytes

        write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return kept


def append_log(directory: Path, record: Dict[str, Any]) -> None:
    with open(Path(directory) / LOG_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def find_checkpoints(path: "os.PathLike") -> Dict[int, Path]:
    """The checkpoints under ``path``, by code length.

    ``path`` is a run directory (its ``bits{N}/best``, else ``last``), one ``bits{N}`` directory,
    or a checkpoint directory (holding ``config.json``).
    """
    from ..models import read_config  # torch: only when a checkpoint is looked for

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run directory")

    if (path / CONFIG_NAME).is_file():
        return {int(read_config(path)["bits"]): path}
    found: Dict[int, Path] = {}
    candidates = [path] if path.name.startswith("bits") else sorted(path.glob("bits*"))
    for d in candidates:
        ck = pick_checkpoint(d)
        if ck is not None:
            found[int(read_config(ck)["bits"])] = ck
    if not found:
        raise CheckpointError(f"{path}: holds no checkpoint (no config.json, no bits*/best or bits*/last)")
    return dict(sorted(found.items()))
