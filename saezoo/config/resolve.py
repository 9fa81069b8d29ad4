"""A whole run's :class:`RunConfig`: the plugins' sections found by name and every layer applied."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from saezoo.config import MIN_EVAL_TOKENS, DataConfig, RunConfig, TrainConfig
from saezoo.config.coerce import build
from saezoo.config.layers import merge, parse_set, read_toml
from saezoo.curriculum import SEPARATOR, check_composable, curriculum_names
from saezoo.errors import UsageError, unknown_name
from saezoo.plugins import get_plugins


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
    sae_cls = get_plugins().architectures.get(architecture)
    preset_layer: dict[str, dict[str, Any]] = {}
    if preset is not None and preset != "default":
        presets = getattr(sae_cls, "presets", {}) or {}
        if preset not in presets:
            raise unknown_name(f"preset of {architecture!r}", preset, ["default", *presets])
        preset_layer = presets[preset]
    layers = [preset_layer]
    if config_file is not None:
        layers.append(read_toml(config_file))
    layers.append(options or {})
    layers.append(parse_set(sets or []))
    run = _build_run(architecture, preset if preset != "default" else None, curriculum, merge(*layers))
    if tokens is not None:
        if tokens < run.train.batch_size:
            raise UsageError(f"--tokens {tokens} is less than one batch ({run.train.batch_size} tokens)")
        run.train = dataclasses.replace(run.train, steps=tokens // run.train.batch_size)
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
        (
            cfg.eval_tokens >= MIN_EVAL_TOKENS,
            f"train.eval_tokens must be >= {MIN_EVAL_TOKENS} (explained variance needs a variance), got "
            f"{cfg.eval_tokens}",
        ),
        (cfg.downstream_tokens >= 0, f"train.downstream_tokens must be >= 0, got {cfg.downstream_tokens}"),
        (cfg.absorption_words >= 0, f"train.absorption_words must be >= 0, got {cfg.absorption_words}"),
        (cfg.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0, got {cfg.checkpoint_every}"),
        (all(0 <= b < 1 for b in cfg.betas), f"train.betas must be in [0, 1), got {cfg.betas}"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def run_from_dict(data: dict[str, Any], source: str | Path | None = None) -> RunConfig:
    """A RunConfig from the dict stored in cfg.json (for --resume), checked as a new run's is:
    a hand-edited cfg.json must not train or evaluate with settings ``--set`` refuses.
    ``source``, the file it was read from, starts an error's message."""
    run = _build_run(data["architecture"], data.get("preset"), data.get("curriculum_name", "constant"), data)
    try:
        validate_train(run.train)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}" if source is not None else str(exc)) from None
    return run


def _build_run(architecture: str, preset: str | None, curriculum: str, tables: dict[str, Any]) -> RunConfig:
    """The one builder of a RunConfig: each section's dataclass (the plugins' found by name) from its table."""
    plugins = get_plugins()
    sae_cls = plugins.architectures.get(architecture)
    classes = {name: plugins.curricula.get(name) for name in curriculum_names(curriculum)}
    check_composable(classes)
    settings = _curriculum_tables(classes, tables.get("curriculum", {}))
    where = "curriculum" if len(classes) == 1 else "curriculum.{}"
    return RunConfig(
        architecture=architecture,
        preset=preset,
        train=build(TrainConfig, tables.get("train", {}), "train"),
        data=build(DataConfig, tables.get("data", {}), "data"),
        sae=build(sae_cls.Config, tables.get("sae", {}), "sae"),
        curricula={name: build(cls.Config, settings[name], where.format(name)) for name, cls in classes.items()},
    )


def _curriculum_tables(classes: dict[str, type], table: Any) -> dict[str, dict[str, Any]]:
    """The ``curriculum`` table split into each curriculum's settings.

    ``curriculum.NAME.KEY`` is curriculum NAME's setting KEY. A bare ``curriculum.KEY`` is
    the setting of the one curriculum that has it (of the only curriculum, when the run
    follows one: as before curricula composed), so ``curriculum.unlock_fraction`` still
    reaches tier-unlock when the L0 controller joins it; a KEY that several have is refused.
    """
    if not isinstance(table, dict):
        return {name: table for name in classes}  # build() says what is wrong with it
    own: dict[str, dict[str, Any]] = {name: {} for name in classes}
    for key, value in table.items():
        if key in classes and isinstance(value, dict):
            continue  # named: applied below, over the bare keys
        if isinstance(value, dict) and key in get_plugins().curricula:
            raise UsageError(
                f"curriculum.{key}: the run does not follow curriculum {key!r} (it follows {SEPARATOR.join(classes)})"
            )
        owners = [name for name, cls in classes.items() if key in {f.name for f in dataclasses.fields(cls.Config)}]
        if len(classes) > 1 and not owners:
            raise UsageError(f"curriculum.{key}: none of the curricula {', '.join(classes)} has this setting")
        if len(owners) > 1:
            raise UsageError(
                f"curriculum.{key}: curricula {' and '.join(owners)} both have this setting; "
                f"name one: curriculum.{owners[0]}.{key}=..."
            )
        own[owners[0] if owners else next(iter(classes))][key] = value
    for name in classes:
        if isinstance(table.get(name), dict):
            own[name].update(table[name])
    return own
