"""A shuffle buffer of bounded size: memory does not grow with the token budget.

The stream is cut into blocks (a few cache shards, or a stretch of a live harvest); one block
at a time is held in memory and its rows are served in a random order. Over a cache the shard
order is also permuted every epoch, so a batch mixes text from across the corpus. Every
permutation is seeded by ``(seed, epoch, block)``: the stream is the same for the same seed,
and a resumed run skips whole blocks by their sizes instead of reading them.

An epoch is one pass over the tokens; the stream is endless and reshuffles every epoch.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from saezoo.activations.cache import CacheEntry
from saezoo.errors import UsageError


@dataclass
class Block:
    """Activations served together: ``n`` rows (``None`` when unknown until loaded)."""

    n: int | None
    load: Callable[[], Tensor]


def seed_of(*parts: object) -> int:
    """A 63-bit seed derived from ``parts``, stable across processes (unlike ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(seed_of(*parts))


def shuffled_batches(
    epoch_blocks: Callable[[int], Iterable[Block]], batch_size: int, seed: int, start: int = 0
) -> Iterator[Tensor]:
    """Endless ``[batch_size, d]`` batches from the blocks of each epoch, from batch ``start`` on."""
    if batch_size <= 0:
        raise UsageError(f"batch size must be positive, not {batch_size}")
    skip = start * batch_size
    pieces: list[Tensor] = []
    have = 0
    for epoch in itertools.count():
        epoch_tokens = 0
        for index, block in enumerate(epoch_blocks(epoch)):
            if block.n is not None and block.n <= skip:
                skip -= block.n
                epoch_tokens += block.n
                continue
            data = block.load()
            n = len(data)
            epoch_tokens += n
            order = torch.randperm(n, generator=_generator(seed, "rows", epoch, index))
            pos = skip
            skip = max(0, skip - n)
            while pos < n:
                take = min(batch_size - have, n - pos)
                pieces.append(data[order[pos : pos + take]])
                have += take
                pos += take
                if have == batch_size:
                    yield pieces[0] if len(pieces) == 1 else torch.cat(pieces)
                    pieces, have = [], 0
            del data, block  # release the block before the next one is built
        if epoch_tokens == 0:
            raise UsageError("the activation stream is empty: the dataset yielded no text tokens")


def cached_blocks(entry: CacheEntry, seed: int, buffer_tokens: int) -> Callable[[int], list[Block]]:
    """Blocks over a cache entry, each about ``buffer_tokens`` rows (whole shards, at least one)."""
    sizes = entry.shard_sizes()
    per_block = max(1, buffer_tokens // max(sizes, default=1))

    def epoch_blocks(epoch: int) -> list[Block]:
        order = torch.randperm(len(sizes), generator=_generator(seed, "shards", epoch)).tolist()
        groups = [order[i : i + per_block] for i in range(0, len(order), per_block)]
        return [Block(sum(sizes[j] for j in group), _shard_loader(entry, group)) for group in groups]

    return epoch_blocks


def _shard_loader(entry: CacheEntry, group: list[int]) -> Callable[[], Tensor]:
    def load() -> Tensor:
        sizes = entry.shard_sizes()
        # Filled shard by shard so that at most one shard exists twice in memory.
        out = torch.empty(sum(sizes[j] for j in group), entry.manifest["d_in"])
        pos = 0
        for j in group:
            out[pos : pos + sizes[j]] = entry.load_shard(j)
            pos += sizes[j]
        return out

    return load


def streamed_blocks(stream: Callable[[], Iterator[Tensor]], buffer_tokens: int) -> Callable[[int], Iterator[Block]]:
    """Blocks of about ``buffer_tokens`` rows cut from a fresh ``stream()`` every epoch (no cache)."""

    def epoch_blocks(epoch: int) -> Iterator[Block]:
        pending: list[Tensor] = []
        have = 0
        for chunk in stream():
            pending.append(chunk)
            have += len(chunk)
            if have >= buffer_tokens:
                yield _ready(torch.cat(pending))
                pending, have = [], 0
        if pending:
            yield _ready(torch.cat(pending))

    return epoch_blocks


def _ready(data: Tensor) -> Block:
    return Block(None, lambda: data)
