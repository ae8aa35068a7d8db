"""The machinery of the command line's options, shared by every sub-command (no torch imported here).

- :class:`Parser`: the parser of ``hybridhash`` and of every sub-command. It checks the range of
  every number as it parses it (:func:`bounded`), and fills a command's options from a recorded
  run before the command line overrides them (:func:`add_config_option`).
- :func:`add_option`: one option under its name, with the spellings it had before still accepted
  for one release; each prints ``warning: OLD is deprecated; use NEW`` once when used.
- :func:`add_dataclass_options`: one option per field of a config dataclass.

The names themselves (``--collection``, ``--image-root``, ...) are chosen in :mod:`.vocabulary`.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import sys
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Union, get_args, get_origin

from hybridhash.configs import Bounds
from hybridhash.errors import ConfigError, DataError
from hybridhash.fileio import loads_json


# --------------------------------------------------------------------------------------------
# numbers

class Bounded:
    """An argparse ``type``: the text as an ``int`` or a ``float``, and the range the value must lie in.

    :class:`Parser` checks the range with the option's name (``--batch-size must be an integer from 1
    to 4294967295, got 0``); text that is not a number is argparse's own usage error. ``check``
    (``check(value, name)``) replaces the range check where a rule says more than a range (code
    lengths: multiples of 8).
    """

    def __init__(self, kind: type, bounds: Bounds, check: Optional[Callable[[Any, str], Any]] = None):
        if kind not in (int, float):
            raise TypeError(f"bounded numbers are int or float, not {kind!r}")
        if kind is int and bounds.high is None:
            raise ValueError("an integer option needs an upper bound")  # floats are at least finite
        self.kind, self.bounds, self._check = kind, bounds, check
        self.__name__ = kind.__name__

    def __call__(self, text: str) -> Union[int, float]:
        try:
            return self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if self.kind is int else 'a number'}, got {text!r}") from None

    def check(self, name: str, value: Any) -> None:
        """ConfigError "NAME must be ..., got VALUE" unless ``value`` is allowed."""
        if self._check is not None:
            self._check(value, name)
        else:
            self.bounds.check(name, value)

    def __repr__(self) -> str:
        return f"bounded({self.kind.__name__}: {self.bounds.describe()})"


def bounded(kind: type, low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
            high_open: bool = False, check: Optional[Callable[[Any, str], Any]] = None) -> Bounded:
    """The ``type`` of a numeric option: ``kind`` (int or float) from ``low`` to ``high`` (``*_open``:
    strict ends); every float must also be finite, every int needs a ``high``."""
    return Bounded(kind, Bounds(low, high, integer=kind is int, low_open=low_open, high_open=high_open), check)


def from_bounds(bounds: Bounds) -> Bounded:
    """The ``type`` of an option whose range is ``bounds`` (a config field's)."""
    return Bounded(int if bounds.integer else float, bounds)


def option_name(action: argparse.Action) -> str:
    """How messages call an option: its first spelling (the current one), or its dest."""
    return action.option_strings[0] if action.option_strings else action.dest


# --------------------------------------------------------------------------------------------
# the parser

class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that checks every :class:`Bounded` number as it is parsed (a
    ConfigError naming the option, printed as one line), and fills the options of a parser that
    has :func:`add_config_option` from the file ``--config`` names before parsing the command line,
    so that what the command line gives overrides the file. Sub-parsers are of the same class."""

    config_loader: Optional[Callable[[str, "Parser"], Dict[str, Any]]] = None

    def _get_value(self, action, arg_string):
        value = super()._get_value(action, arg_string)
        if isinstance(action.type, Bounded):
            action.type.check(option_name(action), value)
        return value

    def parse_known_args(self, args=None, namespace=None):
        if self.config_loader is not None and namespace is None:
            first = argparse.ArgumentParser(prog=self.prog, add_help=False, exit_on_error=False)
            first.add_argument("--config")
            try:
                found, _ = first.parse_known_args(sys.argv[1:] if args is None else args)
            except argparse.ArgumentError:  # e.g. --config without a file: the parser below says so
                found = argparse.Namespace(config=None)
            if found.config is not None:
                namespace = argparse.Namespace(**self.config_loader(found.config, self))
        return super().parse_known_args(args, namespace)

    def error(self, message):
        # argparse calls an option by all its spellings ("argument --collection/--out: ..."): the
        # current one only
        for action in self._actions:
            current = current_spellings(action)
            if current and len(current) < len(action.option_strings):
                message = message.replace("/".join(action.option_strings), current[0])
        super().error(message)


def current_spellings(action: argparse.Action) -> list:
    """The option strings of ``action`` that are not deprecated."""
    old = getattr(action, "deprecated", None) or {}
    return [s for s in action.option_strings if s not in old]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option under its current spellings (the deprecated ones are named in its help)."""

    def _format_action_invocation(self, action):
        if getattr(action, "deprecated", None):
            action = copy.copy(action)
            action.option_strings = current_spellings(action)
        return super()._format_action_invocation(action)


# --------------------------------------------------------------------------------------------
# names and their deprecated spellings

def warn_deprecated(old: str, new: str) -> None:
    print(f"warning: {old} is deprecated; use {new}", file=sys.stderr)


@functools.lru_cache(maxsize=None)
def _deprecating(base: type) -> type:
    """``base`` (an argparse action class) that warns when called through one of its ``deprecated`` spellings."""

    class Deprecating(base):
        deprecated: Dict[str, str] = {}

        def __call__(self, parser, namespace, values, option_string=None):
            if option_string in self.deprecated:
                warn_deprecated(option_string, self.deprecated[option_string])
            super().__call__(parser, namespace, values, option_string)

    Deprecating.__name__ = f"Deprecating{base.__name__}"
    return Deprecating


def add_option(parser, new: str, *old: str, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(new, **kwargs)`` that also answers to the ``old`` spellings, each printing
    ``warning: OLD is deprecated; use NEW``. Returns the action (``action.deprecated`` maps the old
    spellings to ``new``)."""
    if not old:
        return parser.add_argument(new, **kwargs)
    base = parser._registry_get("action", kwargs.get("action"), kwargs.get("action"))
    if isinstance(base, str):
        raise ValueError(f"unknown argparse action {base!r}")
    help_text = kwargs.get("help")
    if help_text not in (None, argparse.SUPPRESS):
        kwargs["help"] = f"{help_text} (formerly {', '.join(old)})"
    action = parser.add_argument(new, *old, **{**kwargs, "action": _deprecating(base)})
    action.deprecated = {o: new for o in old}
    return action


def add_deprecated_flag(parser, old: str, use: str, dest: str, value: Any) -> argparse.Action:
    """A flag ``old`` that sets ``dest`` to ``value``, as ``use`` (another option's spelling) does now,
    with the deprecation warning; hidden from ``--help`` (e.g. ``--quiet`` for ``--no-progress``)."""
    action = parser.add_argument(old, dest=dest, action=_deprecating(argparse._StoreConstAction), const=value,
                                 default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    action.deprecated = {old: use}
    return action


# --------------------------------------------------------------------------------------------
# JSON values and config dataclasses

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


def _base_type(annotation: Any) -> Any:
    """int for ``Optional[int]``, ``Tuple[int, ...]`` and ``int`` (string annotations resolved by the caller)."""
    if get_origin(annotation) is Union:
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) in (tuple, list):
        annotation = get_args(annotation)[0]
    return annotation


def add_dataclass_options(parser: argparse.ArgumentParser, cls, groups: Dict[str, str],
                          skip: Iterable[str] = (), types: Optional[Mapping[str, Any]] = None,
                          ) -> Dict[str, argparse._ArgumentGroup]:
    """One option per field of dataclass ``cls`` whose metadata has a ``help``; its dest is the field name.

    Metadata keys: ``help``, ``group`` (one of ``groups``, in that order), ``choices``, ``nargs``,
    ``metavar``, ``parse`` (``"json_object"``; ``"progress"`` or ``"tristate"`` for ``--x/--no-x``),
    ``hidden``, ``bounds`` (the range of a number: the option's :func:`from_bounds` type), ``flag``
    (the option's name when it is not the field's) and ``old`` (deprecated spellings, see
    :func:`add_option`). ``types`` maps field names to the argparse type to use instead (e.g. code
    lengths). Booleans become ``store_true`` flags; the field default is the option default.
    Returns the groups by key.
    """
    import typing

    hints = typing.get_type_hints(cls)
    made = {key: parser.add_argument_group(title) for key, title in groups.items()}
    skip, types = set(skip), dict(types or {})
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        if "help" not in meta or f.name in skip:
            continue
        group = made[meta.pop("group")]
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        old = tuple(meta.pop("old", ()))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        hidden = meta.pop("hidden", False)
        help_text = argparse.SUPPRESS if hidden else meta.pop("help")
        meta.pop("help", None)
        parse: Optional[str] = meta.pop("parse", None)
        bounds: Optional[Bounds] = meta.pop("bounds", None)
        kind = _base_type(hints[f.name])
        if parse in ("progress", "tristate"):  # --x / --no-x; a tristate's unset default (None) means "choose"
            add_option(group, flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                       help=help_text)
            for spelling in old:
                add_deprecated_flag(group, spelling, "--no-" + flag[2:], f.name, False)
            continue
        if kind is bool:
            add_option(group, flag, *old, dest=f.name, action="store_true", default=default, help=help_text)
            continue
        if f.name in types:
            arg_type = types[f.name]
        elif parse == "json_object":
            arg_type = json_object
        elif bounds is not None:
            arg_type = from_bounds(bounds)
        elif kind in (int, float):
            raise TypeError(f"{cls.__name__}.{f.name} is a number without bounds")
        else:
            arg_type = kind
        if isinstance(default, tuple):
            default = list(default)
        add_option(group, flag, *old, dest=f.name, type=arg_type, default=default, help=help_text, **meta)
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
    """``--runtime auto|torch|onnx|openvino`` (see :mod:`hybridhash.engines`)."""
    from hybridhash.engines import ONNX_NAME, RUNTIMES

    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help=f"torch: PyTorch; onnx / openvino: the checkpoint's ONNX export ({ONNX_NAME} beside "
                             f"it, written by `hybridhash export`) on onnxruntime / OpenVINO, CPU only; auto: "
                             f"openvino on a CPU when that export is there and OpenVINO is installed (the fastest "
                             f"measured), else torch")


def add_precision_option(parser: argparse.ArgumentParser, help: str) -> None:
    """``--precision fp32|bf16|int8|auto`` (see :mod:`hybridhash.precision`); ``help`` says what auto does here."""
    from hybridhash.precision import AGREEMENT_THRESHOLD, PRECISION_CHOICES

    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help=f"numeric precision of the model: fp32; bf16 (autocast on PyTorch, the inference hint "
                             f"on OpenVINO; fast only with bf16 units); int8 (the quantized export on onnxruntime "
                             f"or OpenVINO); auto: {help} (calibrated bit agreement >= {AGREEMENT_THRESHOLD})")


# --------------------------------------------------------------------------------------------
# options read from a recorded run

def add_config_option(parser: Parser, load: Callable[[str], Dict[str, Any]], help: str) -> None:
    """``--config FILE``: the options ``load(FILE)`` returns ({dest: value}) fill the parser's options,
    and the command line overrides them. Each value is checked as the option would check it."""
    parser.add_argument("--config", metavar="FILE", default=None, help=help)

    def loader(path: str, p: Parser) -> Dict[str, Any]:
        return recorded_values(p, load(path), f"--config {path}")

    parser.config_loader = loader


def recorded_values(parser: argparse.ArgumentParser, values: Mapping[str, Any], source: str) -> Dict[str, Any]:
    """``values`` ({dest: value}, e.g. from a JSON file) checked against the options of ``parser``:
    an unknown name, a wrong type or a number out of range is a one-line ConfigError naming ``source``."""
    actions = {a.dest: a for a in parser._actions
               if a.option_strings and a.default is not argparse.SUPPRESS and a.dest != "config"}
    out = {}
    for dest, value in values.items():
        action = actions.get(dest)
        if action is None:
            raise ConfigError(f"{source}: unknown option {dest!r}; is this the right file?")
        try:
            _check_recorded(action, value)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}") from None
        out[dest] = list(value) if isinstance(value, tuple) else value
    return out


def _check_recorded(action: argparse.Action, value: Any) -> None:
    """ConfigError unless ``value`` is one that parsing ``action``'s option could have given."""
    name = option_name(action)
    if value is None and action.default is None:
        return
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):  # flags
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return
    items = value if action.nargs in ("+", "*") else [value]
    if action.nargs in ("+", "*") and not (isinstance(value, list) and (value or action.nargs == "*")):
        raise ConfigError(f"{name} must be a list of values, got {value!r}")
    for item in items:
        if isinstance(action.type, Bounded):
            action.type.check(name, item)
        elif action.type is json_object:
            if not isinstance(item, dict):
                raise ConfigError(f"{name} must be a JSON object, got {item!r}")
        elif not isinstance(item, str):
            raise ConfigError(f"{name} must be text, got {item!r}")
        if action.choices is not None and item not in action.choices:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, action.choices))}, got {item!r}")
