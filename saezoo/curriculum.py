"""The curriculum contract: a schedule of knobs over training steps.

The trainer calls ``knobs_at(step, stats)`` once per step and hands the result to the
SAE's ``forward`` (and applies ``lr_scale`` itself). No pluggy call happens in the loop:
the curriculum is a plain object built before training starts.

``stats`` holds running statistics of the last logged step: ``l0`` (overall) and
``l0/<group>`` for each latent group of the SAE.
"""

from __future__ import annotations

import dataclasses
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
