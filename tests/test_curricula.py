"""The built-in curricula: schedules on known steps, the L0 controller, compatibility, resume."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pluggy
import pytest
import torch

import saezoo_curricula
from saezoo import SAE, UsageError, hookspecs
from saezoo.activations.factory import build_source
from saezoo.config.fields import field_docs
from saezoo.config.resolve import resolve_run
from saezoo.curriculum import check_compatible
from saezoo.plugins import Plugins
from saezoo.trainer import train
from saezoo_curricula.schedules import Constant, KAnneal, SparsityWarmup, TierUnlock
from saezoo_curricula.target_l0 import TargetL0
from saezoo_flat.sae import FlatSAE

NAMES = ["constant", "k-anneal", "sparsity-warmup", "target-l0", "tier-unlock"]


@pytest.fixture(scope="module")
def curricula():
    pm = pluggy.PluginManager("saezoo")
    pm.add_hookspecs(hookspecs)
    pm.register(saezoo_curricula, name="saezoo_curricula")
    return Plugins(pm).curricula


@dataclass
class StubConfig:
    k: int = 4


class Stub(SAE):
    """Only what a curriculum reads: latent groups, width, cfg and the accepted knobs."""

    def __init__(
        self, sizes=(8, 16, 24), k=4, knobs=frozenset({"sparsity_scale", "tier_sparsity_scale", "active_tiers", "k"})
    ):
        super().__init__(4, StubConfig(k))
        self.sizes = sizes
        self.knobs = knobs

    def latent_groups(self):
        return [(f"tier{i + 1}", n) for i, n in enumerate(self.sizes)]

    def decoder_directions(self):
        return torch.zeros(sum(self.sizes), self.d_in)


def make(cls, sae=None, total=100, **cfg):
    return cls(cls.Config(**cfg), total, sae if sae is not None else Stub())


def flat():
    return FlatSAE(4, FlatSAE.Config())


# --- registration ------------------------------------------------------------------------


def test_registered_with_documented_config(curricula):
    assert curricula.names() == NAMES
    for name in NAMES:
        cls = curricula.get(name)
        assert cls.__doc__ and cls.__doc__.strip(), name
        docs = field_docs(cls.Config)
        for field in cls.Config.__dataclass_fields__:
            assert docs.get(field), f"{name}: curriculum.{field} has no docstring"


# --- open-loop schedules ------------------------------------------------------------------


def test_constant_sets_no_knob():
    c = make(Constant, flat())
    assert [c.knobs_at(s, {}) for s in (0, 50, 99)] == [{}, {}, {}]


def test_sparsity_warmup_ramps_linearly():
    c = make(SparsityWarmup, flat(), steps=10)
    assert [c.knobs_at(s, {})["sparsity_scale"] for s in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]
    by_fraction = make(SparsityWarmup, flat(), total=200, fraction=0.05)
    assert by_fraction.knobs_at(5, {})["sparsity_scale"] == 0.5
    assert make(SparsityWarmup, flat(), steps=0).knobs_at(0, {})["sparsity_scale"] == 1.0


def test_tier_unlock_default_spreads_tiers_over_first_half():
    c = make(TierUnlock, total=100)
    assert [c.knobs_at(s, {})["active_tiers"] for s in (0, 24, 25, 49, 50, 99)] == [1, 1, 2, 2, 3, 3]


def test_tier_unlock_explicit_steps():
    c = make(TierUnlock, unlock_steps=[10, 30])
    assert [c.knobs_at(s, {})["active_tiers"] for s in (0, 9, 10, 29, 30)] == [1, 1, 2, 2, 3]


def test_tier_unlock_rejects_bad_settings():
    with pytest.raises(UsageError, match="FlatSAE"):
        make(TierUnlock, flat())
    with pytest.raises(UsageError, match="needs 2 step"):
        make(TierUnlock, unlock_steps=[10])
    with pytest.raises(UsageError, match="increasing"):
        make(TierUnlock, unlock_steps=[30, 10])


def test_k_anneal_decays_to_target():
    c = make(KAnneal, Stub(k=4), steps=100, start_multiple=10)
    assert [c.knobs_at(s, {})["k"] for s in (0, 50, 100, 200)] == [40, 22, 4, 4]
    capped = make(KAnneal, Stub(sizes=(16,), k=4), steps=100, start_multiple=10)
    assert capped.knobs_at(0, {})["k"] == 16
    with pytest.raises(UsageError, match="integer `k`"):
        make(KAnneal, flat())


def test_check_compatible_names_curriculum_and_architecture(curricula):
    with pytest.raises(UsageError, match=r"'k-anneal'.*'flat'"):
        check_compatible("k-anneal", curricula.get("k-anneal"), "flat", FlatSAE)
    with pytest.raises(UsageError, match=r"'tier-unlock'.*'flat'"):
        check_compatible("tier-unlock", curricula.get("tier-unlock"), "flat", FlatSAE)
    for name in ("constant", "sparsity-warmup", "target-l0"):
        check_compatible(name, curricula.get(name), "flat", FlatSAE)


# --- target-l0 -----------------------------------------------------------------------------


def run_plant(c, plant, steps=2000, log_every=10):
    """Drive ``c`` with a simulated SAE whose L0 readings are ``plant(knobs)``."""
    stats: dict = {}
    for step in range(steps):
        knobs = c.knobs_at(step, stats)
        if step % log_every == 0:
            stats = {"step": step, **plant(knobs)}
    return knobs


def test_target_l0_converges_on_toy_plant():
    # L0 inversely proportional to the coefficient: the controller must find scale = 200 / 8.
    c = make(TargetL0, flat(), total=2000, target=8.0)
    knobs = run_plant(c, lambda k: {"l0": 200.0 / k["sparsity_scale"]})
    assert knobs["sparsity_scale"] == pytest.approx(25.0, rel=1e-3)


@pytest.mark.parametrize("shares", [[1, 2, 3], None])  # None: by width, and Stub's are 8, 16, 24
def test_target_l0_per_tier_shares(shares):
    def plant(knobs):
        return {f"l0/tier{i + 1}": 10.0 / s for i, s in enumerate(knobs["tier_sparsity_scale"])}

    c = make(TargetL0, Stub(), total=2000, target=12.0, per_tier=True, tier_shares=shares)
    scales = run_plant(c, plant)["tier_sparsity_scale"]
    assert [10.0 / s for s in scales] == pytest.approx([2.0, 4.0, 6.0], rel=1e-3)


def test_target_l0_single_scale_unless_per_tier_and_accepted():
    assert set(make(TargetL0).knobs_at(0, {})) == {"sparsity_scale"}
    only_total = Stub(knobs=frozenset({"sparsity_scale"}))
    assert set(make(TargetL0, only_total, per_tier=True).knobs_at(0, {})) == {"sparsity_scale"}


def test_target_l0_damps_a_late_steep_response():
    """L0 answers 100 steps late and with the cube of the scale: a fixed gain oscillates."""
    history = [1.0] * 10  # scales of the last 10 readings, one reading every 10 steps

    def plant(knobs):
        history.append(knobs["sparsity_scale"])
        return {"l0": 30.0 / history.pop(0) ** 3}

    c = make(TargetL0, flat(), total=4000, target=12.0)
    knobs = run_plant(c, plant, steps=4000)
    assert 30.0 / knobs["sparsity_scale"] ** 3 == pytest.approx(12.0, rel=0.1)


def test_target_l0_integrates_each_reading_once_after_start():
    c = make(TargetL0, flat(), total=100, target=1.0, gain=0.01, start_fraction=0.1)
    assert c.knobs_at(5, {"step": 5, "l0": math.e})["sparsity_scale"] == 1.0  # held at the start
    first = c.knobs_at(20, {"step": 20, "l0": math.e})["sparsity_scale"]
    assert first == pytest.approx(math.exp(0.01 * 10))  # 10 steps since the hold ended
    assert c.knobs_at(21, {"step": 20, "l0": math.e})["sparsity_scale"] == first


def test_target_l0_survives_a_dead_sae():
    c = make(TargetL0, flat(), total=100, start_fraction=0.0)
    scale = c.knobs_at(10, {"step": 10, "l0": 0.0})["sparsity_scale"]
    assert 0 < scale < 1


def test_target_l0_state_round_trip():
    def plant(knobs):
        return {"l0": 50.0 / knobs["sparsity_scale"]}

    a = make(TargetL0, flat(), total=1000, target=5.0)
    run_plant(a, plant, steps=300)
    b = make(TargetL0, flat(), total=1000, target=5.0)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    stats = {"step": 300, "l0": 7.0}
    assert b.knobs_at(301, stats) == a.knobs_at(301, stats)
    with pytest.raises(UsageError, match="per_tier"):
        make(TargetL0, Stub(), per_tier=True).load_state_dict(a.state_dict())


@pytest.mark.slow
def test_target_l0_brings_flat_sae_to_target(tmp_path):
    """The trainer with a flat SAE whose L0 settles near 8.4 at its own coefficient."""
    sets = [
        "data.source=synthetic",
        "sae.expansion_factor=4",
        "train.steps=800",
        "train.batch_size=512",
        "train.eval_every=0",
        "train.checkpoint_every=0",
        "train.eval_tokens=4096",
        "curriculum.target=5",
    ]
    run = resolve_run("flat", curriculum="target-l0", sets=sets)
    metrics = train(run, tmp_path, build_source(run.data, tokens=0, seed=0), progress=False)
    assert metrics["l0"] == pytest.approx(5.0, rel=0.1)
