"""Synthetic activations with a known feature hierarchy.

Features are random unit directions in ``d_in`` dimensions, of three kinds:

* parents, each firing independently with probability ``p_parent``;
* children, grouped under a parent and mutually exclusive: when a parent fires, one of
  its children fires with probability ``p_child`` (never without the parent);
* independent features, each firing with probability ``p_independent``.

An active feature has a magnitude drawn uniformly from ``[0.5, 1.5]``; Gaussian noise of
standard deviation ``noise`` is added. Batch i is generated from seed (seed, i), so the
stream is reproducible and can be resumed at any batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saezoo.activations.source import GroundTruth

# Batches for evaluation come from this seed offset, far from any training batch index.
_EVAL_STREAM = 1 << 40
# The source's random streams are offset from the seeds users give SAEs (0, 1, 2, ...):
# with equal seeds, an SAE's random init would otherwise copy the true directions.
_DIRECTIONS_SEED = 0x5EED_D1EC
_STREAM_SEED = 0x5EED_BA7C << 20


@dataclass
class SyntheticConfig:
    d_in: int = 64
    """Dimension of the activation vectors."""
    n_parents: int = 8
    """Parent features."""
    children_per_parent: int = 3
    """Mutually exclusive children under each parent."""
    n_independent: int = 64
    """Features with no parent and no children."""
    p_parent: float = 0.08
    """Probability that a parent fires on a token."""
    p_child: float = 0.8
    """Probability that one child fires when its parent fires."""
    p_independent: float = 0.03
    """Probability that an independent feature fires on a token."""
    noise: float = 0.01
    """Standard deviation of the additive Gaussian noise."""
    scale: float = 1.0
    """Multiplies every vector; language-model residual streams have norms in the hundreds."""
    seed: int = 0
    """Seed of the feature directions and of the token stream."""


class SyntheticSource:
    def __init__(self, cfg: SyntheticConfig):
        if cfg.d_in <= 0 or cfg.n_parents < 0 or cfg.children_per_parent < 0 or cfg.n_independent < 0:
            raise ValueError("synthetic source sizes must be non-negative and d_in positive")
        self.cfg = cfg
        self.d_in = cfg.d_in
        n_children = cfg.n_parents * cfg.children_per_parent
        self.n_features = cfg.n_parents + n_children + cfg.n_independent
        if self.n_features == 0:
            raise ValueError("synthetic source has no features")
        gen = torch.Generator().manual_seed(_DIRECTIONS_SEED + cfg.seed)
        directions = torch.randn(self.n_features, cfg.d_in, generator=gen)
        directions /= directions.norm(dim=-1, keepdim=True)
        parent = torch.full((self.n_features,), -1, dtype=torch.long)
        kind = ["parent"] * cfg.n_parents + ["child"] * n_children + ["independent"] * cfg.n_independent
        for p in range(cfg.n_parents):
            start = cfg.n_parents + p * cfg.children_per_parent
            parent[start : start + cfg.children_per_parent] = p
        self.ground_truth = GroundTruth(directions=directions, parent=parent, kind=kind)

    def describe(self) -> dict[str, Any]:
        return {"source": "synthetic", **{k: v for k, v in vars(self.cfg).items()}}

    def _generate(self, n: int, stream: int) -> tuple[Tensor, Tensor]:
        """``n`` activation vectors and the true feature coefficients behind them."""
        cfg = self.cfg
        # Each batch has its own generator, so batch i is the same whatever came before it.
        gen = torch.Generator().manual_seed(_STREAM_SEED + cfg.seed * 1_000_003 + stream)
        P, C, I = cfg.n_parents, cfg.children_per_parent, cfg.n_independent
        active = torch.zeros(n, self.n_features, dtype=torch.bool)
        parents_on = torch.rand(n, P, generator=gen) < cfg.p_parent
        active[:, :P] = parents_on
        if C > 0 and P > 0:
            child_on = parents_on & (torch.rand(n, P, generator=gen) < cfg.p_child)
            which = torch.randint(0, C, (n, P), generator=gen)
            child_index = P + torch.arange(P) * C + which  # [n, P]
            rows = torch.arange(n).unsqueeze(1).expand(n, P)
            active[rows[child_on], child_index[child_on]] = True
        active[:, P + P * C :] = torch.rand(n, I, generator=gen) < cfg.p_independent
        coeffs = torch.zeros(n, self.n_features)
        coeffs[active] = torch.rand(int(active.sum()), generator=gen) + 0.5
        x = coeffs @ self.ground_truth.directions
        x += cfg.noise * torch.randn(n, cfg.d_in, generator=gen)
        return x * cfg.scale, coeffs

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Tensor]:
        i = start
        while True:
            yield self._generate(batch_size, i)[0]
            i += 1

    def eval_activations(self, n_tokens: int) -> Tensor:
        return self._generate(n_tokens, _EVAL_STREAM)[0]

    def eval_features(self, n_tokens: int) -> Tensor:
        """The true feature coefficients of ``eval_activations(n_tokens)``, ``[n, n_features]``."""
        return self._generate(n_tokens, _EVAL_STREAM)[1]
