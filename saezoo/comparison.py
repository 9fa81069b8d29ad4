"""Several SAEs on one activation stream, one report.

A variant is ``ARCH[:PRESET][@CURRICULUM]`` or a registry entry name. Each batch is
produced once (a model forward or a cache read) and fed to every trainee in the same order
(``train.train_many``): one per variant, or one per variant and initialisation seed with
``--seeds``. Registry entries are evaluated on the same held-out tokens instead of being
retrained. The report: a terminal table (mean ± std over seeds), report.json (every seed's
numbers), report.md, PNG plots, and one TensorBoard run per trainee under ``--out``.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import statistics
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import saezoo
from saezoo import catalog, checkpoint, plots
from saezoo.config import RunConfig
from saezoo.config.layers import merge, parse_set, read_toml
from saezoo.config.resolve import resolve_run
from saezoo.curriculum import SEPARATOR, check_compatible, curriculum_names
from saezoo.errors import UsageError, unknown_name
from saezoo.evaluation import absorption_metrics, downstream_metrics, full_evaluation

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
    "diverged",
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
# Memory of one trainee per parameter: float32 weights, their gradients and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16
# [batch, width] float32 tensors alive at once in a training step (pre-activations, codes,
# their gradients, masks); the trainees step one after another, so only the widest counts.
STEP_TEMPORARIES = 6


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
    """SPEC -> Variant: ``ARCH[:PRESET][@CURRICULUM]`` or a registry entry name.

    A variant that names no curriculum follows ``curriculum`` (``--curriculum``). A ``--set``
    whose key starts with a SPEC (``flat.sae.expansion_factor=9``,
    ``hsae@tier-unlock.curriculum.unlock_fraction=0.3``) applies to the variants of that
    SPEC, one starting with a label (``hsae#2.sae.input_skip=false``, the second ``hsae``) to
    that variant; the others apply to every variant. Every curriculum is checked against its
    architecture here, before any activation is produced.
    """
    from saezoo.plugins import get_plugins

    plugins = get_plugins()
    archs = plugins.architectures
    labels = _labels(specs)
    sets, own_sets = _split_variant_sets(sets, [*specs, *labels])
    user = merge(read_toml(config_file) if config_file else {}, options, parse_set(sets))
    # Presets may change the data (e.g. the paper preset's raw scale); the stream is shared,
    # so their data settings are merged once and must not contradict each other.
    preset_data: dict[str, Any] = {}
    parsed = []
    for spec in specs:
        arch, preset, own_curriculum = parse_spec(spec)
        if arch not in archs and not preset and (catalog.registry_dir() / f"{arch}.toml").exists():
            if own_curriculum is not None:
                raise UsageError(
                    f"{spec!r}: registry entry {arch!r} is evaluated, not trained; it takes no @curriculum"
                )
            parsed.append((spec, None, None, None))
            continue
        cls = archs.get(arch)  # unknown -> a clear error listing architectures
        for name in curriculum_names(own_curriculum) if own_curriculum is not None else []:
            if name not in plugins.curricula:
                raise unknown_name(f"curriculum after '@' in {spec!r}:", name, plugins.curricula.names())
        if preset and preset != "default":
            presets = getattr(cls, "presets", {}) or {}
            if preset not in presets:
                raise unknown_name(f"preset of {arch!r}", preset, ["default", *presets])
            for key, value in presets[preset].get("data", {}).items():
                if key in preset_data and preset_data[key] != value:
                    raise UsageError(f"presets disagree on data.{key}; set it with --set data.{key}=...")
                preset_data[key] = value
        parsed.append((spec, arch, preset, own_curriculum))
    variants: list[Variant] = []
    for (spec, arch, preset, own_curriculum), label in zip(parsed, labels):
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

        name, steering = own_curriculum or curriculum, []
        if target_l0 is not None:
            # The variant's own sae settings decide how its L0 is steered (a setting may switch
            # it); its curriculum settings may be for the steering curriculum, which joins next.
            sae_cfg = resolve_run(
                arch,
                preset=preset,
                options={**layer, "curriculum": {}},
                sets=[s for s in variant_sets if not s.startswith("curriculum.")],
                tokens=tokens,
            ).sae
            name, steering = _matched_l0(arch, sae_cfg, target_l0, name)
        run = resolve(name, steering)
        where = arch + (f":{preset}" if preset else "")
        for name in run.curricula:
            check_compatible(name, plugins.curricula.get(name), where, archs.get(arch).built_class(run.sae))
        # What defines the shared stream comes from the user, never from a preset; the
        # curriculum settings are the variant's own (another variant's may not fit constant).
        shared = resolve_run(arch, options={**layer, "curriculum": {}}, tokens=tokens)
        run.train = dataclasses.replace(run.train, **{k: getattr(shared.train, k) for k in SHARED_TRAIN})
        run.data = shared.data
        variants.append(Variant(label, run=run))
    return variants


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``ARCH[:PRESET][@CURRICULUM]`` -> (architecture, preset or None, curriculum or None)."""
    head, at, curriculum = spec.partition("@")
    arch, _, preset = head.partition(":")
    return arch, preset or None, curriculum if at else None


def parse_seeds(text: str | None, base: int) -> list[int] | None:
    """``--seeds``: a count N (seeds base, base + 1, ..., so the first trainee of each variant
    starts as it would without --seeds) or a comma-separated list; None when not given."""
    if text is None:
        return None
    try:
        items = [int(t) for t in text.split(",") if t.strip()] if "," in text else None
        count = None if items is not None else int(text)
    except ValueError:
        raise UsageError(f"--seeds {text!r}: give a count (3) or a list of seeds (0,1,2)") from None
    if count is not None:
        if count < 1:
            raise UsageError(f"--seeds {count}: give at least one seed (a count >= 1, or a list such as 0,1,2)")
        items = [base + i for i in range(count)]
    if not items or min(items) < 0:
        raise UsageError(f"--seeds {text!r}: seeds are integers >= 0")
    repeated = sorted({s for s in items if items.count(s) > 1})
    if repeated:
        raise UsageError(
            f"--seeds {text!r}: seed {', '.join(map(str, repeated))} given twice; each seed trains once per variant"
        )
    return items


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


def _matched_l0(arch: str, sae_cfg: Any, target: float, curriculum: str = "constant") -> tuple[str, list[str]]:
    """How to bring ``arch`` configured as ``sae_cfg`` (following ``curriculum``) to
    L0 = target: what the architecture's ``SAE.l0_control`` says. A variant steered by a
    setting (k) keeps its own curriculum; one steered by a curriculum (target-l0) follows
    it as well as its own (``tier-unlock+target-l0``), with the steering settings
    addressed to the steering curriculum."""
    from saezoo.plugins import get_plugins

    if not (math.isfinite(target) and target > 0):
        raise UsageError(f"--target-l0 must be a positive finite number, got {target}")
    control = get_plugins().architectures.get(arch).l0_control(sae_cfg, target)
    if control is None:
        raise UsageError(f"--target-l0: architecture {arch!r} declares no way to steer its L0 (SAE.l0_control)")
    steering, settings = control
    names = curriculum_names(curriculum)
    if steering in (None, "constant") or names == [steering]:
        return curriculum, settings
    if names == ["constant"]:
        return steering, settings
    # Composed with the variant's own curriculum: the steering settings name the steering
    # curriculum, since a bare curriculum.KEY could be a setting of the other one too.
    settings = [
        f"curriculum.{steering}.{item.removeprefix('curriculum.')}" if item.startswith("curriculum.") else item
        for item in settings
    ]
    return (curriculum if steering in names else f"{curriculum}{SEPARATOR}{steering}"), settings


def check_memory(runs: list[RunConfig], d_in: int, device: torch.device, what: str) -> None:
    """Refuse, before training, trainees whose weights, gradients and optimiser state (with
    one step's temporaries and the held-out tokens) cannot fit on ``device``. The
    parameters are counted on SAEs built on the meta device, which allocates nothing."""
    from saezoo.host_memory import check_fits

    params, widest = 0, 0
    for run in runs:
        try:
            with torch.device("meta"):
                sae = checkpoint.build_sae(run.architecture, d_in, run.sae)
        except RuntimeError:
            # A constructor that reads tensor values cannot run on meta: left out (the
            # estimate is then a lower bound).
            continue
        params += sum(p.numel() for p in sae.parameters())
        widest = max(widest, sae.width)
    train = runs[0].train
    need = TRAINING_BYTES_PER_PARAMETER * params + 4 * (
        STEP_TEMPORARIES * train.batch_size * widest + train.eval_tokens * d_in
    )
    available = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    check_fits(need, f"{what} ({params:,} parameters, with gradients and Adam state)", available)


def run_compare(
    variants: list[Variant],
    out: Path,
    progress: bool = True,
    seeds: list[int] | None = None,
    target_l0: float | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the trainable variants on one stream (each once per seed of ``seeds``, None:
    once at train.seed), evaluate all on the same tokens. ``target_l0``: the L0 the variants
    were steered to (resolve_variants), recorded so the report can say who missed it. The
    comparison is kept in ``out``/compare.json; ``resume`` goes on from there (:func:`resumed`)
    with the runs' checkpoints."""
    from saezoo.activations.factory import build_source
    from saezoo.trainer import nonfinite_result, resolve_device, train_many

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
    # Trainees: (variant, seed or None, run, directory); every one reads the same batches.
    trainees = []
    for v in trained:
        for seed in seeds or [None]:
            run = (
                v.run
                if seed is None
                else dataclasses.replace(v.run, train=dataclasses.replace(v.run.train, init_seed=seed))
            )
            trainees.append((v, seed, run, _run_dir(out, v.label, seed)))
    what = f"training {len(trained)} variant(s) x {len(seeds or [None])} seed(s) side by side"
    check_memory([run for _, _, run, _ in trainees], source.d_in, device, what)
    out.mkdir(parents=True, exist_ok=True)
    # Checked and trained under the locks of --out and of every run: a second compare into
    # --out refuses, and so does a train --resume of one of its runs meanwhile.
    with ExitStack() as held:
        held.enter_context(checkpoint.run_lock(out))
        if not resume:
            checkpoint.refuse_occupied(out)
            checkpoint.write_json(out / checkpoint.COMPARE_FILE, _request(variants, seeds, target_l0))
        for *_, d in trainees:
            d.mkdir(parents=True, exist_ok=True)
            held.enter_context(checkpoint.run_lock(d))
        # The variants' spliced CE/KL come from one shared set of runs below, not from each run's final evaluation.
        outcomes = train_many(
            [run for _, _, run, _ in trainees],
            [d for *_, d in trainees],
            source,
            resume=resume,
            progress=progress,
            downstream=False,
            resume_with=f"saezoo compare --resume {out}",
        )
    # A run that diverged stopped alone and kept its last finite weights: evaluated with the
    # others below, and marked.
    failed = {(v.label, seed): m["divergence"] for (v, seed, _, _), m in zip(trainees, outcomes) if m.get("diverged")}

    eval_x = source.eval_activations(base.train.eval_tokens)
    # Every SAE to evaluate, keyed by (label, seed): the trainees, then the registry entries.
    saes = {(v.label, seed): checkpoint.load_sae(d, device)[0] for v, seed, _, d in trainees}
    for v in variants:
        if v.entry is not None:
            saes[(v.label, None)] = catalog.load_entry(v.entry, str(device))
    tier_sizes = next((s.latent_groups() for s in saes.values() if len(s.latent_groups()) > 1), None)
    sizes = [size for _, size in tier_sizes] if tier_sizes else None
    results: dict[tuple[str, int | None], dict[str, float]] = {}
    densities = {}
    for key, sae in saes.items():
        groups = None if len(sae.latent_groups()) > 1 else sizes
        results[key], density = full_evaluation(sae, source, eval_x, base.train.batch_size, device, group_sizes=groups)
        densities.setdefault(key[0], density)  # the plot shows each variant's first seed
    # One set of spliced runs for every SAE: the clean (and zero-ablated) runs are shared.
    keys = list(saes)
    downstream = downstream_metrics([saes[k] for k in keys], source, base.train.downstream_tokens, device)
    for key, metrics in zip(keys, downstream):
        results[key].update(metrics)
    # One task (word activations and probe) for every SAE.
    absorption = absorption_metrics([saes[k] for k in keys], source, base.train.absorption_words, device)
    for key, metrics in zip(keys, absorption):
        results[key].update(metrics)
    for key, sae in saes.items():
        if key not in failed and (problem := nonfinite_result(sae, results[key])):
            failed[key] = problem
    if failed:  # a row in the table: 1 for a run that diverged (over seeds, the share that did)
        for key in results:
            results[key]["diverged"] = float(key in failed)
    report = {
        "saezoo_version": saezoo.__version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "data": source.describe(),
        "shared_train": {k: getattr(base.train, k) for k in SHARED_TRAIN},
        "seeds": seeds,
        "target_l0": target_l0,
        "variants": {v.label: _variant_report(v, out, seeds, results) for v in variants},
        "failed": {label + (f" seed {seed}" if seed is not None else ""): why for (label, seed), why in failed.items()},
    }
    write_report(report, out, densities)
    return report


def _request(variants: list[Variant], seeds: list[int] | None, target_l0: float | None) -> dict[str, Any]:
    """What compare.json keeps: each variant's whole settings (or registry entry), so that a
    resumed comparison is this one, whatever config files or defaults say by then."""
    return {
        "variants": [
            {"label": v.label, "run": v.run.to_dict()} if v.run else {"label": v.label, "entry": v.entry.name}
            for v in variants
        ],
        "seeds": seeds,
        "target_l0": target_l0,
    }


def resumed(out: Path) -> tuple[list[Variant], list[int] | None, float | None]:
    """The variants, seeds and target L0 of the comparison kept in ``out`` (compare.json)."""
    from saezoo.config.resolve import run_from_dict

    if not (out / checkpoint.COMPARE_FILE).is_file():
        raise UsageError(
            f"--resume {out}: no {checkpoint.COMPARE_FILE} there, so not a comparison that can be resumed "
            "(a comparison started before saezoo kept that file cannot be)"
        )
    request = checkpoint.read_json(out / checkpoint.COMPARE_FILE, f"comparison ({checkpoint.COMPARE_FILE})")
    try:
        variants = [
            Variant(v["label"], run=run_from_dict(v["run"], out / checkpoint.COMPARE_FILE))
            if "run" in v
            else Variant(v["label"], entry=catalog.get_entry(v["entry"]))
            for v in request["variants"]
        ]
        return variants, request["seeds"], request["target_l0"]
    except (KeyError, TypeError) as exc:
        raise UsageError(f"{out / checkpoint.COMPARE_FILE}: not a comparison saezoo wrote (missing {exc})") from None


def _run_dir(out: Path, label: str, seed: int | None) -> Path:
    return out / _safe(label) / f"seed-{seed}" if seed is not None else out / _safe(label)


def _variant_report(
    v: Variant, out: Path, seeds: list[int] | None, results: dict[tuple[str, int | None], dict[str, float]]
) -> dict[str, Any]:
    """A variant's entry in report.json: its settings, the mean (and standard deviation)
    of each metric over its seeds, and every seed's own numbers."""
    own = [seed for label, seed in results if label == v.label]
    per_seed = [results[(v.label, seed)] for seed in own]
    names = [k for k in per_seed[0] if all(_is_number(m.get(k)) for m in per_seed)]
    entry: dict[str, Any] = {
        "architecture": v.run.architecture if v.run else v.entry.architecture,
        "preset": (v.run.preset if v.run else v.entry.preset) or None,
        "curriculum": v.run.curriculum_name if v.run else None,
        "registry_entry": v.entry.name if v.entry else None,
        "run_dir": str(out / _safe(v.label)) if v.run else None,
        "config": v.run.to_dict() if v.run else {"sae": v.entry.config},
        "metrics": {k: statistics.fmean(m[k] for m in per_seed) for k in names} if len(per_seed) > 1 else per_seed[0],
    }
    if seeds is not None and v.run is not None:
        if len(per_seed) > 1:
            entry["metrics_std"] = {k: statistics.stdev(m[k] for m in per_seed) for k in names}
        entry["seeds"] = {
            str(seed): {"run_dir": str(_run_dir(out, v.label, seed)), "metrics": results[(v.label, seed)]}
            for seed in own
        }
    return entry


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _safe(label: str) -> str:
    return label.replace(":", "-").replace("#", "-").replace("/", "-")


def write_report(report: dict[str, Any], out: Path, densities: dict[str, torch.Tensor]) -> None:
    checkpoint.write_json(out / "report.json", checkpoint.json_safe(report))
    variants = report["variants"]
    curves = {label: _loss_curves(Path(_first_run_dir(v)) / "tb") for label, v in variants.items() if v["run_dir"]}
    plots.training_curves(curves, out / "training_curves.png")
    points = {label: [(m["l0"], m["explained_variance"]) for m in _seed_metrics(v)] for label, v in variants.items()}
    plots.ev_vs_l0(points, out / "ev_vs_l0.png")
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


def _seed_metrics(v: dict[str, Any]) -> list[dict[str, float]]:
    """A variant's metrics, one dict per seed (one dict without --seeds)."""
    return [s["metrics"] for s in v["seeds"].values()] if "seeds" in v else [v["metrics"]]


def _first_run_dir(v: dict[str, Any]) -> str:
    return next(iter(v["seeds"].values()))["run_dir"] if "seeds" in v else v["run_dir"]


def _loss_curves(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"] if tag.startswith("loss/")
    }


SIMILAR_COLUMN = "≈ within seed spread"
OFF_TARGET = 0.05
"""Relative distance of a steered variant's held-out L0 from --target-l0 that the report names."""


def off_target(report: dict[str, Any]) -> str | None:
    """A sentence naming the trained variants whose held-out L0 is more than 5 % from the
    target they were steered to (None if all are within it, or nothing was steered). Steering
    acts on the training batches: k sets a thresholded SAE's (BatchTopK, Matryoshka, the tree
    HSAE) thresholds on its training tokens, which held-out text can pass more often (SmolLM2,
    the default budget: L0 43.5 at k 40), and the target-l0 curriculum of an L1 SAE moves its
    coefficient after the training L0, which can lag (flat, there: 30.1 in training at the
    end, 32.6 held out)."""
    target = report.get("target_l0")
    if not target:
        return None
    missed = []
    for label, v in report["variants"].items():
        l0 = v["metrics"].get("l0")
        # A registry entry (no run directory) was evaluated, not steered.
        if v["run_dir"] and _is_number(l0) and abs(l0 - target) > OFF_TARGET * target:
            missed.append(f"{label} {l0:.1f} ({(l0 - target) / target:+.0%})")
    if not missed:
        return None
    return (
        f"held-out L0 more than {OFF_TARGET:.0%} from --target-l0 {target:g}: {', '.join(missed)}; "
        "steering holds L0 on the training batches, not on held-out text: give such a variant its "
        "own setting (--set SPEC.sae.k=...) to match"
    )


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per metric, one column per variant: stays readable for many metrics. With
    seeds, each cell is mean ± standard deviation and a last column lists the pairs of
    variants whose means differ by no more than the sum of their standard deviations."""
    variants = report["variants"]
    extra = sorted({k for v in variants.values() for k in v["metrics"] if k.startswith(TABLE_PREFIXES)})
    metrics = [c for c in TABLE_METRICS + extra if any(c in v["metrics"] for v in variants.values())]
    spread = any("metrics_std" in v for v in variants.values())
    rows = []
    for m in metrics:
        row = [m] + [_fmt(v["metrics"].get(m), v.get("metrics_std", {}).get(m)) for v in variants.values()]
        rows.append(row + ([_within_spread(m, variants)] if spread else []))
    return ["metric", *variants, *([SIMILAR_COLUMN] if spread else [])], rows


def _within_spread(metric: str, variants: dict[str, Any]) -> str:
    """``a ≈ b`` for each pair whose |mean difference| <= std_a + std_b (a variant without
    seeds counts a spread of 0): the seeds do not tell them apart. A reading aid, not a test."""
    labels = [label for label, v in variants.items() if _is_number(v["metrics"].get(metric))]
    pairs = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            va, vb = variants[a], variants[b]
            spread = va.get("metrics_std", {}).get(metric, 0.0) + vb.get("metrics_std", {}).get(metric, 0.0)
            if abs(va["metrics"][metric] - vb["metrics"][metric]) <= spread:
                pairs.append(f"{a} ≈ {b}")
    return "; ".join(pairs) or "–"


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "–"
    text = f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return text if std is None else f"{text} ± {std:.2g}"


def markdown(report: dict[str, Any]) -> str:
    header, rows = table_rows(report)
    lines = ["# saezoo comparison", ""]
    data = report["data"]
    lines.append("Data: " + ", ".join(f"{k}={v}" for k, v in data.items() if not isinstance(v, dict)))
    lines.append("Shared training settings: " + ", ".join(f"{k}={v}" for k, v in report["shared_train"].items()))
    if report.get("target_l0"):
        lines.append(f"Every trained variant steered to L0 {report['target_l0']:g} (--target-l0).")
        missed = off_target(report)
        if missed:
            lines.append(missed[0].upper() + missed[1:] + ".")
    seeds = report.get("seeds")
    if seeds:
        lines += [
            "",
            f"Every variant trained with {len(seeds)} initialisation seeds ({', '.join(map(str, seeds))}) on the one",
            "stream of batches: each cell is the mean ± standard deviation over seeds (every seed's",
            "numbers are in report.json). The last column lists the pairs of variants whose means differ",
            "by no more than the sum of their standard deviations: within the seeds' spread, so this",
            "comparison does not tell them apart (a reading aid, not a significance test).",
        ]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if report.get("failed"):
        lines += ["", "**Not finite**, so not comparable (each one's numbers are of its last finite weights):", ""]
        lines += [f"- {name}: {why}" for name, why in report["failed"].items()]
    lines += [
        "",
        "Metric definitions: docs/metrics.md. `ccr/*` is the composition coverage ratio of a tier,",
        "`ccr_chance/*` the same with shuffled parents; a tierless SAE is grouped by firing frequency.",
        "`tree_f1/inferred/*`: recovery of the true feature tree (synthetic source) by the tree inferred",
        "from co-firing, the same for every SAE; `tree_f1/structural/*` by the architecture's own tree.",
        "`consistency/*`: mean P(parent fires | child fires) in that tree.",
        "`absorption_first_letter/*`: first-letter absorption on the model's vocabulary (model sources;",
        "exploratory on a small model such as SmolLM2-135M).",
        *(
            [
                "Training curves and feature density: the first seed of each variant; explained variance vs",
                "L0: every seed (small points) and the mean ± std (bars).",
            ]
            if seeds
            else []
        ),
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
