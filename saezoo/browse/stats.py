"""Per-latent statistics gathered in one streaming pass, in memory bounded by the width.

Fed chunks of codes ``[contexts, T, width]`` (positions that are not training tokens hold
zeros), :class:`LatentStats` keeps, for every latent at once and with torch ops over the whole
chunk (no Python loop over latents):

* its ``k`` largest activations with where they happened and the activations of the window of
  positions around them (a running top-k: ``topk`` over the kept values stacked on the chunk's);
* a uniform sample of its firing positions (a reservoir: each firing gets a random key and the
  ``r`` largest keys are kept, the same running top-k), from which the page draws contexts of
  the lower activation quantiles;
* its firing count and a histogram of its activations on fixed log-spaced bins;
* optionally, how often each pair of latents fires on the same token (for the inferred tree),
  counted from the chunk's non-zero entries only.

Nothing of size ``[tokens, width]`` outlives a chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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

    def update(self, keys: Tensor, padded: Tensor, first_context: int) -> None:
        """Merge the chunk's candidates: ``keys`` ``[C*T, width]`` (negative: not a candidate)
        over positions of ``padded`` codes ``[C, BEFORE + T + AFTER, width]``."""
        n, width = self.keys.shape
        t = padded.shape[1] - BEFORE - AFTER
        top, pick = torch.topk(torch.cat([self.keys, keys]), n, dim=0)  # [n, width]
        new = pick >= n
        flat = (pick - n).clamp_min(0)  # where the new ones are in the chunk
        ctx, pos = flat // t, flat % t
        latent = torch.arange(width).expand(n, width)
        old = pick.clamp_max(n - 1)
        # The window of a new example: its position and the ones around it in padded codes.
        offsets = torch.arange(WINDOW)
        window = padded[ctx.unsqueeze(-1), pos.unsqueeze(-1) + offsets, latent.unsqueeze(-1)]
        self.window = torch.where(new.unsqueeze(-1), window, self.window.gather(0, old.unsqueeze(-1).expand(-1, -1, WINDOW)))
        self.values = torch.where(new, padded[ctx, pos + BEFORE, latent], self.values.gather(0, old))
        self.context = torch.where(new, ctx + first_context, self.context.gather(0, old))
        self.position = torch.where(new, pos, self.position.gather(0, old))
        self.keys = top


class LatentStats:
    """Streaming statistics of ``width`` latents; see the module docstring.

    ``k``: top examples per latent; ``samples``: reservoir size; ``cofire``: count co-firing
    pairs (memory ``width²`` int32, so only for modest widths); ``seed``: the reservoir's keys.
    """

    def __init__(self, width: int, k: int = 20, samples: int = 24, cofire: bool = False, seed: int = 0):
        self.width = width
        self.top = Examples.empty(k, width)
        self.sample = Examples.empty(samples, width)
        self.fires = torch.zeros(width, dtype=torch.int64)
        self.hist = torch.zeros(width * HIST_BINS, dtype=torch.int64)
        self.cofire = torch.zeros(width * width, dtype=torch.int32) if cofire else None
        self.tokens = 0
        self._generator = torch.Generator().manual_seed(seed)
        self._contexts = 0

    @torch.no_grad()
    def update(self, codes: Tensor, tokens: int) -> None:
        """Add a chunk of codes ``[C, T, width]`` holding ``tokens`` counted positions."""
        c, t, width = codes.shape
        codes = codes.float()
        padded = torch.nn.functional.pad(codes, (0, 0, BEFORE, AFTER))
        flat = codes.reshape(c * t, width)
        self.top.update(flat, padded, self._contexts)
        firing = flat > 0
        keys = torch.rand(flat.shape, generator=self._generator).masked_fill_(~firing, -1.0)
        self.sample.update(keys, padded, self._contexts)
        token, latent = firing.nonzero(as_tuple=True)
        values = flat[token, latent]
        self.fires += torch.bincount(latent, minlength=width)
        bins = ((values.log10() - HIST_LO) / (HIST_HI - HIST_LO) * HIST_BINS).long().clamp_(0, HIST_BINS - 1)
        self.hist += torch.bincount(latent * HIST_BINS + bins, minlength=width * HIST_BINS)
        if self.cofire is not None:
            self._count_pairs(token, latent)
        self.tokens += tokens
        self._contexts += c

    def _count_pairs(self, token: Tensor, latent: Tensor) -> None:
        """Add 1 for every ordered pair of latents firing on one token (nonzero() lists the
        entries token by token, so each token's latents are one contiguous run)."""
        counts = torch.bincount(token)
        counts = counts[counts > 0]
        starts = torch.cumsum(counts, 0) - counts
        per_entry = counts.repeat_interleave(counts)  # the size of each entry's run
        entry = torch.arange(len(latent)).repeat_interleave(per_entry)
        first = starts.repeat_interleave(counts).repeat_interleave(per_entry)
        partner = first + (torch.arange(len(entry)) - torch.repeat_interleave(torch.cumsum(per_entry, 0) - per_entry, per_entry))
        self.cofire.index_add_(0, latent[entry] * self.width + latent[partner], torch.ones(len(entry), dtype=torch.int32))

    def histogram(self) -> Tensor:
        """``[width, HIST_BINS]`` counts."""
        return self.hist.view(self.width, HIST_BINS)

    def inferred_parents(self, min_share: float) -> Tensor:
        """Each latent's parent: of the latents that fire more often (ties: the lower index),
        the one firing on the largest share of its tokens, when that share is at least
        ``min_share``; else -1."""
        if self.cofire is None:
            raise RuntimeError("co-firing was not counted")
        counts = self.cofire.view(self.width, self.width)
        order = torch.argsort(self.fires, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(self.width)
        parents = torch.full((self.width,), -1, dtype=torch.int64)
        for start in range(0, self.width, 1024):  # rows in blocks: no width² float temporary
            rows = torch.arange(start, min(start + 1024, self.width))
            share = counts[rows].double() / self.fires[rows].clamp_min(1).double().unsqueeze(1)
            share[rank.unsqueeze(0) >= rank[rows].unsqueeze(1)] = -1  # only more frequent latents
            best, parent = share.max(dim=1)
            parents[rows] = torch.where(best >= min_share, parent, -1)
        return parents


def bin_edges() -> list[float]:
    """The histogram's ``HIST_BINS + 1`` bin edges (activations)."""
    return [10 ** (HIST_LO + (HIST_HI - HIST_LO) * i / HIST_BINS) for i in range(HIST_BINS + 1)]
