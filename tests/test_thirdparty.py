"""A third-party architecture gets what a built-in gets, through the SAE contract alone:
SAELens export and import, and ``compare --target-l0`` (tests/thirdparty_plugin.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import thirdparty_plugin
from saezoo import checkpoint, export, plugins
from saezoo.comparison import resolve_variants, run_compare
from saezoo.errors import UsageError

from helpers import FAST_SETS


@pytest.fixture
def thirdparty():
    plugins.register_plugin(thirdparty_plugin, "thirdparty_plugin")
    try:
        yield
    finally:
        plugins.unregister_plugin(thirdparty_plugin)


def write_run(path, arch: str, d_in: int = 16):
    torch.manual_seed(0)
    sae = checkpoint.build_sae(arch, d_in, {})
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 1.0)
    data = {"source": "synthetic", "synthetic": {"d_in": d_in}}
    header = checkpoint.run_header(arch, d_in, {"sae": dataclasses.asdict(sae.cfg), "data": data, "train": {}}, data)
    checkpoint.write_json(path / "cfg.json", header)
    checkpoint.save_sae(path, sae)
    return sae.eval()


def test_a_plain_relu_sae_exports_itself_and_loads_back(thirdparty, tmp_path):
    sae = write_run(tmp_path / "run", "plain-relu")
    summary = export.export_run(tmp_path / "run", tmp_path / "out")
    assert summary["saelens_architecture"] == "standard"
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["metadata"]["saezoo"]["architecture"] == "plain-relu"
    back, info = export.import_saelens(tmp_path / "out")
    assert info["architecture"] == "flat"  # the registered reader of SAELens's "standard"
    x = torch.randn(200, 16, generator=torch.Generator().manual_seed(5)) * 2
    with torch.no_grad():
        codes = sae.encode(x)
        assert (codes > 0).float().mean() > 0.1  # a test that sees codes, not zeros
        torch.testing.assert_close(back.encode(x), codes, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(back.decode(back.encode(x)), sae.decode(codes), rtol=1e-5, atol=1e-5)


def test_a_mapping_that_does_not_hold_is_refused_before_writing(thirdparty, tmp_path):
    write_run(tmp_path / "run", "shifted")
    with pytest.raises(UsageError, match="written codes differ.*mapping of Shifted .SAE.to_saelens. does not hold"):
        export.export_run(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_architecture_without_a_mapping_is_refused(thirdparty, tmp_path):
    write_run(tmp_path / "run", "keep-n")
    with pytest.raises(UsageError, match="'keep-n' .KeepN. has no SAELens counterpart.*standard->flat"):
        export.export_run(tmp_path / "run", tmp_path / "out")


def test_target_l0_steers_a_declared_control(thirdparty, tmp_path):
    options = {"data": {"source": "synthetic"}, "train": {"steps": 5}}
    variants = resolve_variants(["keep-n", "flat"], "constant", 7, None, options, FAST_SETS, None)
    keep, flat = (v.run for v in variants)
    assert keep.sae.keep == 7 and keep.curriculum_name == "constant"
    assert flat.curriculum_name == "target-l0"  # the default control of a penalised architecture
    report = run_compare(variants[:1], tmp_path / "cmp", progress=False)
    assert report["variants"]["keep-n"]["metrics"]["l0"] == pytest.approx(7.0)
    # No variant has tiers: no tier plot, and report.md links none.
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "![feature density](feature_density.png)" in md and "tier_activity" not in md
    assert not (tmp_path / "cmp" / "tier_activity.png").exists()
