"""Argument types and option builders shared by the sub-commands (no torch imported here)."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, Iterable, Optional, Union, get_args, get_origin

from hybridhash.errors import DataError
from hybridhash.fileio import loads_json


def _number(kind, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def json_object(text: str) -> dict:
    try:
        value = loads_json(text, "option value")
    except DataError:  # nested past the parser's recursion limit
        raise argparse.ArgumentTypeError("JSON nested too deeply to read; pass a JSON object such as "
                                         "'{\"name\": 1}'") from None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"name\": 1}}', got {text!r}")
    return value


_PARSERS = {"json_object": json_object}


def _base_type(annotation: Any) -> Any:
    """int for ``Optional[int]``, ``Tuple[int, ...]`` and ``int`` (string annotations resolved by the caller)."""
    if get_origin(annotation) is Union:
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) in (tuple, list):
        annotation = get_args(annotation)[0]
    return annotation


def add_dataclass_options(parser: argparse.ArgumentParser, cls, groups: Dict[str, str],
                          skip: Iterable[str] = ()) -> Dict[str, argparse._ArgumentGroup]:
    """One ``--option`` per field of dataclass ``cls`` whose metadata has a ``help``.

    Metadata keys: ``help``, ``group`` (one of ``groups``, in that order), ``choices``, ``nargs``,
    ``metavar``, ``parse`` (``"json_object"``; ``"tristate"`` for ``--x/--no-x`` over None),
    ``hidden``. ``groups`` maps group keys to their titles, in display order. Booleans become
    ``store_true`` flags; the field default is the option default. Returns the groups by key.
    A ``bounds`` key (the range of a number) is left to the config's own checks.
    """
    import typing

    hints = typing.get_type_hints(cls)
    made = {key: parser.add_argument_group(title) for key, title in groups.items()}
    skip = set(skip)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        if "help" not in meta or f.name in skip:
            continue
        group = made[meta.pop("group")]
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = argparse.SUPPRESS if meta.pop("hidden", False) else meta.pop("help")
        meta.pop("help", None)
        parse: Optional[str] = meta.pop("parse", None)
        meta.pop("bounds", None)  # the config checks its own ranges, with one-line errors
        kind = _base_type(hints[f.name])
        if parse == "tristate":
            both = group.add_mutually_exclusive_group()
            both.add_argument(flag, dest=f.name, action="store_true", default=default, help=help_text)
            both.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false")
            continue
        if kind is bool:
            group.add_argument(flag, action="store_true", default=default, help=help_text)
            continue
        arg_type = _PARSERS[parse] if parse else kind
        if isinstance(default, tuple):
            default = list(default)
        group.add_argument(flag, type=arg_type, default=default, help=help_text, **meta)
    return made


def dataclass_from_args(cls, args: argparse.Namespace, **override: Any):
    """An instance of ``cls`` from the options :func:`add_dataclass_options` made (plus ``override``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    for f in dataclasses.fields(cls):
        if f.name in values and isinstance(f.default, tuple) and values[f.name] is not None:
            values[f.name] = tuple(values[f.name])
    values.update(override)
    return cls(**values)


def add_runtime_option(parser: argparse.ArgumentParser) -> None:
    """``--runtime auto|torch|onnx|openvino`` (see :mod:`hybridhash.inference`)."""
    from hybridhash.inference import ONNX_NAME, RUNTIMES

    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help=f"torch: PyTorch; onnx / openvino: the checkpoint's ONNX export ({ONNX_NAME} beside "
                             f"it, written by `hybridhash export`) on onnxruntime / OpenVINO, CPU only; auto: "
                             f"openvino on a CPU when that export is there and OpenVINO is installed (the fastest "
                             f"measured), else torch")


def check_options(args: argparse.Namespace, at_least: Optional[Dict[str, int]] = None,
                  positive: Iterable[str] = ()) -> None:
    """One-line ConfigErrors for option values out of range: ``at_least`` maps option names to their
    smallest value, ``positive`` names float options that must be > 0 (None values are left alone)."""
    from hybridhash.errors import ConfigError

    for name, low in (at_least or {}).items():
        value = getattr(args, name)
        if value is not None and value < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    for name in positive:
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {value:g}")
