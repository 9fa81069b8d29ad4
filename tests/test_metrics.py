"""Metric formulas on cases whose answer is known (docs/metrics.md)."""

from __future__ import annotations

import pytest
import torch

from saezoo import evaluate as ev
from saezoo.sae import SAE


@pytest.fixture
def x():
    return torch.randn(500, 8, generator=torch.Generator().manual_seed(0)) * 3 + 1


def test_perfect_reconstruction(x):
    assert ev.mse(x, x) == 0
    assert ev.fvu(x, x) == 0
    assert ev.explained_variance(x, x) == 1


def test_predicting_the_mean_explains_nothing(x):
    mean = x.mean(0, keepdim=True).expand_as(x)
    assert ev.explained_variance(x, mean) == pytest.approx(0.0, abs=1e-12)


def test_mse_value():
    x = torch.zeros(2, 2)
    x_hat = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    assert ev.mse(x, x_hat) == pytest.approx(10 / 4)


def test_l0():
    codes = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    assert ev.l0(codes) == pytest.approx(5 / 3)


def test_streaming_equals_single_batch(x):
    x_hat = x + 0.5 * torch.randn_like(x)
    stats = ev.ReconstructionStats()
    for a, b in zip(x.split(64), x_hat.split(64)):
        stats.add(a, b)
    result = stats.result()
    assert result["fvu"] == pytest.approx(ev.fvu(x, x_hat), rel=1e-9)
    assert result["mse"] == pytest.approx(ev.mse(x, x_hat), rel=1e-9)


def test_sparsity_stats_groups():
    codes = torch.tensor([[1.0, 0.0, 2.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    s = ev.SparsityStats(4, [("a", slice(0, 2)), ("b", slice(2, 4))])
    s.add(codes)
    r = s.result()
    assert r["l0"] == 1.5
    assert r["dead_fraction"] == 0.5
    assert r["l0/a"] == 1.0 and r["l0/b"] == 0.5
    assert r["l0_share/a"] == pytest.approx(2 / 3)
    assert r["alive_fraction/a"] == 0.5 and r["alive_fraction/b"] == 0.5
    assert r["dense_fraction"] == 0.5  # latents 0 and 2 fire on > 10 % of tokens


def test_ground_truth_perfect_and_random():
    gen = torch.Generator().manual_seed(0)
    true = torch.nn.functional.normalize(torch.randn(20, 64, generator=gen), dim=-1)
    learned = torch.cat([true[torch.randperm(20, generator=gen)] * 3.0, torch.randn(10, 64, generator=gen)])
    mmc, recovered = ev.mean_max_cosine(true, learned)
    assert mmc == pytest.approx(1.0) and recovered == 1.0
    mmc, recovered = ev.mean_max_cosine(true, torch.randn(30, 64, generator=gen))
    assert mmc < 0.5 and recovered == 0.0


class TwoTiers(SAE):
    """A hand-built two-tier SAE on 3 dimensions: tier "a" (latents 0, 1) codes dimensions 0
    and 1, tier "b" (latent 2) dimension 2; decoding is exact."""

    def __init__(self):
        super().__init__(3, None)

    def encode(self, x):
        return x.clamp_min(0)

    def decode(self, codes):
        return codes

    def decoder_directions(self):
        return torch.eye(3)

    def latent_groups(self):
        return [("a", 2), ("b", 1)]


def test_marginal_ev_is_each_tier_s_share_of_the_variance():
    x = torch.rand(1000, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0, 3.0])
    m = ev.evaluate_sae(TwoTiers(), x.split(128))
    x64 = x.double()
    total = float((x64 - x64.mean(0)).pow(2).sum())
    # zeroing tier b leaves x̂ = (x0, x1, 0): the unexplained part is the sum of x2², and so on
    assert m["explained_variance"] == pytest.approx(1.0, abs=1e-12)
    assert m["marginal_ev/b"] == pytest.approx(float(x64[:, 2].pow(2).sum()) / total, rel=1e-9)
    assert m["marginal_ev/a"] == pytest.approx(float(x64[:, :2].pow(2).sum()) / total, rel=1e-9)
