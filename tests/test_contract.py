"""The architecture contract, for every registered architecture (a new plugin is tested here
automatically)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saezoo import SAE, checkpoint
from saezoo.config import build as build_config
from saezoo.plugins import get_plugins
from saezoo.sae import group_slices

D_IN = 16


def all_architectures():
    return get_plugins().architectures.names()


def build(name: str) -> SAE:
    torch.manual_seed(0)
    return checkpoint.build_sae(name, D_IN, {})


@pytest.fixture
def x():
    return torch.randn(64, D_IN, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", all_architectures())
def test_shapes_and_finite_losses(name, x):
    sae = build(name)
    sae.init_from_data(x)
    out = sae(x, {}, torch.zeros(sae.width, dtype=torch.bool))
    assert out.x_hat.shape == x.shape
    assert out.codes.shape == (64, sae.width)
    assert sae.decoder_directions().shape == (sae.width, D_IN)
    assert sum(size for _, size in sae.latent_groups()) == sae.width
    assert group_slices(sae)[-1][1].stop == sae.width
    assert out.losses and all(torch.isfinite(v) and v.dim() == 0 for v in out.losses.values())
    sum(out.losses.values()).backward()
    sae.after_backward()
    sae.after_step()
    assert dataclasses.is_dataclass(sae.cfg)


@pytest.mark.parametrize("name", all_architectures())
def test_fold_input_scale(name, x):
    sae = build(name)
    sae.init_from_data(x)
    sae.eval()
    scale = 0.37
    with torch.no_grad():
        codes = sae.encode(x * scale)
        x_hat = sae.decode(codes) / scale
        sae.fold_input_scale(scale)
        torch.testing.assert_close(sae.encode(x), codes, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sae.decode(sae.encode(x)), x_hat, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", all_architectures())
def test_save_load_round_trip(name, x, tmp_path):
    sae = build(name)
    sae.init_from_data(x)
    sae.eval()
    header = checkpoint.run_header(name, D_IN, {"sae": dataclasses.asdict(sae.cfg)}, {"source": "test"})
    checkpoint.write_json(tmp_path / "cfg.json", header)
    checkpoint.save_sae(tmp_path, sae)
    loaded, cfg = checkpoint.load_sae(tmp_path)
    # The registered class, or the subclass it builds for this config (hsae's couplings).
    assert isinstance(loaded, get_plugins().architectures.get(cfg["architecture"])) and type(loaded) is type(sae)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)), rtol=0, atol=0)


@pytest.mark.parametrize("name", all_architectures())
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
