"""Curricula that compose (``a+b``): scale knobs multiply, any other knob set by two is
refused, each curriculum keeps its own settings and checkpoint state, and ``compare
--target-l0`` joins the L0 controller to a variant's own curriculum."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass

import pytest

from saezoo import Curriculum, UsageError, hookimpl, plugins
from saezoo.activations.synthetic import SyntheticConfig, SyntheticSource
from saezoo.comparison import _matched_l0, resolve_variants, run_compare
from saezoo.config.resolve import resolve_run, run_from_dict
from saezoo.curriculum import Curricula, multiply
from saezoo.trainer import Interrupted, train_many
from saezoo_curricula.schedules import SparsityWarmup
from saezoo_curricula.target_l0 import TargetL0
from saezoo_flat.sae import FlatSAE

from helpers import FAST_SETS


@dataclass
class HoldKConfig:
    k: int = 8
    """The k held for the whole run."""


class HoldK(Curriculum):
    """Hold k: a value knob, as k-anneal's, so the two conflict."""

    Config = HoldKConfig
    knobs = frozenset({"k"})

    def knobs_at(self, step, stats):
        return {"k": self.cfg.k}


@dataclass
class CountingLrConfig:
    rate: float = 0.05
    """How fast the learning rate falls with each step this curriculum has seen."""


class CountingLr(Curriculum):
    """A curriculum with memory of its own: lr_scale = 1 / (1 + rate * steps seen)."""

    Config = CountingLrConfig
    knobs = frozenset({"lr_scale"})

    def __init__(self, cfg, total_steps, sae):
        super().__init__(cfg, total_steps, sae)
        self.seen = 0

    def knobs_at(self, step, stats):
        self.seen += 1
        return {"lr_scale": 1.0 / (1.0 + self.cfg.rate * self.seen)}

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


class ThrowAway:
    @hookimpl
    def register_curricula(self, register):
        register("hold-k", HoldK)
        register("counting-lr", CountingLr)


@pytest.fixture
def extra_curricula():
    plugin = ThrowAway()
    plugins.register_plugin(plugin, "throw-away-curricula")
    try:
        yield
    finally:
        plugins.unregister_plugin(plugin)


# --- knobs ---------------------------------------------------------------------------------


def test_sparsity_scale_is_warmup_times_controller_at_every_step():
    flat = FlatSAE(4, FlatSAE.Config())

    def pair():
        warmup = SparsityWarmup(SparsityWarmup.Config(steps=300), 1000, flat)
        controller = TargetL0(TargetL0.Config(target=5.0, start_fraction=0.0), 1000, flat)
        return warmup, controller

    warmup, controller = pair()
    composed = Curricula([("sparsity-warmup", warmup), ("target-l0", controller)])
    alone_warmup, alone_controller = pair()  # the same two, asked one by one
    stats: dict = {}
    seen = []
    for step in range(600):
        scale = composed.knobs_at(step, stats)["sparsity_scale"]
        a = alone_warmup.knobs_at(step, stats)["sparsity_scale"]
        b = alone_controller.knobs_at(step, stats)["sparsity_scale"]
        assert scale == a * b, step
        seen.append((a, b))
        if step % 10 == 0:
            # L0 of a plant that follows the product: the controller sees the warmup's effect.
            stats = {"step": step, "l0": 50.0 / max(scale, 1e-3)}
    # Both factors moved: the warmup ramps and the controller steers, at the same steps.
    assert any(a < 1 and b != 1 for a, b in seen)
    assert seen[-1][0] == 1.0 and seen[-1][1] == pytest.approx(10.0, rel=0.1)


def test_list_factors_multiply_element_wise():
    assert multiply([1.0, 2.0, 4.0], [0.5, 0.5, 2.0]) == [0.5, 1.0, 8.0]
    assert multiply(0.5, [1.0, 2.0]) == [0.5, 1.0]
    assert multiply(2.0, 3.0) == 6.0


def test_a_value_knob_set_by_two_curricula_is_refused(extra_curricula):
    with pytest.raises(UsageError, match=r"curricula 'k-anneal' and 'hold-k' both set knob k"):
        resolve_run("topk", curriculum="k-anneal+hold-k")
    resolve_run("topk", curriculum="hold-k+counting-lr")  # different knobs: fine


@pytest.mark.parametrize(
    ("spec", "message"),
    [("target-l0+target-l0", "target-l0 named twice"), ("target-l0+", "an empty name"), ("target-l0+warmup", "'warmup'")],
)
def test_bad_curriculum_lists_are_refused(spec, message):
    with pytest.raises(UsageError, match=message):
        resolve_run("hsae", curriculum=spec)


# --- settings --------------------------------------------------------------------------------


def test_each_curriculum_has_its_own_settings():
    run = resolve_run(
        "hsae",
        curriculum="tier-unlock+target-l0",
        sets=["curriculum.unlock_fraction=0.3", "curriculum.target-l0.target=12", "curriculum.target-l0.gain=0.01"],
    )
    assert run.curriculum_name == "tier-unlock+target-l0"
    assert run.curricula["tier-unlock"].unlock_fraction == 0.3  # a bare key: the one curriculum that has it
    assert (run.curricula["target-l0"].target, run.curricula["target-l0"].gain) == (12.0, 0.01)
    # cfg.json keeps every curriculum's settings, keyed by name, and reads back the same.
    saved = json.loads(json.dumps(run.to_dict()))
    assert set(saved["curriculum"]) == {"tier-unlock", "target-l0"}
    assert run_from_dict(saved).curricula == run.curricula
    # One curriculum: its settings are the table itself, as before curricula composed.
    single = resolve_run("hsae", curriculum="target-l0", sets=["curriculum.target=9"])
    assert single.to_dict()["curriculum"]["target"] == 9.0
    assert resolve_run("hsae", curriculum="target-l0", sets=["curriculum.target-l0.target=9"]).curricula == single.curricula


@pytest.mark.parametrize(
    ("curriculum", "item", "message"),
    [
        ("sparsity-warmup+k-anneal", "curriculum.steps=10", "curricula sparsity-warmup and k-anneal both have this setting; name one"),
        ("sparsity-warmup+target-l0", "curriculum.unlock_fraction=0.3", "none of the curricula sparsity-warmup, target-l0"),
        ("sparsity-warmup", "curriculum.target-l0.target=3", "does not follow curriculum 'target-l0'"),
        ("sparsity-warmup+target-l0", "curriculum.target-l0.tagret=3", "unknown setting 'curriculum.target-l0.tagret'"),
    ],
)
def test_settings_that_reach_no_single_curriculum_are_refused(curriculum, item, message):
    with pytest.raises(UsageError, match=message):
        resolve_run("topk" if "k-anneal" in curriculum else "hsae", curriculum=curriculum, sets=[item])


# --- resume ------------------------------------------------------------------------------------


def test_resume_restores_every_curriculum_state(extra_curricula, tmp_path, monkeypatch):
    """SIGTERM mid-run, resume: both curricula continue from their checkpointed state, so the
    weights equal an uninterrupted run's (a curriculum restarted from scratch would change
    the learning rate or the penalty, and with them the weights)."""
    from saezoo.checkpoint import load_tensors
    from saezoo.trainer import Trainee

    steps, stop_at = 12, 7
    train = {"steps": steps, "batch_size": 256, "eval_tokens": 512, "eval_every": 0, "checkpoint_every": 0,
             "warmup_steps": 2, "log_every": 1}
    run = resolve_run(
        "flat", curriculum="target-l0+counting-lr", options={"train": train},
        sets=["curriculum.target=150", "curriculum.start_fraction=0"],  # L0 starts near 200: errors below the cap
    )
    stop = [False]
    real_train_step = Trainee.train_step

    def stopping_train_step(self, x):
        if stop[0] and self.step == stop_at - 1:
            signal.raise_signal(signal.SIGTERM)  # the real interrupt path: checkpoint, then exit
        return real_train_step(self, x)

    monkeypatch.setattr(Trainee, "train_step", stopping_train_step)

    def train_run(out, resume=False):
        train_many([run], [out], SyntheticSource(SyntheticConfig()), resume=resume, progress=False, downstream=False)

    train_run(tmp_path / "reference")
    stop[0] = True
    with pytest.raises(Interrupted):
        train_run(tmp_path / "run")
    stop[0] = False
    state = json.loads((tmp_path / "run" / "state" / "current" / "trainer.json").read_text())
    assert state["step"] == stop_at
    assert state["curriculum"]["counting-lr"] == {"seen": stop_at}
    assert state["curriculum"]["target-l0"]["log_scales"] != [0.0], "the controller had not moved: a weak test"
    assert json.loads((tmp_path / "run" / "cfg.json").read_text())["curriculum_name"] == "target-l0+counting-lr"

    train_run(tmp_path / "run", resume=True)
    a, _ = load_tensors(tmp_path / "reference" / "sae.safetensors")
    b, _ = load_tensors(tmp_path / "run" / "sae.safetensors")
    for name in a:
        assert (a[name] == b[name]).all(), f"{name} differs after resume"


def test_a_single_curriculum_checkpoint_keeps_its_format(tmp_path):
    """A run of one curriculum writes its state unwrapped, as runs did before curricula
    composed, so their checkpoints resume through the same path."""
    train = {"steps": 4, "batch_size": 256, "eval_tokens": 512, "eval_every": 0, "checkpoint_every": 0, "log_every": 1}
    run = resolve_run("flat", curriculum="target-l0", options={"train": train}, sets=["curriculum.start_fraction=0"])
    train_many([run], [tmp_path], SyntheticSource(SyntheticConfig()), progress=False, downstream=False)
    state = json.loads((tmp_path / "state" / "current" / "trainer.json").read_text())
    assert set(state["curriculum"]) == {"log_scales", "gains", "sides", "last_reading"}
    assert json.loads((tmp_path / "cfg.json").read_text())["curriculum"]["target"] == 32.0


# --- compare --target-l0 -----------------------------------------------------------------------


def test_target_l0_joins_a_variants_own_curriculum():
    from saezoo_hsae.sae import HSAEConfig

    dense = HSAEConfig()
    assert _matched_l0("hsae", dense, 40, "tier-unlock") == ("tier-unlock+target-l0", ["curriculum.target-l0.target=40"])
    assert _matched_l0("hsae", dense, 40, "sparsity-warmup+target-l0") == (
        "sparsity-warmup+target-l0", ["curriculum.target-l0.target=40"]
    )
    assert _matched_l0("hsae", dense, 40, "target-l0") == ("target-l0", ["curriculum.target=40"])
    assert _matched_l0("hsae", HSAEConfig(coupling="tree"), 40, "k-anneal") == ("k-anneal", ["sae.k=40"])
    # A variant's own settings for either curriculum, by bare key or by name.
    variants = resolve_variants(
        ["hsae@tier-unlock"], "constant", 40, None, {},
        ["hsae@tier-unlock.curriculum.unlock_fraction=0.3", "hsae@tier-unlock.curriculum.target-l0.gain=0.01"], None,
    )
    (run,) = [v.run for v in variants]
    assert run.curriculum_name == "tier-unlock+target-l0"
    assert run.curricula["tier-unlock"].unlock_fraction == 0.3
    assert (run.curricula["target-l0"].target, run.curricula["target-l0"].gain) == (40.0, 0.01)
    # A variant may name several curricula itself; the controller joins them.
    (both,) = resolve_variants(["hsae@tier-unlock+sparsity-warmup"], "constant", None, None, {}, [], None)
    assert list(both.run.curricula) == ["tier-unlock", "sparsity-warmup"]
    (steered,) = resolve_variants(["hsae@tier-unlock+sparsity-warmup"], "constant", 40, None, {}, [], None)
    assert steered.run.curriculum_name == "tier-unlock+sparsity-warmup+target-l0"


@pytest.mark.slow
def test_compare_tier_unlock_at_a_target_l0_reaches_it(tmp_path):
    """hsae@tier-unlock alone ends this budget (400 steps of 1024 tokens) at an L0 near 44
    (plugins/saezoo_curricula/README.md); steered to 20 it ends near 20. Near: the
    controller overshoots on the HSAE at this budget (11.8 in the runs that set these
    bounds, the same for target-l0 alone; the README's gain sweep), so the bounds are a
    factor 2 below and 25 % above."""
    target = 20.0
    sets = [*FAST_SETS, "data.source=synthetic", "train.checkpoint_every=0"]
    variants = resolve_variants(["hsae@tier-unlock"], "constant", target, None, {}, sets, 400 * 1024)
    report = run_compare(variants, tmp_path, progress=False)
    entry = report["variants"]["hsae@tier-unlock"]
    assert entry["curriculum"] == "tier-unlock+target-l0"
    assert target / 2 <= entry["metrics"]["l0"] <= 1.25 * target, entry["metrics"]["l0"]
