"""PNG plots for reports (matplotlib, no display needed)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from saezoo.checkpoint import atomic_write  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def training_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    """``curves[variant][tag] = [(step, value), ...]``: one panel per loss term."""
    tags = sorted({tag for per_variant in curves.values() for tag in per_variant})
    if not tags:
        return
    cols = min(3, len(tags))
    rows = math.ceil(len(tags) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        for variant, per_variant in curves.items():
            if tag in per_variant:
                steps, values = zip(*per_variant[tag])
                ax.plot(steps, values, label=variant)
        ax.set_title(tag)
        ax.set_xlabel("step")
        if all(v > 0 for per in curves.values() for _, v in per.get(tag, [])):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    _save(fig, path)


def ev_vs_l0(points: dict[str, list[tuple[float, float]]], path: Path) -> None:
    """``points[variant] = [(l0, explained_variance), ...]``, one pair per seed: each seed a
    small point, their mean a large one with bars of one standard deviation both ways."""
    # A run that ended not finite has no place on the axes (the report says why it is missing).
    points = {v: [p for p in pairs if all(map(math.isfinite, p))] for v, pairs in points.items()}
    points = {v: pairs for v, pairs in points.items() if pairs}
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, (variant, pairs) in enumerate(points.items()):
        l0s, evs = zip(*pairs)
        l0, ev = statistics.fmean(l0s), statistics.fmean(evs)
        if len(pairs) > 1:
            dots = ax.scatter(l0s, evs, s=14, alpha=0.45)
            ax.errorbar([l0], [ev], xerr=[statistics.stdev(l0s)], yerr=[statistics.stdev(evs)], fmt="o", ms=7,
                        capsize=3, color=dots.get_facecolor()[0][:3])
        else:
            ax.scatter([l0], [ev], s=60)
        # Every other label below its point: variants that land together stay readable.
        ax.annotate(variant, (l0, ev), textcoords="offset points", xytext=(6, 4 if i % 2 == 0 else -12), fontsize=9)
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("explained variance")
    ax.set_title("Explained variance against sparsity (up and left is better)")
    # Axes from L0 = 0 and at least 0.1 of explained variance tall: two close points must
    # look close, not fill the plot.
    every = [p for pairs in points.values() for p in pairs] or [(1.0, 0.5)]
    l0s, evs = zip(*every)
    ax.set_xlim(0, max(l0s) * 1.15)
    low, high = min(evs), max(evs)
    pad = max(0.0, 0.1 - (high - low)) / 2
    ax.set_ylim(low - pad - 0.01, min(1.0, high + pad) + 0.01)
    ax.grid(alpha=0.3)
    _save(fig, path)


def tier_activity(tiers: dict[str, dict[str, tuple[float, float]]], path: Path) -> None:
    """``tiers[variant][group] = (l0, alive_fraction)``: bars per group."""
    variants = [v for v in tiers if tiers[v]]
    if not variants:
        return
    fig, (ax_l0, ax_alive) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        groups = list(tiers[variant])
        xs = [j + i * width for j in range(len(groups))]
        ax_l0.bar(xs, [tiers[variant][g][0] for g in groups], width, label=variant)
        ax_alive.bar(xs, [tiers[variant][g][1] for g in groups], width, label=variant)
    n = max(len(tiers[v]) for v in variants)
    for ax, title in ((ax_l0, "L0 per tier / group"), (ax_alive, "alive fraction per tier / group")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(n)], [f"tier {j + 1}" for j in range(n)])
        ax.set_title(title)
        ax.legend(fontsize=8)
    ax_alive.set_ylim(0, 1.05)
    _save(fig, path)


def feature_density(densities: dict[str, torch.Tensor], path: Path) -> None:
    """Histogram of log10 firing frequency per latent; dead latents counted apart."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bins = torch.linspace(-7, 0, 50).tolist()
    for variant, density in densities.items():
        alive = density[density > 0]
        dead = int((density == 0).sum())
        ax.hist(
            torch.log10(alive).tolist(), bins=bins, histtype="step", linewidth=1.5, label=f"{variant} ({dead} dead)"
        )
    ax.set_xlabel("log10 firing frequency")
    ax.set_ylabel("latents")
    ax.set_title("Feature density")
    ax.legend(fontsize=8)
    _save(fig, path)


def density_report(density: torch.Tensor, run_dir: Path, writer=None, step: int = 0) -> None:
    """A run's feature density: ``feature_density.png`` in the run directory, and a
    TensorBoard histogram of log10 firing frequency (dead latents at -10)."""
    feature_density({run_dir.name: density}, run_dir / "feature_density.png")
    if writer is not None:
        writer.add_histogram("eval/log10_feature_density", torch.log10(density.clamp_min(1e-10)), step)
