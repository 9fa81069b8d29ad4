"""Harvesting: run a model over packed contexts and keep the hooked activations of text tokens.

Massive activations (design §5): a few tokens per context have a residual-stream norm hundreds
of times the median. Left in, they dominate the normalisation scale and every variance-based
metric. A token whose norm exceeds ``max_norm_multiple`` times the median token norm is
excluded and counted; the median is estimated on the first ``MEDIAN_SAMPLE_TOKENS`` text tokens
of the training split, so the threshold is a property of the stream, not of the token budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch import Tensor, nn

from saezoo import cpu_share
from saezoo.activations.model import hooked_activations

MEDIAN_SAMPLE_TOKENS = 4096


@dataclass
class HarvestStats:
    """What a harvest did: activations kept, positions run, outliers excluded, corpus used up."""

    tokens: int = 0
    positions: int = 0
    excluded_outliers: int = 0
    exhausted: bool = False
    seconds: float = 0.0


class Harvester:
    """Turns ``(input_ids, mask)`` batches into float32 activations of the text tokens.

    ``threshold`` is the outlier norm limit when already known (evaluation reuses the training
    one); otherwise it is estimated from the first batches, unless ``max_norm_multiple`` is
    ``None`` or 0, which keeps every token.
    """

    def __init__(self, model: nn.Module, hook: str, max_norm_multiple: float | None, threshold: float | None = None):
        self.model = model
        self.hook = hook
        self.max_norm_multiple = max_norm_multiple or None
        self.threshold = threshold
        self.median_norm: float | None = None
        self.stats = HarvestStats()

    def run(self, batches: Iterable[tuple[Tensor, Tensor]], n_tokens: int, label: str = "harvest") -> Iterator[Tensor]:
        """Yield chunks of activations ``[n, d]`` until ``n_tokens`` are kept or the text runs out."""
        sample: list[Tensor] = []
        started = time.perf_counter()
        with _progress() as progress:
            task = progress.add_task(label, total=n_tokens)
            for ids, mask in batches:
                cpu_share.refresh()  # another run may have started or ended
                self.stats.positions += ids.numel()
                acts = hooked_activations(self.model, self.hook, ids)[mask]
                if self.threshold is None and self.max_norm_multiple:
                    sample.append(acts)
                    if sum(len(a) for a in sample) < MEDIAN_SAMPLE_TOKENS:
                        continue
                    acts = self._estimate_threshold(sample)
                    sample = []
                kept = self._keep(acts, n_tokens - self.stats.tokens)
                progress.advance(task, len(kept))
                if len(kept):
                    yield kept
                if self.stats.tokens >= n_tokens:
                    break
            else:
                if sample:  # the text ran out before the median sample was complete
                    kept = self._keep(self._estimate_threshold(sample), n_tokens - self.stats.tokens)
                    progress.advance(task, len(kept))
                    if len(kept):
                        yield kept
                self.stats.exhausted = self.stats.tokens < n_tokens
        self.stats.seconds += time.perf_counter() - started

    def _estimate_threshold(self, sample: list[Tensor]) -> Tensor:
        acts = torch.cat(sample)
        self.median_norm = acts.norm(dim=-1).median().item()
        self.threshold = self.max_norm_multiple * self.median_norm
        return acts

    def _keep(self, acts: Tensor, room: int) -> Tensor:
        """The non-outlier rows of ``acts``, at most ``room`` of them; counts the outliers passed."""
        if self.threshold is None:
            kept = acts[:room]
        else:
            inlier = acts.norm(dim=-1) <= self.threshold
            if int(inlier.sum()) > room:
                # Cut right after the room-th inlier so that outliers beyond it are not counted.
                cut = int(torch.nonzero(inlier)[room - 1]) + 1 if room > 0 else 0
                acts, inlier = acts[:cut], inlier[:cut]
            self.stats.excluded_outliers += int((~inlier).sum())
            kept = acts[inlier]
        self.stats.tokens += len(kept)
        return kept


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:,.0f} tok/s" if task.speed else "… tok/s", style="progress.data.speed")


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
