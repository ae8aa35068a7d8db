"""The ``hybridhash`` command: one sub-command per module in :mod:`hybridhash.app.commands`.

Each command module exposes ``HELP`` (one line), ``configure(parser)`` and ``run(args) -> int``.
``main(argv)`` runs in-process, so tests drive the whole CLI without a subprocess.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import HybridHashError
from ..terminal import EscapingFormatter, printable
from .commands.options import HelpFormatter, Parser

# (sub-command, module under hybridhash.app.commands)
COMMANDS = [
    ("models", "models"),
    ("methods", "methods"),
    ("data", "data"),
    ("train", "train"),
    ("evaluate", "evaluate"),
    ("compare", "compare"),
    ("encode", "encode"),
    ("export", "export"),
    ("index", "index"),
    ("search", "search"),
    ("serve", "serve"),
    ("demo", "demo"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hybridhash",
        description="Deep-hashing image retrieval with HybridHash: train, evaluate, encode, index, search, serve.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS:
        try:
            module = importlib.import_module(f"hybridhash.app.commands.{module_name}")
        except ModuleNotFoundError as err:
            if err.name == f"hybridhash.app.commands.{module_name}":
                continue  # command not available in this build
            raise
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP),
                           formatter_class=HelpFormatter)
        module.configure(p)
        p.set_defaults(_run=module.run)
    return parser


def _error_line(err: BaseException) -> str:
    """The one line a refused command prints for ``err``."""
    if isinstance(err, HybridHashError):
        return f"error: {printable(err)}"
    reason = err.strerror or str(err) or type(err).__name__  # the system's own reason and the file
    return printable(f"error: {reason}: {err.filename}" if err.filename else f"error: {reason}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:  # a number out of range, or a --config file that cannot be used, is one line too
        args = parser.parse_args(argv)
    except (HybridHashError, OSError) as err:
        print(_error_line(err), file=sys.stderr)
        return 1
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (HybridHashError, OSError) as err:
        print(_error_line(err), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
