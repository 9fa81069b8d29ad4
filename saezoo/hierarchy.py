"""Hierarchy metrics: composition coverage ratio, parent→child edges, absorption.

Definitions (docs/metrics.md):

* Composition coverage ratio of tier i, CCR_i: each latent j of tier i has parents P(j),
  a set of ``n_parents`` latents of tier i−1 — the ones with the largest weights into j
  where the architecture has weights between tiers (``tier_parents``), else the ones most
  often co-active with j. CCR_i is the activation-weighted share of tier-i firing during
  which at least one parent of the firing latent fires:
  Σ_t Σ_j c_tj · 1[∃ p ∈ P(j): c_tp > 0] / Σ_t Σ_j c_tj.
  Its chance level replaces every parent set by the image under one random permutation of
  tier i−1. An SAE without tiers has its latents grouped by firing frequency (most
  frequent first) into groups of given sizes, then parents by co-activation.
* Edges (synthetic source): true feature f is matched to the latent m(f) whose decoder
  direction has the largest cosine with f. An edge f → g is predicted when
  P(m(f) fires | m(g) fires) ≥ 0.5 on the evaluation tokens; precision and recall are
  against the true parent → child edges.
* Absorption rate: over the tokens on which a true child fires (so its parent does too),
  the share on which the latent matched to the parent is silent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from saezoo.activations.source import GroundTruth
from saezoo.sae import SAE, group_slices

# Tier-(i-1) latents counted as parents of each tier-i latent.
N_PARENTS = 3
# f -> g is a predicted edge when m(f) fires on at least this share of the tokens m(g) fires on.
EDGE_CONDITIONAL = 0.5


def frequency_groups(density: Tensor, sizes: list[int]) -> list[Tensor]:
    """Latent indices grouped by firing frequency, most frequent first, in groups whose
    sizes are proportional to ``sizes`` (scaled to the number of latents)."""
    order = torch.argsort(density, descending=True, stable=True)
    total = len(order)
    bounds = torch.tensor([0, *sizes]).cumsum(0).double() / sum(sizes) * total
    cuts = bounds.round().long().tolist()
    return [order[a:b] for a, b in zip(cuts, cuts[1:])]


def parents_by_weight(weights: Tensor, n_parents: int = N_PARENTS) -> Tensor:
    """``weights[j, p]``: weight from lower latent p into latent j -> top parents ``[d, n]``."""
    return torch.topk(weights, min(n_parents, weights.shape[1]), dim=1).indices


def parents_by_coactivation(counts: Tensor, n_parents: int = N_PARENTS) -> Tensor:
    """``counts[j, p]``: tokens on which j and lower latent p both fire -> top parents."""
    return torch.topk(counts.double(), min(n_parents, counts.shape[1]), dim=1).indices


def coverage(child_codes: Tensor, parent_codes: Tensor, parents: Tensor) -> tuple[float, float]:
    """(numerator, denominator) of CCR for one batch.

    Only firing children weigh, so the parents are looked up at the children's non-zero
    entries alone (codes are sparse: this is a small gather, not one per latent column)."""
    token, child = child_codes.nonzero(as_tuple=True)
    weight = child_codes[token, child].clamp_min(0).float()
    parent_on = (parent_codes != 0)[token.unsqueeze(1), parents[child]].any(dim=1)
    # float32 products, float64 sums: the sums are what loses precision over many tokens
    return float((weight * parent_on).sum(dtype=torch.float64)), float(weight.sum(dtype=torch.float64))


@torch.no_grad()
def composition_coverage(
    sae: SAE,
    batches: Callable[[], Iterable[Tensor]],
    group_sizes: list[int] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    density: Tensor | None = None,
) -> dict[str, float]:
    """CCR of every tier after the first, with its shuffled-parents chance level.

    ``batches()`` returns a fresh iterable of activation batches (read two or three times).
    ``group_sizes`` groups a tierless SAE (or regroups a tiered one) by firing frequency:
    ``density`` (each latent's firing frequency on these batches), or a pass to count it.
    """
    encode = lambda x: sae.encode(x.to(device))  # noqa: E731
    own = group_slices(sae)
    tier_parents = getattr(sae, "tier_parents", None)
    if group_sizes is None and len(own) > 1:
        groups = [torch.arange(sl.start, sl.stop) for _, sl in own]
        by_weight = tier_parents is not None
    else:
        if density is None:
            density = torch.zeros(sae.width, dtype=torch.float64)
            for x in batches():
                density += (encode(x) != 0).sum(0).double().cpu()
        groups = frequency_groups(density, group_sizes or [1, 1, 1])
        by_weight = False
    if len(groups) < 2:
        return {}
    # Codes with the groups side by side, so a group is a slice: one gather per batch (none
    # for tiers, already contiguous) instead of one per group and use.
    order = torch.cat(groups)
    identity = bool((order == torch.arange(len(order))).all())
    bounds = [0, *torch.tensor([len(g) for g in groups]).cumsum(0).tolist()]
    sl = [slice(a, b) for a, b in zip(bounds, bounds[1:])]

    def grouped(x: Tensor) -> Tensor:
        codes = encode(x).cpu()
        return codes if identity else codes[:, order]

    parents: list[Tensor] = []
    if by_weight:
        parents = [parents_by_weight(tier_parents(i + 1).detach().cpu()) for i in range(1, len(groups))]  # 1-based tiers
    else:
        counts = [torch.zeros(len(groups[i]), len(groups[i - 1]), dtype=torch.float64) for i in range(1, len(groups))]
        for x in batches():
            # 0/1 products summed over one batch are integers far below 2^24: exact in float32,
            # at a fraction of a float64 matmul's cost; the running totals are float64.
            on = (grouped(x) != 0).float()
            for i in range(1, len(groups)):
                counts[i - 1] += (on[:, sl[i]].T @ on[:, sl[i - 1]]).double()
        parents = [parents_by_coactivation(c) for c in counts]
    gen = torch.Generator().manual_seed(seed)
    shuffled = [torch.randperm(len(groups[i - 1]), generator=gen)[p] for i, p in zip(range(1, len(groups)), parents)]
    sums = {(i, kind): [0.0, 0.0] for i in range(1, len(groups)) for kind in ("real", "chance")}
    for x in batches():
        codes = grouped(x)
        for i in range(1, len(groups)):
            child, parent = codes[:, sl[i]], codes[:, sl[i - 1]]
            for kind, p in (("real", parents[i - 1]), ("chance", shuffled[i - 1])):
                num, den = coverage(child, parent, p)
                sums[(i, kind)][0] += num
                sums[(i, kind)][1] += den
    names = [name for name, _ in own] if by_weight else [f"group{i + 1}" for i in range(len(groups))]
    out = {}
    for (i, kind), (num, den) in sums.items():
        key = f"ccr/{names[i]}" if kind == "real" else f"ccr_chance/{names[i]}"
        out[key] = num / den if den > 0 else 0.0
    return out


def match_features(truth: GroundTruth, decoder: Tensor) -> Tensor:
    """For each true feature, the latent whose decoder direction is closest in cosine."""
    t = torch.nn.functional.normalize(truth.directions.double(), dim=-1)
    d = torch.nn.functional.normalize(decoder.detach().double().cpu(), dim=-1)
    return (t @ d.T).argmax(dim=1)


def ground_truth_hierarchy(truth: GroundTruth, decoder: Tensor, codes: Tensor, true_coeffs: Tensor) -> dict[str, float]:
    """Edge precision/recall and absorption rate on tokens with known true features.

    ``codes`` ``[N, width]`` are the SAE's codes and ``true_coeffs`` ``[N, n_features]``
    the true feature coefficients of the same N tokens.
    """
    match = match_features(truth, decoder)
    on = (codes[:, match] != 0).double()  # [N, F]: does the latent matched to f fire?
    fires = on.sum(0)
    both = on.T @ on  # both[f, g]: tokens on which m(f) and m(g) fire
    conditional = both / fires.clamp_min(1).unsqueeze(0)  # P(m(f) fires | m(g) fires)
    distinct = match.unsqueeze(1) != match.unsqueeze(0)
    predicted = (conditional >= EDGE_CONDITIONAL) & distinct & (fires > 0).unsqueeze(0)
    true_edges = torch.zeros_like(predicted)
    children = (truth.parent >= 0).nonzero().flatten()
    true_edges[truth.parent[children], children] = True
    hits = float((predicted & true_edges).sum())
    out = {
        "edge_precision": hits / max(float(predicted.sum()), 1.0),
        "edge_recall": hits / max(float(true_edges.sum()), 1.0),
    }
    if len(children):
        child_on = true_coeffs[:, children] > 0  # [N, C]
        parent_silent = on[:, truth.parent[children]] == 0
        out["absorption"] = float((child_on & parent_silent).sum()) / max(float(child_on.sum()), 1.0)
    return out
