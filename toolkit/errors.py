"""Exceptions a user sees. Each carries the exit code of the command line."""

from __future__ import annotations

import difflib
from typing import Iterable


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
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")


class UnknownComponentError(UsageError):
    """A name that no loaded plugin registered for that kind."""

    def __init__(self, kind: str, name: str, available: Iterable[str]):
        self.kind, self.name = kind, name
        self.available = sorted(available)
        super().__init__(f"unknown {kind} {name!r}{did_you_mean(name, self.available)}; "
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
