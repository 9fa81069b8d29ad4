"""Documentation that must keep up with the code."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from saezoo import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    guide = (ROOT / "plugins" / "README.md").read_text()
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"### {hook}({params})" in guide, f"plugins/README.md lacks a section for {hook}({params})"
    assert getattr(hookspecs, hook).__doc__, f"{hook} has no docstring"


def test_every_core_metric_is_documented():
    metrics_doc = (ROOT / "docs" / "metrics.md").read_text()
    for name in ["mse", "fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction", "mean_max_cosine", "recovered_fraction", "marginal_ev", "alive_fraction", "l0_share"]:
        assert re.search(rf"`{name}", metrics_doc), f"docs/metrics.md does not define {name}"


def test_readme_opens_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make train" in first_block and "make test" in first_block
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_plugin_metric_is_reported():
    import torch

    from saezoo import hookimpl, plugins
    from saezoo.checkpoint import build_sae
    from saezoo.evaluation import evaluate_sae

    class CosinePlugin:
        @staticmethod
        @hookimpl
        def register_metrics(register):
            register("cosine", lambda b: {"mean": float(torch.cosine_similarity(b.x, b.x_hat).mean())})

    plugins.register_plugin(CosinePlugin, "cosine_plugin")
    try:
        # The SAE's initialisation, seeded (unseeded, its two means came within 1e-3 in 1 run of
        # 6) without changing the random state of the tests that run after this one.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            sae = build_sae("flat", 8, {})
        gen = torch.Generator().manual_seed(0)
        batches = [torch.randn(32, 8, generator=gen), torch.randn(16, 8, generator=gen)]
        metrics = evaluate_sae(sae, batches)
        # Independent reference: the per-batch means, weighted by each batch's token count.
        with torch.no_grad():
            means = [float(torch.cosine_similarity(x, sae.decode(sae.encode(x))).mean()) for x in batches]
        assert metrics["cosine/mean"] == pytest.approx((32 * means[0] + 16 * means[1]) / 48, rel=1e-6)
        assert means[0] != pytest.approx(means[1], abs=1e-3)  # so the weighting is seen
    finally:
        plugins.unregister_plugin(CosinePlugin)
