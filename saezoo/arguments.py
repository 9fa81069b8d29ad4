"""Arguments of the Python API checked against their annotations.

The CLI's parser gives every command typed values; a notebook may pass anything. Without a
check, ``evaluate(run, tokens="100")`` or ``compare(["flat", "topk"])`` fails deep inside
torch or difflib with a traceback that does not name the argument. :func:`checked` refuses
such a call at once with a :class:`UsageError` that does, and refuses an empty path (``""``
is the current directory to ``Path``: ``train(out="")`` would train into it).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from saezoo.errors import UsageError

F = TypeVar("F", bound=Callable[..., Any])


def checked(fn: F) -> F:
    """``fn`` with each argument checked against its annotation when called."""
    signature = inspect.signature(fn)
    hints: dict[str, Any] = {}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not hints:  # resolved at the first call: the annotations may name classes defined after fn
            hints.update(typing.get_type_hints(fn))
        bound = signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD or name not in hints:
                continue
            values = value if kind is inspect.Parameter.VAR_POSITIONAL else (value,)
            for v in values:
                _check(fn.__name__, name, v, hints[name])
        return fn(*args, **kwargs)

    return typing.cast(F, wrapper)


def _check(function: str, name: str, value: Any, hint: Any) -> None:
    if not matches(value, hint):
        raise UsageError(f"{function}(): {name}={value!r:.60} is not {describe(hint)}")
    if isinstance(value, (str, Path)) and str(value) == "" and matches(Path("x"), hint):
        raise UsageError(f"{function}(): {name} is an empty path")


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of type ``hint`` (the forms the API's annotations use)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if hint is type(None) or hint is None:
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None and issubclass(origin, Sequence):
        return (
            isinstance(value, Sequence)
            and not isinstance(value, (str, bytes))
            and all(matches(v, args[0]) for v in value)
        )
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, origin or hint)


def describe(hint: Any) -> str:
    """``hint`` as a reader writes it: ``str, Path or None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        names = [describe(a) for a in typing.get_args(hint)]
        return ", ".join(names[:-1]) + " or " + names[-1]
    if hint is type(None):
        return "None"
    origin = typing.get_origin(hint)
    if origin is not None and issubclass(origin, Sequence):
        return f"a list of {describe(typing.get_args(hint)[0])}"
    return getattr(hint, "__name__", str(hint))
