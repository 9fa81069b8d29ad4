"""The curriculum contract: a schedule of knobs over training steps.

The trainer calls ``knobs_at(step, stats)`` once per step and hands the result to the
SAE's ``forward`` (and applies ``lr_scale`` itself). No pluggy call happens in the loop:
the curriculum is a plain object built before training starts.

``stats`` holds running statistics of the last logged step: ``l0`` (overall) and
``l0/<group>`` for each latent group of the SAE.

A run may follow several curricula at once, named ``a+b`` (:class:`Curricula`). Each sets
its own knobs every step. A knob named ``*_scale`` is a factor (1 leaves the default; a
list is one factor per element, per tier say), so the factors of several curricula
multiply: a sparsity warmup times the L0 controller's scale is the warmup's shape at the
controller's level. Any other knob (``active_tiers``, ``k``) is a value, and two curricula
that both set one are refused before training: no rule for merging two schedules of a
value would be what both meant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

from saezoo.errors import UsageError
from saezoo.sae import SAE, TRAINER_KNOBS


class Curriculum:
    """Base class of every curriculum.

    Subclasses set ``Config`` (a dataclass) and ``knobs`` (the knob names they return).
    """

    Config: ClassVar[type]
    knobs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg: Any, total_steps: int, sae: SAE):
        self.cfg = cfg
        self.total_steps = total_steps
        self.sae = sae

    def knobs_at(self, step: int, stats: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for resume (controllers keep theirs here)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)


def check_compatible(
    curriculum_name: str, curriculum_cls: type[Curriculum], arch_name: str, sae_cls: type[SAE]
) -> None:
    """Fail before training when the curriculum turns a knob the architecture ignores."""
    missing = set(curriculum_cls.knobs) - set(sae_cls.knobs) - TRAINER_KNOBS
    if missing:
        accepted = ", ".join(sorted(set(sae_cls.knobs) | TRAINER_KNOBS)) or "none"
        raise UsageError(
            f"curriculum {curriculum_name!r} sets knob(s) {', '.join(sorted(missing))} that architecture "
            f"{arch_name!r} does not accept (it accepts: {accepted})"
        )


# Joins the names of the curricula a run follows: ``--curriculum tier-unlock+target-l0``,
# ``hsae@sparsity-warmup+target-l0``, cfg.json's ``curriculum_name``.
SEPARATOR = "+"


def curriculum_names(spec: str) -> list[str]:
    """``"a+b"`` -> ``["a", "b"]``; an empty or repeated name is refused."""
    names = [name.strip() for name in spec.split(SEPARATOR)]
    if not all(names):
        raise UsageError(f"curriculum {spec!r}: an empty name; join curricula as a{SEPARATOR}b")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"curriculum {spec!r}: {', '.join(repeated)} named twice; a run follows each curriculum once")
    return names


def is_scale(knob: str) -> bool:
    """Whether ``knob`` is a factor, which several curricula may set (their values multiply)."""
    return knob.endswith("_scale")


def check_composable(classes: dict[str, type[Curriculum]]) -> None:
    """Fail before training when two curricula would set the same knob that is not a scale."""
    owner: dict[str, str] = {}
    for name, cls in classes.items():
        for knob in sorted(cls.knobs):
            if knob in owner and not is_scale(knob):
                raise UsageError(
                    f"curricula {owner[knob]!r} and {name!r} both set knob {knob}; only *_scale knobs "
                    "(factors, which multiply) may be set by several curricula of one run"
                )
            owner.setdefault(knob, name)


def multiply(a: Any, b: Any) -> Any:
    """The product of two factors, element-wise when either is a list (one factor per tier)."""
    if not isinstance(a, (list, tuple)) and not isinstance(b, (list, tuple)):
        return a * b
    n = len(a) if isinstance(a, (list, tuple)) else len(b)

    def items(v: Any) -> list[Any]:
        return list(v) if isinstance(v, (list, tuple)) else [v] * n

    return [x * y for x, y in zip(items(a), items(b), strict=True)]


class Curricula:
    """The curricula one run follows, asked together as one.

    With a single curriculum its state is saved as it is (what a run written before
    curricula composed holds, so such checkpoints resume unchanged); with several, keyed by
    name, each curriculum keeping its own.
    """

    def __init__(self, members: Sequence[tuple[str, Curriculum]]):
        self.members = list(members)

    def knobs_at(self, step: int, stats: dict[str, float]) -> dict[str, Any]:
        knobs: dict[str, Any] = {}
        for _, curriculum in self.members:
            for knob, value in curriculum.knobs_at(step, stats).items():
                knobs[knob] = multiply(knobs[knob], value) if knob in knobs else value
        return knobs

    def state_dict(self) -> dict[str, Any]:
        if len(self.members) == 1:
            return self.members[0][1].state_dict()
        return {name: curriculum.state_dict() for name, curriculum in self.members}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(self.members) == 1:
            self.members[0][1].load_state_dict(state)
            return
        missing = [name for name, _ in self.members if name not in state]
        if missing:
            raise UsageError(
                f"the checkpoint holds no state of curriculum {', '.join(missing)} "
                f"(it has: {', '.join(state) or 'none'}); it was not written by this run"
            )
        for name, curriculum in self.members:
            curriculum.load_state_dict(state[name])
