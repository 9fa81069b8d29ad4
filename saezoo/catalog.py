"""The registry: one TOML manifest per trained SAE, in ``registry/``.

A manifest names the architecture, preset and config, the data it was trained on and how
(the recipe ``saezoo registry reproduce`` retrains), its weights' sha256 and where they are
published (``url``, fetched by ``saezoo.hub``), and the metrics ``saezoo eval`` measured.
Manifests are data, not code: they are validated field by field, and weights whose checksum
does not match are refused. The weights themselves are not in git: ``registry/weights/`` holds
local copies (``--register``, and the copies ``reproduce`` rebuilt); published files live in
the hub cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

import saezoo
from saezoo import checkpoint as ckpt
from saezoo import hub
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
    tensors_sha256: str
    training: dict[str, Any]
    metrics: dict[str, float]
    description: str
    saezoo_version: str
    created: str
    manifest: Path

    def weights_file(self) -> Path:
        """Where a local copy of the published weights is looked for first."""
        path = Path(self.weights_path)
        return path if path.is_absolute() else self.manifest.parent / path

    def rebuilt_file(self) -> Path:
        """Where ``saezoo registry reproduce`` puts the weights it retrained."""
        return self.manifest.parent / "weights" / f"{self.name}.rebuilt.safetensors"


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
    if not isinstance(weights.get("sha256"), str) or not all(
        isinstance(weights.get(k, ""), str) for k in ("path", "url")
    ):
        raise _invalid(path, "[weights] needs a sha256, and path and url are strings")
    where = weights.get("path", "")
    if where and (Path(where).is_absolute() or ".." in Path(where).parts):
        # A manifest names a file of its own registry, never one elsewhere on the machine.
        raise _invalid(path, f"[weights] path {where!r} must be relative, inside the registry (no '..')")
    for key in ("sha256", "tensors_sha256"):
        if key in weights and not re.fullmatch(r"[0-9a-f]{64}", str(weights[key])):
            raise _invalid(path, f"[weights] {key} must be 64 lowercase hex digits")
    if weights.get("url"):
        try:
            hub.parse_url(weights["url"])
        except UsageError as exc:
            raise _invalid(path, str(exc)) from None
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
        weights_path=weights.get("path") or f"weights/{raw['name']}.safetensors",
        weights_sha256=weights["sha256"],
        weights_url=weights.get("url", ""),
        tensors_sha256=weights.get("tensors_sha256", ""),
        training=raw.get("training", {}),
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


def locate_weights(entry: Entry, fetch: bool = True) -> Path:
    """The entry's weights, checked: the copy on this machine (see ``weights_here``), else
    (``fetch``) a download from the manifest's url."""
    here = weights_here(entry)
    if here is not None:
        return here
    if fetch and entry.weights_url:
        return _checked_download(entry, hub.download(entry.weights_url, entry.name))
    source = f"pull it from {entry.weights_url} (saezoo registry pull {entry.name}), or " if entry.weights_url else ""
    raise UsageError(
        f"registry entry {entry.name!r}: its weights are not on this machine; {source}rebuild them: saezoo registry "
        f"reproduce {entry.name}"
    )


def weights_here(entry: Entry) -> Path | None:
    """A local copy of the published file (registry/weights/), else the hub cache's copy,
    else the copy ``reproduce`` rebuilt; None when there is none. A copy whose sha256
    differs is refused (and removed when it is the cache's)."""
    local = entry.weights_file()
    if local.is_file():
        if file_sha256(local) != entry.weights_sha256:
            raise UsageError(
                f"registry entry {entry.name!r}: {local} does not match its sha256; the file was altered or replaced"
            )
        return local
    cached = hub.cached(entry.weights_url) if entry.weights_url else None
    if cached is not None:
        return _checked_download(entry, cached)
    rebuilt = entry.rebuilt_file()
    # Its tensors carry their own sha256, which loading checks; and it must be of this manifest:
    # after a `git pull` brings a new recipe or file, a copy rebuilt from the old one is stale.
    return rebuilt if rebuilt.is_file() and ckpt.read_metadata(rebuilt).get(REBUILT_FROM) == _made_from(entry) else None


def _checked_download(entry: Entry, path: Path) -> Path:
    if file_sha256(path) == entry.weights_sha256:
        return path
    hub.remove(path)
    raise UsageError(
        f"registry entry {entry.name!r}: the file fetched from {entry.weights_url} does not match the manifest's "
        "sha256; it was removed from the cache"
    )


def pull(entry: Entry) -> Path:
    """Fetch the entry's published weights into the hub cache (or find them there), checked."""
    if not entry.weights_url:
        raise UsageError(
            f"registry entry {entry.name!r} has no url in its manifest: its weights are only where it was registered"
        )
    return _checked_download(entry, hub.download(entry.weights_url, entry.name))


def weights_status(entry: Entry) -> str:
    """One line on where the entry's weights are, without fetching them (``registry show``)."""
    path = weights_here(entry)
    if path is None:
        pull = f"saezoo registry pull {entry.name} fetches them, or " if entry.weights_url else ""
        stale = " (the copy reproduce rebuilt is of another manifest)" if entry.rebuilt_file().is_file() else ""
        return f"weights: not on this machine{stale}; {pull}saezoo registry reproduce {entry.name} rebuilds them"
    rebuilt = " (rebuilt by saezoo registry reproduce, not the published file)" if path == entry.rebuilt_file() else ""
    return f"weights: {path}{rebuilt}"


def load_entry(entry: Entry, device: str = "cpu") -> SAE:
    """The entry's SAE (takes raw activations), from weights checked as ``locate_weights`` says."""
    path = locate_weights(entry)
    sae = ckpt.build_sae(entry.architecture, entry.d_in, entry.config)
    tensors, _ = ckpt.load_tensors(path)
    ckpt.load_state(sae, tensors, path)
    return sae.to(device).eval()


def recipe(entry: Entry) -> dict[str, Any]:
    """The run that made the entry, in cfg.json's shape (architecture, preset,
    curriculum_name, train, data, sae, curriculum): what ``reproduce`` retrains and what
    an evaluation of the entry reads its source from."""
    from saezoo.config import DataConfig, TrainConfig

    data = {k: v for k, v in entry.data.items() if k in DataConfig.__dataclass_fields__}
    if "distinct_tokens" in entry.data:  # what the run harvested (register_run records the source's count)
        data["harvest_tokens"] = entry.data["distinct_tokens"]
    training = dict(entry.training)
    return {
        "architecture": entry.architecture,
        "preset": entry.preset or None,
        "curriculum_name": training.pop("curriculum", "") or "constant",
        "curriculum": training.pop("curriculum_config", {}),
        "train": {k: v for k, v in training.items() if k in TrainConfig.__dataclass_fields__},
        "data": data,
        "sae": entry.config,
    }


# metric -> (how it is compared, allowed difference) for `saezoo registry reproduce`. A retrained
# entry is not bit-identical across CPUs and kernels (bf16 harvests, summation order), but
# with the recorded seeds its metrics vary far less than these bounds: registry/README.md has
# the measured spread, over which these leave a margin of several times.
REPRODUCE_TOLERANCE: dict[str, tuple[str, float]] = {
    "explained_variance": ("absolute", 0.01),
    "l0": ("relative", 0.05),
    "dead_fraction": ("absolute", 0.02),
    "ce_recovered": ("absolute", 0.01),
}


def check_reproduction(
    entry: Entry, metrics: dict[str, float]
) -> tuple[list[tuple[str, float, float, float, str, bool]], bool]:
    """Rows (metric, recorded, reproduced, |difference|, allowed, within) for every metric of
    REPRODUCE_TOLERANCE that the entry records, and whether all are within their bound."""
    rows, ok = [], True
    for name, (kind, bound) in REPRODUCE_TOLERANCE.items():
        if name not in entry.metrics:
            continue
        recorded, measured = entry.metrics[name], float(metrics.get(name, float("nan")))
        difference = abs(measured - recorded)
        allowed = bound * abs(recorded) if kind == "relative" else bound
        within = difference <= allowed  # False for NaN
        ok &= within
        allowed_text = f"±{bound * 100:g}%" if kind == "relative" else f"±{bound:g}"
        rows.append((name, recorded, measured, difference, allowed_text, within))
    if not rows:
        raise UsageError(f"registry entry {entry.name!r} records none of {', '.join(REPRODUCE_TOLERANCE)} to check")
    return rows, ok


# Metadata key of a rebuilt copy: the digest of what it was rebuilt from (_made_from).
REBUILT_FROM = "rebuilt_from"


def _made_from(entry: Entry) -> str:
    """A digest of the entry's recipe and of the published file a rebuilt copy stands in for."""
    made = {"recipe": recipe(entry), "d_in": entry.d_in, "weights_sha256": entry.weights_sha256}
    return hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()


def install_rebuilt(entry: Entry, run_dir: Path) -> Path:
    """Make a reproduced run's weights the entry's rebuilt copy (atomically), marked with what
    it was rebuilt from."""
    target = entry.rebuilt_file()
    tensors, meta = ckpt.load_tensors(Path(run_dir) / ckpt.WEIGHTS_FILE)
    ckpt.save_tensors(target, tensors, {**meta, REBUILT_FROM: _made_from(entry)})
    return target


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


@contextmanager
def name_held(name: str, force: bool = False) -> Iterator[None]:
    """Hold registry name ``name`` from the start of training until the run is registered: of
    two runs started with one ``--register`` name, the second refuses at once rather than
    after its training. (The lock file lies with the local weights, which git ignores.)"""
    weights = registry_dir() / "weights"
    try:
        weights.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{weights}: cannot create the registry's weights directory ({exc.strerror})") from None
    with ckpt.held_file(
        weights / f".{name}.lock", f"registry name {name!r} is being trained for by another saezoo process"
    ):
        check_new_name(name, force)  # again: one may have been registered before we held the name
        yield


def register_run(
    name: str, run_dir: Path, metrics: dict[str, float], description: str = "", force: bool = False
) -> Path:
    """Copy a run's weights into the registry and write its manifest (both atomically)."""
    check_new_name(name, force)
    header = ckpt.read_cfg(run_dir)
    directory = registry_dir()
    weights = directory / "weights" / f"{name}.safetensors"
    (directory / "weights" / f"{name}.rebuilt.safetensors").unlink(missing_ok=True)  # a replaced entry's
    # Checked before the copy: a damaged file never enters the registry, nor blocks the name.
    tensors_sha256 = ckpt.load_tensors(Path(run_dir) / ckpt.WEIGHTS_FILE)[1]["sha256"]
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
        "weights": {
            "path": f"weights/{name}.safetensors",
            "sha256": file_sha256(weights),
            # The file's sha256 differs between two writes of the same tensors (safetensors
            # orders its metadata as it likes); this one tells `reproduce` whether it rebuilt
            # the very same tensors.
            "tensors_sha256": tensors_sha256,
        },
        "training": {
            "curriculum": header.get("curriculum_name", ""),
            "curriculum_config": header.get("curriculum") or {},
            # Every setting, so that `reproduce` does not depend on defaults that may change;
            # the device is the machine's, not the recipe's.
            **{k: v for k, v in train.items() if k != "device"},
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
