"""A closed-loop curriculum: the sparsity coefficient follows the measured L0."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from saezoo import SAE, Curriculum, UsageError

# Anti-windup: the scale stays within [1/LIMIT, LIMIT] of the SAE's own coefficient, so a
# tier that cannot reach its target (dead, or too narrow) does not push the scale to a
# value it would take the rest of the run to undo.
SCALE_LIMIT = 1e4
# Errors beyond a factor e count as a factor e. A tier that died (L0 = 0, log -inf) or
# exploded would otherwise move the scale by its whole log ratio in a few readings, and the
# SAE answers such a jump late and by overshooting.
MAX_ERROR = 1.0
# L0 within this log-distance of the target (10 %) is on target. Each time L0 swings from
# beyond it on one side to beyond it on the other, that controller's gain halves: an SAE
# whose L0 answers late (latents die, and revive, long after the coefficient moved) makes
# a fixed-gain integrator oscillate with growing amplitude. Noise inside the band does
# not count as a swing, so a settled controller keeps its gain for tracking slow drift.
BAND = math.log(1.1)
# Most that one reading may move log(scale) per unit of log error. A sampled integral
# controller oscillates once gain * interval * (d log L0 / d log scale) exceeds 1, and
# that sensitivity is often near 1; a long train.log_every must not get there.
MAX_RATE = 0.5


@dataclass
class TargetL0Config:
    target: float = 32.0
    """Target L0 (mean active latents per token), summed over all tiers."""
    gain: float = 0.03
    """Change of log(scale) per step, per unit of log(L0 / target), at the start; it
    halves each time L0 swings from more than 10 % above the target to 10 % below, or back."""
    per_tier: bool = False
    """Steer each tier to its share of the target (tier_sparsity_scale), when the SAE has
    tiers and accepts that knob. Off: one sparsity_scale steers the total, and an SAE that
    balances its own tiers (the HSAE's default importance) keeps doing so."""
    tier_shares: list[float] | None = None
    """Share of the target for each tier, normalised to sum to 1 (None: in proportion to
    the tiers' widths, the split the HSAE's balanced importance also aims for)."""
    start_fraction: float = 0.25
    """Share of the run, at its start, during which the scale is held: L0 readings
    then reflect the initialisation more than the coefficient."""
    initial_scale: float = 1.0
    """Starting value of the scale(s), a multiple of the SAE's own sparsity coefficient."""


class TargetL0(Curriculum):
    """Adjust the sparsity coefficient by feedback until L0 reaches a target.

    An integral controller in log space: each new L0 reading (every train.log_every
    steps) moves ``log(scale)`` by ``gain * steps_since_last_reading * log(L0 / target)``.
    Working in logs makes corrections multiplicative, which suits L0's roughly power-law
    response to the coefficient. The gain halves each time L0 swings across the target,
    which damps the oscillation that the SAE's delayed response would otherwise sustain.
    Readings from the first ``start_fraction`` of the run are ignored, because L0 then
    falls on its own as the SAE leaves its initialisation.

    Sweeping the coefficient by hand to hit an L0 is standard practice (SAEBench compares
    SAEs at matched L0); the controller replaces the sweep with one run. The scales are
    state, saved in checkpoints for resume.
    """

    Config = TargetL0Config
    knobs = frozenset({"sparsity_scale"})

    def __init__(self, cfg: TargetL0Config, total_steps: int, sae: SAE):
        super().__init__(cfg, total_steps, sae)
        if cfg.target <= 0:
            raise UsageError(f"curriculum.target must be > 0, got {cfg.target}")
        if cfg.gain <= 0:
            raise UsageError(f"curriculum.gain must be > 0, got {cfg.gain}")
        if not 0.0 <= cfg.start_fraction < 1.0:
            raise UsageError(f"curriculum.start_fraction must be in [0, 1), got {cfg.start_fraction}")
        if cfg.initial_scale <= 0:
            raise UsageError(f"curriculum.initial_scale must be > 0, got {cfg.initial_scale}")
        groups = sae.latent_groups()
        self.per_tier = cfg.per_tier and len(groups) > 1 and "tier_sparsity_scale" in sae.knobs
        if self.per_tier:
            # Equal shares would fight an SAE that balances its tiers by width (the HSAE's
            # default): two integrators pulling one penalty toward different set points.
            shares = cfg.tier_shares if cfg.tier_shares is not None else [float(size) for _, size in groups]
            if len(shares) != len(groups) or min(shares) <= 0:
                raise UsageError(
                    f"curriculum.tier_shares needs {len(groups)} positive value(s), one per tier "
                    f"({', '.join(name for name, _ in groups)}), got {shares}"
                )
            self.stat_keys = [f"l0/{name}" for name, _ in groups]
            self.targets = [cfg.target * s / sum(shares) for s in shares]
        else:
            self.stat_keys = ["l0"]
            self.targets = [cfg.target]
        self.log_scales = [math.log(cfg.initial_scale)] * len(self.targets)
        self.gains = [cfg.gain] * len(self.targets)
        self.sides = [0] * len(self.targets)  # +1 / -1: L0 last seen above / below the band
        # Readings taken before this step are ignored.
        self.last_reading = round(cfg.start_fraction * total_steps)

    def knobs_at(self, step: int, stats: dict[str, float]) -> dict[str, Any]:
        # Stats change only every train.log_every steps: each new reading is integrated
        # over the steps since the last one, so the response does not depend on log_every.
        if all(k in stats for k in self.stat_keys) and stats["step"] > self.last_reading:
            steps = stats["step"] - self.last_reading
            self.last_reading = int(stats["step"])
            limit = math.log(SCALE_LIMIT)
            for i, (key, target) in enumerate(zip(self.stat_keys, self.targets)):
                l0 = stats[key]
                error = max(-MAX_ERROR, min(MAX_ERROR, math.log(l0 / target))) if l0 > 0 else -MAX_ERROR
                side = (error > BAND) - (error < -BAND)
                if side and side == -self.sides[i]:
                    self.gains[i] /= 2
                if side:
                    self.sides[i] = side
                rate = min(MAX_RATE, self.gains[i] * steps)
                self.log_scales[i] = min(limit, max(-limit, self.log_scales[i] + rate * error))
        scales = [math.exp(s) for s in self.log_scales]
        return {"tier_sparsity_scale": scales} if self.per_tier else {"sparsity_scale": scales[0]}

    def state_dict(self) -> dict[str, Any]:
        return {
            "log_scales": list(self.log_scales),
            "gains": list(self.gains),
            "sides": list(self.sides),
            "last_reading": self.last_reading,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["log_scales"]) != len(self.log_scales):
            raise UsageError(
                f"curriculum state holds {len(state['log_scales'])} scale(s) but this run controls "
                f"{len(self.log_scales)}; was it saved with another per_tier setting or SAE?"
            )
        self.log_scales = [float(s) for s in state["log_scales"]]
        self.gains = [float(g) for g in state["gains"]]
        self.sides = [int(s) for s in state["sides"]]
        self.last_reading = int(state["last_reading"])
