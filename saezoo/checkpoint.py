"""Run directories: ``cfg.json`` + ``sae.safetensors`` (+ ``state/`` for resume).

Layout of a run directory::

    cfg.json              architecture, its config, d_in, data source, saezoo version
    sae.safetensors       -> state/current/sae.safetensors (a symbolic link)
    state/current         -> step-000130 (a symbolic link: the checkpoint)
    state/step-000130/    one checkpoint, written whole before ``current`` points to it:
        trainer.json          step, counters, curriculum state, ... (resume; write_trainer_state)
        trainer.safetensors   training-space weights, optimiser moments, RNG state
        sae.safetensors       weights for raw activations (normalisation folded in)
    metrics.json          the last evaluation
    tb/                   TensorBoard events
    .lock                 held (flock) by the process training in the directory

A checkpoint is three files, and a kill must never leave them from different steps: they
are written into a new step directory, and one rename of the ``current`` link switches
``--resume`` and ``eval`` (which both read through it) from the old step to the new one.
Every file is written to a temporary name and renamed, so a kill leaves the previous good
file. Each safetensors file carries the sha256 of its tensors in its metadata and is
checked on load. Weights are only ever read through safetensors: nothing a user hands us
is unpickled.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

import saezoo
from saezoo.config.coerce import build as build_config
from saezoo.errors import UsageError
from saezoo.sae import SAE

FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
METRICS_FILE = "metrics.json"
STATE_DIR = "state"
CURRENT = "current"
LOCK_FILE = ".lock"
# A comparison's variants, seeds and target, in its --out (saezoo/comparison.py, compare --resume).
COMPARE_FILE = "compare.json"


# --- atomic files ---------------------------------------------------------------------------


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename ``tmp`` over ``path``: all or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if _out_of_space(exc):
            raise UsageError(
                f"cannot write {path}: no space left ({exc}); free some space or choose another --out"
            ) from None
        raise


def _out_of_space(exc: BaseException) -> bool:
    """Disk full, quota or file-size limit, whether raised by Python or by a Rust writer."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(exc)
    return any(
        marker in text for marker in ("No space left", "File too large", "Disk quota", "os error 28", "os error 27")
    )


def fsync_dir(directory: Path) -> None:
    """Make the renames inside ``directory`` durable (they live in the directory itself)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def point(link: Path, target: str) -> None:
    """Make ``link`` a symbolic link to ``target`` in one rename: readers see the old target or the new one."""
    tmp = link.parent / f".{link.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def remove_temporaries(directory: Path) -> None:
    """Delete what a killed :func:`atomic_write` or :func:`point` left behind (never a finished file)."""
    for tmp in Path(directory).rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def json_safe(data: Any) -> Any:
    """``data`` with NaN and infinities as None: JSON has no form for them (Python's
    ``NaN`` is not JSON), so files and output meant for other tools use null."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no {what} here") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: unreadable {what} ({exc})") from None


# --- safetensors with a checksum ---------------------------------------------------------------


def tensor_digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    meta = {**(metadata or {}), "sha256": tensor_digest(tensors)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


# Loads a saezoo file that lacks its sha256 anyway (with a notice); see load_tensors.
ALLOW_UNCHECKED_ENV = "SAEZOO_ALLOW_UNCHECKED_WEIGHTS"


def load_tensors(path: Path, checksum: str = "required") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, checksum verified.

    saezoo writes a sha256 into every file, so one without it (``checksum="required"``) was
    written or stripped by something else: refused, unless ``$SAEZOO_ALLOW_UNCHECKED_WEIGHTS``
    is set. Files of other libraries (SAELens has no checksum; ``checksum="optional"``) are
    checked when they carry one and loaded without a word when not (docs/interop.md).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: missing weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UsageError(f"{path}: corrupt or truncated safetensors file ({exc}); retrain or restore it") from None
    expected = metadata.get("sha256")
    if expected is None:
        if checksum == "required" and not os.environ.get(ALLOW_UNCHECKED_ENV):
            raise UsageError(
                f"{path}: no sha256 in its metadata, so it cannot be checked (saezoo writes one into every file); "
                f"restore the file, or set {ALLOW_UNCHECKED_ENV}=1 to load it unchecked"
            )
        if checksum == "required":  # a SAELens file never has one: no news, and it would
            # come ahead of any one-line error that follows
            print(f"saezoo: note: {path} carries no sha256; loaded unchecked", file=sys.stderr)
    elif tensor_digest(tensors) != expected:
        raise UsageError(f"{path}: checksum mismatch, the file was altered or damaged; retrain or restore it")
    return tensors, metadata


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, without reading its tensors ({} if unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return {}


# --- checkpoints: one step directory, switched in by one rename ---------------------------------


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_dir(run_dir: Path) -> Path | None:
    """The directory of the run's checkpoint; None if the run stopped before its first one."""
    state = Path(run_dir) / STATE_DIR
    current = state / CURRENT
    if current.is_symlink():
        return state / os.readlink(current)
    # Without the link, only a kill inside the first save leaves something: its step-0 directory.
    if (
        current.exists()
        or (state / TRAINER_META_FILE).exists()
        or any(p.name != step_dir_name(0) for p in state.glob("step-*"))
    ):
        raise UsageError(
            f"{state}: holds a checkpoint but no {CURRENT} link to it (a copy that did not keep symbolic links, "
            "or a run of an older saezoo), so it cannot be resumed; copy run directories with `cp -a`"
        )
    return None


def write_checkpoint(run_dir: Path, step: int, write: Callable[[Path], None]) -> None:
    """Call ``write(directory)`` to fill a new step directory, then make it the checkpoint.

    Until the ``current`` link is renamed over, resume and eval read the previous
    checkpoint whole; from then on the new one. Step directories that are not the
    checkpoint (the previous one, or one a kill left half-written) are removed after.
    """
    run_dir = Path(run_dir)
    state = run_dir / STATE_DIR
    name = step_dir_name(step)
    directory = state / name
    try:
        state.mkdir(parents=True, exist_ok=True)
        # A kill can leave a half-written directory of this step; the checkpoint itself is
        # never overwritten (the trainer saves a step once).
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir()
        write(directory)
        fsync_dir(directory)
        weights = run_dir / WEIGHTS_FILE
        link = f"{STATE_DIR}/{CURRENT}/{WEIGHTS_FILE}"
        if not (weights.is_symlink() and os.readlink(weights) == link):
            point(weights, link)  # dangling until the first checkpoint is switched in
        point(state / CURRENT, name)
    except OSError as exc:
        if _out_of_space(exc):
            raise UsageError(
                f"cannot write {directory}: no space left ({exc}); free some space or choose another --out"
            ) from None
        raise
    for old in state.glob("step-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


# --- the trainer's state in a checkpoint ------------------------------------------------------

TRAINER_TENSORS_FILE = "trainer.safetensors"
TRAINER_META_FILE = "trainer.json"
# What --resume reads from trainer.json; a file without one of them is damaged.
TRAINER_KEYS = frozenset(
    {"step", "scale", "nonfinite_total", "nonfinite_run", "stats", "curriculum", "optimizer_param_groups"}
)


def write_trainer_state(
    directory: Path,
    sae_state: dict[str, Tensor],
    optimizer: dict[str, Any],
    tensors: dict[str, Tensor],
    meta: dict[str, Any],
) -> None:
    """Write the trainer's state into checkpoint ``directory``: the training-space SAE as
    ``sae.NAME``, the optimiser's per-parameter state as ``opt.INDEX.NAME`` (its param groups
    go into trainer.json), the other ``tensors`` (counters, RNG states) under their names and
    ``meta`` (the TRAINER_KEYS but the param groups) in trainer.json."""
    flat = {f"sae.{k}": v for k, v in sae_state.items()}
    for index, state in optimizer["state"].items():
        for name, value in state.items():
            flat[f"opt.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    meta = {**meta, "optimizer_param_groups": optimizer["param_groups"]}
    # trainer.json's digest rides in the checksummed tensors: an edited or damaged step count,
    # scale or curriculum state is refused on resume, as damaged tensors are.
    save_tensors(directory / TRAINER_TENSORS_FILE, {**flat, **tensors}, {TRAINER_META_DIGEST: _meta_digest(meta)})
    write_json(directory / TRAINER_META_FILE, meta)


# The key of trainer.json's digest in trainer.safetensors' metadata (checkpoints written before
# it was kept have none, and are read unchecked).
TRAINER_META_DIGEST = "trainer_json_sha256"


def _meta_digest(meta: Any) -> str:
    """sha256 of trainer.json's content, whatever its layout on disk."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_trainer_state(
    directory: Path, device: str | torch.device
) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """``(sae_state, optimizer_state_dict, other tensors, meta)`` that :func:`write_trainer_state`
    wrote into ``directory``; the optimiser's tensors on ``device``."""
    meta = read_json(directory / TRAINER_META_FILE, "trainer state")
    missing = sorted(TRAINER_KEYS - set(meta)) if isinstance(meta, dict) else ["everything (not a JSON object)"]
    if missing or not isinstance(meta["step"], int) or not isinstance(meta["optimizer_param_groups"], list):
        raise UsageError(
            f"{directory / TRAINER_META_FILE}: damaged trainer state (missing or malformed: "
            f"{', '.join(missing) or 'step or optimizer_param_groups'}); restart the run in a new --out"
        )
    tensors, metadata = load_tensors(directory / TRAINER_TENSORS_FILE)
    digest = metadata.get(TRAINER_META_DIGEST)
    if digest is not None and digest != _meta_digest(meta):
        raise UsageError(
            f"{directory / TRAINER_META_FILE}: damaged trainer state (it does not match the digest in "
            f"{TRAINER_TENSORS_FILE}); restart the run in a new --out"
        )
    sae_state, other = {}, {}
    optimizer: dict[str, Any] = {"param_groups": meta["optimizer_param_groups"], "state": {}}
    for key, value in tensors.items():
        if key.startswith("sae."):
            sae_state[key[4:]] = value
        elif key.startswith("opt."):
            _, index, name = key.split(".", 2)
            optimizer["state"].setdefault(int(index), {})[name] = value.to(device)
        else:
            other[key] = value
    return sae_state, optimizer, other, meta


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory for this process: a second process training into or resuming
    it refuses instead of rolling its checkpoint back."""
    with held_file(Path(run_dir) / LOCK_FILE, f"{run_dir} is in use by another saezoo process"):
        yield


@contextmanager
def held_file(path: Path, busy: str) -> Iterator[None]:
    """Hold ``path`` (an flock, created if need be) for this process; another process that
    asks for it meanwhile gets a UsageError saying ``busy`` and the holder's pid. The kernel
    drops an flock when the process dies, however it dies, so the lock is never left stale."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UsageError(f"{path}: cannot open the lock file ({exc.strerror}); remove it if it is not a file") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise UsageError(
            f"{busy}{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to finish or stop it"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)


def refuse_occupied(out: Path) -> None:
    """Refuse an ``--out`` that already holds a run (a cfg.json in it or in any directory below
    it) or any other file: a run's files (state/step-*, which checkpointing prunes, the plots,
    sae.safetensors) would replace or delete what is there. One rule for ``train`` and
    ``compare``, so that neither writes its files beside or over an earlier run's, whichever
    command wrote that (a comparison's runs lie in subdirectories). Only what a start that
    stopped before its first file leaves (locks, compare.json, empty directories) is no
    obstacle. Called under the directory's :func:`run_lock`: of two commands into one
    ``--out``, the second refuses."""
    stray = None
    for here, subdirs, files in os.walk(out):
        if CFG_FILE in files:
            found = Path(here)
            if found == out:
                raise UsageError(
                    f"--out {out} already holds a run; resume it with --resume {out} or choose another --out"
                )
            raise UsageError(f"--out {out} already holds a run in {found.relative_to(out)}; choose another --out")
        subdirs.sort()  # the same run named on every try
        others = sorted(set(files) - {LOCK_FILE, COMPARE_FILE})
        stray = stray or (Path(here, others[0]).relative_to(out) if others else None)
    if stray is not None:
        raise UsageError(
            f"--out {out} is not empty ({stray} is there) and a run would replace or delete such files; "
            "choose a new or empty directory"
        )


# --- SAEs -------------------------------------------------------------------------------------


def run_header(architecture: str, d_in: int, run_dict: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """The contents of cfg.json."""
    return {
        "format_version": FORMAT_VERSION,
        "saezoo_version": saezoo.__version__,
        "architecture": architecture,
        "d_in": d_in,
        "source": source,
        **run_dict,
    }


def save_sae(run_dir: Path, sae: SAE) -> None:
    save_tensors(Path(run_dir) / WEIGHTS_FILE, dict(sae.state_dict()), {"format": "saezoo"})


def read_cfg(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UsageError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: not a directory")
    cfg = read_json(run_dir / CFG_FILE, "run config (cfg.json)")
    if not isinstance(cfg, dict):
        raise UsageError(f"{run_dir / CFG_FILE}: expected a JSON object")
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        raise UsageError(
            f"{run_dir / CFG_FILE}: checkpoint format {version!r} is not supported by saezoo "
            f"{saezoo.__version__} (expects {FORMAT_VERSION})"
        )
    for key in ("architecture", "d_in", "sae"):
        if key not in cfg:
            raise UsageError(f"{run_dir / CFG_FILE}: missing field {key!r}")
    for key, kinds in (("architecture", str), ("preset", (str, type(None))), ("curriculum_name", str)):
        if key in cfg and not isinstance(cfg[key], kinds):
            raise UsageError(f"{run_dir / CFG_FILE}: {key!r} must be a string, got {cfg[key]!r:.60}")
    return cfg


def build_sae(architecture: str, d_in: int, sae_cfg: dict[str, Any] | Any) -> SAE:
    """An SAE from its registered name and config (a dict is validated field by field)."""
    from saezoo.plugins import get_plugins

    registry = get_plugins().architectures
    cls = registry.get(architecture)
    if isinstance(sae_cfg, dict):
        sae_cfg = build_config(cls.Config, sae_cfg, "sae")
    try:
        return cls(d_in, sae_cfg)
    except ValueError as exc:
        raise UsageError(f"{architecture}: {exc}") from None
    except AttributeError as exc:
        if exc.obj is not sae_cfg:  # a bug elsewhere keeps its traceback
            raise
        plugin = registry.entries[architecture].plugin
        raise UsageError(
            f"plugin {plugin!r}: architecture {architecture!r} reads setting 'sae.{exc.name}', which its Config "
            f"({type(sae_cfg).__name__}) does not declare"
        ) from None


def load_sae(run_dir: Path | str, device: str | torch.device = "cpu") -> tuple[SAE, dict[str, Any]]:
    """Rebuild a saved SAE from ``cfg.json`` through the plugin registry."""
    run_dir = Path(run_dir)
    cfg = read_cfg(run_dir)
    if not isinstance(cfg["d_in"], int) or cfg["d_in"] <= 0:
        raise UsageError(f"{run_dir / CFG_FILE}: d_in must be a positive integer")
    if not isinstance(cfg["sae"], dict):
        raise UsageError(f"{run_dir / CFG_FILE}: 'sae' must be an object")
    sae = build_sae(cfg["architecture"], cfg["d_in"], cfg["sae"])
    if not (run_dir / WEIGHTS_FILE).exists() and checkpoint_dir(run_dir) is None:
        raise UsageError(
            f"{run_dir}: no weights yet, the run stopped before its first checkpoint; continue it with: saezoo train "
            f"--resume {run_dir}"
        )
    tensors, _ = load_tensors(run_dir / WEIGHTS_FILE)
    load_state(sae, tensors, run_dir / WEIGHTS_FILE)
    return sae.to(device).eval(), cfg


def load_state(sae: SAE, tensors: dict[str, Tensor], where: Path) -> None:
    expected = sae.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise UsageError(
            f"{where}: tensors do not match the architecture (missing: {', '.join(missing) or 'none'}; "
            f"unexpected: {', '.join(unexpected) or 'none'})"
        )
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise UsageError(
                f"{where}: tensor {name} has shape {tuple(t.shape)}, the config implies {tuple(expected[name].shape)}"
            )
    sae.load_state_dict(tensors)
