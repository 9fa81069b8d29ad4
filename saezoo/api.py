"""saezoo from Python: load, train, evaluate and compare SAEs; pull and rebuild registry entries.

Every function here is what a ``saezoo`` command runs (``saezoo/cli.py`` parses the command
line, calls one of them and prints what it returns), so a notebook and the shell share one
implementation. Errors a user can cause are :class:`saezoo.UsageError` (the CLI prints their
one line and exits 2). Guide and example: docs/python.md, examples/python_api.py.

Settings are given as keywords: the data and length options (``source``, ``model``, ``hook``,
``dataset``, ``context_length``, ``steps``, ``batch_size``, ``seed``, ``device``), whole
sections as dicts (``train={"lr": 3e-4}``, ``data={...}``, ``sae={...}``, and
``curriculum_config={...}`` for the curriculum's settings, ``curriculum`` being its name), and
any other keyword as a field of the architecture's config (``k=8``), as a bare ``--set`` key is.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saezoo.arguments import checked
from saezoo.config import MIN_EVAL_TOKENS, SECTIONS, RunConfig
from saezoo.errors import TrainingDiverged, UsageError
from saezoo.sae import SAE

# Keyword -> the section it sets (the CLI's --source, --steps, ...).
OPTION_SECTIONS = {
    "source": "data",
    "model": "data",
    "hook": "data",
    "dataset": "data",
    "context_length": "data",
    "steps": "train",
    "batch_size": "train",
    "seed": "train",
    "device": "train",
}
# Keyword -> the section it gives whole, as a dict.
SECTION_KEYWORDS = {"train": "train", "data": "data", "sae": "sae", "curriculum_config": "curriculum"}
# What evaluate() may set for a SAELens directory, which records no data source of its own.
SAELENS_DATA = ("source", "model", "hook", "dataset", "context_length")


# --- loading ------------------------------------------------------------------------------------


@dataclass
class Loaded:
    """An SAE with what describes its data source (the shape of a run's ``cfg.json``)."""

    label: str
    sae: SAE
    header: dict[str, Any]
    kind: str  # "run", "saelens" or "registry"
    title: str
    path: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)


def open_sae(spec: str | Path, device: str = "cpu", data: dict[str, Any] | None = None) -> Loaded:
    """A run directory, a SAELens directory or the name of a registry entry (its weights
    found, pulled or rebuilt as ``catalog.locate_weights`` says). ``data`` (source, model,
    hook, dataset, context_length) is the data source of a SAELens directory, over what
    saezoo's own export recorded; a directory of another library needs it to be evaluated."""
    from saezoo import catalog, checkpoint, export

    given = {k: v for k, v in (data or {}).items() if v is not None}
    unknown = sorted(set(given) - set(SAELENS_DATA))
    if unknown:
        raise UsageError(f"data: unknown option(s) {', '.join(unknown)} (valid: {', '.join(SAELENS_DATA)})")
    path = Path(spec)
    if path.is_dir() and export.is_saelens_dir(path):
        sae, info = export.import_saelens(path)
        title = f"{path} (SAELens {info['saelens_architecture']} as saezoo {info['architecture']})"
        return Loaded(path.name, sae.to(device), export.eval_header(info, given, path), "saelens", title, path)
    if given:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        raise UsageError(
            f"{flags}: data options are for SAELens directories only; a saezoo run is evaluated on its own data source"
        )
    if path.is_dir():  # a run directory, or checkpoint's error saying what it lacks
        sae, header = checkpoint.load_sae(path, device)
        metrics_file = path / checkpoint.METRICS_FILE
        metrics = checkpoint.read_json(metrics_file, "metrics") if metrics_file.is_file() else {}
        return Loaded(path.name, sae, header, "run", str(path), path, metrics, sorted(path.glob("*.png")))
    name = str(spec)
    if "/" not in name and (catalog.registry_dir() / f"{name}.toml").is_file():
        entry = catalog.get_entry(name)
        header = {**catalog.recipe(entry), "d_in": entry.d_in}
        sae = catalog.load_entry(entry, device)
        return Loaded(name, sae, header, "registry", f"registry entry {name}", None, dict(entry.metrics))
    if path.exists():
        raise UsageError(f"{spec}: not a run directory, SAELens directory or registry entry (a file)")
    raise UsageError(f"{spec}: no such run directory, SAELens directory or registry entry")


@checked
def load(spec: str | Path, device: str = "cpu") -> SAE:
    """The SAE of a run directory, SAELens directory or registry entry, in eval mode:
    ``sae.encode(x)`` and ``sae.decode(codes)`` take raw activations of its source."""
    from saezoo.trainer import resolve_device

    return open_sae(spec, str(resolve_device(device))).sae


# --- training -----------------------------------------------------------------------------------


@dataclass
class Run:
    """A trained run: its directory, config and final held-out metrics."""

    path: Path
    config: RunConfig
    metrics: dict[str, float]
    registered: Path | None = None

    def load(self, device: str = "cpu") -> SAE:
        return load(self.path, device)


def settings_layer(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Keyword settings (see the module's docstring) -> a config layer by section; None is
    "not given" (the CLI passes its options that way)."""
    layer: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in settings.items():
        if value is None:
            continue
        section = SECTION_KEYWORDS.get(key)
        if section is not None:
            if not isinstance(value, dict):
                raise UsageError(f"{key}=: give the section's settings as a dict, got {type(value).__name__}")
            layer[section].update(value)
        else:
            layer[OPTION_SECTIONS.get(key, "sae")][key] = value
    return layer


@checked
def train(
    architecture: str | None = None,
    source: str | None = None,
    *,
    preset: str | None = None,
    curriculum: str = "constant",
    config: str | Path | None = None,
    tokens: int | None = None,
    sets: Sequence[str] = (),
    out: str | Path | None = None,
    resume: str | Path | None = None,
    register: str | None = None,
    force: bool = False,
    progress: bool = False,
    **settings: Any,
) -> Run:
    """Train one SAE (``saezoo train``) and return the run; ``resume=RUN_DIR`` continues a
    run as its cfg.json defines it. ``sets`` are ``--set`` strings, applied last. ``out``
    defaults to runs/ARCH-TIME; ``register`` adds the result to the registry."""
    from saezoo import catalog, checkpoint, distributed
    from saezoo.activations.factory import build_source
    from saezoo.config.resolve import resolve_run, run_from_dict
    from saezoo.trainer import resolve_device
    from saezoo.trainer import train as run_training

    distributed.init_from_env()
    if register is not None:  # before hours of training, not after
        catalog.check_new_name(register, force)
    elif force:
        raise UsageError("--force only applies to --register")
    settings = {"source": source, **settings}
    if settings.get("steps") is not None and tokens is not None:
        raise UsageError("give --steps or --tokens (Python: steps= or tokens=), not both")

    if resume is not None:
        resume = Path(resume)
        flags = _given_flags(settings, curriculum, sets, tokens=tokens, config=config, preset=preset, out=out)
        if flags:
            raise UsageError(
                f"--resume {resume} continues the run as its cfg.json defines it; {', '.join(flags)} cannot change it "
                f"(train other settings as a new run with --out)"
            )
        run = run_from_dict(checkpoint.read_cfg(resume), resume / checkpoint.CFG_FILE)
        if architecture is not None and architecture != run.architecture:
            raise UsageError(f"--resume {resume} is a {run.architecture!r} run, not {architecture!r}")
        out_dir, created = resume, False
    else:
        if architecture is None:
            raise UsageError("missing architecture: saezoo train ARCH (see `saezoo list architectures`)")
        run = resolve_run(
            architecture,
            preset=preset,
            curriculum=curriculum,
            config_file=config,
            options=settings_layer(settings),
            sets=list(sets),
            tokens=tokens,
        )
        out = Path(out) if out is not None else None
        created = out is None or not out.exists()
        out_dir = prepare_out(out, architecture)
    with ExitStack() as held:
        if created:
            held.enter_context(_removed_if_unused(out_dir))
        if distributed.is_main():  # rank 0 alone writes into the directory and the registry
            held.enter_context(checkpoint.run_lock(out_dir))
            if register is not None:
                held.enter_context(catalog.name_held(register, force))
        if resume is None:
            checkpoint.refuse_occupied(out_dir)
        distributed.barrier()  # every rank has checked --out before rank 0 writes into it
        src = build_source(
            run.data,
            tokens=run.train.steps * run.train.batch_size,
            seed=run.train.seed,
            device=str(resolve_device(run.train.device)),
        )
        metrics = run_training(run, out_dir, src, resume=resume is not None, progress=progress)
        registered = None
        if register is not None and distributed.is_main():
            registered = catalog.register_run(register, out_dir, metrics, force=force)
    return Run(out_dir, run, metrics, registered)


def _given_flags(settings: dict[str, Any], curriculum: str, sets: Sequence[str], **options: Any) -> list[str]:
    """The options given beside ``--resume``, as the command line spells them: a resumed run
    or comparison goes on as it was started, so ``train`` and ``compare`` refuse them all."""
    given = {**settings, **options, "curriculum": None if curriculum == "constant" else curriculum}
    given["set"] = list(sets) or None
    return [f"--{name.replace('_', '-')}" for name, value in given.items() if value is not None]


def prepare_out(out: Path | None, name: str) -> Path:
    """``out``, or runs/NAME-TIME, created and checked writable."""
    if out is None:
        out = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:  # bytes that are no text: TensorBoard and the JSON files cannot name them
        raise UsageError(f"--out {ascii(str(out))}: the path is not valid UTF-8; choose another") from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the directory ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {out}: not writable")
    return out


@contextmanager
def _removed_if_unused(out: Path) -> Iterator[None]:
    """A run directory this call created is removed when it fails before writing into it (a
    plugin's error at the SAE's construction, a bad data source): a failed start leaves
    nothing behind. Entered before the run's lock, so it runs after the lock's release."""
    from saezoo.checkpoint import LOCK_FILE

    try:
        yield
    except BaseException:
        if out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK_FILE}:
            (out / LOCK_FILE).unlink(missing_ok=True)
            out.rmdir()
        raise


# --- evaluation ---------------------------------------------------------------------------------


class NonFiniteResult(TrainingDiverged):
    """Evaluated weights or metrics that are not finite; ``metrics`` holds what was measured."""

    def __init__(self, message: str, metrics: dict[str, float]):
        super().__init__(message)
        self.metrics = metrics


@checked
def evaluate(
    sae: str | Path | Run | Loaded,
    *,
    tokens: int | None = None,
    downstream_tokens: int | None = None,
    absorption_words: int | None = None,
    device: str | None = None,
    data: dict[str, Any] | None = None,
    write: bool = True,
) -> dict[str, float]:
    """Every metric of an SAE on held-out activations of its own source (``saezoo eval``).

    ``sae``: a run (directory or :class:`Run`), a SAELens directory or a registry entry.
    ``tokens``, ``downstream_tokens``, ``absorption_words`` default to the run's settings.
    ``data`` (source, model, hook, dataset, context_length) is for SAELens directories only.
    A run directory gets metrics.json and the density plot written (``write``). Weights or
    metrics that are not finite raise :class:`NonFiniteResult`, which carries the metrics.
    """
    from saezoo import checkpoint
    from saezoo.activations.factory import build_source
    from saezoo.config.resolve import run_from_dict
    from saezoo.evaluation import check_absorption, full_evaluation
    from saezoo.host_memory import check_fits
    from saezoo.trainer import nonfinite_result, resolve_device

    if isinstance(sae, Loaded):
        if data:
            raise UsageError("data= applies when evaluate() loads the SAE: give a path or registry name")
        loaded = sae
    else:
        loaded = open_sae(sae.path if isinstance(sae, Run) else sae, data=data)
    header = loaded.header
    run = run_from_dict(header, loaded.path / checkpoint.CFG_FILE if loaded.path else loaded.label)
    if tokens is not None and tokens < MIN_EVAL_TOKENS:
        raise UsageError(f"--tokens must be >= {MIN_EVAL_TOKENS} (explained variance needs a variance), got {tokens}")
    n_eval = tokens or run.train.eval_tokens
    check_fits(n_eval * loaded.sae.d_in * 4, f"evaluating on {n_eval:,} tokens ({loaded.sae.d_in} float32 values each)")
    if downstream_tokens is not None and downstream_tokens < 0:
        raise UsageError(f"--downstream-tokens must be >= 0, got {downstream_tokens}")
    if absorption_words is not None and absorption_words < 0:
        raise UsageError(f"--absorption-words must be >= 0, got {absorption_words}")
    dev = resolve_device(device or run.train.device)
    # The training token count is part of the cache key; evaluation reads only held-out data.
    src = build_source(run.data, tokens=run.train.steps * run.train.batch_size, seed=run.train.seed, device=str(dev))
    n_words = run.train.absorption_words if absorption_words is None else absorption_words
    check_absorption(src, n_words)
    x = src.eval_activations(n_eval)
    if x.shape[-1] != loaded.sae.d_in:
        raise UsageError(
            f"{loaded.title}: the SAE reads {loaded.sae.d_in}-dimensional activations, the data source gives "
            f"{x.shape[-1]}"
        )
    n_downstream = run.train.downstream_tokens if downstream_tokens is None else downstream_tokens
    loaded.sae.to(dev)
    metrics, density = full_evaluation(
        loaded.sae, src, x, run.train.batch_size, dev, downstream_tokens=n_downstream, absorption_words=n_words
    )
    if write and loaded.kind == "run":  # a SAELens directory and the registry are left as they are
        from saezoo import plots

        checkpoint.write_json(loaded.path / checkpoint.METRICS_FILE, checkpoint.json_safe(metrics))
        plots.density_report(density, loaded.path)
    problem = nonfinite_result(loaded.sae, metrics)
    if problem:
        raise NonFiniteResult(f"{loaded.title}: {problem}; these weights are not usable", metrics)
    return metrics


# --- comparing ----------------------------------------------------------------------------------


@dataclass
class Comparison:
    """A comparison's report (what report.json holds) and the directory it was written to."""

    out: Path
    report: dict[str, Any]

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """Variant label -> its metrics (the mean over seeds with ``seeds``)."""
        return {label: v["metrics"] for label, v in self.report["variants"].items()}

    @property
    def failed(self) -> dict[str, str]:
        """Each run that diverged or ended not finite ("label" or "label seed N") -> why; its
        numbers in the report are of its last finite weights."""
        return self.report.get("failed", {})


@checked
def compare(
    *specs: str,
    source: str | None = None,
    curriculum: str = "constant",
    target_l0: float | None = None,
    seeds: int | Sequence[int] | str | None = None,
    config: str | Path | None = None,
    tokens: int | None = None,
    sets: Sequence[str] = (),
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = False,
    **settings: Any,
) -> Comparison:
    """Train several SAEs on one activation stream and evaluate them, and any registry entries
    among ``specs``, on the same held-out tokens (``saezoo compare``). A spec is
    ``ARCH[:PRESET][@CURRICULUM]`` or a registry entry name; ``seeds`` a count or a list.
    ``resume=OUT`` goes on with the comparison kept in OUT from its runs' checkpoints, and
    writes its report."""
    from saezoo.comparison import parse_seeds, resolve_variants, resumed, run_compare

    settings = {"source": source, **settings}
    if resume is not None:
        flags = _given_flags(
            settings, curriculum, sets, target_l0=target_l0, seeds=seeds, config=config, tokens=tokens, out=out
        )
        if specs or flags:
            what = ", ".join(([" ".join(specs)] if specs else []) + flags)
            raise UsageError(
                f"--resume {resume} goes on with the comparison as it was started; {what} cannot change it"
            )
        out_dir = Path(resume)
        if not out_dir.is_dir():
            raise UsageError(f"--resume {out_dir}: no such directory")
        variants, seed_list, target_l0 = resumed(out_dir)
        return Comparison(out_dir, run_compare(variants, out_dir, progress, seed_list, target_l0, resume=True))
    if not specs:
        raise UsageError("compare needs variants to compare, e.g. saezoo compare hsae flat (or --resume OUT)")
    if settings.get("steps") is not None and tokens is not None:
        raise UsageError("give --steps or --tokens (Python: steps= or tokens=), not both")
    variants = resolve_variants(
        list(specs),
        curriculum=curriculum,
        target_l0=target_l0,
        config_file=Path(config) if config is not None else None,
        options=settings_layer(settings),
        sets=list(sets),
        tokens=tokens,
    )
    runs = [v.run for v in variants if v.run is not None]
    if isinstance(seeds, int):
        seeds = str(seeds)
    elif seeds is not None and not isinstance(seeds, str):
        seeds = ",".join(map(str, seeds)) + ","  # a trailing comma makes even one seed a list
    seed_list = parse_seeds(seeds, runs[0].train.seed if runs else 0)  # a count starts at the shared train.seed
    out_dir = prepare_out(Path(out) if out is not None else None, "compare")
    return Comparison(out_dir, run_compare(variants, out_dir, progress=progress, seeds=seed_list, target_l0=target_l0))


# --- the registry -------------------------------------------------------------------------------


@checked
def pull(name: str) -> Path:
    """Fetch a registry entry's weights from its manifest's url into the hub cache, checked
    against the manifest's sha256 (``saezoo registry pull``); returns the cached file."""
    from saezoo import catalog

    return catalog.pull(catalog.get_entry(name))


@dataclass
class Reproduction:
    """A registry entry retrained from its manifest's recipe, checked against its metrics."""

    name: str
    run: Run
    rows: list[tuple[str, float, float, float, str, bool]]  # see catalog.check_reproduction
    ok: bool
    installed: Path | None
    identical: bool | None = None  # the very tensors published (None: the manifest records no tensor digest)


@checked
def reproduce(name: str, out: str | Path | None = None, progress: bool = False) -> Reproduction:
    """Retrain a registry entry from its manifest's recipe ([config], [data], [training]) and
    check the final metrics against its [metrics] within ``catalog.REPRODUCE_TOLERANCE``
    (``saezoo registry reproduce``). Within tolerance, the weights become the entry's
    rebuilt copy, which ``load(name)`` uses when the published file is not on this machine."""
    from saezoo import catalog, checkpoint

    entry = catalog.get_entry(name)
    recipe = catalog.recipe(entry)
    run = train(
        recipe["architecture"],
        preset=recipe["preset"],
        curriculum=recipe["curriculum_name"],
        out=Path(out) if out is not None else Path("runs") / f"reproduce-{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        progress=progress,
        train=recipe["train"],
        data=recipe["data"],
        sae=recipe["sae"],
        curriculum_config=recipe["curriculum"],
    )
    rows, ok = catalog.check_reproduction(entry, run.metrics)
    installed = catalog.install_rebuilt(entry, run.path) if ok else None
    identical = None
    if entry.tensors_sha256:
        identical = checkpoint.load_tensors(run.path / checkpoint.WEIGHTS_FILE)[1]["sha256"] == entry.tensors_sha256
    return Reproduction(name, run, rows, ok, installed, identical)
