"""Which SAEs ``saezoo browse`` can show side by side: what it reads (a run directory, a SAELens
directory or a registry entry) is ``saezoo.api.open_sae``'s :class:`~saezoo.api.Loaded`."""

from __future__ import annotations

from typing import Any

from saezoo.api import Loaded
from saezoo.config import DataConfig
from saezoo.errors import UsageError

# DataConfig fields that decide which activations an SAE reads: two runs agreeing on these
# can be browsed side by side on one pass of the model.
SOURCE_FIELDS = ("source", "model", "hook", "dataset", "text_column", "context_length")


def source_identity(header: dict[str, Any]) -> dict[str, Any]:
    """The fields of SOURCE_FIELDS as the run resolved them (a default hook by the module the
    harvest found, recorded under ``source``)."""
    data = {**DataConfig().__dict__, **header.get("data", {})}
    resolved = header.get("source") or {}
    if data.get("hook") is None:
        data["hook"] = resolved.get("hook")
    return {k: data.get(k) for k in SOURCE_FIELDS}


def check_same_source(a: Loaded, b: Loaded) -> None:
    ia, ib = source_identity(a.header), source_identity(b.header)
    differ = [k for k in SOURCE_FIELDS if ia[k] != ib[k]]
    if differ:
        detail = "; ".join(f"{k}: {ia[k]!r} vs {ib[k]!r}" for k in differ)
        raise UsageError(
            f"{a.label} and {b.label} read different activations ({detail}); the side-by-side view needs two SAEs of "
            "one source"
        )
    if a.sae.d_in != b.sae.d_in:
        raise UsageError(f"{a.label} and {b.label} take activations of different sizes ({a.sae.d_in} vs {b.sae.d_in})")
