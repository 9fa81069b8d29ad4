"""The architecture contract (saezoo/contract.py) on every built-in architecture; plugin
authors run the same checks on theirs with ``saezoo check ARCH`` (tests/test_check.py)."""

from __future__ import annotations

import pytest
import torch

from saezoo import checkpoint, contract
from saezoo.config.coerce import build as build_config
from saezoo.plugins import get_plugins

D_IN = 16


@pytest.mark.parametrize("check", sorted(contract.CHECKS))
@pytest.mark.parametrize("name", get_plugins().architectures.names())
def test_contract(name, check):
    try:
        contract.CHECKS[check](name)
    except contract.Skip as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", get_plugins().architectures.names())
def test_known_before_it_is_built(name):
    """What compare checks before any activation exists: the class a config builds (its
    knobs), and the parameter count, from an SAE built on the meta device (no memory)."""
    cls = get_plugins().architectures.get(name)
    for preset in [None, *(getattr(cls, "presets", None) or {})]:
        cfg = build_config(cls.Config, cls.presets[preset].get("sae", {}) if preset else {}, "sae")
        real = checkpoint.build_sae(name, D_IN, cfg)
        with torch.device("meta"):
            meta = checkpoint.build_sae(name, D_IN, cfg)
        assert cls.built_class(cfg) is type(real) is type(meta), preset
        assert [(n, p.shape) for n, p in meta.named_parameters()] == [(n, p.shape) for n, p in real.named_parameters()], preset
