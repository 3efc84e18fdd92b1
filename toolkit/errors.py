"""Exceptions a user sees. Each carries the exit code of the command line."""

from __future__ import annotations

import difflib
import reprlib
from typing import Any, Iterable

#: the most characters of a value (or key, or file name) an error message quotes: a message is one
#: line that a person reads, whatever the input (a 100 MB string, a list expanded by YAML aliases)
QUOTE_LIMIT = 300


class ToolkitError(Exception):
    """A failure with a message meant for the user (exit code 1: runtime failure)."""

    exit_code = 1


class UsageError(ToolkitError):
    """Bad usage or bad input: wrong config, unknown component (exit code 2)."""

    exit_code = 2


class ConfigError(UsageError):
    """A config value that is missing, unknown, of the wrong type or out of range."""

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key, self.message = source, key, message
        source, key = shortened(source), shortened(key)
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")


class UnknownComponentError(UsageError):
    """A name that no loaded plugin registered for that kind."""

    def __init__(self, kind: str, name: str, available: Iterable[str]):
        self.kind, self.name = kind, name
        self.available = sorted(available)
        super().__init__(f"unknown {kind} {quoted(name)}{did_you_mean(name, self.available)}; "
                         f"available: {', '.join(self.available) or '(none)'}")


class ComponentClashError(UsageError):
    """Two plugins registered the same name for the same kind."""


class BackendUnavailableError(ToolkitError):
    """A component does not implement the requested backend, or its framework is absent."""

    exit_code = 2


class DivergenceError(ToolkitError):
    """Training produced a non-finite loss or gradient."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def shortened(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` on one line (control characters escaped) and at most ``limit`` characters, an
    ellipsis ending a text that was cut."""
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit + 1])
    return escaped if len(escaped) <= limit else escaped[:limit - 3] + "..."


_REPR = reprlib.Repr()
# generous for what configs hold (a list of 40 decays is quoted whole), while a deep or huge value
# costs no more than the limit: reprlib stops at these counts without visiting the rest
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 6, QUOTE_LIMIT, QUOTE_LIMIT, QUOTE_LIMIT
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 40


def quoted(value: Any) -> str:
    """``repr(value)`` for an error message, :func:`shortened`; a long string or container is not
    rendered whole first."""
    return shortened(_REPR.repr(value))
