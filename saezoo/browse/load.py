"""What ``saezoo browse`` can read: a run directory, a SAELens directory or a registry entry,
each as an SAE with the run header describing its data source (what ``cfg.json`` holds)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saezoo import catalog, checkpoint, export
from saezoo.config import DataConfig
from saezoo.errors import UsageError
from saezoo.sae import SAE

# DataConfig fields that decide which activations an SAE reads: two runs agreeing on these
# can be browsed side by side on one pass of the model.
SOURCE_FIELDS = ("source", "model", "hook", "dataset", "text_column", "context_length")


@dataclass
class Target:
    """One SAE to browse."""

    label: str
    sae: SAE
    header: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)


def load_target(spec: str) -> Target:
    """A run directory, a SAELens directory (saezoo's own export, which records its data
    source) or the name of a registry entry."""
    path = Path(spec)
    if path.is_dir() and export.is_saelens_dir(path):
        sae, info = export.import_saelens(path)
        return Target(path.name, sae, export.eval_header(info, {}, path))
    if path.is_dir() and (path / checkpoint.CFG_FILE).is_file():
        sae, header = checkpoint.load_sae(path)
        metrics_file = path / checkpoint.METRICS_FILE
        metrics = checkpoint.read_json(metrics_file, "metrics") if metrics_file.is_file() else {}
        return Target(path.name, sae, header, metrics, sorted(path.glob("*.png")))
    if "/" not in spec and (catalog.registry_dir() / f"{spec}.toml").is_file():
        entry = catalog.get_entry(spec)
        data = {k: v for k, v in entry.data.items() if k in DataConfig.__dataclass_fields__}
        header = {"architecture": entry.architecture, "sae": entry.config, "data": data, "train": {}}
        return Target(entry.name, catalog.load_entry(entry), header, dict(entry.metrics))
    what = "a directory without cfg.json" if path.is_dir() else "a file" if path.exists() else "no such path"
    raise UsageError(f"{spec}: not a run directory, SAELens directory or registry entry ({what})")


def source_identity(header: dict[str, Any]) -> dict[str, Any]:
    """The fields of SOURCE_FIELDS as the run resolved them (a default hook by the module the
    harvest found, recorded under ``source``)."""
    data = {**DataConfig().__dict__, **header.get("data", {})}
    resolved = header.get("source") or {}
    if data.get("hook") is None:
        data["hook"] = resolved.get("hook")
    return {k: data.get(k) for k in SOURCE_FIELDS}


def check_same_source(a: Target, b: Target) -> None:
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
