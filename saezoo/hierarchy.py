"""Hierarchy metrics, the same for every architecture: trees of latents, their recovery of a
known tree, consistency, composition coverage and absorption. Definitions: docs/metrics.md.

Everything here reads one :class:`CodeRecord`, the non-zero codes of the evaluation tokens
kept sparse, so no metric depends on how an architecture computes its codes:

* the *inferred tree*: a latent's parent is the latent, among those firing more often,
  that fires on the largest share of its tokens, if that share is at least
  ``INFERRED_PARENT_SHARE``; else it is a root;
* the *structural tree*: ``SAE.latent_parents()``, where the architecture has one;
* *tree recovery* (synthetic source): true features matched one-to-one to latents that fire
  with them, then precision, recall and F1 of the true edges at each depth, in either tree;
* *consistency*: mean over child latents of P(parent fires | child fires), in either tree;
* *CCR*: for groups of latents (tiers, or frequency groups of a tierless SAE), the
  activation-weighted share of a group's firing during which one of the latent's
  ``N_PARENTS`` most co-active latents of the group above fires, with its chance level;
* *absorption* (synthetic source): a true child fires, the latent matched to its parent is
  silent; at each depth of the tree.

Co-firing counts (how many tokens latents i and j both fire on) are what the tree and the
CCR parents need. They come from a sparse product of the ``[tokens, width]`` firing pattern
with itself, a block of child latents at a time: the work is the number of co-firing pairs
(tokens × L0²), not tokens × width², and memory is one ``[block, width]`` block, not width².
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import torch
from torch import Tensor

from saezoo.activations.source import GroundTruth
from saezoo.sae import SAE, group_slices

# Latents of the group above counted as the CCR parents of each latent.
N_PARENTS = 3
# A latent's best candidate must fire on at least this share of its tokens to be its parent;
# else the latent is a root. Half: a true parent fires on all its child's tokens (share 1) and
# still passes while absorbed on fewer than half of them; an unrelated latent scores about its
# own firing rate, so only latents firing on over half of all tokens pass by chance.
INFERRED_PARENT_SHARE = 0.5
# A latent can stand for a true feature only if it fires on at least this share of the
# evaluation tokens on which the feature is active. A tenth: a parent latent absorbed by every
# child still fires where no child does (1 - p_child of its feature's tokens, 0.2 by default)
# and stays a candidate, while a near-dead latent whose decoder happens to lie nearest does not
# stand for the feature (seen: 9 of 184 features matched by cosine alone to latents firing 0-1
# times in 8192 tokens, while their live latents went unmatched: docs/metrics.md).
MATCH_MIN_SHARE = 0.1
# Co-firing counts are computed for blocks of child latents of at most this many entries.
_BLOCK_ENTRIES = 1 << 24
# Dense products count co-firing when width² < this × the mean over tokens of L_t² (the sparse
# product's work per token): a sparse pair cost 130-2500 dense multiply-adds when measured.
_DENSE_BELOW = 500


class CodeRecord:
    """The non-zero codes of a set of tokens, as ``(token, latent, value)`` entries sorted by
    token then latent (a CSR matrix ``[tokens, width]``). ``add`` takes batches of codes."""

    def __init__(self, width: int):
        self.width = width
        self.tokens = 0
        self._parts: list[tuple[Tensor, Tensor, Tensor]] = []
        self._keys: Tensor | None = None

    @classmethod
    def from_codes(cls, codes: Tensor) -> CodeRecord:
        record = cls(codes.shape[-1])
        record.add(codes)
        return record

    @torch.no_grad()
    def add(self, codes: Tensor) -> None:
        token, latent = codes.nonzero(as_tuple=True)  # row-major: sorted by token, then latent
        values = codes[token, latent].float()
        self._parts.append(((token + self.tokens).cpu(), latent.cpu(), values.cpu()))
        self.tokens += codes.shape[0]

    def _cat(self) -> None:
        if len(self._parts) != 1:
            empty = (torch.zeros(0, dtype=torch.long),) * 2 + (torch.zeros(0),)
            parts = self._parts or [empty]
            self._parts = [tuple(torch.cat(p) for p in zip(*parts))]  # type: ignore[list-item]

    @property
    def token(self) -> Tensor:
        self._cat()
        return self._parts[0][0]

    @property
    def latent(self) -> Tensor:
        self._cat()
        return self._parts[0][1]

    @property
    def value(self) -> Tensor:
        self._cat()
        return self._parts[0][2]

    def fires(self) -> Tensor:
        """Tokens on which each latent fires, ``[width]`` int64."""
        return torch.bincount(self.latent, minlength=self.width)

    def fire_together(self, latent: Tensor, token: Tensor) -> Tensor:
        """Whether ``latent[i]`` fires on ``token[i]``: a lookup in the sorted entries."""
        if self._keys is None or len(self._keys) != len(self.token):
            self._keys = self.token * self.width + self.latent  # sorted, as the entries are
        keys = self._keys
        query = token * self.width + latent
        pos = torch.searchsorted(keys, query).clamp_max(max(len(keys) - 1, 0))
        return (keys[pos] == query) if len(keys) else torch.zeros_like(query, dtype=torch.bool)

    def firing(self, latents: Tensor) -> Tensor:
        """``[tokens, len(latents)]`` bool: whether each of ``latents`` fires on each token."""
        unique, inverse = torch.unique(latents, return_inverse=True)
        column = torch.full((self.width,), -1, dtype=torch.long)
        column[unique] = torch.arange(len(unique))
        out = torch.zeros(self.tokens, len(unique), dtype=torch.bool)
        keep = column[self.latent] >= 0
        out[self.token[keep], column[self.latent[keep]]] = True
        return out[:, inverse]


def cofiring_blocks(record: CodeRecord, block_entries: int = _BLOCK_ENTRIES) -> Iterator[tuple[int, Tensor]]:
    """``(a, counts)`` for consecutive blocks of latents: ``counts[i, p]`` is the number of
    tokens on which latent ``a + i`` and latent ``p`` both fire, ``[block, width]``.

    A product of the 0/1 firing pattern with itself, sparse when codes are sparse (the work is
    the co-firing pairs, Σ_t L_t²) and dense BLAS when they are not (tokens × width², but a
    sparse pair costs hundreds of dense multiply-adds: measured 130-2500x on this project's
    CPUs; an untrained SAE fires half its latents). Sums of ones are exact in float32 below
    2^24 tokens; float64 above."""
    width, n = record.width, record.tokens
    dtype = torch.float32 if n < 1 << 24 else torch.float64
    token, latent = record.token, record.latent
    rows = max(1, block_entries // max(width, 1))
    per_token = torch.bincount(token, minlength=n)
    crow = torch.cat([per_token.new_zeros(1), per_token.cumsum(0)])
    if width * width < _DENSE_BELOW * float(per_token.double().pow(2).mean()):
        span = max(1, block_entries // max(width, 1))  # tokens a dense chunk holds
        for a in range(0, width, rows):
            counts = torch.zeros(min(rows, width - a), width, dtype=dtype)
            for s in range(0, n, span):
                e0, e1 = int(crow[s]), int(crow[min(n, s + span)])
                on = torch.zeros(min(span, n - s), width, dtype=dtype)
                on[token[e0:e1] - s, latent[e0:e1]] = 1
                counts += on[:, a : a + len(counts)].T @ on
            yield a, counts
        return
    ones = torch.ones(len(token), dtype=dtype)
    by_latent = torch.argsort(latent, stable=True)  # latent-major, tokens still in order
    crow_t = torch.cat([crow.new_zeros(1), torch.bincount(latent, minlength=width).cumsum(0)])
    token_t = token[by_latent]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        firing = torch.sparse_csr_tensor(crow, latent, ones, size=(n, width), check_invariants=False)
        for a in range(0, width, rows):
            b = min(width, a + rows)
            c0, c1 = int(crow_t[a]), int(crow_t[b])
            block = torch.sparse_csr_tensor(
                crow_t[a : b + 1] - c0, token_t[c0:c1], ones[c0:c1], size=(b - a, n), check_invariants=False
            )
            product = block @ firing
            # co-firing is dense: a scatter of the product's entries is ~3x faster than to_dense
            counts = torch.zeros(b - a, width, dtype=dtype)
            product_rows = torch.repeat_interleave(torch.arange(b - a), product.crow_indices().diff())
            counts[product_rows, product.col_indices()] = product.values()
            yield a, counts


def frequency_rank(fires: Tensor) -> Tensor:
    """Each latent's position when sorted by firing count, most frequent first (ties: lower
    index first). "Fires more often than j" means a smaller rank, so the inferred tree has no
    cycles even among latents that fire on exactly the same tokens."""
    order = torch.argsort(fires, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return rank


def best_parents(counts: Tensor, rows: Tensor, rank: Tensor) -> tuple[Tensor, Tensor]:
    """For child latents ``rows`` with co-firing counts ``counts`` ``[len(rows), width]``: the
    candidate (a latent of smaller rank) with the most co-firing tokens, and that count.
    Ties go to the least frequent candidate, the most specific one: in a tree a grandchild's
    parent and grandparent both fire on all its tokens, and the parent is the answer."""
    eligible = rank.unsqueeze(0) < rank[rows].unsqueeze(1)
    masked = torch.where(eligible, counts, torch.full_like(counts, -1))
    most = masked.max(dim=1).values
    tied = masked == most.unsqueeze(1)
    parent = torch.where(tied, rank.unsqueeze(0), torch.full_like(rank, -1).unsqueeze(0)).argmax(dim=1)
    return parent, most.clamp_min(0)


def frequency_groups(density: Tensor, sizes: list[int]) -> list[Tensor]:
    """Latent indices grouped by firing frequency, most frequent first, in groups whose
    sizes are proportional to ``sizes`` (scaled to the number of latents)."""
    order = torch.argsort(density, descending=True, stable=True)
    total = len(order)
    bounds = torch.tensor([0, *sizes]).cumsum(0).double() / sum(sizes) * total
    cuts = bounds.round().long().tolist()
    return [order[a:b] for a, b in zip(cuts, cuts[1:])]


def top_coactive(counts: Tensor, candidates: Tensor, n_parents: int) -> Tensor:
    """The ``n_parents`` latents of ``candidates`` most often co-active with each row of
    ``counts`` ``[children, width]``, as latent indices ``[children, n_parents]``."""
    return candidates[torch.topk(counts[:, candidates], n_parents, dim=1).indices]


class Cofiring:
    """What one pass over the co-firing counts yields: the inferred tree, and the CCR parents
    of every latent of ``groups[1:]`` in the group above."""

    def __init__(self, record: CodeRecord, groups: list[Tensor]):
        width = record.width
        self.fires = record.fires()
        rank = frequency_rank(self.fires)
        self.inferred = torch.full((width,), -1, dtype=torch.long)
        self.share = torch.zeros(width, dtype=torch.float64)
        group_of = torch.full((width,), -1, dtype=torch.long)
        for i, g in enumerate(groups):
            group_of[g] = i
        # As many parents for every latent, so that they stack: fewer where a group is smaller.
        n_parents = min([N_PARENTS, *(len(g) for g in groups[:-1])])
        self.group_parents = torch.full((width, n_parents), -1, dtype=torch.long)
        for a, counts in cofiring_blocks(record):
            rows = torch.arange(a, a + counts.shape[0])
            parent, together = best_parents(counts, rows, rank)
            share = together.double() / self.fires[rows].clamp_min(1).double()
            keep = share >= INFERRED_PARENT_SHARE
            self.inferred[rows[keep]] = parent[keep]
            self.share[rows] = share
            for i in range(1, len(groups)):
                mine = group_of[rows] == i
                if mine.any() and n_parents:
                    self.group_parents[rows[mine]] = top_coactive(counts[mine], groups[i - 1], n_parents)


# --- the trees -----------------------------------------------------------------------------


def consistency(record: CodeRecord, parents: Tensor) -> float | None:
    """Mean over firing latents that have a parent of P(parent fires | latent fires); None
    when no firing latent has one."""
    fires = record.fires()
    child = record.latent
    has = parents[child] >= 0
    together = record.fire_together(parents[child[has]], record.token[has])
    counts = torch.bincount(child[has][together], minlength=record.width).double()
    children = (parents >= 0) & (fires > 0)
    if not children.any():
        return None
    return float((counts[children] / fires[children].double()).mean())


def root_fraction(fires: Tensor, parents: Tensor) -> float:
    """Share of the latents that fire at all that have no parent."""
    alive = fires > 0
    return float((parents[alive] < 0).double().mean()) if alive.any() else 0.0


def active_share(record: CodeRecord, active: Tensor) -> Tensor:
    """``[features, width]``: the share of the tokens on which each feature is ``active``
    (``[tokens, features]`` bool) that each latent fires on; 0 for a feature never active."""
    entries = torch.stack([record.latent, record.token])
    ones = torch.ones(entries.shape[1], dtype=torch.float64)
    firing = torch.sparse_coo_tensor(entries, ones, (record.width, record.tokens), check_invariants=False)
    together = torch.sparse.mm(firing, active.double()).T  # [features, width], exact counts
    return together / active.sum(0).clamp_min(1).unsqueeze(1)


def match_features(
    directions: Tensor, decoder: Tensor, eligible: Tensor | None = None, *, candidates: int = 16
) -> Tensor:
    """True feature f -> latent ``m(f)``, one-to-one, greedily by decoder cosine: the
    (feature, latent) pair with the largest cosine is matched first, then the largest among
    the unmatched, and so on. A latent stands for one feature at most; a feature the SAE did
    not learn gets the nearest latent left. ``eligible`` (``[features, width]`` bool): the
    only pairs that may match; a feature left with no eligible latent is matched to none.
    -1 for a feature matched to none (or where the latents ran out)."""
    t = torch.nn.functional.normalize(directions.detach().float().cpu(), dim=-1)
    d = torch.nn.functional.normalize(decoder.detach().float().cpu(), dim=-1)
    cos = t @ d.T
    if eligible is not None:
        cos = cos.masked_fill(~eligible.cpu(), float("-inf"))
    n_features, width = cos.shape
    match = torch.full((n_features,), -1, dtype=torch.long)
    taken = torch.zeros(width, dtype=torch.bool)
    free = torch.arange(n_features)
    while len(free) and not taken.all():
        # Each free feature's best few free latents, all pairs in decreasing cosine. The pairs
        # are exact greedy order until a feature has lost all its candidates: later pairs
        # could be beaten by its next ones, so that is where the round stops. A feature with
        # fewer eligible free latents than candidates has no next ones: once they are taken,
        # it is matched to none.
        k = min(candidates, int((~taken).sum()))
        scores = cos[free].masked_fill(taken, float("-inf"))
        values, latents = torch.topk(scores, k, dim=1)
        usable = values > float("-inf")
        left = usable.sum(1).tolist()
        last = ~usable.all(1)  # its usable candidates are all it has left
        done = usable.sum(1) == 0
        order = torch.argsort(values.flatten(), descending=True, stable=True).tolist()
        for flat in order:
            f, c = divmod(flat, k)
            if done[f] or not usable[f, c]:
                continue
            j = int(latents[f, c])
            if not taken[j]:
                taken[j] = True
                done[f] = True
                match[free[f]] = j
                continue
            left[f] -= 1
            if left[f] == 0:
                if not last[f]:
                    break
                done[f] = True
        free = free[~done]
    return match


def match_truth(sae: SAE, record: CodeRecord, truth: GroundTruth, true_coeffs: Tensor) -> Tensor:
    """The matching every synthetic-source metric reads (docs/metrics.md): each true feature to
    a latent of ``sae`` by decoder cosine, among the latents that fire on at least
    MATCH_MIN_SHARE of the tokens where the feature is active (``record`` and ``true_coeffs``
    on the same tokens)."""
    eligible = active_share(record, true_coeffs.cpu() != 0) >= MATCH_MIN_SHARE
    return match_features(truth.directions, sae.decoder_directions(), eligible)


def tree_recovery(truth: GroundTruth, match: Tensor, parents: Tensor) -> dict[str, float]:
    """Precision, recall and F1 of the true edges in the tree ``parents`` (a parent latent per
    latent, -1 for none), per depth and over all depths, through the feature matching.

    A predicted edge is a matched latent whose parent is a matched latent: m(f) -> m(g) stands
    for f -> g. It counts at depth depth(f) + 1, the depth it puts g at, and is right when f is
    g's true parent. Recall at depth d: share of the true edges into depth-d features that the
    tree has; precision at depth d: share of the predicted edges at depth d that are true.
    Edges from or to latents matched to no feature are not judged."""
    n_features = len(match)
    feature_of = torch.full((len(parents),), -1, dtype=torch.long)
    matched = match >= 0
    feature_of[match[matched]] = torch.arange(n_features)[matched]
    predicted = torch.full((n_features,), -1, dtype=torch.long)  # predicted parent feature of g
    parent_latent = parents[match[matched]]
    has = parent_latent >= 0
    predicted[torch.arange(n_features)[matched][has]] = feature_of[parent_latent[has]]
    is_edge = predicted >= 0
    right = is_edge & (predicted == truth.parent)
    claimed = torch.where(is_edge, truth.depth[predicted.clamp_min(0)] + 1, torch.zeros_like(predicted))
    true_edge = truth.parent >= 0
    out: dict[str, float] = {}
    depths = range(1, int(truth.depth.max()) + 1) if n_features else range(0)
    for d in [*depths, None]:
        at = (claimed == d) if d is not None else is_edge
        into = (truth.depth == d) & true_edge if d is not None else true_edge
        hits = float((right & into).sum())
        precision = hits / max(float(at.sum()), 1.0)
        recall = hits / max(float(into.sum()), 1.0)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        suffix = f"/depth{d}" if d is not None else ""
        out.update({f"precision{suffix}": precision, f"recall{suffix}": recall, f"f1{suffix}": f1})
    return out


def absorption(truth: GroundTruth, match: Tensor, record: CodeRecord, true_coeffs: Tensor) -> dict[str, float]:
    """Over (token, true child) pairs where the child fires, the share on which the latent
    matched to its parent is silent: at each depth of the child, and over all depths."""
    children = (truth.parent >= 0).nonzero().flatten()
    if not len(children):
        return {}
    parent_latent = match[truth.parent[children]]
    on = record.firing(parent_latent.clamp_min(0)) & (parent_latent >= 0)  # [N, children]
    child_on = true_coeffs[:, children] > 0
    absorbed = child_on & ~on
    out = {"absorption": float(absorbed.sum()) / max(float(child_on.sum()), 1.0)}
    depth = truth.depth[children]
    for d in range(1, int(depth.max()) + 1):
        at = depth == d
        out[f"absorption/depth{d}"] = float(absorbed[:, at].sum()) / max(float(child_on[:, at].sum()), 1.0)
    return out


# --- composition coverage ------------------------------------------------------------------


def coverage(record: CodeRecord, children: Tensor, parents: Tensor) -> float:
    """Activation-weighted share of the firing of latents ``children`` during which at least
    one of their parents fires: ``parents[i]`` are the parents (latent indices) of
    ``children[i]``."""
    row = torch.full((record.width,), -1, dtype=torch.long)
    row[children] = torch.arange(len(children))
    keep = row[record.latent] >= 0
    token, weight = record.token[keep], record.value[keep].clamp_min(0)
    their = parents[row[record.latent[keep]]]  # [entries, parents each]
    found = record.fire_together(their.flatten(), token.repeat_interleave(their.shape[1])).view_as(their)
    den = float(weight.sum(dtype=torch.float64))
    return float((weight * found.any(dim=1)).sum(dtype=torch.float64)) / den if den > 0 else 0.0


def composition_coverage(
    record: CodeRecord, groups: list[Tensor], names: list[str], group_parents: Tensor, seed: int = 0
) -> dict[str, float]:
    """``ccr/<name>`` of every group after the first, and ``ccr_chance/<name>``: the same with
    every parent replaced by its image under one random permutation of the group above.
    ``group_parents[j]``: the parents of latent j in the group above (:class:`Cofiring`)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(1, len(groups)):
        above = groups[i - 1]
        position = torch.full((record.width,), -1, dtype=torch.long)
        position[above] = torch.arange(len(above))
        shuffle = above[torch.randperm(len(above), generator=gen)]
        real = group_parents[groups[i]]
        out[f"ccr/{names[i]}"] = coverage(record, groups[i], real)
        out[f"ccr_chance/{names[i]}"] = coverage(record, groups[i], shuffle[position[real]])
    return out


# --- everything, for one SAE -----------------------------------------------------------------


def hierarchy_metrics(
    sae: SAE,
    record: CodeRecord,
    group_sizes: list[int] | None = None,
    truth: GroundTruth | None = None,
    true_coeffs: Tensor | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Every hierarchy metric of ``sae`` from the ``record`` of its codes on the evaluation
    tokens (and, on a synthetic source, the true features' coefficients on the same tokens).

    CCR groups: the SAE's own tiers (``latent_groups``), or when it has none or
    ``group_sizes`` is given, its latents grouped by firing frequency into groups of those
    relative sizes (thirds by default)."""
    own = group_slices(sae)
    if group_sizes is None and len(own) > 1:
        groups = [torch.arange(sl.start, sl.stop) for _, sl in own]
        names = [name for name, _ in own]
    else:
        groups = frequency_groups(record.fires().double(), group_sizes or [1, 1, 1])
        names = [f"group{i + 1}" for i in range(len(groups))]
    co = Cofiring(record, groups)
    trees = {"inferred": co.inferred}
    structural = sae.latent_parents()
    if structural is not None:
        trees["structural"] = structural.detach().cpu().long()
    out: dict[str, float] = {}
    for kind, parents in trees.items():
        value = consistency(record, parents)
        if value is not None:
            out[f"consistency/{kind}"] = value
        out[f"root_fraction/{kind}"] = root_fraction(co.fires, parents)
    if len(groups) > 1:
        out.update(composition_coverage(record, groups, names, co.group_parents, seed))
    if (truth is None) != (true_coeffs is None):
        raise ValueError("tree recovery and absorption need both the ground truth and the true coefficients")
    if truth is not None:
        true_coeffs = true_coeffs.cpu()  # the record is on the CPU; a source may generate elsewhere
        match = match_truth(sae, record, truth, true_coeffs)
        for kind, parents in trees.items():
            for key, value in tree_recovery(truth, match, parents).items():
                score, _, depth = key.partition("/")  # precision/depth1 -> tree_precision/inferred/depth1
                out[f"tree_{score}/{kind}" + (f"/{depth}" if depth else "")] = value
        out.update(absorption(truth, match, record, true_coeffs))
    return out
