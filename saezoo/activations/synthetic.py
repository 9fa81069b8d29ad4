"""Synthetic activations with a known feature hierarchy.

Features are random unit directions in ``d_in`` dimensions, of two kinds:

* the nodes of a tree of features, ``branching = [b0, b1, ...]``: b0 roots (depth 0), each
  with b1 children (depth 1), each with b2 children (depth 2), and so on. A root fires
  independently with probability ``p_parent``; when a node fires, one of its children fires
  with probability ``p_child`` (so siblings are mutually exclusive, and a node never fires
  without its parent);
* independent features, each firing with probability ``p_independent``.

Without ``branching`` the tree is ``[n_parents, children_per_parent]``: parents and their
children, the source's original two-level form, which gives the same stream as before.
Features are laid out depth by depth (all roots, then all depth-1 nodes grouped by parent,
...), then the independent features.

An active feature has a magnitude drawn uniformly from ``[0.5, 1.5]``; Gaussian noise of
standard deviation ``noise`` is added. Batch i is generated from seed (seed, i), so the
stream is reproducible and can be resumed at any batch.
"""

from __future__ import annotations

import math
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
    """Parent features (the roots of a two-level tree; see branching)."""
    children_per_parent: int = 3
    """Mutually exclusive children under each parent (see branching)."""
    branching: list[int] | None = None
    """A tree of any depth: [8, 4, 3] is 8 roots, 4 children each, 3 grandchildren each.
    Replaces n_parents and children_per_parent (none: [n_parents, children_per_parent])."""
    n_independent: int = 64
    """Features with no parent and no children."""
    p_parent: float = 0.08
    """Probability that a parent fires on a token."""
    p_child: float = 0.8
    """Probability that one child fires when its parent fires (at every depth)."""
    p_independent: float = 0.03
    """Probability that an independent feature fires on a token."""
    noise: float = 0.01
    """Standard deviation of the additive Gaussian noise."""
    scale: float = 1.0
    """Multiplies every vector; language-model residual streams have norms in the hundreds."""
    seed: int = 0
    """Seed of the feature directions and of the token stream."""


def tree_levels(cfg: SyntheticConfig) -> list[int]:
    """The branching factor of each depth of the feature tree (the roots first)."""
    if cfg.branching is None:
        if cfg.n_parents < 0 or cfg.children_per_parent < 0:
            raise ValueError("n_parents and children_per_parent must be non-negative")
        return [cfg.n_parents, cfg.children_per_parent] if cfg.children_per_parent else [cfg.n_parents]
    levels = list(cfg.branching)
    if not levels or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in levels):
        raise ValueError(f"branching must be a non-empty list of positive integers, got {cfg.branching}")
    default = SyntheticConfig()
    if (cfg.n_parents, cfg.children_per_parent) != (default.n_parents, default.children_per_parent):
        raise ValueError("branching replaces n_parents and children_per_parent: set one or the other")
    return levels


class SyntheticSource:
    def __init__(self, cfg: SyntheticConfig):
        self.levels = tree_levels(cfg)
        if cfg.d_in <= 0 or cfg.n_independent < 0:
            raise ValueError("synthetic source sizes must be non-negative and d_in positive")
        for name in ("p_parent", "p_child", "p_independent"):
            if not 0.0 <= getattr(cfg, name) <= 1.0:
                raise ValueError(f"{name} is a probability, in [0, 1]; got {getattr(cfg, name)}")
        if not cfg.noise >= 0.0 or not cfg.scale > 0.0 or not math.isfinite(cfg.noise * cfg.scale):
            raise ValueError(
                f"noise must be >= 0 and scale > 0, both finite; got noise {cfg.noise}, scale {cfg.scale}"
            )
        self.cfg = cfg
        self.d_in = cfg.d_in
        # Nodes at each depth: b0, b0*b1, b0*b1*b2, ...
        self.level_sizes = torch.tensor(self.levels).cumprod(0).tolist()
        n_tree = sum(self.level_sizes)
        self.n_features = n_tree + cfg.n_independent
        if self.n_features == 0:
            raise ValueError("synthetic source has no features")
        gen = torch.Generator().manual_seed(_DIRECTIONS_SEED + cfg.seed)
        directions = torch.randn(self.n_features, cfg.d_in, generator=gen)
        directions /= directions.norm(dim=-1, keepdim=True)
        parent = torch.full((self.n_features,), -1, dtype=torch.long)
        depth = torch.zeros(self.n_features, dtype=torch.long)
        start = 0
        for d, (size, b) in enumerate(zip(self.level_sizes, self.levels)):
            depth[start : start + size] = d
            if d > 0:
                # node k of this depth hangs under node k // b of the depth above
                parent[start : start + size] = start - self.level_sizes[d - 1] + torch.arange(size) // b
            start += size
        kind = (
            ["parent"] * self.level_sizes[0]
            + ["child"] * (n_tree - self.level_sizes[0])
            + ["independent"] * cfg.n_independent
        )
        self.ground_truth = GroundTruth(directions=directions, parent=parent, kind=kind, depth=depth)

    def describe(self) -> dict[str, Any]:
        return {"source": "synthetic", **{k: v for k, v in vars(self.cfg).items()}}

    def _generate(self, n: int, stream: int) -> tuple[Tensor, Tensor]:
        """``n`` activation vectors and the true feature coefficients behind them."""
        cfg = self.cfg
        # Each batch has its own generator, so batch i is the same whatever came before it.
        gen = torch.Generator().manual_seed(_STREAM_SEED + cfg.seed * 1_000_003 + stream)
        active = torch.zeros(n, self.n_features, dtype=torch.bool)
        on = torch.rand(n, self.level_sizes[0], generator=gen) < cfg.p_parent
        active[:, : self.level_sizes[0]] = on
        start = self.level_sizes[0]
        for above, size, b in zip(self.level_sizes, self.level_sizes[1:], self.levels[1:]):
            # One child at most per firing node: which child, and whether one fires at all.
            child_on = on & (torch.rand(n, above, generator=gen) < cfg.p_child)
            which = torch.randint(0, b, (n, above), generator=gen)
            child_index = torch.arange(above) * b + which  # [n, above], within this depth
            rows = torch.arange(n).unsqueeze(1).expand(n, above)
            on = torch.zeros(n, size, dtype=torch.bool)
            on[rows[child_on], child_index[child_on]] = True
            active[:, start : start + size] = on
            start += size
        active[:, start:] = torch.rand(n, cfg.n_independent, generator=gen) < cfg.p_independent
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
