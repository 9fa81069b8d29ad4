"""Metric formulas on cases whose answer is known (docs/metrics.md)."""

from __future__ import annotations

import pytest
import torch

from saezoo import evaluation as ev
from saezoo.activations.source import GroundTruth
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


class _LinearSAE(SAE):
    """ReLU(x W_enc) W_dec with two groups of two latents: every metric follows by hand."""

    def __init__(self, W_enc, W_dec):
        super().__init__(W_enc.shape[0], None)
        self.W_enc = torch.nn.Parameter(W_enc)
        self.W_dec = torch.nn.Parameter(W_dec)
        self.modes: list[bool] = []

    def encode(self, x):
        self.modes.append(self.training)
        return torch.relu(x @ self.W_enc)

    def decode(self, codes):
        return codes @ self.W_dec

    def decoder_directions(self):
        return self.W_dec

    def latent_groups(self):
        return [("a", 2), ("b", 2)]


def test_evaluate_sae_by_value():
    gen = torch.Generator().manual_seed(0)
    W_enc = torch.tensor([[1.0, 0.5, -1.0, 0.3], [0.2, 1.0, -1.0, -0.4], [0.0, 0.3, -1.0, 1.0]])
    sae = _LinearSAE(W_enc, torch.randn(4, 3, generator=gen))
    batches = [torch.rand(7, 3, generator=gen), torch.rand(5, 3, generator=gen)]  # positive: latent 2 never fires
    truth = GroundTruth(torch.eye(3)[:2], torch.tensor([-1, -1]), ["independent", "independent"], torch.tensor([0, 0]))
    sae.train()
    m = ev.evaluate_sae(sae, batches, truth)
    assert sae.training and not any(sae.modes), "evaluated in training mode, or the mode was not restored"
    x = torch.cat(batches).double()
    with torch.no_grad():
        codes = torch.relu(x @ W_enc.double())
        x_hat = codes @ sae.W_dec.double()
    fired = (codes > 0).double()
    share = fired.mean(0)
    assert m["mse"] == pytest.approx(float((x - x_hat).pow(2).mean()), rel=1e-6)
    fvu = float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert m["fvu"] == pytest.approx(fvu, rel=1e-6) and m["explained_variance"] == pytest.approx(1 - fvu, rel=1e-6)
    assert m["l0"] == pytest.approx(float(fired.sum(-1).mean()))
    assert m["dead_fraction"] == 0.25  # latent 2 only
    assert m["dense_fraction"] == pytest.approx(float((share > ev.DENSE_THRESHOLD).double().mean()))
    assert m["l0/a"] == pytest.approx(float(fired[:, :2].sum(-1).mean()))
    assert m["l0/b"] == pytest.approx(float(fired[:, 2:].sum(-1).mean()))
    assert m["l0_share/a"] == pytest.approx(float(fired[:, :2].sum() / fired.sum()))
    assert (m["alive_fraction/a"], m["alive_fraction/b"]) == (1.0, 0.5)
    assert (m["mean_max_cosine"], m["recovered_fraction"]) == pytest.approx(ev.mean_max_cosine(truth.directions, sae.W_dec))
    assert "mean_max_cosine" not in ev.evaluate_sae(sae, batches)


def test_mean_max_cosine_known_angles():
    true = torch.eye(3)[:2]
    learned = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])  # cosines 1 and 1/sqrt(2)
    mmc, recovered = ev.mean_max_cosine(true, learned)
    assert mmc == pytest.approx((1 + 2**-0.5) / 2) and recovered == 0.5


def test_dense_means_strictly_above_the_threshold():
    codes = torch.zeros(10, 3)
    codes[0, 0] = 1.0  # fires on exactly DENSE_THRESHOLD = 10 % of tokens: not dense
    codes[:2, 1] = 1.0  # 20 %: dense
    s = ev.SparsityStats(3, [("all", slice(0, 3))])
    s.add(codes)
    assert s.result()["dense_fraction"] == pytest.approx(1 / 3)
    assert s.density().tolist() == pytest.approx([0.1, 0.2, 0.0])
    assert "l0/all" not in s.result()  # one group: no per-group keys


def test_empty_stream_and_no_model():
    assert ev.ReconstructionStats().result() == {}
    assert ev.downstream_metrics([object(), object()], object(), 128) == [{}, {}]  # no model: no spliced metrics

    class ModelSource:
        def eval_contexts(self, n_tokens):
            raise AssertionError("downstream_tokens=0 must skip the spliced metrics")

    assert ev.downstream_metrics([object()], ModelSource(), 0) == [{}]


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
