"""Values (strings from the command line, TOML values, cfg.json) converted to the annotated
types of a config dataclass's fields, and dataclasses built from them."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Literal

from saezoo.config.fields import type_name
from saezoo.errors import UsageError, closest


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (a string from the CLI, or a TOML value) to type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except UsageError as exc:
                errors.append(str(exc))
        raise UsageError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is not a {type_name(tp)}")
    if origin is Literal:
        choices = [str(a) for a in args]
        if str(value) not in choices:
            raise UsageError(f"{key}: {value!r} is not one of {', '.join(choices)}")
        return args[choices.index(str(value))]
    if origin in (list, tuple):
        items = _as_list(value, key)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise UsageError(f"{key}: expected {len(args)} values, got {len(items)}")
            return tuple(coerce(v, a, key) for v, a in zip(items, args))
        item_type = args[0] if args else str
        converted = [coerce(v, item_type, key) for v in items]
        return tuple(converted) if origin is tuple else converted
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"{key}: {value!r} is not a boolean (use true or false)")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise UsageError(f"{key}: {value!r} is not an integer")
        try:
            number = int(value) if not isinstance(value, str) else int(value.replace("_", ""))
            if abs(number) >= 2**63:  # no count or seed is that large; torch would overflow on it
                raise UsageError(f"{key}: {value!r} is out of range (at most 2**63 - 1)")
            return number
        except ValueError:
            try:
                as_float = float(value)
            except ValueError:
                raise UsageError(f"{key}: {value!r} is not an integer") from None
            if as_float.is_integer() and abs(as_float) < 2**53:
                return int(as_float)  # 1e6 is a fine way to write an integer
            raise UsageError(f"{key}: {value!r} is not an integer") from None
    if tp is float:
        if isinstance(value, bool):
            raise UsageError(f"{key}: {value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{key}: {value!r} is not a number") from None
        if not math.isfinite(number):  # nan or inf would train silently into NaN weights
            raise UsageError(f"{key}: {value!r} is not a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise UsageError(f"{key}: {value!r} is not a string")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UsageError(f"{key}: expected a table of settings")
        return build(tp, value, key)
    raise UsageError(f"{key}: unsupported setting type {type_name(tp)}")


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{key}: {value!r} cannot be read as a JSON list ({exc.msg}; write [1, 2] or 1,2)"
            ) from None
        if not isinstance(parsed, list):
            raise UsageError(f"{key}: {value!r} is not a list")
        return parsed
    if not text:
        return []
    items = [v.strip() for v in text.split(",")]
    if len(items) > 1 and not items[-1]:
        items.pop()  # "3,": a list of one
    if not all(items):  # "1,,2" is a typo, not [1, 2]
        raise UsageError(f"{key}: {value!r} has an empty item (write 1,2 or [1, 2])")
    return items


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """An instance of dataclass ``cls`` from defaults overridden by ``values``."""
    return apply(cls(), values, where)


def apply(obj: Any, values: dict[str, Any], where: str) -> Any:
    """A copy of dataclass ``obj`` with ``values`` (nested dicts for nested dataclasses)."""
    if not isinstance(values, dict):  # e.g. a hand-edited cfg.json with "train": "fast"
        raise UsageError(f"{where or 'settings'}: expected a table of settings, got {type(values).__name__} "
            f"{values!r:.60}")
    cls = type(obj)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    changes = {}
    for name, value in values.items():
        key = f"{where}.{name}" if where else name
        if name not in names:
            if where == "sae" and isinstance(value, dict):  # --set NAME.x=1: a bare key is sae's
                raise unknown_section(name, names)
            raise unknown_key(key, cls, where)
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[name] = apply(current, value, key)
        else:
            changes[name] = coerce(value, hints[name], key)
    return dataclasses.replace(obj, **changes)


def unknown_section(name: str, fields: set[str]) -> UsageError:
    """A table of settings under a name that is neither a section nor a field of the SAE
    (``--set NAME.x=1``: a key without a section is the sae section's)."""
    from saezoo.config import SECTIONS

    close = closest(name, [*SECTIONS, *fields])
    return UsageError(
        f"unknown setting {name!r}.*: {name!r} is neither a section ({', '.join(SECTIONS)}) nor a table of the sae "
        f"section{f'; did you mean {close}?' if close else ''}"
    )


def unknown_key(key: str, cls: type, where: str) -> UsageError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = closest(key.rsplit(".", 1)[-1], names)
    hint = f"; did you mean {where + '.' if where else ''}{close}?" if close else ""
    return UsageError(f"unknown setting {key!r}{hint} (valid in {where or 'this section'}: {', '.join(names)})")
