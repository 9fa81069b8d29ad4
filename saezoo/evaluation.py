"""Metrics, each defined once. Formulas and their known-answer tests: docs/metrics.md.

Everything here works in the SAE's input space: pass raw activations to a saved (folded)
SAE, or normalised ones to an SAE in training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saezoo import cpu_share
from saezoo.activations.source import GroundTruth
from saezoo.hierarchy import CodeRecord, hierarchy_metrics
from saezoo.sae import SAE, group_slices

# Latents firing on more than this share of tokens are "dense".
DENSE_THRESHOLD = 0.1
# A true feature counts as recovered when some decoder direction has cosine above this.
RECOVERED_COSINE = 0.9


# --- single-batch formulas ----------------------------------------------------------------


def mse(x: Tensor, x_hat: Tensor) -> float:
    """Mean over tokens and dimensions of (x - x_hat)^2."""
    return float((x - x_hat).double().pow(2).mean())


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2."""
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def explained_variance(x: Tensor, x_hat: Tensor) -> float:
    """1 - fvu: predicting the mean scores 0, a perfect reconstruction 1."""
    return 1.0 - fvu(x, x_hat)


def l0(codes: Tensor) -> float:
    """Mean count of non-zero latents per token."""
    return float((codes != 0).sum(-1).double().mean())


def mean_max_cosine(true_dirs: Tensor, learned_dirs: Tensor) -> tuple[float, float]:
    """For each true direction, the best cosine with any learned direction: the mean of
    those, and the share above RECOVERED_COSINE."""
    # On the CPU: the ground truth lives there, and float64 matmuls are slow on most GPUs.
    t = torch.nn.functional.normalize(true_dirs.double().cpu(), dim=-1)
    d = torch.nn.functional.normalize(learned_dirs.detach().double().cpu(), dim=-1)
    best = (t @ d.T).max(dim=1).values
    return float(best.mean()), float((best > RECOVERED_COSINE).double().mean())


# --- streaming accumulation -------------------------------------------------------------


@dataclass
class ReconstructionStats:
    """Sums from which mse, fvu and explained variance follow exactly over many batches."""

    tokens: int = 0
    sq_err: float = 0.0
    sum_x: Tensor | None = None
    sum_sq_x: float = 0.0
    d_in: int = 0

    def add(self, x: Tensor, x_hat: Tensor) -> None:
        x64 = x.double()
        self.tokens += x.shape[0]
        self.d_in = x.shape[-1]
        self.sq_err += float((x64 - x_hat.double()).pow(2).sum())
        s = x64.sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        self.sum_sq_x += float(x64.pow(2).sum())

    def total_variance(self) -> float:
        assert self.sum_x is not None
        # sum ||x - mean||^2 = sum ||x||^2 - n ||mean||^2
        return self.sum_sq_x - float(self.sum_x.pow(2).sum()) / self.tokens

    def result(self) -> dict[str, float]:
        if self.tokens == 0:
            return {}
        f = self.sq_err / max(self.total_variance(), 1e-30)
        return {"mse": self.sq_err / (self.tokens * self.d_in), "fvu": f, "explained_variance": 1.0 - f}


@dataclass
class SparsityStats:
    """Firing counts per latent, and L0 per token, over many batches."""

    width: int
    groups: list[tuple[str, slice]]
    tokens: int = 0
    fired: Tensor = field(init=False)
    l0_sum: float = 0.0
    group_l0_sum: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.fired = torch.zeros(self.width, dtype=torch.float64)
        self.group_l0_sum = {name: 0.0 for name, _ in self.groups}

    def add(self, codes: Tensor) -> None:
        active = codes != 0
        self.tokens += codes.shape[0]
        counts = active.sum(0).double().cpu()
        self.fired += counts
        self.l0_sum += float(counts.sum())
        for name, sl in self.groups:
            self.group_l0_sum[name] += float(counts[sl].sum())

    def result(self) -> dict[str, float]:
        freq = self.fired / max(self.tokens, 1)
        out = {
            "l0": self.l0_sum / max(self.tokens, 1),
            "dead_fraction": float((self.fired == 0).double().mean()),
            "dense_fraction": float((freq > DENSE_THRESHOLD).double().mean()),
        }
        if len(self.groups) > 1:
            total = max(self.l0_sum, 1e-30)
            for name, sl in self.groups:
                out[f"l0/{name}"] = self.group_l0_sum[name] / max(self.tokens, 1)
                out[f"l0_share/{name}"] = self.group_l0_sum[name] / total
                out[f"alive_fraction/{name}"] = float((self.fired[sl] > 0).double().mean())
        return out

    def density(self) -> Tensor:
        """Firing frequency of each latent (share of tokens on which it is non-zero)."""
        return self.fired / max(self.tokens, 1)


# --- evaluation of an SAE on a set of activations ----------------------------------------------


@dataclass
class EvalBatch:
    """What a plugin metric (``register_metrics``) sees for each evaluation batch."""

    sae: SAE
    x: Tensor
    codes: Tensor
    x_hat: Tensor


class PluginMetrics:
    """Token-weighted means of every plugin metric's keys, reported as ``name/key``."""

    def __init__(self) -> None:
        from saezoo.plugins import get_plugins

        self.metrics = {e.name: e.obj for e in get_plugins().metrics.entries.values()}
        self.sums: dict[str, float] = {}
        self.tokens = 0

    def add(self, batch: EvalBatch) -> None:
        n = batch.x.shape[0]
        self.tokens += n
        for name, fn in self.metrics.items():
            for key, value in fn(batch).items():
                self.sums[f"{name}/{key}"] = self.sums.get(f"{name}/{key}", 0.0) + float(value) * n

    def result(self) -> dict[str, float]:
        return {k: v / max(self.tokens, 1) for k, v in self.sums.items()}



@torch.no_grad()
def evaluate_sae(
    sae: SAE,
    batches: Iterable[Tensor],
    ground_truth: GroundTruth | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Reconstruction, sparsity, per-tier and (if known) ground-truth metrics.

    Marginal explained variance of a tier: the drop in explained variance when that
    tier's codes are zeroed before decoding.
    """
    return _evaluate(sae, batches, ground_truth, device)[0]


@torch.no_grad()
def _evaluate(
    sae: SAE,
    batches: Iterable[Tensor],
    ground_truth: GroundTruth | None,
    device: torch.device | str,
    record: CodeRecord | None = None,
) -> tuple[dict[str, float], Tensor]:
    """:func:`evaluate_sae`'s metrics and each latent's firing frequency; the codes are
    added to ``record`` when one is given (for the hierarchy metrics)."""
    was_training = sae.training
    sae.eval()
    groups = group_slices(sae)
    recon = ReconstructionStats()
    sparsity = SparsityStats(sae.width, groups)
    without: dict[str, ReconstructionStats] = (
        {name: ReconstructionStats() for name, _ in groups} if len(groups) > 1 else {}
    )
    extra = PluginMetrics()
    for x in batches:
        cpu_share.refresh()  # another run may have started or ended
        x = x.to(device)
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
        recon.add(x, x_hat)
        sparsity.add(codes)
        if record is not None:
            record.add(codes)
        extra.add(EvalBatch(sae, x, codes, x_hat))
        for name, sl in groups if without else ():
            masked = codes.clone()
            masked[:, sl] = 0
            without[name].add(x, sae.decode(masked))
    sae.train(was_training)
    metrics = {**recon.result(), **sparsity.result(), **extra.result()}
    for name, stats in without.items():
        metrics[f"marginal_ev/{name}"] = metrics["explained_variance"] - stats.result()["explained_variance"]
    if ground_truth is not None:
        mmc, recovered = mean_max_cosine(ground_truth.directions, sae.decoder_directions())
        metrics["mean_max_cosine"] = mmc
        metrics["recovered_fraction"] = recovered
    return metrics, sparsity.density()


# --- a whole evaluation: what `saezoo eval` and the end of training report -----------------------


@torch.no_grad()
def full_evaluation(
    sae: SAE,
    source,
    x: Tensor,
    batch_size: int,
    device: torch.device | str = "cpu",
    group_sizes: list[int] | None = None,
    downstream_tokens: int = 0,
    absorption_words: int = 0,
) -> tuple[dict[str, float], Tensor]:
    """Every metric that applies to ``sae`` (which takes raw activations) on held-out ``x``
    from ``source``: reconstruction, sparsity, tiers, hierarchy (trees, consistency,
    composition coverage; tree recovery and absorption on a synthetic source), spliced CE/KL
    on ``downstream_tokens`` tokens and first-letter absorption on ``absorption_words``
    vocabulary words (model sources); and each latent's firing frequency on ``x`` (for the
    density plot). ``group_sizes``: see :func:`hierarchy_metrics`."""
    sae = sae.to(device).eval()
    record = CodeRecord(sae.width)
    metrics, density = _evaluate(sae, x.split(batch_size), source.ground_truth, device, record)
    truth = source.ground_truth
    coeffs = source.eval_features(x.shape[0]) if truth is not None else None  # the Source contract
    metrics.update(hierarchy_metrics(sae, record, group_sizes, truth, coeffs))
    metrics.update(downstream_metrics([sae], source, downstream_tokens, device)[0])
    metrics.update(absorption_metrics([sae], source, absorption_words, device)[0])
    return metrics, density


def downstream_metrics(
    saes: list[SAE], source, tokens: int, device: torch.device | str = "cpu"
) -> list[dict[str, float]]:
    """Spliced CE/KL of each SAE on ``tokens`` held-out tokens of a model source, sharing
    the clean and zero-ablated runs; empty dicts when ``tokens`` is 0 or the source has no
    model (synthetic)."""
    if tokens <= 0 or not hasattr(source, "eval_contexts"):
        return [{} for _ in saes]
    from saezoo.downstream import spliced_metrics_many

    input_ids, mask = source.eval_contexts(tokens)
    return spliced_metrics_many(
        source.model,
        source.hook,
        saes,
        input_ids,
        mask,
        max_norm=source.outlier_threshold,
        device=device,
        baseline_key=source.baseline_key(),
        cache_dir=source.cache_dir,
    )


def absorption_metrics(
    saes: list[SAE], source, words: int, device: torch.device | str = "cpu"
) -> list[dict[str, float]]:
    """First-letter absorption of each SAE on ``words`` words of a model source's vocabulary,
    sharing the words' activations and the probe; empty dicts when ``words`` is 0 or the source
    has no model (synthetic)."""
    if words <= 0 or not hasattr(source, "eval_contexts"):
        return [{} for _ in saes]
    from saezoo.absorption import first_letter_absorption

    return first_letter_absorption(
        saes, source.model, source.tokenizer, source.hook, words, max_norm=source.outlier_threshold, device=device
    )


def check_absorption(source, words: int) -> None:
    """Raise the error :func:`absorption_metrics` would raise for a vocabulary without enough
    words, early (before a run trains)."""
    if words > 0 and hasattr(source, "eval_contexts"):
        from saezoo.absorption import vocabulary_words

        vocabulary_words(source.tokenizer)
