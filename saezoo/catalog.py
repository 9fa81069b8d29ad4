"""The registry: one TOML manifest per trained SAE, in ``registry/``.

A manifest names the architecture, preset and config, the data it was trained on, where
its weights are with their sha256, and the metrics ``saezoo eval`` measured. Manifests are
data, not code: they are validated field by field, and weights whose checksum does not
match are refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

import saezoo
from saezoo import checkpoint as ckpt
from saezoo.errors import UsageError, unknown_name
from saezoo.sae import SAE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def registry_dir() -> Path:
    """``$SAEZOO_REGISTRY``, else the ``registry/`` folder of this checkout."""
    env = os.environ.get("SAEZOO_REGISTRY")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "registry"


@dataclass
class Entry:
    name: str
    architecture: str
    preset: str
    d_in: int
    config: dict[str, Any]
    data: dict[str, Any]
    weights_path: str
    weights_sha256: str
    weights_url: str
    metrics: dict[str, float]
    description: str
    saezoo_version: str
    created: str
    manifest: Path

    def weights_file(self) -> Path:
        path = Path(self.weights_path)
        return path if path.is_absolute() else self.manifest.parent / path


# Field -> (type, required) of a manifest's top level and its tables.
_SCHEMA: dict[str, tuple[type, bool]] = {
    "name": (str, True),
    "architecture": (str, True),
    "preset": (str, False),
    "d_in": (int, True),
    "description": (str, False),
    "saezoo_version": (str, False),
    "created": (str, False),
    "config": (dict, True),
    "data": (dict, True),
    "weights": (dict, True),
    "training": (dict, False),
    "metrics": (dict, False),
}


def _invalid(path: Path, why: str) -> UsageError:
    return UsageError(f"registry manifest {path}: {why}")


def read_manifest(path: Path) -> Entry:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise _invalid(path, "no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise _invalid(path, f"unreadable ({exc})") from None
    unknown = set(raw) - set(_SCHEMA)
    if unknown:
        raise _invalid(path, f"unknown field(s) {', '.join(sorted(unknown))}")
    for key, (tp, required) in _SCHEMA.items():
        if key not in raw:
            if required:
                raise _invalid(path, f"missing field {key!r}")
            continue
        if not isinstance(raw[key], tp) or (tp is int and isinstance(raw[key], bool)):
            raise _invalid(path, f"field {key!r} must be a {tp.__name__}")
    if raw["name"] != path.stem:
        raise _invalid(path, f"name {raw['name']!r} does not match the file name {path.stem!r}")
    if raw["d_in"] <= 0:
        raise _invalid(path, "d_in must be positive")
    weights = raw["weights"]
    if not isinstance(weights.get("path"), str) or not isinstance(weights.get("sha256"), str):
        raise _invalid(path, "[weights] needs a path and a sha256 (strings)")
    if not re.fullmatch(r"[0-9a-f]{64}", weights["sha256"]):
        raise _invalid(path, "[weights] sha256 must be 64 lowercase hex digits")
    metrics = raw.get("metrics", {})
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()):
        raise _invalid(path, "[metrics] values must be numbers")
    return Entry(
        name=raw["name"],
        architecture=raw["architecture"],
        preset=raw.get("preset", ""),
        d_in=raw["d_in"],
        config=raw["config"],
        data=raw["data"],
        weights_path=weights["path"],
        weights_sha256=weights["sha256"],
        weights_url=weights.get("url", ""),
        metrics={k: float(v) for k, v in metrics.items()},
        description=raw.get("description", ""),
        saezoo_version=raw.get("saezoo_version", ""),
        created=raw.get("created", ""),
        manifest=path,
    )


def list_entries() -> list[Entry]:
    directory = registry_dir()
    return [read_manifest(p) for p in sorted(directory.glob("*.toml"))] if directory.is_dir() else []


def get_entry(name: str) -> Entry:
    path = registry_dir() / f"{name}.toml"
    if not NAME_PATTERN.fullmatch(name) or not path.exists():  # the pattern keeps "../x" inside the registry
        raise unknown_name("registry entry", name, [e.name for e in list_entries()])
    return read_manifest(path)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_entry(entry: Entry, device: str = "cpu") -> SAE:
    """The entry's SAE (takes raw activations), after checking its weights' sha256."""
    path = entry.weights_file()
    if not path.is_file():
        where = f"; download it from {entry.weights_url}" if entry.weights_url else ""
        raise UsageError(f"registry entry {entry.name!r}: weights not found at {path}{where}")
    if file_sha256(path) != entry.weights_sha256:
        raise UsageError(
            f"registry entry {entry.name!r}: {path} does not match its sha256; the file was altered or replaced"
        )
    sae = ckpt.build_sae(entry.architecture, entry.d_in, entry.config)
    tensors, _ = ckpt.load_tensors(path)
    ckpt.load_state(sae, tensors, path)
    return sae.to(device).eval()


def check_new_name(name: str, force: bool = False) -> None:
    """Refuse a registry name that is malformed or, without ``force``, already taken (a
    shipped entry's weights must not be replaced by accident); called before training."""
    if not NAME_PATTERN.fullmatch(name) or len(name) > 100:
        raise UsageError(
            f"registry name {name!r}: use up to 100 lowercase letters, digits, '.', '_' and '-', starting with a "
            "letter or digit"
        )
    directory = registry_dir()
    taken = [p for p in (directory / f"{name}.toml", directory / "weights" / f"{name}.safetensors") if p.exists()]
    if taken and not force:
        raise UsageError(
            f"registry entry {name!r} already exists ({taken[0]}); choose another name, or add --force to replace it"
        )


def register_run(
    name: str, run_dir: Path, metrics: dict[str, float], description: str = "", force: bool = False
) -> Path:
    """Copy a run's weights into the registry and write its manifest (both atomically)."""
    check_new_name(name, force)
    header = ckpt.read_cfg(run_dir)
    directory = registry_dir()
    weights = directory / "weights" / f"{name}.safetensors"
    ckpt.atomic_write(weights, lambda tmp: shutil.copyfile(Path(run_dir) / ckpt.WEIGHTS_FILE, tmp))
    # What the source resolved (the hook a default stands for, the model's dtype) over what
    # was asked for.
    source = header.get("source", {})
    data = {
        k: v
        for k, v in {**header.get("data", {}), **source}.items()
        if k in ("source", "model", "hook", "dataset", "context_length", "model_dtype")
    }
    train = header.get("train", {})
    data["tokens"] = int(train.get("steps", 0)) * int(train.get("batch_size", 0))
    if source.get("source") == "model" and "n_tokens" in source:
        data["distinct_tokens"] = source["n_tokens"]
    if data.get("source") == "synthetic":
        data["synthetic"] = header["data"]["synthetic"]
    manifest = {
        "name": name,
        "architecture": header["architecture"],
        "preset": header.get("preset") or "",
        "d_in": header["d_in"],
        "description": description,
        "saezoo_version": saezoo.__version__,
        "created": time.strftime("%Y-%m-%d"),
        "config": header["sae"],
        "data": {k: v for k, v in data.items() if v is not None},
        "weights": {"path": f"weights/{name}.safetensors", "sha256": file_sha256(weights)},
        "training": {
            "curriculum": header.get("curriculum_name", ""),
            "curriculum_config": header.get("curriculum") or {},
            **{k: train[k] for k in ("steps", "batch_size", "seed", "lr") if k in train},
        },
        "metrics": {k: float(v) for k, v in metrics.items() if v == v},  # NaN has no TOML form
    }
    path = directory / f"{name}.toml"
    ckpt.atomic_write(path, lambda tmp: tmp.write_text(tomli_w.dumps(_toml_safe(manifest))))
    read_manifest(path)  # what we wrote must read back
    return path


def _toml_safe(value: Any) -> Any:
    """TOML has no null: None becomes "none", which config parsing reads back as None."""
    if isinstance(value, dict):
        return {k: _toml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_toml_safe(v) for v in value]
    return "none" if value is None else value
