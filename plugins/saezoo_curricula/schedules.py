"""Open-loop curricula: each knob is a fixed function of the step."""

from __future__ import annotations

from dataclasses import dataclass

from saezoo import SAE, Curriculum, UsageError


def ramp_steps(steps: int | None, fraction: float, total_steps: int, name: str) -> int:
    """Length of a ramp given as ``steps``, or as ``fraction`` of the run when ``steps`` is None."""
    if steps is not None:
        if steps < 0:
            raise UsageError(f"curriculum.steps of {name!r} must be >= 0, got {steps}")
        return steps
    if not 0.0 <= fraction <= 1.0:
        raise UsageError(f"curriculum.fraction of {name!r} must be in [0, 1], got {fraction}")
    return round(fraction * total_steps)


def progress(step: int, ramp: int) -> float:
    """0 at step 0, 1 from step ``ramp`` on (at once when the ramp is empty)."""
    return 1.0 if ramp <= 0 else min(1.0, step / ramp)


@dataclass
class ConstantConfig:
    pass


class Constant(Curriculum):
    """No schedule: every knob keeps its default for the whole run.

    The default curriculum of every run, and the baseline of any curriculum study.
    """

    Config = ConstantConfig

    def knobs_at(self, step: int, stats: dict[str, float]) -> dict[str, float]:
        return {}


@dataclass
class SparsityWarmupConfig:
    steps: int | None = None
    """Steps over which sparsity_scale ramps from 0 to 1 (None: `fraction` of the run)."""
    fraction: float = 0.05
    """Share of the run spent ramping, when `steps` is None (Anthropic used 5 %)."""


class SparsityWarmup(Curriculum):
    """Ramp the sparsity penalty linearly from 0 to its full weight, then hold it.

    Without the penalty the first steps spread the dictionary over the data before the
    penalty starts killing latents, which leaves fewer dead ones. Anthropic's Circuits
    Updates (April 2024) warm the L1 coefficient up over the first 5 % of training;
    SAELens calls it ``l1_warm_up_steps``.
    """

    Config = SparsityWarmupConfig
    knobs = frozenset({"sparsity_scale"})

    def __init__(self, cfg: SparsityWarmupConfig, total_steps: int, sae: SAE):
        super().__init__(cfg, total_steps, sae)
        self.ramp = ramp_steps(cfg.steps, cfg.fraction, total_steps, "sparsity-warmup")

    def knobs_at(self, step: int, stats: dict[str, float]) -> dict[str, float]:
        return {"sparsity_scale": progress(step, self.ramp)}


@dataclass
class TierUnlockConfig:
    unlock_steps: list[int] | None = None
    """Steps at which tiers 2, 3, ... join, one per tier after the first (None: evenly
    spaced over the first `unlock_fraction` of the run)."""
    unlock_fraction: float = 0.5
    """Share of the run after which every tier is active, when `unlock_steps` is None."""


class TierUnlock(Curriculum):
    """Train tiers coarse to fine: tier 1 alone, then tier 2 joins, and so on.

    The curriculum of the seed HSAE paper ("progressively builds feature complexity",
    reference/hsae-paper.txt), which gives no schedule; this one unlocks tiers at evenly
    spaced steps by default. Tiers beyond ``active_tiers`` are masked by the SAE and get
    no update until they join.
    """

    Config = TierUnlockConfig
    knobs = frozenset({"active_tiers"})

    def __init__(self, cfg: TierUnlockConfig, total_steps: int, sae: SAE):
        super().__init__(cfg, total_steps, sae)
        groups = [name for name, _ in sae.latent_groups()]
        n = len(groups)
        if n < 2:
            raise UsageError(
                f"curriculum 'tier-unlock' needs an SAE with more than one tier, but architecture "
                f"{type(sae).__name__} has one latent group ({groups[0]!r}); use an architecture with tiers "
                f"(hsae, matryoshka) or another curriculum"
            )
        if cfg.unlock_steps is None:
            if not 0.0 <= cfg.unlock_fraction <= 1.0:
                raise UsageError(f"curriculum.unlock_fraction must be in [0, 1], got {cfg.unlock_fraction}")
            last = cfg.unlock_fraction * total_steps
            self.unlock_steps = [round(last * i / (n - 1)) for i in range(1, n)]
        else:
            self.unlock_steps = list(cfg.unlock_steps)
            if len(self.unlock_steps) != n - 1:
                raise UsageError(
                    f"curriculum.unlock_steps needs {n - 1} step(s), one for each of tiers 2..{n} "
                    f"({', '.join(groups[1:])}), got {len(self.unlock_steps)}"
                )
            if self.unlock_steps != sorted(self.unlock_steps) or self.unlock_steps[0] < 0:
                raise UsageError(
                    f"curriculum.unlock_steps must be non-negative and increasing, got {self.unlock_steps}"
                )

    def knobs_at(self, step: int, stats: dict[str, float]) -> dict[str, float]:
        return {"active_tiers": 1 + sum(step >= s for s in self.unlock_steps)}


@dataclass
class KAnnealConfig:
    start_multiple: float = 10.0
    """k starts at this multiple of the target k (capped at the SAE's width)."""
    steps: int | None = None
    """Steps over which k decays linearly to the target (None: `fraction` of the run)."""
    fraction: float = 0.5
    """Share of the run spent annealing, when `steps` is None."""


class KAnneal(Curriculum):
    """Decay k of a TopK-style SAE linearly from a large value to its target.

    Many latents fire early, so they all get gradient and fewer die before the
    dictionary has spread out. Gao et al. 2024 ("Scaling and evaluating sparse
    autoencoders") mention annealing k; EleutherAI's sparsify decays it over
    ``k_decay_steps``. The target is the SAE's own ``k`` setting.
    """

    Config = KAnnealConfig
    knobs = frozenset({"k"})

    def __init__(self, cfg: KAnnealConfig, total_steps: int, sae: SAE):
        super().__init__(cfg, total_steps, sae)
        target = getattr(sae.cfg, "k", None)
        if not isinstance(target, int):
            raise UsageError(
                f"curriculum 'k-anneal' needs an SAE with an integer `k` setting; {type(sae).__name__} has none"
            )
        if cfg.start_multiple < 1:
            raise UsageError(f"curriculum.start_multiple must be >= 1, got {cfg.start_multiple}")
        self.target_k = target
        self.start_k = max(target, min(sae.width, round(cfg.start_multiple * target)))
        self.ramp = ramp_steps(cfg.steps, cfg.fraction, total_steps, "k-anneal")

    def knobs_at(self, step: int, stats: dict[str, float]) -> dict[str, float]:
        t = progress(step, self.ramp)
        return {"k": round(self.start_k + (self.target_k - self.start_k) * t)}
