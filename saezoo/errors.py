"""Errors a user can cause, and errors a run can end with.

The CLI turns a :class:`UsageError` into one line on stderr and exit code 2, and a
:class:`TrainingDiverged` into its message and exit code 3; nothing else is caught, so a
bug in saezoo still shows its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SaezooError(Exception):
    """Base class of the errors saezoo raises on purpose."""

    exit_code = 1


class UsageError(SaezooError):
    """Bad input: an unknown name, a bad value, a missing or corrupt file."""

    exit_code = 2


class TrainingDiverged(SaezooError):
    """The non-finite guard stopped a run; the last good checkpoint is kept."""

    exit_code = 3


def closest(name: str, available: Iterable[str]) -> str | None:
    """The name in ``available`` closest to a misspelt ``name``, or None when none is close;
    every "did you mean" of saezoo comes from here."""
    close = difflib.get_close_matches(name, list(available), n=1)
    return close[0] if close else None


def did_you_mean(name: str, available: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest name, or ``""``."""
    close = closest(name, available)
    return f"; did you mean {close!r}?" if close else ""


def unknown_name(kind: str, name: str, available: Iterable[str]) -> UsageError:
    """An error for an unknown ``name`` that lists what exists and the closest match."""
    available = sorted(available)
    hint = did_you_mean(name, available)
    listing = ", ".join(available) if available else "none"
    return UsageError(f"unknown {kind} {name!r}{hint} (available: {listing})")
