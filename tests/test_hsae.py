"""The hierarchical SAE plugin: shapes, presets, fold, tier locking, importance weights."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saezoo.activations.synthetic import SyntheticConfig, SyntheticSource
from saezoo.config.resolve import resolve_run
from saezoo.evaluation import evaluate_sae
from saezoo.plugins import get_plugins
from saezoo_hsae.sae import HSAE, HSAEConfig

D_IN = 16
PAPER = HSAE.presets["paper"]["sae"]
DENSE = HSAE.presets["dense"]["sae"]


def make(d_in: int = D_IN, seed: int = 0, **overrides) -> HSAE:
    """A dense-coupling HSAE (the ``dense`` preset, then ``overrides``)."""
    torch.manual_seed(seed)
    return HSAE(d_in, dataclasses.replace(HSAEConfig(), **{**DENSE, **overrides}))


def paper(d_in: int = D_IN) -> HSAE:
    return make(d_in, **PAPER)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(128, D_IN, generator=torch.Generator().manual_seed(1))


def test_registered():
    assert get_plugins().architectures.get("hsae") is HSAE


def test_shapes_groups_and_losses(x):
    sae = make()
    sae.init_from_data(x)
    out = sae(x)
    assert sae.latent_groups() == [("tier1", 32), ("tier2", 48), ("tier3", 64)]
    assert out.codes.shape == (128, 144)
    assert out.x_hat.shape == x.shape
    assert sae.decoder_directions().shape == (144, D_IN)
    assert sorted(out.losses) == ["l1/tier1", "l1/tier2", "l1/tier3", "mse"]
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.losses.values())
    assert sae.tier_parents(2).shape == (48, 32)
    assert sae.tier_parents(3).shape == (64, 48)
    with pytest.raises(ValueError, match="tier must be in 2..3"):
        sae.tier_parents(1)
    # encode/decode is the forward pass
    torch.testing.assert_close(sae.decode(sae.encode(x)), out.x_hat)


def test_mse_is_summed_over_dims_and_averaged_over_tokens(x):
    sae = make()
    out = sae(x)
    expected = (out.x_hat - x).pow(2).sum() / x.shape[0]
    assert out.losses["mse"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_sparsity_knobs_scale_each_tier(x):
    sae = make()
    with torch.no_grad():
        base = sae(x).losses
        scaled = sae(x, {"sparsity_scale": 2.0, "tier_sparsity_scale": [1.0, 0.0, 3.0]}).losses
    assert float(scaled["l1/tier1"]) == pytest.approx(2 * float(base["l1/tier1"]), rel=1e-5)
    assert float(scaled["l1/tier2"]) == 0.0
    assert float(scaled["l1/tier3"]) == pytest.approx(6 * float(base["l1/tier3"]), rel=1e-5)
    with pytest.raises(ValueError, match="tier_sparsity_scale needs 3"):
        sae(x, {"tier_sparsity_scale": [1.0]})
    with pytest.raises(ValueError, match="active_tiers"):
        sae(x, {"active_tiers": 4})


@pytest.mark.parametrize("overrides", [{}, PAPER, {"decoder_norm": "penalty_weighted", "layernorm": True}])
def test_fold_input_scale(x, overrides):
    sae = make(**overrides)
    sae.init_from_data(x)
    sae.eval()
    scale = 7.5
    with torch.no_grad():
        codes = sae.encode(x * scale)
        x_hat = sae(x * scale).x_hat / scale
        sae.fold_input_scale(scale)
        torch.testing.assert_close(sae.encode(x), codes, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sae(x).x_hat, x_hat, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
@pytest.mark.parametrize("overrides", [{}, PAPER])
def test_locked_tiers_stay_bit_identical(x, optimizer, overrides):
    sae = make(**overrides)
    sae.init_from_data(x)
    locked = {n: p.detach().clone() for n, p in sae.named_parameters() if not n.startswith("tiers.0.")}
    tier1 = sae.tiers[0].W_enc.detach().clone()
    opt_cls = torch.optim.AdamW if optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(sae.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        out = sae(x, {"active_tiers": 1})
        assert not out.codes[:, 32:].any()
        opt.zero_grad(set_to_none=False)  # zero grads, not None: after_backward must unset them
        sum(out.losses.values()).backward()
        sae.after_backward()
        opt.step()
        sae.after_step()
    for name, before in locked.items():
        if name != "b_dec":
            assert torch.equal(dict(sae.named_parameters())[name], before), name
    assert not torch.equal(sae.tiers[0].W_enc, tier1)


def test_gradient_groups_are_per_tier():
    sae = paper()
    groups = sae.gradient_groups()
    assert list(groups) == ["tier1", "tier2", "tier3"]
    assert [limit for _, limit in groups.values()] == [1.0, 2.0, 5.0]
    grouped = [p for params, _ in groups.values() for p in params]
    assert len(grouped) == len(set(map(id, grouped))) == len(list(sae.parameters()))
    assert all(limit is None for _, limit in make().gradient_groups().values())


def test_paper_preset_has_the_papers_hyper_parameters():
    run = resolve_run("hsae", preset="paper")
    t = run.train
    assert (t.optimizer, t.lr, t.weight_decay, t.warmup_steps, t.warmup_shape) == ("adamw", 3e-4, 1e-4, 2000, "cubic")
    assert (t.normalize, t.batch_size) == (False, 2048)
    s = run.sae
    assert (s.sparsity_coefficient, s.importance, s.init, s.decoder_norm, s.layernorm) == (
        0.04,
        "learned_softmax",
        "xavier",
        "free",
        True,
    )
    assert s.data_init_bias is False and s.tier_grad_clip == [1.0, 2.0, 5.0]
    sae = HSAE(2048, s)  # Gemma-2B's width: the paper's tiers come back exactly
    assert sae.tier_widths == [768, 1536, 2304]
    torch.testing.assert_close(sae.importance_weights(), torch.tensor([0.1, 0.3, 0.6]))
    assert all(isinstance(p, torch.nn.Parameter) for p in (t.importance_logit for t in sae.tiers))
    assert [type(t.norm).__name__ for t in sae.tiers] == ["Identity", "LayerNorm", "LayerNorm"]


def test_default_decoders_stay_unit_norm(x):
    sae = make()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        sum(sae(x).losses.values()).backward()
        sae.after_backward()
        opt.step()
        sae.after_step()
    torch.testing.assert_close(sae.decoder_directions().norm(dim=-1), torch.ones(144))


def test_decoder_transpose_init_starts_near_the_input(x):
    sae = make()
    sae.init_from_data(x)
    centred = x - sae.b_dec
    with torch.no_grad():
        codes = sae._tier_codes(x, 3)
    for h, tier in zip(codes, sae.tiers):
        size = (h @ tier.W_dec).norm(dim=-1).mean()
        assert size.item() == pytest.approx(centred.norm(dim=-1).mean().item() / 3, rel=1e-4)


def test_balance_rule_penalises_the_overactive_tier():
    sae = make()
    sae._last_l1 = [10.0, 0.0, 1.0]  # tier 1 far above its width share, tier 2 silent
    before = sae.importance_weights()
    sae.after_step()
    after = sae.importance_weights()
    assert after[0] > before[0] and after[1] < before[1]
    assert float(after.sum()) == pytest.approx(1.0)


def train_synthetic(sae: HSAE, steps: int, lr: float) -> tuple[SyntheticSource, torch.Tensor]:
    """Train on a small synthetic source; return it and the normalisation scale used."""
    source = SyntheticSource(SyntheticConfig(d_in=D_IN, n_parents=2, n_independent=16))
    batches = source.batches(512)
    sample = next(batches)
    scale = (D_IN / sample.pow(2).sum(-1).mean()).sqrt()
    sae.init_from_data(sample * scale)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    for _ in range(steps):
        out = sae(next(batches) * scale)
        opt.zero_grad()
        sum(out.losses.values()).backward()
        sae.after_backward()
        opt.step()
        sae.after_step()
    return source, scale


def test_balanced_importance_does_not_collapse_and_reconstructs():
    sae = make()
    source, scale = train_synthetic(sae, steps=150, lr=3e-3)
    weights = sae.importance_weights()
    assert float(weights.min()) > 0.15, weights
    assert min(sae._last_l0) > 0
    # Held-out reconstruction and sparsity (measured: explained variance 0.978, L0 9.1-9.6 of
    # 144 latents on seeds 0 and 1); an HSAE whose tiers do not learn cannot meet them.
    metrics = evaluate_sae(sae, [source.eval_activations(4096) * scale])
    assert metrics["explained_variance"] > 0.9, metrics
    assert metrics["l0"] < 30, metrics
    assert all(metrics[f"l0/tier{i}"] > 0.5 for i in (1, 2, 3)), metrics


def test_fixed_importance_never_moves():
    sae = make(importance="fixed", importance_init=[0.1, 0.3, 0.6])
    train_synthetic(sae, steps=5, lr=1e-2)
    torch.testing.assert_close(sae.importance_weights(), torch.tensor([0.1, 0.3, 0.6]))
    assert not any(n.endswith("importance_logit") for n, _ in sae.named_parameters())


def test_learned_importance_collapses_onto_the_cheapest_tier():
    # The paper's weights minimise the loss they weight, so all the mass flows to the tier
    # whose L1 is smallest, whatever the tiers are for: the collapse the default avoids.
    sae = make(importance="learned_softmax", importance_init=[0.1, 0.3, 0.6])
    x = torch.randn(256, D_IN)
    with torch.no_grad():
        l1 = [(v / w).item() for v, w in zip(list(sae(x).losses.values())[1:], sae.importance_weights())]
    opt = torch.optim.Adam([t.importance_logit for t in sae.tiers], lr=0.1)
    for _ in range(100):
        opt.zero_grad()
        sum(sae(x).losses.values()).backward()
        opt.step()
    assert sae.importance_weights()[min(range(3), key=l1.__getitem__)].item() > 0.95


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tier_expansion": [1.0, 2.0], "importance_init": [1.0, 1.0, 1.0]}, "importance_init needs 2"),
        ({"tier_grad_clip": [1.0]}, "tier_grad_clip needs 3"),
        ({"tier_expansion": []}, "tier_expansion"),
        ({"sparsity_coefficient": -1.0}, "sparsity_coefficient"),
    ],
)
def test_invalid_configs(overrides, message):
    with pytest.raises(ValueError, match=message):
        make(**overrides)


def test_two_tiers_and_default_importance():
    sae = make(tier_expansion=[2.0, 2.0])
    assert sae.latent_groups() == [("tier1", 32), ("tier2", 32)]
    torch.testing.assert_close(sae.importance_weights(), torch.tensor([0.5, 0.5]))
