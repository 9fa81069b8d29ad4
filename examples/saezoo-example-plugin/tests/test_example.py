"""Tests of the example plugin, runnable on their own: ``pytest examples/saezoo-example-plugin/tests``
(from saezoo's checkout) or ``pytest`` in this folder. They check what saezoo's own contract
test checks for every built-in architecture, and a short training run."""

from __future__ import annotations

import dataclasses
import importlib.metadata

import pytest
import saezoo_example
import torch
from saezoo_example.sae import TiedConfig, TiedSAE

from saezoo import checkpoint, plugins
from saezoo.config.fields import field_docs

NAME = "example-tied"
D_IN = 16


@pytest.fixture(autouse=True)
def registered(monkeypatch, tmp_path):
    """The plugin registered in code, entry points off (so it is not loaded twice), and a
    private activation cache."""
    monkeypatch.setenv("SAEZOO_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("SAEZOO_CACHE", str(tmp_path / "cache"))
    plugins.register_plugin(saezoo_example, "example")
    try:
        yield
    finally:
        plugins.unregister_plugin(saezoo_example)


@pytest.fixture
def x():
    return torch.randn(64, D_IN, generator=torch.Generator().manual_seed(1))


def build() -> TiedSAE:
    torch.manual_seed(0)
    return checkpoint.build_sae(NAME, D_IN, {})


def test_entry_point_is_declared():
    try:
        dist = importlib.metadata.distribution("saezoo-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("saezoo-example-plugin is not installed (pip install -e examples/saezoo-example-plugin)")
    (ep,) = [ep for ep in dist.entry_points if ep.group == "saezoo"]
    assert (ep.name, ep.value) == ("example", "saezoo_example")
    assert ep.load() is saezoo_example


def test_registered_under_its_name():
    arch = plugins.get_plugins().registries["architectures"].entries[NAME]
    assert arch.obj is TiedSAE and arch.plugin == "example"


def test_every_config_field_is_documented():
    docs = field_docs(TiedConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(TiedConfig)}
    assert all(docs.values())


def test_shapes_losses_and_unit_norm(x):
    sae = build()
    sae.init_from_data(x)
    out = sae(x, {"sparsity_scale": 0.5})
    assert out.x_hat.shape == x.shape and out.codes.shape == (64, sae.width) and sae.width == 4 * D_IN
    assert (out.codes >= 0).all()
    assert set(out.losses) == {"mse", "l1"} and all(torch.isfinite(v) and v.dim() == 0 for v in out.losses.values())
    sum(out.losses.values()).backward()
    sae.after_backward()
    with torch.no_grad():
        sae.W.sub_(0.1 * sae.W.grad)
    sae.after_step()
    torch.testing.assert_close(sae.W.norm(dim=-1), torch.ones(sae.width))


def test_encoder_is_the_decoder_transpose(x):
    sae = build()
    assert {name for name, _ in sae.named_parameters()} == {"W", "b_enc", "b_dec"}
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.b_enc.zero_()
        one_hot = torch.zeros(1, sae.width)
        one_hot[0, 3] = 2.0
        # A latent's own decoder direction activates it by its norm (1) times the code.
        assert sae.encode(sae.decode(one_hot))[0, 3] == pytest.approx(2.0)


def test_fold_input_scale(x):
    sae = build()
    sae.init_from_data(x)
    scale = 0.37
    with torch.no_grad():
        codes = sae.encode(x * scale)
        x_hat = sae.decode(codes) / scale
        sae.fold_input_scale(scale)
        torch.testing.assert_close(sae.encode(x), codes, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sae.decode(sae.encode(x)), x_hat, rtol=1e-4, atol=1e-4)


def test_save_load_round_trip(x, tmp_path):
    sae = build()
    sae.init_from_data(x)
    sae.fold_input_scale(2.5)
    header = checkpoint.run_header(NAME, D_IN, {"sae": dataclasses.asdict(sae.cfg)}, {"source": "test"})
    checkpoint.write_json(tmp_path / "cfg.json", header)
    checkpoint.save_sae(tmp_path, sae)
    loaded, _ = checkpoint.load_sae(tmp_path)
    assert type(loaded) is TiedSAE
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)), rtol=0, atol=0)


def test_exports_to_saelens_and_loads_back(x, tmp_path):
    """The export hook: SAELens's files, read back by saezoo, encode and decode as this SAE does."""
    from saezoo import export

    sae = build()
    sae.init_from_data(x)
    sae.fold_input_scale(2.5)
    header = checkpoint.run_header(NAME, D_IN, {"sae": dataclasses.asdict(sae.cfg)}, {"source": "test"})
    checkpoint.write_json(tmp_path / "run" / "cfg.json", header)
    checkpoint.save_sae(tmp_path / "run", sae)
    assert export.export_run(tmp_path / "run", tmp_path / "out")["saelens_architecture"] == "standard"
    back, _ = export.import_saelens(tmp_path / "out")
    with torch.no_grad():
        codes = sae.encode(x)
        assert (codes > 0).any()
        torch.testing.assert_close(back.encode(x), codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back.decode(back.encode(x)), sae.decode(codes), rtol=1e-5, atol=1e-5)


def test_trains_on_synthetic_features(tmp_path):
    """A short run through saezoo's own trainer learns a sparse code that explains the data."""
    from saezoo.activations.factory import build_source
    from saezoo.config.resolve import resolve_run
    from saezoo.trainer import train

    sets = ["train.batch_size=1024", "train.eval_tokens=4096", "train.eval_every=0", "train.warmup_steps=10"]
    run = resolve_run(NAME, options={"data": {"source": "synthetic"}, "train": {"steps": 150, "device": "cpu"}}, sets=sets)
    source = build_source(run.data, tokens=run.train.steps * run.train.batch_size, seed=run.train.seed)
    metrics = train(run, tmp_path / "run", source, progress=False)
    assert metrics["explained_variance"] > 0.8, metrics  # about 0.93 at 150 steps
    assert metrics["l0"] < 64, metrics  # a sparse code: about 33 latents of 256 per token
    # No recovery bar: 150 steps of a tied SAE find few true directions at cosine > 0.9.
    loaded, cfg = checkpoint.load_sae(tmp_path / "run")
    assert cfg["architecture"] == NAME and float(loaded.input_scale) != 1.0  # the normalisation was folded in
