"""Exceptions that carry a one-line, user-facing message naming the culprit."""


class HybridHashError(Exception):
    """Base class. ``str(err)`` is a single line fit to print as ``error: ...``."""


class ConfigError(HybridHashError, ValueError):
    """A model or run configuration that cannot work (e.g. an image size the blocks do not divide)."""


class CheckpointError(HybridHashError):
    """A weights file that is missing, unreadable, or not a checkpoint at all."""


class CheckpointMismatchError(CheckpointError):
    """A valid checkpoint of another model, preset or bit length."""


class DataError(HybridHashError):
    """A dataset, list file or image that is missing or malformed."""


class IndexMismatchError(HybridHashError):
    """A code collection or index of another bit length or another model."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message folded onto one line (at most ``limit`` characters), or its type name."""
    text = " ".join(str(err).split())
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return text or type(err).__name__
