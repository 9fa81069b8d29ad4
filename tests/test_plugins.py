"""The plugin host: built-ins, throw-away plugins, duplicates, misnamed hooks, blocking."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

from saezoo import SAE, SAEOutput, hookimpl, plugins
from saezoo.checkpoint import load_sae
from saezoo.cli import app
from saezoo.errors import UsageError
from saezoo_flat.sae import FlatSAE

from helpers import fast_train_args, run_cli


@dataclass
class TinyConfig:
    width: int = 16
    """Latents."""


class TinySAE(SAE):
    """A linear-ReLU SAE with no sparsity penalty: the smallest valid architecture."""

    Config = TinyConfig

    def __init__(self, d_in, cfg):
        super().__init__(d_in, cfg)
        self.enc = torch.nn.Linear(d_in, cfg.width)
        self.W_dec = torch.nn.Parameter(torch.randn(cfg.width, d_in) * 0.1)

    def encode(self, x):
        return torch.relu(self.enc(x))

    def decode(self, codes):
        return codes @ self.W_dec

    def forward(self, x, knobs=None, dead_mask=None):
        codes = self.encode(x)
        x_hat = self.decode(codes)
        return SAEOutput(x_hat, codes, {"mse": (x - x_hat).pow(2).sum(-1).mean()})

    def decoder_directions(self):
        return self.W_dec

    def fold_input_scale(self, scale):
        self.enc.weight.data *= scale
        self.W_dec.data /= scale


class TinyPlugin:
    __name__ = "tiny_plugin"

    @staticmethod
    @hookimpl
    def register_architectures(register):
        register("tiny", TinySAE)


@pytest.fixture
def tiny_plugin():
    plugins.register_plugin(TinyPlugin, "tiny_plugin")
    try:
        yield
    finally:
        plugins.unregister_plugin(TinyPlugin)


def test_builtins_are_plugins():
    p = plugins.get_plugins()
    assert p.architectures.get("flat") is FlatSAE
    assert "constant" in p.curricula
    names = {row["name"] for row in p.describe()}
    assert {"saezoo_flat", "saezoo_curricula"} <= names
    flat_row = next(r for r in p.describe() if r["name"] == "saezoo_flat")
    assert flat_row["hooks"] == ["register_architectures"]
    assert flat_row["registers"] == {"architectures": ["flat"]}
    assert flat_row["source"] == "built-in"


def test_fixture_plugin_is_listed(tiny_plugin):
    result = CliRunner().invoke(app, ["list", "architectures"])
    assert result.exit_code == 0, result.output
    assert "tiny" in result.output and "tiny_plugin" in result.output
    result = CliRunner().invoke(app, ["plugins"])
    assert "tiny_plugin" in result.output


def test_fixture_plugin_trains(tiny_plugin, tmp_path):
    from saezoo.activations import SyntheticConfig, SyntheticSource
    from saezoo.config.resolve import resolve_run
    from saezoo.trainer import train

    run = resolve_run("tiny", options={"train": {"steps": 10, "batch_size": 256, "eval_tokens": 512}}, sets=["width=32"])
    source = SyntheticSource(SyntheticConfig(d_in=16))
    metrics = train(run, tmp_path / "run", source, progress=False)
    assert metrics["step"] == 10
    # The saved SAE, reloaded through the registry, gives the reported metrics on the held-out tokens.
    sae, _ = load_sae(tmp_path / "run")
    x = source.eval_activations(512)
    with torch.no_grad():
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
    assert metrics["l0"] == pytest.approx(float((codes != 0).sum(-1).double().mean()), rel=1e-6)
    ev = 1 - float((x - x_hat).double().pow(2).sum() / (x - x.mean(0)).double().pow(2).sum())
    assert metrics["explained_variance"] == pytest.approx(ev, abs=1e-5)


def test_plugins_dir_file_trains(tmp_path):
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "my_variant.py").write_text(
        textwrap.dedent(
            """
            from saezoo import hookimpl
            from saezoo_flat.sae import FlatSAE

            class MyFlat(FlatSAE):
                '''The flat SAE under another name.'''

            @hookimpl
            def register_architectures(register):
                register("my-flat", MyFlat)
            """
        )
    )
    listing = run_cli("--plugins-dir", str(plugin_dir), "list", "architectures")
    assert listing.returncode == 0, listing.stderr
    assert "my-flat" in listing.stdout
    trained = run_cli("--plugins-dir", str(plugin_dir), *fast_train_args("my-flat", tmp_path / "r", 10))
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "r" / "sae.safetensors").exists()


def test_duplicate_name_names_both_plugins():
    class Dup:
        __name__ = "dup_plugin"

        @staticmethod
        @hookimpl
        def register_architectures(register):
            register("flat", TinySAE)

    with pytest.raises(UsageError, match="saezoo_flat.*dup_plugin|dup_plugin.*saezoo_flat"):
        plugins.register_plugin(Dup, "dup_plugin")
    assert plugins.get_plugins().architectures.get("flat") is FlatSAE


def test_misnamed_hook_parameter_is_rejected():
    class Misnamed:
        @staticmethod
        @hookimpl
        def register_architectures(registrar):  # the parameter must be called `register`
            registrar("x", TinySAE)

    with pytest.raises(UsageError, match="registrar"):
        plugins.register_plugin(Misnamed, "misnamed")


def test_plugin_raising_at_registration_is_named():
    class Broken:
        @staticmethod
        @hookimpl
        def register_architectures(register):
            raise RuntimeError("boom")

    with pytest.raises(UsageError, match="'broken'.*boom"):
        plugins.register_plugin(Broken, "broken")


def test_unknown_name_lists_and_suggests():
    with pytest.raises(UsageError) as info:
        plugins.get_plugins().architectures.get("flta")
    message = str(info.value)
    assert "did you mean 'flat'" in message and "available:" in message


def test_block_plugins(monkeypatch):
    monkeypatch.setenv("SAEZOO_BLOCK_PLUGINS", "saezoo_flat")
    p = plugins.Plugins(plugins.make_plugin_manager())
    assert "flat" not in p.architectures


def test_entry_points_autoload_can_be_disabled(monkeypatch):
    calls = []
    monkeypatch.setattr(plugins.importlib.metadata, "entry_points", lambda group: calls.append(group) or [])
    plugins.make_plugin_manager()
    assert calls == []
    monkeypatch.delenv("SAEZOO_DISABLE_PLUGIN_AUTOLOAD")
    plugins.make_plugin_manager()
    assert calls == ["saezoo"]
