"""Run configuration: dataclasses, TOML files and ``--set key=value`` overrides.

A run has four sections, each a dataclass: ``train`` (:class:`TrainConfig`), ``data``
(:class:`DataConfig`), ``sae`` (the architecture's ``Config``) and ``curriculum`` (the
curriculum's ``Config``). A key is ``section.field`` (``train.lr``,
``data.synthetic.d_in``); a bare ``field`` means ``sae.field``. Values are checked
against the field's type before anything runs.

Precedence, lowest first: dataclass defaults, the architecture preset, the TOML file
(``--config``), the command-line options, then ``--set``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import sys
import textwrap
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from saezoo.activations.synthetic import SyntheticConfig
from saezoo.errors import UsageError, closest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class TrainConfig:
    steps: int = 400
    """Optimiser steps (``--tokens`` sets this to tokens // batch_size). The defaults of
    steps, batch size and data.harvest_tokens suit the embedded demo on a 2-core CPU
    (minutes); real runs set --tokens."""
    batch_size: int = 1024
    """Tokens per step."""
    lr: float = 1e-3
    """Peak learning rate."""
    optimizer: Literal["adam", "adamw"] = "adam"
    """Adam, or AdamW with decoupled weight decay."""
    weight_decay: float = 0.0
    """Weight decay (AdamW only)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's beta1 and beta2."""
    warmup_steps: int = 50
    """Steps of learning-rate warmup from 0 to lr."""
    warmup_shape: Literal["linear", "cubic"] = "linear"
    """Shape of the warmup ramp (the seed paper used cubic)."""
    decay: Literal["none", "linear", "cosine"] = "linear"
    """Learning-rate decay to 0 over the last ``decay_fraction`` of steps."""
    decay_fraction: float = 0.2
    """Share of the run, at its end, over which the learning rate decays."""
    grad_clip: float | None = 1.0
    """Max gradient norm per gradient group (None: no clipping)."""
    normalize: bool = True
    """Scale activations so that E||x||^2 = d_in (folded into the saved weights)."""
    max_nonfinite_steps: int = 20
    """Consecutive non-finite steps (skipped) after which the run stops."""
    dead_after_tokens: int = 1_000_000
    """A latent silent for this many training tokens counts as dead."""
    seed: int = 0
    """Seed of the SAE's initialisation and of the data order."""
    init_seed: int | None = None
    """Seed of the SAE's initialisation alone (None: train.seed); `compare --seeds` gives
    each trainee its own on one stream of data."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (CUDA when present)."""
    autocast: Literal["none", "bf16"] = "none"
    """bf16 autocast of the SAE's forward pass (CUDA)."""
    compile: bool = False
    """torch.compile the SAE's forward pass; the first step pays for the compilation.
    Measured on an H200: flat, gated and hsae 10-53 % faster, jumprelu slower at 4096
    latents and faster at 65536, the TopK family 10-38 % slower; no gain on CPUs. Gated
    compiled on CUDA trained differently from eager (cause unknown): see
    benchmarks/README.md."""
    log_every: int = 10
    """Steps between TensorBoard scalars and progress updates."""
    eval_every: int = 100
    """Steps between held-out evaluations (0: only at the end)."""
    eval_tokens: int = 8192
    """Held-out tokens for the evaluations (periodic and final)."""
    downstream_tokens: int = 2048
    """Held-out tokens for the spliced CE/KL of the final evaluation (model sources; 0: skip)."""
    absorption_words: int = 4096
    """Vocabulary words for the first-letter absorption of the final evaluation (model
    sources; 0: skip); see docs/metrics.md."""
    checkpoint_every: int = 100
    """Steps between checkpoints (0: only at the end)."""


@dataclass
class DataConfig:
    source: Literal["model", "synthetic"] = "model"
    """Where activations come from: a language model, or synthetic features."""
    model: str = "smollm2-135m"
    """A registered model name, a hub id, or a local path."""
    hook: str | None = None
    """Module name to read activations from (default: the middle block)."""
    dataset: str = "python-docs"
    """A registered corpus, a hub id, or local text files."""
    text_column: str = "text"
    """Column holding the text, for datasets loaded through ``datasets``."""
    context_length: int = 128
    """Tokens per context; BOS is prepended and excluded."""
    max_norm_multiple: float = 10.0
    """Tokens with norm above this multiple of the median are excluded as outliers."""
    model_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """The language model's dtype: auto is bfloat16 on CUDA and on CPUs with native bf16
    matmuls (AMX, AVX512-BF16), else float32. The SAE always trains in float32."""
    harvest_tokens: int | None = 65536
    """Distinct activations harvested from the model; a run that reads more cycles through
    them, reshuffled each epoch (a notice says so). The default suits the embedded demo on
    a CPU (a few minutes); set it to the run's token count, or none for "as many as training
    reads", for real training."""
    cache: bool = True
    """Harvest activations to a disk cache and reuse it."""
    cache_dir: str | None = None
    """Cache directory (default: $SAEZOO_CACHE or ~/.cache/saezoo)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Settings of the synthetic source."""


SECTIONS = ("train", "data", "sae", "curriculum")


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    architecture: str
    preset: str | None
    curriculum_name: str
    train: TrainConfig
    data: DataConfig
    sae: Any
    curriculum: Any

    def to_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "preset": self.preset,
            "curriculum_name": self.curriculum_name,
            **{s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS},
        }


# --- field docs -------------------------------------------------------------------------


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under each field of a dataclass (its CLI help), including
    the fields it inherits."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe_fields(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, doc) for each field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f.name, _type_name(hints[f.name]), default, docs.get(f.name, "")))
    return rows


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


# --- value coercion ----------------------------------------------------------------------


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
        raise UsageError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is not a {_type_name(tp)}")
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
    raise UsageError(f"{key}: unsupported setting type {_type_name(tp)}")


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            raise UsageError(f"{key}: {value!r} is not a list (write [1, 2] or 1,2)") from None
        if not isinstance(parsed, list):
            raise UsageError(f"{key}: {value!r} is not a list")
        return parsed
    return [v.strip() for v in text.split(",") if v.strip()]


# --- building and overriding -----------------------------------------------------------------


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
            raise unknown_key(key, cls, where)
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[name] = apply(current, value, key)
        else:
            changes[name] = coerce(value, hints[name], key)
    return dataclasses.replace(obj, **changes)


def unknown_key(key: str, cls: type, where: str) -> UsageError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = closest(key.rsplit(".", 1)[-1], names)
    hint = f"; did you mean {where + '.' if where else ''}{close}?" if close else ""
    return UsageError(f"unknown setting {key!r}{hint} (valid in {where or 'this section'}: {', '.join(names)})")


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


# --- a whole run --------------------------------------------------------------------------------


def resolve_run(
    architecture: str,
    preset: str | None = None,
    curriculum: str = "constant",
    config_file: str | Path | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    sets: list[str] | None = None,
    tokens: int | None = None,
) -> RunConfig:
    """The run config from defaults < preset < TOML file < CLI options < --set.

    ``tokens``, when given, sets ``train.steps`` to ``tokens // train.batch_size``.
    """
    from saezoo.plugins import get_plugins

    plugins = get_plugins()
    sae_cls = plugins.architectures.get(architecture)
    curriculum_cls = plugins.curricula.get(curriculum)
    preset_layer: dict[str, dict[str, Any]] = {}
    if preset is not None and preset != "default":
        presets = getattr(sae_cls, "presets", {}) or {}
        if preset not in presets:
            from saezoo.errors import unknown_name

            raise unknown_name(f"preset of {architecture!r}", preset, ["default", *presets])
        preset_layer = presets[preset]
    layers = [preset_layer]
    if config_file is not None:
        layers.append(read_toml(config_file))
    layers.append(options or {})
    layers.append(parse_set(sets or []))
    merged = merge(*layers)
    train = build(TrainConfig, merged["train"], "train")
    if tokens is not None:
        if tokens < train.batch_size:
            raise UsageError(f"--tokens {tokens} is less than one batch ({train.batch_size} tokens)")
        train = dataclasses.replace(train, steps=tokens // train.batch_size)
    run = RunConfig(
        architecture=architecture,
        preset=preset if preset != "default" else None,
        curriculum_name=curriculum,
        train=train,
        data=build(DataConfig, merged["data"], "data"),
        sae=build(sae_cls.Config, merged["sae"], "sae"),
        curriculum=build(curriculum_cls.Config, merged["curriculum"], "curriculum"),
    )
    validate_train(run.train)
    return run


def validate_train(cfg: TrainConfig) -> None:
    checks = [
        (cfg.steps >= 1, f"train.steps must be >= 1, got {cfg.steps}"),
        (cfg.batch_size >= 1, f"train.batch_size must be >= 1, got {cfg.batch_size}"),
        (cfg.lr > 0, f"train.lr must be > 0, got {cfg.lr}"),
        (cfg.weight_decay >= 0, f"train.weight_decay must be >= 0, got {cfg.weight_decay}"),
        (cfg.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {cfg.warmup_steps}"),
        (0 <= cfg.decay_fraction <= 1, f"train.decay_fraction must be in [0, 1], got {cfg.decay_fraction}"),
        (cfg.grad_clip is None or cfg.grad_clip > 0, f"train.grad_clip must be > 0 or none, got {cfg.grad_clip}"),
        (cfg.max_nonfinite_steps >= 1, f"train.max_nonfinite_steps must be >= 1, got {cfg.max_nonfinite_steps}"),
        (cfg.log_every >= 1, f"train.log_every must be >= 1, got {cfg.log_every}"),
        (cfg.eval_every >= 0, f"train.eval_every must be >= 0, got {cfg.eval_every}"),
        (cfg.eval_tokens >= 1, f"train.eval_tokens must be >= 1, got {cfg.eval_tokens}"),
        (cfg.downstream_tokens >= 0, f"train.downstream_tokens must be >= 0, got {cfg.downstream_tokens}"),
        (cfg.absorption_words >= 0, f"train.absorption_words must be >= 0, got {cfg.absorption_words}"),
        (cfg.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0, got {cfg.checkpoint_every}"),
        (all(0 <= b < 1 for b in cfg.betas), f"train.betas must be in [0, 1), got {cfg.betas}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def run_from_dict(data: dict[str, Any]) -> RunConfig:
    """A RunConfig from the dict stored in cfg.json (for --resume)."""
    from saezoo.plugins import get_plugins

    plugins = get_plugins()
    sae_cls = plugins.architectures.get(data["architecture"])
    curriculum_cls = plugins.curricula.get(data.get("curriculum_name", "constant"))
    return RunConfig(
        architecture=data["architecture"],
        preset=data.get("preset"),
        curriculum_name=data.get("curriculum_name", "constant"),
        train=build(TrainConfig, data.get("train", {}), "train"),
        data=build(DataConfig, data.get("data", {}), "data"),
        sae=build(sae_cls.Config, data.get("sae", {}), "sae"),
        curriculum=build(curriculum_cls.Config, data.get("curriculum", {}), "curriculum"),
    )
