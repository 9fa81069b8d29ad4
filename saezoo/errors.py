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


def unknown_name(kind: str, name: str, available: Iterable[str]) -> UsageError:
    """An error for an unknown ``name`` that lists what exists and the closest match."""
    available = sorted(available)
    close = difflib.get_close_matches(name, available, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(available) if available else "none"
    return UsageError(f"unknown {kind} {name!r}{hint} (available: {listing})")
