"""A whole run's :class:`RunConfig`: the plugins' sections found by name and every layer applied."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from saezoo.config import DataConfig, RunConfig, TrainConfig
from saezoo.config.coerce import build
from saezoo.config.layers import merge, parse_set, read_toml
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
    return _build_run(data["architecture"], data.get("preset"), data.get("curriculum_name", "constant"), data)


def _build_run(architecture: str, preset: str | None, curriculum: str, tables: dict[str, Any]) -> RunConfig:
    """The one builder of a RunConfig: each section's dataclass (the plugins' found by name) from its table."""
    plugins = get_plugins()
    sae_cls = plugins.architectures.get(architecture)
    curriculum_cls = plugins.curricula.get(curriculum)
    return RunConfig(
        architecture=architecture,
        preset=preset,
        curriculum_name=curriculum,
        train=build(TrainConfig, tables.get("train", {}), "train"),
        data=build(DataConfig, tables.get("data", {}), "data"),
        sae=build(sae_cls.Config, tables.get("sae", {}), "sae"),
        curriculum=build(curriculum_cls.Config, tables.get("curriculum", {}), "curriculum"),
    )
