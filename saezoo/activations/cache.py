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
a ``.tmp-*`` directory, which no lookup reads and the next harvest on the same machine removes.
Entries are never modified after publication, so concurrent readers (several ranks, several
runs) are safe.

Integrity: the manifest records each shard's size and sha256, checked once per process when the
entry is looked up. A damaged entry (unreadable or incomplete manifest, a shard missing,
truncated or altered) is reported in one line on stderr and moved out of the way, so the
lookup misses and the caller harvests it again; nothing is read from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
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

# Bump when a change in harvesting changes what a cache entry holds (2: shard checksums).
FORMAT_VERSION = 2

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


_ENTRY_NAME = re.compile(r"[0-9a-f]{16}")  # what key_hash gives


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
    """The complete, intact entry for ``key``, or ``None`` (a damaged one is removed)."""
    path = activations_dir(cache_dir) / key_hash(key)
    if not path.is_dir():
        return None
    entry, problem = _read_entry(path, verify=True)
    if problem is not None:
        _discard(path, problem)
        return None
    return entry if entry.manifest["key"] == key else None


# Shard files this process has hashed (or written), by device, inode, size and modification
# time, which a rename keeps: each is hashed once per process, and again if it was rewritten.
_verified: set[tuple[int, int, int, int]] = set()


def _read_entry(path: Path, verify: bool = False) -> tuple[CacheEntry | None, str | None]:
    """``(entry, None)``, or ``(None, what is wrong)``; ``verify`` also hashes the shards."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        shards = manifest["shards"]
        checks = [(str(shard["file"]), int(shard["bytes"]), str(shard["sha256"])) for shard in shards]
        for field in ("key", "n_tokens", "d_in", "hook"):  # what readers take from it
            manifest[field]
        sizes = [int(shard["n"]) for shard in shards]
    except FileNotFoundError:
        return None, "no manifest"
    except (OSError, ValueError, TypeError, KeyError) as exc:
        return None, f"unreadable manifest ({type(exc).__name__}: {exc})"
    if sum(sizes) != manifest["n_tokens"]:
        return None, f"its shards hold {sum(sizes)} activations, the manifest says {manifest['n_tokens']}"
    for name, size, digest in checks:
        file = path / name
        if Path(name).name != name or not file.is_file():
            return None, f"shard {name} is missing"
        stat = file.stat()
        if stat.st_size != size:
            return None, f"shard {name} has {stat.st_size} bytes, the manifest says {size}"
        stamp = _stamp(stat)
        if verify and stamp not in _verified:
            from saezoo.catalog import file_sha256  # imported late: saezoo.checkpoint imports this package

            if file_sha256(file) != digest:
                return None, f"shard {name} does not match its sha256"
            _verified.add(stamp)
    return CacheEntry(path, manifest), None


def _stamp(stat: os.stat_result) -> tuple[int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _discard(path: Path, problem: str) -> None:
    """Report a damaged entry in one line and move it aside (then delete it), so that it is
    harvested again; a rename is atomic, so a concurrent reader sees the entry or nothing."""
    print(f"saezoo: note: activation cache entry {path} is damaged ({problem}); harvesting it again", file=sys.stderr)
    aside = path.with_name(f"{_TMP_PREFIX}{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except OSError:
        return  # another process moved it first
    shutil.rmtree(aside, ignore_errors=True)


class CacheWriter:
    """Writes one entry: ``add()`` activations in harvest order, then ``publish()`` or ``abort()``."""

    def __init__(self, key: dict[str, Any], cache_dir: str | Path | None = None, shard_tokens: int = 65536):
        self.root = activations_dir(cache_dir)
        self.key = key
        self.name = key_hash(key)
        self.tmp = self.root / _tmp_name(self.name)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _remove_stale_tmp(self.root)
            self.tmp.mkdir()
        except OSError as exc:
            raise UsageError(
                f"cannot write the activation cache in {self.root} ({exc.strerror or exc}); "
                "point SAEZOO_CACHE (or data.cache_dir) at a writable directory, or set data.cache=false"
            ) from None
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
        from saezoo.catalog import file_sha256

        file = f"shard-{len(self.shards):05d}.safetensors"
        save_file({"activations": data.contiguous()}, self.tmp / file)
        stat, digest = (self.tmp / file).stat(), file_sha256(self.tmp / file)
        _verified.add(_stamp(stat))
        self.shards.append({"file": file, "n": len(data), "bytes": stat.st_size, "sha256": digest})

    def publish(self, meta: dict[str, Any]) -> CacheEntry:
        """Flush, write the manifest last, and move the entry into place."""
        from saezoo.checkpoint import write_json

        if self.pending_tokens:
            self._write_shard(torch.cat(self.pending))
            self.pending, self.pending_tokens = [], 0
        manifest = {"key": self.key, "n_tokens": self.n_tokens, "shards": self.shards, "created": time.time(), **meta}
        write_json(self.tmp / MANIFEST, manifest)
        final = self.root / self.name
        try:
            os.rename(self.tmp, final)
        except OSError:
            # Another process published the same entry first; theirs holds the same data.
            entry, problem = _read_entry(final, verify=True)
            if problem is None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return entry
            _discard(final, problem)  # a damaged entry in the way: ours replaces it
            os.rename(self.tmp, final)
        return CacheEntry(final, manifest)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _tmp_name(name: str) -> str:
    """The temporary directory of this process's harvest of entry ``name``:
    ``.tmp-<key hash>-<host>-<pid>-<random>`` (:func:`_tmp_owner` reads it back)."""
    return f"{_TMP_PREFIX}{name}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _tmp_owner(tmp: str) -> tuple[str, int] | None:
    """The host and process id in a name from :func:`_tmp_name`; the host is "" in a name from
    before the host was part of it (``.tmp-<key hash>-<pid>-<random>``). None for a name that
    is neither."""
    _, _, rest = tmp[len(_TMP_PREFIX) :].partition("-")
    host, _, pid = rest.rpartition("-")[0].rpartition("-")
    try:
        return host, int(pid)
    except ValueError:
        return None


def _remove_stale_tmp(root: Path) -> None:
    """Remove the temporary directories of harvests whose process is gone (killed, crashed).
    Only this machine's: a cache on a shared filesystem also holds other machines' harvests in
    progress, whose process ids mean nothing here (a directory named before the host was part
    of the name counts as this machine's)."""
    here = socket.gethostname()
    for path in root.glob(f"{_TMP_PREFIX}*"):
        owner = _tmp_owner(path.name)
        if owner is None:
            continue
        host, pid = owner
        if host in ("", here) and not _alive(pid):
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
    """Every published directory with its entry (``None`` when incomplete or corrupt). Only a
    directory named as entries are (:func:`key_hash`) is one: ``cache clear all`` removes
    these, and nothing else a user may have put beside them."""
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.is_dir() and _ENTRY_NAME.fullmatch(path.name):
                yield path, _read_entry(path)[0]


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
        if path.is_symlink():  # an entry linked in from elsewhere: the link goes, never what it points to
            path.unlink()
        else:
            shutil.rmtree(path)
    return len(paths)
