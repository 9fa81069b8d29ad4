"""The layers of a run's settings (a preset, the TOML file, the command-line options, ``--set``),
each a dict of tables by section, and their merging."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from saezoo.config import SECTIONS
from saezoo.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["train.lr=1e-3", "l1_coefficient=3"]`` -> nested dicts by section."""
    out: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise UsageError(f"--set {item!r}: bad key {key!r}")
        if parts[0] not in SECTIONS:
            parts = ["sae", *parts]
        section, path = parts[0], parts[1:]
        if not path:
            raise UsageError(f"--set {item!r}: name a field of section {section!r}")
        node = out[section]
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {item!r}: {part!r} is set twice")
        node[path[-1]] = value
    return out


def read_toml(path: str | Path) -> dict[str, dict[str, Any]]:
    """A run config file: tables [train], [data], [sae], [curriculum]."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise UsageError(f"--config {p}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {p}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config {p}: invalid TOML ({exc})") from None
    extra = set(data) - set(SECTIONS)
    if extra:
        raise UsageError(f"--config {p}: unknown table(s) {', '.join(sorted(extra))} (expected {', '.join(SECTIONS)})")
    for section, table in data.items():
        if not isinstance(table, dict):
            raise UsageError(f"--config {p}: [{section}] must be a table")
    return {s: dict(data.get(s, {})) for s in SECTIONS}


def merge(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Later layers win; nested tables merge key by key."""

    def merge_two(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge_two(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    result: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for layer in layers:
        for s in SECTIONS:
            result[s] = merge_two(result[s], layer.get(s, {}))
    return result
