"""Several SAEs on one activation stream, one report.

Each batch is produced once (a model forward or a cache read) and fed to every variant
in the same order (``train.train_many``); registry entries are evaluated on the same
held-out tokens instead of being retrained. The report: a terminal table, report.json,
report.md, PNG plots, and one TensorBoard run per variant under ``--out``.
"""

from __future__ import annotations

import dataclasses
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import saezoo
from saezoo import catalog, checkpoint, plots
from saezoo.config import RunConfig, merge, parse_set, read_toml, resolve_run
from saezoo.errors import UsageError
from saezoo.evaluate import absorption_metrics, downstream_metrics, full_evaluation

# Columns of the terminal table and report.md, in order, when present.
TABLE_METRICS = [
    "explained_variance",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "ce_recovered",
    "kl_sae",
    "recovered_fraction",
    "absorption",
    "absorption_first_letter/mean",
    "absorption_first_letter/fraction",
    "absorption_first_letter/letters",
    "nonfinite_steps",
]
# Families of per-tier, per-group or per-depth columns shown after TABLE_METRICS, sorted by name;
# the rest (tree precision and recall, root fractions, ...) are in report.json.
TABLE_PREFIXES = ("l0/", "ccr/", "ccr_chance/", "tree_f1/", "consistency/", "absorption/")
# train.* settings every variant must share: they define the stream of batches.
SHARED_TRAIN = (
    "steps",
    "batch_size",
    "seed",
    "eval_tokens",
    "downstream_tokens",
    "absorption_words",
    "device",
    "log_every",
    "eval_every",
    "checkpoint_every",
)


@dataclass
class Variant:
    label: str
    run: RunConfig | None = None
    entry: catalog.Entry | None = None


def resolve_variants(
    specs: list[str],
    curriculum: str,
    target_l0: float | None,
    config_file: Path | None,
    options: dict[str, dict[str, Any]],
    sets: list[str],
    tokens: int | None,
) -> list[Variant]:
    """SPEC -> Variant: ``arch``, ``arch:preset`` or a registry entry name.

    A ``--set`` whose key starts with a SPEC (``flat.sae.expansion_factor=9``) applies to the
    variants of that SPEC, one starting with a label (``hsae#2.sae.input_skip=false``, the
    second ``hsae``) to that variant; the others apply to every variant.
    """
    from saezoo.plugins import get_plugins

    archs = get_plugins().architectures
    labels = _labels(specs)
    sets, own_sets = _split_variant_sets(sets, [*specs, *labels])
    user = merge(read_toml(config_file) if config_file else {}, options, parse_set(sets))
    # Presets may change the data (e.g. the paper preset's raw scale); the stream is shared,
    # so their data settings are merged once and must not contradict each other.
    preset_data: dict[str, Any] = {}
    parsed = []
    for spec in specs:
        arch, _, preset = spec.partition(":")
        if arch not in archs and not preset and (catalog.registry_dir() / f"{spec}.toml").exists():
            parsed.append((spec, None, None))
            continue
        cls = archs.get(arch)  # unknown -> a clear error listing architectures
        if preset and preset != "default":
            presets = getattr(cls, "presets", {}) or {}
            if preset not in presets:
                from saezoo.errors import unknown_name

                raise unknown_name(f"preset of {arch!r}", preset, ["default", *presets])
            for key, value in presets[preset].get("data", {}).items():
                if key in preset_data and preset_data[key] != value:
                    raise UsageError(f"presets disagree on data.{key}; set it with --set data.{key}=...")
                preset_data[key] = value
        parsed.append((spec, arch, preset or None))
    variants: list[Variant] = []
    for (spec, arch, preset), label in zip(parsed, labels):
        if arch is None:
            variants.append(Variant(label, entry=catalog.get_entry(spec)))
            continue
        layer = merge({"data": preset_data}, user)
        variant_sets = own_sets[spec] + (own_sets[label] if label != spec else [])

        def resolve(curriculum_name: str, extra_sets: list[str]) -> RunConfig:
            return resolve_run(
                arch,
                preset=preset,
                curriculum=curriculum_name,
                options=layer,
                sets=extra_sets + variant_sets,
                tokens=tokens,
            )

        run = resolve(curriculum, [])
        if target_l0 is not None:
            # The variant's own settings decide how its L0 is steered (a setting may switch it).
            steered, extra = _matched_l0(arch, run.sae, target_l0)
            run = resolve(steered or curriculum, extra)
        # What defines the shared stream comes from the user, never from a preset.
        shared = resolve_run(arch, options=layer, tokens=tokens)
        run.train = dataclasses.replace(run.train, **{k: getattr(shared.train, k) for k in SHARED_TRAIN})
        run.data = shared.data
        variants.append(Variant(label, run=run))
    return variants


def _labels(specs: list[str]) -> list[str]:
    """One label per SPEC; a repeated SPEC becomes ``spec#2``, ``spec#3``, ..."""
    labels: list[str] = []
    for spec in specs:
        label, n = spec, 2
        while label in labels:
            label, n = f"{spec}#{n}", n + 1
        labels.append(label)
    return labels


def _split_variant_sets(sets: list[str], names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """``--set`` items for every variant, and per SPEC or label the items prefixed with it."""
    shared: list[str] = []
    own: dict[str, list[str]] = {name: [] for name in names}
    for item in sets:
        head, dot, rest = item.partition(".")
        if not dot or head not in own:
            shared.append(item)
            continue
        key = rest.split("=", 1)[0].split(".")
        if key[0] == "data" or (key[0] == "train" and key[1:2] and key[1] in SHARED_TRAIN):
            raise UsageError(f"--set {item!r}: {'.'.join(key)} defines the shared stream; set it for every variant")
        own[head].append(rest)
    return shared, own


def _matched_l0(arch: str, sae_cfg: Any, target: float) -> tuple[str | None, list[str]]:
    """How to bring ``arch`` configured as ``sae_cfg`` to L0 = target: what the
    architecture's ``SAE.l0_control`` says (a curriculum, None for the given one, and settings)."""
    from saezoo.plugins import get_plugins

    if not (math.isfinite(target) and target > 0):
        raise UsageError(f"--target-l0 must be a positive finite number, got {target}")
    control = get_plugins().architectures.get(arch).l0_control(sae_cfg, target)
    if control is None:
        raise UsageError(f"--target-l0: architecture {arch!r} declares no way to steer its L0 (SAE.l0_control)")
    return control


def run_compare(variants: list[Variant], out: Path, progress: bool = True) -> dict[str, Any]:
    """Train the trainable variants on one stream, evaluate all on the same tokens."""
    from saezoo.activations.factory import build_source
    from saezoo.train import resolve_device, train_many

    trained = [v for v in variants if v.run is not None]
    base = trained[0].run if trained else None
    if base is None:
        raise UsageError("compare needs at least one architecture to train (registry entries alone: use saezoo eval)")
    device = resolve_device(base.train.device)
    source = build_source(
        base.data, tokens=base.train.steps * base.train.batch_size, seed=base.train.seed, device=str(device)
    )
    for v in variants:
        if v.entry is not None and v.entry.d_in != source.d_in:
            raise UsageError(f"registry entry {v.entry.name!r} has d_in {v.entry.d_in}, the stream has {source.d_in}")
    out.mkdir(parents=True, exist_ok=True)
    dirs = [out / _safe(v.label) for v in trained]
    # Checked and trained under the lock: of two compares into one --out, the second refuses.
    with checkpoint.run_lock(out):
        for d in dirs:
            if (d / checkpoint.CFG_FILE).exists():
                raise UsageError(f"--out {out} already holds a comparison ({d.name}); choose another --out")
        # The variants' spliced CE/KL come from one shared set of runs below, not from each run's final evaluation.
        train_many([v.run for v in trained], dirs, source, progress=progress, downstream=False)

    eval_x = source.eval_activations(base.train.eval_tokens)
    saes = {}
    for v, d in zip(trained, dirs):
        saes[v.label] = checkpoint.load_sae(d, device)[0]
    for v in variants:
        if v.entry is not None:
            saes[v.label] = catalog.load_entry(v.entry, str(device))
    tier_sizes = next((s.latent_groups() for s in saes.values() if len(s.latent_groups()) > 1), None)
    sizes = [size for _, size in tier_sizes] if tier_sizes else None
    results: dict[str, dict[str, float]] = {}
    densities = {}
    for v in variants:
        sae = saes[v.label]
        groups = None if len(sae.latent_groups()) > 1 else sizes
        results[v.label], densities[v.label] = full_evaluation(
            sae, source, eval_x, base.train.batch_size, device, group_sizes=groups
        )
    # One set of spliced runs for every variant: the clean (and zero-ablated) runs are shared.
    downstream = downstream_metrics([saes[v.label] for v in variants], source, base.train.downstream_tokens, device)
    for v, metrics in zip(variants, downstream):
        results[v.label].update(metrics)
    # One task (word activations and probe) for every variant.
    absorption = absorption_metrics([saes[v.label] for v in variants], source, base.train.absorption_words, device)
    for v, metrics in zip(variants, absorption):
        results[v.label].update(metrics)
    report = {
        "saezoo_version": saezoo.__version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "data": source.describe(),
        "shared_train": {k: getattr(base.train, k) for k in SHARED_TRAIN},
        "variants": {
            v.label: {
                "architecture": v.run.architecture if v.run else v.entry.architecture,
                "preset": (v.run.preset if v.run else v.entry.preset) or None,
                "registry_entry": v.entry.name if v.entry else None,
                "run_dir": str(out / _safe(v.label)) if v.run else None,
                "config": v.run.to_dict() if v.run else {"sae": v.entry.config},
                "metrics": results[v.label],
            }
            for v in variants
        },
    }
    write_report(report, out, densities)
    return report


def _safe(label: str) -> str:
    return label.replace(":", "-").replace("#", "-").replace("/", "-")


def write_report(report: dict[str, Any], out: Path, densities: dict[str, torch.Tensor]) -> None:
    checkpoint.write_json(out / "report.json", checkpoint.json_safe(report))
    variants = report["variants"]
    curves = {label: _loss_curves(Path(v["run_dir"]) / "tb") for label, v in variants.items() if v["run_dir"]}
    plots.training_curves(curves, out / "training_curves.png")
    plots.ev_vs_l0(
        {k: (v["metrics"]["l0"], v["metrics"]["explained_variance"]) for k, v in variants.items()}, out / "ev_vs_l0.png"
    )
    tiers = _tier_activity(report)
    if tiers:
        plots.tier_activity(tiers, out / "tier_activity.png")
    plots.feature_density(densities, out / "feature_density.png")
    checkpoint.atomic_write(out / "report.md", lambda tmp: tmp.write_text(markdown(report)))


def _tier_activity(report: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per variant, per tier (or firing-frequency group): (L0, alive fraction). Empty when no
    variant has tiers: there is then no tier plot to draw or link."""
    tiers = {}
    for label, v in report["variants"].items():
        m = v["metrics"]
        groups = [k.split("/", 1)[1] for k in m if k.startswith("l0/")]
        tiers[label] = {g: (m[f"l0/{g}"], m[f"alive_fraction/{g}"]) for g in groups}
    return tiers if any(tiers.values()) else {}


def _loss_curves(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if tag.startswith("loss/")
    }


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per metric, one column per variant: stays readable for many metrics."""
    variants = report["variants"]
    extra = sorted({k for v in variants.values() for k in v["metrics"] if k.startswith(TABLE_PREFIXES)})
    metrics = [c for c in TABLE_METRICS + extra if any(c in v["metrics"] for v in variants.values())]
    rows = [[m] + [_fmt(v["metrics"].get(m)) for v in variants.values()] for m in metrics]
    return ["metric", *variants], rows


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def markdown(report: dict[str, Any]) -> str:
    header, rows = table_rows(report)
    lines = ["# saezoo comparison", ""]
    data = report["data"]
    lines.append("Data: " + ", ".join(f"{k}={v}" for k, v in data.items() if not isinstance(v, dict)))
    lines.append("Shared training settings: " + ", ".join(f"{k}={v}" for k, v in report["shared_train"].items()))
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [
        "",
        "Metric definitions: docs/metrics.md. `ccr/*` is the composition coverage ratio of a tier,",
        "`ccr_chance/*` the same with shuffled parents; a tierless SAE is grouped by firing frequency.",
        "`tree_f1/inferred/*`: recovery of the true feature tree (synthetic source) by the tree inferred",
        "from co-firing, the same for every SAE; `tree_f1/structural/*` by the architecture's own tree.",
        "`consistency/*`: mean P(parent fires | child fires) in that tree.",
        "`absorption_first_letter/*`: first-letter absorption on the model's vocabulary (model sources;",
        "exploratory on a small model such as SmolLM2-135M).",
        "",
        "![training curves](training_curves.png)",
        "",
        "![explained variance vs L0](ev_vs_l0.png)",
        "",
        *(["![tier activity](tier_activity.png)", ""] if _tier_activity(report) else []),
        "![feature density](feature_density.png)",
        "",
    ]
    return "\n".join(lines)


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(report)
    table = Table(*header, title="saezoo compare")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
