"""Per-latent statistics gathered in one streaming pass, in memory bounded by the width.

Fed chunks of codes ``[contexts, T, width]`` (positions that are not training tokens hold
zeros), :class:`LatentStats` keeps, for every latent at once and with torch ops over the whole
chunk (no Python loop over latents):

* its ``k`` largest activations with where they happened and the activations of the window of
  positions around them (a running top-k: the chunk's best k per latent, found by sorting its
  non-zero entries, then ``topk`` over those stacked on the kept ones);
* a uniform sample of its firing positions (a reservoir: each firing gets a random key and the
  ``r`` largest keys are kept, the same running top-k), from which the page draws contexts of
  the lower activation quantiles;
* its firing count and a histogram of its activations on fixed log-spaced bins;
* optionally, the non-zero codes themselves, sparse (:class:`saezoo.hierarchy.CodeRecord`),
  from which :class:`saezoo.hierarchy.Cofiring` infers the tree.

Nothing of size ``[tokens, width]`` outlives a chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saezoo.hierarchy import CodeRecord

# Positions shown before and after the token of an example.
BEFORE, AFTER = 15, 5
WINDOW = BEFORE + 1 + AFTER
# Histogram bins: log10 of the activation from HIST_LO to HIST_HI in HIST_BINS steps; values
# outside fall into the first or last bin.
HIST_LO, HIST_HI, HIST_BINS = -3.0, 3.0, 60


@dataclass
class Examples:
    """A running selection of ``n`` examples per latent: ``[n, width]`` keys, values, context
    and position, and ``[n, width, WINDOW]`` activations of the window around each."""

    keys: Tensor
    values: Tensor
    context: Tensor
    position: Tensor
    window: Tensor

    @classmethod
    def empty(cls, n: int, width: int) -> Examples:
        return cls(
            keys=torch.full((n, width), -1.0),
            values=torch.zeros(n, width),
            context=torch.full((n, width), -1, dtype=torch.int64),
            position=torch.zeros(n, width, dtype=torch.int64),
            window=torch.zeros(n, width, WINDOW),
        )

    def update(self, keys: Tensor, token: Tensor, latent: Tensor, codes: Tensor, first_context: int) -> None:
        """Merge the chunk's firings (``keys`` ``[E]`` >= 0 of the non-zero entries at ``token``,
        ``latent`` of ``codes`` ``[C, T, width]``)."""
        n, width = self.keys.shape
        t = codes.shape[1]
        if len(keys) == 0:
            return
        cand_keys, cand_entry = best_per_latent(keys, latent, n, width)
        top, pick = torch.topk(torch.cat([self.keys, cand_keys]), n, dim=0)  # [n, width]
        new = (pick >= n) & (top >= 0)  # an empty slot stays empty
        changed = new.any(dim=0).nonzero().squeeze(1)  # only these latents take new examples
        old = pick.clamp_max(n - 1)
        entry = cand_entry.gather(0, (pick - n).clamp_min(0))  # [n, width], -1 where not new
        self.keys = top
        # A latent without a new example keeps its examples where they are (topk of keys sorted
        # already), so only the changed ones are reordered.
        for name in ("values", "context", "position", "window"):
            kept = getattr(self, name)
            index = old[:, changed] if name != "window" else old[:, changed].unsqueeze(-1).expand(-1, -1, WINDOW)
            kept[:, changed] = kept[:, changed].gather(0, index)
        # New examples' windows, a block of latents at a time (the index tensors are int64
        # [n, block, WINDOW]: unblocked, a 65k-latent chunk would need gigabytes of them).
        for block in changed.split(4096):
            is_new = new[:, block]
            tok = token[entry[:, block].clamp_min(0)]
            ctx, pos = tok // t, tok % t
            lat = block.expand(n, -1)
            where = pos.unsqueeze(-1) + torch.arange(WINDOW) - BEFORE  # [n, block, WINDOW]
            inside = (where >= 0) & (where < t)
            window = codes[ctx.unsqueeze(-1), where.clamp_(0, t - 1), lat.unsqueeze(-1)] * inside
            sub = (slice(None), block)
            self.values[sub] = torch.where(is_new, codes[ctx, pos, lat], self.values[sub])
            self.context[sub] = torch.where(is_new, ctx + first_context, self.context[sub])
            self.position[sub] = torch.where(is_new, pos, self.position[sub])
            self.window[sub] = torch.where(is_new.unsqueeze(-1), window, self.window[sub])


def best_per_latent(keys: Tensor, latent: Tensor, n: int, width: int) -> tuple[Tensor, Tensor]:
    """Of entries with ``keys`` (>= 0) belonging to ``latent``, the ``n`` largest keys of
    each latent: ``(keys, entry index)`` ``[n, width]``, -1 where a latent has fewer. Two
    stable sorts of the entries (by key, then by latent), no loop over latents."""
    by_key = torch.argsort(keys, descending=True, stable=True)
    order = by_key[torch.argsort(latent[by_key], stable=True)]
    sorted_latent = latent[order]
    counts = torch.bincount(latent, minlength=width)
    rank = torch.arange(len(order)) - (torch.cumsum(counts, 0) - counts)[sorted_latent]
    keep = rank < n
    out_keys = torch.full((n, width), -1.0)
    out_entry = torch.full((n, width), -1, dtype=torch.int64)
    out_keys[rank[keep], sorted_latent[keep]] = keys[order[keep]].float()
    out_entry[rank[keep], sorted_latent[keep]] = order[keep]
    return out_keys, out_entry


class LatentStats:
    """Streaming statistics of ``width`` latents; see the module docstring.

    ``k``: top examples per latent; ``samples``: reservoir size; ``keep_codes``: keep the non-zero
    codes (a :class:`saezoo.hierarchy.CodeRecord`, tokens × L0 entries) for the inferred tree;
    ``seed``: the reservoir's keys.
    """

    def __init__(self, width: int, k: int = 20, samples: int = 24, keep_codes: bool = False, seed: int = 0):
        self.width = width
        self.top = Examples.empty(k, width)
        self.sample = Examples.empty(samples, width)
        self.fires = torch.zeros(width, dtype=torch.int64)
        self.hist = torch.zeros(width * HIST_BINS, dtype=torch.int64)
        self.record = CodeRecord(width) if keep_codes else None
        self.tokens = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._contexts = 0

    @torch.no_grad()
    def update(self, codes: Tensor, tokens: int) -> None:
        """Add a chunk of codes ``[C, T, width]`` holding ``tokens`` counted positions."""
        c, t, width = codes.shape
        codes = codes.float()
        flat = codes.view(c * t, width)
        # Everything below works on the non-zero entries only (codes are sparse).
        token, latent = (flat > 0).nonzero(as_tuple=True)
        values = flat[token, latent]
        self.top.update(values, token, latent, codes, self._contexts)
        self.sample.update(torch.rand(len(values), generator=self._generator), token, latent, codes, self._contexts)
        self.fires += torch.bincount(latent, minlength=width)
        bins = ((values.log10() - HIST_LO) / (HIST_HI - HIST_LO) * HIST_BINS).long().clamp_(0, HIST_BINS - 1)
        self.hist += torch.bincount(latent * HIST_BINS + bins, minlength=width * HIST_BINS)
        if self.record is not None:
            self.record.add(flat)
        self.tokens += tokens
        self._contexts += c

    def histogram(self) -> Tensor:
        """``[width, HIST_BINS]`` counts."""
        return self.hist.view(self.width, HIST_BINS)


def bin_edges() -> list[float]:
    """The histogram's ``HIST_BINS + 1`` bin edges (activations)."""
    return [10 ** (HIST_LO + (HIST_HI - HIST_LO) * i / HIST_BINS) for i in range(HIST_BINS + 1)]
