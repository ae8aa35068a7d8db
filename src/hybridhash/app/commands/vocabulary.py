"""The command line's vocabulary: one name for one thing in every command.

=====================  ===============================================================================
``--collection DIR``   a code collection (written by ``encode``, read by ``index``, ``search``, ``serve``)
``--image-root DIR``   the folder the relative image paths of a list file or collection start from
``--data-root DIR``    a dataset's folder (CIFAR-10's batches, list files, class folders)
``--progress``         progress bars and per-epoch lines (``--no-progress``: none)
``--workers N``        data-loading *processes*
``--threads N``        *threads* (torch's CPU threads, or decoding threads)
``--max-pixels N``     the largest image (width * height) decoded
``--out``              what a command writes: a run, an evaluation, an export (never a collection)
=====================  ===============================================================================

The spellings these replaced (``encode --out``, ``index --codes``, ``search/serve --index``,
``--root``, ``--quiet``, ``data check --workers`` for threads) are accepted for one release with a
deprecation line. Every number has a range (:mod:`hybridhash.configs`); ``tests/app/test_cli_vocabulary.py``
checks all of it on every command's parser.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional

from hybridhash.codes import MAX_BITS, MIN_BITS, check_bits
from hybridhash.configs import COUNT, NONNEGATIVE_INT, PIXELS, THREADS, WORKERS, Bounds
from hybridhash.limits import MAX_PIXELS

from .options import Bounded, add_deprecated_flag, add_option, from_bounds

IMAGE_ROOT_HELP = "the folder a list file's relative image paths start from"
DATA_ROOT_HELP = "the dataset's folder: CIFAR-10's batches, the list files, or the class folders (not needed for digits)"
PROGRESS_HELP = "show progress bars (on a terminal)"


def code_length() -> Bounded:
    """The ``type`` of ``--bits``: a multiple of 8 from 8 to 256."""
    return Bounded(int, Bounds(MIN_BITS, MAX_BITS, integer=True), check=check_bits)


def add_collection(parser, *old: str, help: str, required: bool = True) -> argparse.Action:
    """``--collection DIR`` (``old``: the spellings this command used before)."""
    return add_option(parser, "--collection", *old, required=required, metavar="DIR", help=help)


def add_image_root(parser, help: str = IMAGE_ROOT_HELP, default: Optional[str] = None,
                   old: tuple = ()) -> argparse.Action:
    return add_option(parser, "--image-root", *old, default=default, metavar="DIR", help=help)


def add_data_root(parser, help: str = DATA_ROOT_HELP) -> argparse.Action:
    """``--data-root DIR`` into ``args.root`` (the name :func:`hybridhash.data.load_protocol` gives it)."""
    return add_option(parser, "--data-root", "--root", dest="root", default=None, metavar="DIR", help=help)


def add_progress(parser, help: str = PROGRESS_HELP, quiet: bool = False) -> argparse.Action:
    """``--progress/--no-progress`` (default on) into ``args.progress``; ``quiet``: the command had
    ``--quiet``, which still works as ``--no-progress``."""
    action = parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help=help)
    if quiet:
        add_deprecated_flag(parser, "--quiet", "--no-progress", "progress", False)
    return action


def add_workers(parser, default: int, help: str = "data-loading processes (0: load in the main process)",
                ) -> argparse.Action:
    return add_option(parser, "--workers", type=from_bounds(WORKERS), default=default, metavar="N", help=help)


def add_threads(parser, *old: str, default: Optional[int] = None, help: str = "torch CPU threads (per process)",
                ) -> argparse.Action:
    return add_option(parser, "--threads", *old, type=from_bounds(THREADS), default=default, metavar="N", help=help)


def add_max_pixels(parser, help: str) -> argparse.Action:
    return add_option(parser, "--max-pixels", type=from_bounds(PIXELS), default=MAX_PIXELS, metavar="N", help=help)


def add_batch_size(parser, default: Any, help: str) -> argparse.Action:
    return add_option(parser, "--batch-size", type=from_bounds(COUNT), default=default, metavar="N", help=help)


def add_seed(parser, help: str, default: int = 0) -> argparse.Action:
    return add_option(parser, "--seed", type=from_bounds(NONNEGATIVE_INT), default=default, help=help)
