"""Text bound for a terminal: file names, labels and messages that may come from someone else's
files, with the characters a terminal would act on written out as escapes.

A file name may hold ESC and the other control characters: printed raw, ``ESC ] 52`` writes the
clipboard, other sequences move the cursor, retitle the window or hide what follows. Every
human-readable output of the project passes names through :func:`printable` (JSON output does not:
JSON escapes them itself, and stays exact).
"""
from __future__ import annotations

import logging
import re

# C0 and C1 controls and DEL; the bidirectional overrides and isolates, which show a name reversed
# (U+202A-U+202E, U+2066-U+2069); lone surrogates (a non-UTF-8 file name, decoded with
# surrogateescape), which a UTF-8 terminal cannot be sent at all
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    return match.group().encode("unicode_escape").decode("ascii")  # \x1b, \n, \u202e, \udcff


def printable(text: object) -> str:
    """``str(text)`` with control characters (and bidi overrides, lone surrogates) as ``\\x1b``-style
    escapes; everything else, other scripts included, as it is."""
    return _UNSAFE.sub(_escape, str(text))


class EscapingFormatter(logging.Formatter):
    """A log formatter whose lines are :func:`printable` (a logged file name cannot drive the
    terminal); a traceback that follows is left as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))
