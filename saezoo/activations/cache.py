"""The activation disk cache: harvest once, read many times.

Layout, under ``$SAEZOO_CACHE/activations`` (``~/.cache/saezoo/activations`` by default)::

    <key>/manifest.json
    <key>/shard-00000.safetensors   # "activations": float32 [n, d_in]

``<key>`` hashes everything that determines the activations: model, hook, dataset, split,
context length, token count, outlier rule, shard size and a format version. The seed is not part
of it: the harvest is in corpus order and shuffling happens when the cache is read.

Shards are float32: activations are read back exactly as the model produced them (metrics compare
against the model's own units), and a massive activation cannot overflow float16's range. On a
CPU the harvest, not the disk, is the bottleneck.

Atomicity: an entry is written into a private temporary directory, the manifest last (temp file
+ ``os.replace``), then the directory is renamed into place. A harvest that is killed leaves only
a ``.tmp-*`` directory, which no lookup reads and the next harvest removes. Entries are never
modified after publication, so concurrent readers (several ranks, several runs) are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from saezoo.errors import UsageError

# Bump when a change in harvesting changes what a cache entry holds.
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


def cache_root() -> Path:
    """Where saezoo keeps caches: ``$SAEZOO_CACHE``, else ``~/.cache/saezoo``."""
    return Path(os.environ.get("SAEZOO_CACHE") or "~/.cache/saezoo").expanduser()


def activations_dir(cache_dir: str | Path | None = None) -> Path:
    """The activation cache: ``<cache_dir>/activations``, ``cache_dir`` defaulting to :func:`cache_root`."""
    return (Path(cache_dir).expanduser() if cache_dir else cache_root()) / "activations"


def key_hash(key: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CacheEntry:
    """A published cache entry: its directory and manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def n_tokens(self) -> int:
        return self.manifest["n_tokens"]

    def shard_sizes(self) -> list[int]:
        return [shard["n"] for shard in self.manifest["shards"]]

    def load_shard(self, index: int) -> Tensor:
        """Shard ``index`` as float32 ``[n, d_in]``."""
        return load_file(self.path / self.manifest["shards"][index]["file"])["activations"]

    def read(self) -> Tensor:
        """All activations in harvest order (for evaluation sets)."""
        if not self.manifest["shards"]:
            return torch.empty(0, self.manifest["d_in"])
        return torch.cat([self.load_shard(i) for i in range(len(self.manifest["shards"]))])


def lookup(key: dict[str, Any], cache_dir: str | Path | None = None) -> CacheEntry | None:
    """The complete entry for ``key``, or ``None``."""
    entry = _read_entry(activations_dir(cache_dir) / key_hash(key))
    return entry if entry is not None and entry.manifest["key"] == key else None


def _read_entry(path: Path) -> CacheEntry | None:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    for shard in manifest.get("shards", []):
        file = path / shard["file"]
        if not file.is_file() or file.stat().st_size != shard["bytes"]:
            return None
    return CacheEntry(path, manifest)


class CacheWriter:
    """Writes one entry: ``add()`` activations in harvest order, then ``publish()`` or ``abort()``."""

    def __init__(self, key: dict[str, Any], cache_dir: str | Path | None = None, shard_tokens: int = 65536):
        self.root = activations_dir(cache_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(self.root)
        self.key = key
        self.name = key_hash(key)
        self.tmp = self.root / f"{_TMP_PREFIX}{self.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self.pending: list[Tensor] = []
        self.pending_tokens = 0
        self.n_tokens = 0

    def add(self, activations: Tensor) -> None:
        self.pending.append(activations)
        self.pending_tokens += len(activations)
        self.n_tokens += len(activations)
        while self.pending_tokens >= self.shard_tokens:
            data = torch.cat(self.pending)
            self._write_shard(data[: self.shard_tokens])
            rest = data[self.shard_tokens :]
            self.pending, self.pending_tokens = ([rest] if len(rest) else []), len(rest)

    def _write_shard(self, data: Tensor) -> None:
        file = f"shard-{len(self.shards):05d}.safetensors"
        save_file({"activations": data.contiguous()}, self.tmp / file)
        self.shards.append({"file": file, "n": len(data), "bytes": (self.tmp / file).stat().st_size})

    def publish(self, meta: dict[str, Any]) -> CacheEntry:
        """Flush, write the manifest last, and move the entry into place."""
        if self.pending_tokens:
            self._write_shard(torch.cat(self.pending))
            self.pending, self.pending_tokens = [], 0
        manifest = {"key": self.key, "n_tokens": self.n_tokens, "shards": self.shards, "created": time.time(), **meta}
        _write_json_atomic(self.tmp / MANIFEST, manifest)
        final = self.root / self.name
        try:
            os.rename(self.tmp, final)
        except OSError:
            # Another process published the same entry first; theirs holds the same data.
            shutil.rmtree(self.tmp, ignore_errors=True)
            entry = _read_entry(final)
            if entry is None:
                raise
            return entry
        return CacheEntry(final, manifest)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove_stale_tmp(root: Path) -> None:
    """Remove the temporary directories of harvests whose process is gone (killed, crashed)."""
    for path in root.glob(f"{_TMP_PREFIX}*"):
        try:
            pid = int(path.name.split("-")[-2])
        except (ValueError, IndexError):
            continue
        if not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _entries(root: Path) -> Iterator[tuple[Path, CacheEntry | None]]:
    """Every published directory with its entry (``None`` when incomplete or corrupt)."""
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.is_dir() and not path.name.startswith(_TMP_PREFIX):
                yield path, _read_entry(path)


def list_cache(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per complete cache entry: id, model, hook, dataset, split, tokens, d_in, size, path."""
    rows = []
    for path, entry in _entries(activations_dir(cache_dir)):
        if entry is None:
            continue
        m = entry.manifest
        rows.append(
            {
                "id": path.name,
                "model": m["key"]["model"],
                "hook": m["hook"],
                "dataset": m["key"]["dataset"],
                "split": m["key"]["split"],
                "context_length": m["key"]["context_length"],
                "n_tokens": m["n_tokens"],
                "excluded_outliers": m["excluded_outliers"],
                "d_in": m["d_in"],
                "bytes": sum(s["bytes"] for s in m["shards"]),
                "created": m["created"],
                "path": str(path),
            }
        )
    return rows


def clear_cache(key_or_all: str, cache_dir: str | Path | None = None) -> int:
    """Delete the entries whose id starts with ``key_or_all``; ``"all"`` also removes killed harvests' leftovers.

    Returns the number of directories removed; an id that matches nothing is a :class:`UsageError`.
    """
    root = activations_dir(cache_dir)
    paths = [path for path, _ in _entries(root)]
    if key_or_all == "all":
        _remove_stale_tmp(root)
    else:
        ids = [p.name for p in paths]
        paths = [p for p in paths if p.name.startswith(key_or_all)]
        if not paths:
            raise UsageError(f"no cache entry {key_or_all!r} in {root} (entries: {', '.join(ids) or 'none'})")
    for path in paths:
        shutil.rmtree(path)
    return len(paths)
