"""`saezoo compare`: one stream for every variant, one report; and the registry."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pytest
import torch

from saezoo import catalog, hookimpl, plugins
from saezoo.compare import resolve_variants, run_compare
from saezoo.errors import UsageError
from saezoo_flat.sae import FlatConfig, FlatSAE

from activations_helpers import corpus_file, llama_dir  # noqa: F401  (fixtures)
from helpers import FAST_SETS, assert_one_line_error, run_cli

SEEN: dict[str, list[str]] = {}


@dataclass
class RecorderConfig(FlatConfig):
    expansion_factor: int = 2
    """Latents per input dimension."""
    l1_coefficient: float = 5.0
    """L1 weight."""
    tag: str = "a"
    """Which list of SEEN the batches go to."""


class Recorder(FlatSAE):
    """A flat SAE that records a hash of every training batch it sees."""

    Config = RecorderConfig

    def forward(self, x, knobs=None, dead_mask=None):
        if self.training and x.requires_grad is False:
            SEEN.setdefault(self.cfg.tag, []).append(hashlib.sha1(x.detach().cpu().numpy().tobytes()).hexdigest())
        return super().forward(x, knobs, dead_mask)


class RecorderPlugin:
    @staticmethod
    @hookimpl
    def register_architectures(register):
        register("recorder", Recorder)


@pytest.fixture
def recorder():
    SEEN.clear()
    plugins.register_plugin(RecorderPlugin, "recorder_plugin")
    try:
        yield
    finally:
        plugins.unregister_plugin(RecorderPlugin)


def test_every_variant_sees_the_same_batches(recorder, tmp_path):
    from saezoo.activations import synthetic

    calls = []
    original = synthetic.SyntheticSource._generate

    def counting(self, n, stream):
        calls.append(stream)
        return original(self, n, stream)

    synthetic.SyntheticSource._generate = counting
    try:
        variants = resolve_variants(
            ["recorder", "recorder", "flat"], "constant", None, None,
            {"data": {"source": "synthetic"}, "train": {"steps": 12}}, FAST_SETS, None,
        )
        # Both recorders share one tag: give the second its own list.
        variants[1].run.sae.tag = "b"
        run_compare(variants, tmp_path / "cmp", progress=False)
    finally:
        synthetic.SyntheticSource._generate = original
    assert len(SEEN["a"]) == len(SEEN["b"]) == 12
    assert SEEN["a"] == SEEN["b"]  # same tokens, same order
    training_streams = [s for s in calls if s < 1 << 40]
    # one init sample (stream 0) + one production per step: not one per variant
    assert len(training_streams) == 1 + 12


def test_compare_on_a_model_shares_the_spliced_runs(tmp_path, llama_dir, corpus_file, monkeypatch):  # noqa: F811
    """On a model source every variant gets spliced CE/KL from one set of runs: the clean
    and zero-ablated numbers are the same for all, and the layers above the hook see
    clean + one run per variant + zero-ablated rows."""
    from saezoo.activations.model_source import ModelSource

    rows = []
    original = ModelSource.eval_contexts

    def contexts(self, n):
        block = self.model.get_submodule("model.layers.3")
        block.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
        return original(self, n)

    data = {"source": "model", "model": str(llama_dir), "dataset": str(corpus_file), "hook": "model.layers.2",
            "context_length": 32, "harvest_tokens": 4096, "cache_dir": str(tmp_path / "cache")}
    train = {"steps": 8, "batch_size": 128, "eval_tokens": 512, "downstream_tokens": 256}
    variants = resolve_variants(["flat", "topk"], "constant", None, None, {"data": data, "train": train}, [], None)
    monkeypatch.setattr(ModelSource, "eval_contexts", contexts)
    report = run_compare(variants, tmp_path / "cmp", progress=False)
    flat, topk = (report["variants"][label]["metrics"] for label in ("flat", "topk"))
    for name in ("ce_clean", "ce_zero", "kl_zero", "downstream_positions"):
        assert flat[name] == topk[name], name
    assert flat["downstream_positions"] > 0 and flat["ce_sae"] != topk["ce_sae"]
    # Batches of up to 8 contexts, each 4 runs (clean, flat, topk, zero) above the hook, and only here:
    # the runs' own final evaluations leave the spliced metrics to compare.
    assert rows and max(rows) == 4 * 8 and all(r % 4 == 0 for r in rows)


def test_set_with_a_spec_prefix_applies_to_that_variant_only():
    base = {"data": {"source": "synthetic"}}
    flat, topk, flat2 = resolve_variants(
        ["flat", "topk", "flat"], "constant", None, None, base,
        ["train.lr=0.002", "flat.sae.expansion_factor=3", "flat#2.sae.l1_coefficient=7"], None,
    )
    assert flat.run.sae.expansion_factor == flat2.run.sae.expansion_factor == 3
    assert topk.run.sae.expansion_factor != 3
    assert flat2.run.sae.l1_coefficient == 7 != flat.run.sae.l1_coefficient
    assert flat.run.train.lr == topk.run.train.lr == flat2.run.train.lr == 0.002
    with pytest.raises(UsageError, match="shared stream"):
        resolve_variants(["flat", "topk"], "constant", None, None, base, ["flat.train.steps=5"], None)


@pytest.mark.slow
def test_compare_synthetic_report(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "hsae", "flat", "--source", "synthetic", "--steps", "60", "--out", str(out), "-q"]
    for s in FAST_SETS:
        args += ["--set", s]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report["variants"]) == {"hsae", "flat"}
    flat = report["variants"]["flat"]["metrics"]
    hsae = report["variants"]["hsae"]["metrics"]
    assert "ccr/tier2" in hsae and "ccr_chance/tier2" in hsae
    assert "ccr/group2" in flat  # the flat SAE grouped by firing frequency into hsae's tier sizes
    # the inferred tree for both, the structural one for the architecture that has one
    for key in ("tree_f1/inferred/depth1", "consistency/inferred", "absorption/depth1"):
        assert key in hsae and key in flat, key
    assert "tree_f1/structural/depth1" in hsae and "consistency/structural" in hsae
    assert not any("structural" in key for key in flat)
    for png in ("training_curves.png", "ev_vs_l0.png", "tier_activity.png", "feature_density.png"):
        assert (out / png).stat().st_size > 10_000, png
    md = (out / "report.md").read_text()
    assert "| metric | hsae | flat |" in md and "| explained_variance |" in md
    assert "| tree_f1/inferred/depth1 |" in md and "| consistency/structural |" in md
    assert (out / "hsae" / "tb").is_dir() and (out / "flat" / "tb").is_dir()
    assert "explained_variance" in proc.stdout


def test_registry_round_trip_and_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEZOO_REGISTRY", str(tmp_path / "registry"))
    run = tmp_path / "run"
    args = ["train", "flat", "--source", "synthetic", "--steps", "10", "--out", str(run), "-q", "--register", "tiny-flat"]
    for s in FAST_SETS:
        args += ["--set", s]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    entry = catalog.get_entry("tiny-flat")
    assert entry.architecture == "flat" and entry.metrics["explained_variance"] > -1
    sae = catalog.load_entry(entry)
    x = torch.randn(8, 64)
    from saezoo.checkpoint import load_sae

    torch.testing.assert_close(sae.encode(x), load_sae(run)[0].encode(x))
    listing = run_cli("registry", "list")
    assert "tiny-flat" in listing.stdout
    # A comparison evaluates the registry entry on the same tokens instead of retraining it.
    cmp_args = ["compare", "flat", "tiny-flat", "--source", "synthetic", "--steps", "10", "--out", str(tmp_path / "cmp"), "-q"]
    for s in FAST_SETS:
        cmp_args += ["--set", s]
    proc = run_cli(*cmp_args)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["variants"]["tiny-flat"]["registry_entry"] == "tiny-flat"
    # Altered weights and a broken manifest are clear errors.
    weights = entry.weights_file()
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    assert_one_line_error(run_cli("registry", "show", "tiny-flat"), "does not match its sha256")
    entry.manifest.write_text(entry.manifest.read_text().replace("d_in = 64", 'd_in = "x"'))
    assert_one_line_error(run_cli("registry", "show", "tiny-flat"), "field 'd_in' must be a int")


def test_shipped_registry_entries_load_and_match_their_checksums(monkeypatch):
    """The entries in registry/ read, pass their sha256 check and hold the measured metrics."""
    monkeypatch.delenv("SAEZOO_REGISTRY", raising=False)
    entries = {e.name: e for e in catalog.list_entries()}
    assert {"smollm2-flat", "smollm2-hsae"} <= set(entries)
    for entry in entries.values():
        sae = catalog.load_entry(entry)
        assert sae.d_in == entry.d_in == 576
        assert entry.data["model"] == "smollm2-135m" and entry.data["hook"] == "model.layers.15"
        assert entry.metrics["explained_variance"] > 0.8 and entry.metrics["l0"] < 100
    assert [name for name, _ in catalog.load_entry(entries["smollm2-hsae"]).latent_groups()] == ["tier1", "tier2", "tier3"]
