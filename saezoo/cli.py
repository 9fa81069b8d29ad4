"""The ``saezoo`` command line (typer).

User errors print one line on stderr and exit 2 (see docs/errors.md); a run stopped by
the non-finite guard exits 3; an interrupted run exits 130 after saving a checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from dataclasses import dataclass
from typing import Annotated, Any, Optional

import typer

try:  # typer >= 0.20 vendors click; older releases use the click package
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from saezoo.errors import SaezooError, TrainingDiverged, UsageError

app = typer.Typer(
    help="A zoo of sparse autoencoders: train, evaluate and compare them side by side.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# --- options shared by several commands ----------------------------------------------------------
PresetOpt = Annotated[
    Optional[str],
    typer.Option("--preset", help="A named configuration of the architecture (see `saezoo describe ARCH`)."),
]
SourceOpt = Annotated[
    Optional[str], typer.Option("--source", help="model (a language model; the default) or synthetic.")
]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Registered model name, hub id or local path.")]
HookOpt = Annotated[Optional[str], typer.Option("--hook", help="Module to read activations from, e.g. model.layers.6.")]
DatasetOpt = Annotated[
    Optional[str], typer.Option("--dataset", help="Registered corpus name, hub id or local text files.")
]
ContextOpt = Annotated[Optional[int], typer.Option("--context-length", help="Tokens per context.")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Optimiser steps.")]
TokensOpt = Annotated[
    Optional[int], typer.Option("--tokens", help="Training tokens (sets steps = tokens // batch size).")
]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Tokens per step.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed of initialisation and data order.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, cuda:N; default: CUDA when present.")]
ConfigOpt = Annotated[
    Optional[Path], typer.Option("--config", help="TOML file with [train], [data], [sae], [curriculum] tables.")
]
CurriculumOpt = Annotated[
    str, typer.Option("--curriculum", help="Curriculum, or several joined with + (see `saezoo list curricula`).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


# The commands that compute, and so share the machine's cores with each other.
COMPUTING = {"train", "compare", "eval", "browse", "registry"}


@app.callback()
def main_callback(
    ctx: typer.Context,
    plugins_dir: Annotated[
        Optional[Path], typer.Option("--plugins-dir", help="Also load every *.py plugin file in this directory.")
    ] = None,
) -> None:
    from saezoo import plugins
    from saezoo.host_memory import keep_freed_memory

    plugins.set_plugins_dir(plugins_dir)
    # Not for browse: its temporaries change size from chunk to chunk, and a heap that is never
    # trimmed fragments (65,536 latents: 7 GB resident and growing, against 1.3 GB without).
    if ctx.invoked_subcommand != "browse":
        keep_freed_memory()  # before the first large tensor; see saezoo/host_memory.py
    if ctx.invoked_subcommand in COMPUTING:
        from saezoo.cpu_share import sharing

        ctx.with_resource(sharing())  # this process's share of the cores; see saezoo/cpu_share.py


@dataclass
class StreamOptions:
    """The options ``train`` and ``compare`` share (declared once, in STREAM_OPTIONS): the data
    stream, its length and the settings file."""

    source: Optional[str] = None
    model: Optional[str] = None
    hook: Optional[str] = None
    dataset: Optional[str] = None
    context_length: Optional[int] = None
    steps: Optional[int] = None
    tokens: Optional[int] = None
    batch_size: Optional[int] = None
    seed: Optional[int] = None
    device: Optional[str] = None
    config: Optional[Path] = None

    def settings(self) -> dict[str, Any]:
        """These options as the keywords of ``saezoo.api.train`` and ``compare``."""
        return dataclasses.asdict(self)


STREAM_OPTIONS = {
    "source": SourceOpt,
    "model": ModelOpt,
    "hook": HookOpt,
    "dataset": DatasetOpt,
    "context_length": ContextOpt,
    "steps": StepsOpt,
    "tokens": TokensOpt,
    "batch_size": BatchOpt,
    "seed": SeedOpt,
    "device": DeviceOpt,
    "config": ConfigOpt,
}


def stream_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the options of STREAM_OPTIONS, which it receives as one
    ``stream: StreamOptions`` (typer builds the command line from the signature)."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "stream"]
    shared = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=a)
        for n, a in STREAM_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        stream = StreamOptions(**{name: kwargs.pop(name) for name in STREAM_OPTIONS})
        command(**kwargs, stream=stream)

    wrapper.__signature__ = signature.replace(parameters=[*own, *shared])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {}  # the signature's annotations are the evaluated ones
    return wrapper


@app.command()
@stream_options
def train(
    stream: StreamOptions,
    architecture: Annotated[
        Optional[str], typer.Argument(help="Architecture name (see `saezoo list architectures`).")
    ] = None,
    preset: PresetOpt = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Override a setting: section.field=value (bare field: sae.field). Repeatable."),
    ] = None,
    curriculum: CurriculumOpt = "constant",
    out: Annotated[Optional[Path], typer.Option("--out", help="Run directory (default: runs/ARCH-TIME).")] = None,
    resume: Annotated[
        Optional[Path], typer.Option("--resume", help="Continue the run in this directory from its last checkpoint.")
    ] = None,
    register: Annotated[
        Optional[str], typer.Option("--register", help="Add the trained SAE to the registry under this name.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="With --register: replace an existing registry entry of that name.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Train one SAE and print its held-out metrics."""
    from saezoo import api, distributed

    run = api.train(
        architecture,
        preset=preset,
        curriculum=curriculum,
        sets=set_ or [],
        out=out,
        resume=resume,
        register=register,
        force=force,
        progress=not quiet,
        **stream.settings(),
    )
    if not distributed.is_main():
        return
    _print_metrics(run.metrics, title=f"{run.config.architecture} -> {run.path}")
    if run.registered is not None:
        typer.echo(f"registered as {register}: {run.registered}")


@app.command("eval")
def eval_(
    run_dir: Annotated[
        Path,
        typer.Argument(
            help="A run directory written by `saezoo train`, a SAELens directory (cfg.json + "
                "sae_weights.safetensors) or a registry entry name."
        ),
    ],
    tokens: Annotated[
        Optional[int], typer.Option("--tokens", help="Held-out tokens to evaluate on (default: the run's eval_tokens).")
    ] = None,
    downstream_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--downstream-tokens",
            help="Tokens for spliced CE/KL (model sources; default: the run's downstream_tokens).",
        ),
    ] = None,
    absorption_words: Annotated[
        Optional[int],
        typer.Option(
            "--absorption-words",
            help="Vocabulary words for first-letter absorption (model sources; 0: skip; default: the run's "
                "absorption_words).",
        ),
    ] = None,
    device: DeviceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    source: Annotated[
        Optional[str], typer.Option("--source", help="SAELens directories only: model or synthetic.")
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", help="SAELens directories only: registered model name, hub id or local path."),
    ] = None,
    hook: Annotated[
        Optional[str],
        typer.Option(
            "--hook",
            help="SAELens directories only: module the SAE reads, e.g. model.layers.6 (not a TransformerLens hook "
                "name).",
        ),
    ] = None,
    dataset: Annotated[
        Optional[str],
        typer.Option("--dataset", help="SAELens directories only: registered corpus name, hub id or local text files."),
    ] = None,
    context_length: Annotated[
        Optional[int], typer.Option("--context-length", help="SAELens directories only: tokens per context.")
    ] = None,
) -> None:
    """Evaluate a trained SAE on held-out activations of its own data source (a SAELens
    directory: of the source given by --model/--hook/--dataset or --source; docs/interop.md)."""
    from saezoo import api, checkpoint

    data = {"source": source, "model": model, "hook": hook, "dataset": dataset, "context_length": context_length}
    loaded = api.open_sae(run_dir, data=data)
    problem = None
    try:
        metrics = api.evaluate(
            loaded, tokens=tokens, downstream_tokens=downstream_tokens, absorption_words=absorption_words, device=device
        )
    except api.NonFiniteResult as exc:  # printed (NaN as null), but never an exit 0
        metrics, problem = exc.metrics, exc
    if as_json:
        typer.echo(json.dumps(checkpoint.json_safe(metrics), sort_keys=True, allow_nan=False))
    else:
        _print_metrics(metrics, title=loaded.title)
    if problem is not None:
        raise problem


@app.command()
@stream_options
def compare(
    stream: StreamOptions,
    specs: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="Variants: ARCH[:PRESET][@CURRICULUM] (hsae, hsae:paper, hsae@tier-unlock) or a registry entry name."
        ),
    ] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            help="Override a setting: section.field=value for every variant, SPEC.section.field=value for one "
                "(hsae@tier-unlock.curriculum.unlock_fraction=0.3). Repeatable.",
        ),
    ] = None,
    curriculum: Annotated[
        str,
        typer.Option(
            "--curriculum", help="Curriculum of the variants that name none with @ (see `saezoo list curricula`)."
        ),
    ] = "constant",
    target_l0: Annotated[
        Optional[float],
        typer.Option(
            "--target-l0", help="Steer every variant to this L0 (as its architecture declares: SAE.l0_control)."
        ),
    ] = None,
    seeds: Annotated[
        Optional[str],
        typer.Option(
            "--seeds",
            help="Train each variant with N initialisation seeds (train.seed, +1, ...) or a list (0,1,2) on the one "
                "stream; the report gives mean ± std.",
        ),
    ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Report directory (default: runs/compare-TIME).")] = None,
    resume: Annotated[
        Optional[Path],
        typer.Option(
            "--resume",
            help="Go on with a stopped comparison (its --out directory) from its runs' checkpoints, and report.",
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Train several SAEs on one activation stream and report them side by side."""
    from saezoo import api
    from saezoo.comparison import off_target, print_table

    comparison = api.compare(
        *(specs or []),
        curriculum=curriculum,
        target_l0=target_l0,
        seeds=seeds,
        sets=set_ or [],
        out=out,
        resume=resume,
        progress=not quiet,
        **stream.settings(),
    )
    print_table(comparison.report)
    missed = off_target(comparison.report)
    if missed:
        typer.echo(f"saezoo: note: {missed}", err=True)
    typer.echo(f"report: {comparison.out / 'report.md'}")
    if comparison.failed:  # the report is written and marks them; never an exit 0
        raise TrainingDiverged(
            f"not finite: {', '.join(comparison.failed)}; {comparison.out / 'report.md'} marks and explains them"
        )


@app.command()
def browse(
    runs: Annotated[
        list[str],
        typer.Argument(
            help="A run directory, SAELens directory or registry entry; a second one is shown side by side (same "
                "source)."
        ),
    ],
    tokens: Annotated[int, typer.Option("--tokens", help="Held-out tokens to run through the model.")] = 100_000,
    out: Annotated[Optional[Path], typer.Option("--out", help="Site directory (default: runs/browse-NAME).")] = None,
    device: DeviceOpt = None,
    serve: Annotated[bool, typer.Option("--serve", help="Then serve the site on 127.0.0.1 (Ctrl-C stops).")] = False,
    port: Annotated[int, typer.Option("--port", help="Port for --serve (0: any free one).")] = 8000,
    quiet: QuietOpt = False,
) -> None:
    """Write a static feature browser of an SAE: open OUT/index.html from disk, no server needed."""
    from saezoo.api import open_sae
    from saezoo.browse.site import build, prepare_out

    if len(runs) > 2:
        raise UsageError(f"browse takes one run, or two to compare side by side; got {len(runs)}")
    if tokens < 1:
        raise UsageError(f"--tokens must be >= 1, got {tokens}")
    if serve and not 0 <= port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {port}")
    if out is not None:
        prepare_out(out)  # before minutes of work
    targets = [open_sae(r) for r in runs]
    out_dir = out or Path("runs") / f"browse-{'-vs-'.join(t.label for t in targets)}"
    with contextlib.ExitStack() as held:
        # Listening before minutes of work too: a port in use is said now, not after the build.
        server = held.enter_context(_site_server(out_dir, port)) if serve else None
        summary = build(targets, out_dir, tokens, device=device, progress=not quiet)
        typer.echo(
            f"{summary['title']}: {summary['tokens']:,} tokens in {summary['seconds']} s -> {out_dir / 'index.html'}"
        )
        if server is not None:
            typer.echo(f"serving on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass


def _site_server(site: Path, port: int) -> Any:
    """An HTTP server on 127.0.0.1:``port`` for the files of ``site`` (read when asked for, so
    the site may be written after it listens)."""
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(site))
    try:
        return ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise UsageError(f"--port {port}: cannot listen on 127.0.0.1 ({exc.strerror}); choose another port") from None


registry_app = typer.Typer(help="The catalogue of trained SAEs (registry/).", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


@registry_app.command("list")
def registry_list() -> None:
    """Every registry entry with its architecture, data and headline metrics."""
    from rich.console import Console
    from rich.table import Table

    from saezoo import catalog

    table = Table("name", "architecture", "model / source", "tokens", "explained_variance", "l0", "ce_recovered")
    for e in catalog.list_entries():
        m = e.metrics
        source = e.data.get("model") if e.data.get("source") != "synthetic" else "synthetic"
        table.add_row(
            e.name,
            e.architecture + (f":{e.preset}" if e.preset else ""),
            str(source),
            str(e.data.get("tokens", "")),
            *(f"{m[k]:.4f}" if k in m else "–" for k in ("explained_variance", "l0", "ce_recovered")),
        )
    Console().print(table)


@registry_app.command("show")
def registry_show(name: Annotated[str, typer.Argument(help="A registry entry name.")]) -> None:
    """One registry entry's manifest, and where its weights are on this machine (checked
    against their sha256; nothing is fetched)."""
    from saezoo import catalog

    entry = catalog.get_entry(name)
    typer.echo(entry.manifest.read_text())
    typer.echo(catalog.weights_status(entry))


@registry_app.command("pull")
def registry_pull(name: Annotated[str, typer.Argument(help="A registry entry name.")]) -> None:
    """Fetch an entry's weights from its manifest's url into the Hugging Face cache, checked
    against the manifest's sha256 (HF_ENDPOINT, HF_HUB_CACHE and HF_HUB_OFFLINE apply)."""
    from saezoo import api

    typer.echo(f"{name}: {api.pull(name)}")


@registry_app.command("reproduce")
def registry_reproduce(
    name: Annotated[str, typer.Argument(help="A registry entry name.")],
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Run directory (default: runs/reproduce-NAME-TIME).")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Retrain an entry from its manifest's recipe and check its metrics against the recorded
    ones (tolerances: registry/README.md); within them, the weights become the entry's
    rebuilt copy. Exit 1 when a metric is outside its tolerance."""
    from rich.console import Console
    from rich.table import Table

    from saezoo import api

    result = api.reproduce(name, out=out, progress=not quiet)
    table = Table("metric", "recorded", "reproduced", "|difference|", "allowed", "ok", title=f"reproduce {name}")
    for metric, recorded, measured, difference, allowed, within in result.rows:
        ok = "yes" if within else "NO"
        table.add_row(metric, f"{recorded:.4f}", f"{measured:.4f}", f"{difference:.4f}", allowed, ok)
    Console().print(table)
    if result.installed is None:
        typer.echo(f"{name}: not reproduced within tolerance; the run is in {result.run.path}, nothing was installed")
        raise typer.Exit(1)
    same = {True: "; the same tensors as the published file", False: "; other tensors than the published file's"}
    typer.echo(f"{name}: reproduced{same.get(result.identical, '')}; rebuilt weights: {result.installed}")


cache_app = typer.Typer(help="The activation cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
def cache_list() -> None:
    """Cached activation sets: model, hook, dataset, tokens, size."""
    from rich.console import Console
    from rich.table import Table

    from saezoo.activations.cache import list_cache

    entries = list_cache()
    columns = ("id", "model", "hook", "dataset", "split", "n_tokens", "bytes")
    table = Table(*columns)
    for e in entries:
        table.add_row(*(str(e.get(k, "")) for k in columns))
    Console().print(table)


@cache_app.command("clear")
def cache_clear(
    key: Annotated[str, typer.Argument(help="A cache id or its prefix (see `saezoo cache list`), or all.")] = "all",
) -> None:
    """Delete cached activations."""
    from saezoo.activations.cache import clear_cache

    removed = clear_cache(key)
    typer.echo(f"removed {removed} cache entr{'y' if removed == 1 else 'ies'}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `saezoo train`.")],
    out: Annotated[Path, typer.Argument(help="Directory to write (created; must not hold an SAE already).")],
    format_: Annotated[
        str, typer.Option("--format", help="Target format: saelens (cfg.json + sae_weights.safetensors, SAELens 6.x).")
    ] = "saelens",
) -> None:
    """Write a trained SAE in another library's format, checked by reading it back (docs/interop.md)."""
    from saezoo.export import export_run

    done = export_run(run_dir, out, format_)
    typer.echo(
        f"{done['architecture']} -> {done['format']} {done['saelens_architecture']} "
        f"(d_in {done['d_in']}, d_sae {done['d_sae']}): {done['out']}"
    )


@app.command()
def plugins() -> None:
    """The installed plugins, where each comes from, its hooks and what it registers."""
    from rich.console import Console
    from rich.table import Table

    from saezoo.plugins import get_plugins

    table = Table("plugin", "source", "hooks", "registers")
    for row in get_plugins().describe():
        registers = "; ".join(f"{k}: {', '.join(v)}" for k, v in row["registers"].items())
        table.add_row(row["name"], row["source"], ", ".join(row["hooks"]), registers)
    Console().print(table)


@app.command("list")
def list_(
    kind: Annotated[
        Optional[str], typer.Argument(help="architectures, curricula, models, datasets or metrics (default: all).")
    ] = None,
) -> None:
    """What can be named on the command line, with each entry's plugin and first doc line."""
    from rich.console import Console
    from rich.table import Table

    from saezoo.errors import unknown_name
    from saezoo.plugins import KINDS, get_plugins

    registries = get_plugins().registries
    if kind is not None and kind not in KINDS:
        raise unknown_name("kind", kind, KINDS)
    console = Console()
    for k in [kind] if kind else KINDS:
        with_knobs = k in ("architectures", "curricula")
        table = Table("name", "plugin", *(["knobs"] if with_knobs else []), "description", title=k)
        for entry in sorted(registries[k].entries.values(), key=lambda e: e.name):
            doc = _first_line(entry.obj)
            presets = getattr(entry.obj, "presets", None)
            if presets:
                doc += f" [presets: {', '.join(['default', *presets])}]"
            knobs = [", ".join(sorted(getattr(entry.obj, "knobs", ()) or ()))] if with_knobs else []
            table.add_row(entry.name, entry.plugin, *knobs, doc)
        console.print(table)


@app.command()
def describe(
    name: Annotated[str, typer.Argument(help="An architecture or curriculum name.")],
) -> None:
    """Every setting of an architecture or curriculum, with its default and help."""
    from rich.console import Console
    from rich.table import Table

    from saezoo.config.fields import describe_fields
    from saezoo.errors import unknown_name
    from saezoo.plugins import get_plugins

    plugins = get_plugins()
    if name in plugins.architectures:
        obj, section = plugins.architectures.get(name), "sae"
    elif name in plugins.curricula:
        obj, section = plugins.curricula.get(name), "curriculum"
    else:
        raise unknown_name(
            "architecture or curriculum", name, plugins.architectures.names() + plugins.curricula.names()
        )
    console = Console()
    console.print(f"[bold]{name}[/bold]: {_first_line(obj)}")
    table = Table("--set key", "type", "default", "help")
    for field_name, type_name, default, doc in describe_fields(obj.Config):
        table.add_row(f"{section}.{field_name}", type_name, repr(default), doc)
    console.print(table)
    for preset, sections in (getattr(obj, "presets", None) or {}).items():
        settings = ", ".join(f"{s}.{k}={v!r}" for s, kv in sections.items() for k, v in kv.items())
        console.print(f"preset [bold]{preset}[/bold]: {settings}")


@app.command()
def check(
    architectures: Annotated[
        Optional[list[str]], typer.Argument(help="Architecture names (default: every installed one).")
    ] = None,
) -> None:
    """Run the SAE contract checks on installed architectures (for plugin authors; exit 1 if one fails)."""
    from saezoo import contract
    from saezoo.plugins import get_plugins

    registry = get_plugins().architectures
    names = architectures or registry.names()
    for name in names:
        registry.get(name)  # an unknown name: one line and exit 2, before any check runs
    failed = 0
    for name in names:
        plugin = registry.entries[name].plugin
        for check_name, status, detail in contract.run(name):
            failed += status == "FAIL"
            typer.echo(f"{name} ({plugin}) {check_name}: {status}{f' - {detail}' if detail else ''}")
    typer.echo(f"{len(names)} architecture(s): {'all checks passed' if not failed else f'{failed} check(s) failed'}")
    if failed:
        raise typer.Exit(1)


def _first_line(obj) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _print_metrics(metrics: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", "value", title=title)
    for name in sorted(metrics):
        value = metrics[name]
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


def _refuse_empty_arguments(args: list[str]) -> None:
    """No saezoo argument means anything when empty, and click would turn ``--out ""``
    into the current directory, filling it with a run."""
    for i, arg in enumerate(args):
        if not arg.strip():
            raise UsageError(f"empty argument{f' after {args[i - 1]}' if i else ''}: give it a value")


def _allocation_failure(exc: RuntimeError) -> str | None:
    """What a failed allocation asked for (an absurd --set sae.expansion_factor), or None
    when ``exc`` is another error, which keeps its traceback."""
    text = str(exc)
    if type(exc).__name__ != "OutOfMemoryError" and "can't allocate memory" not in text:
        return None
    match = re.search(r"allocate ([0-9.]+) ?(bytes|[KMGT]iB)", text)
    if match is None:
        return "an allocation failed"
    amount = (
        float(match[1]) / 2**30
        if match[2] == "bytes"
        else float(match[1]) / {"KiB": 2**20, "MiB": 2**10, "GiB": 1, "TiB": 2**-10}[match[2]]
    )
    return f"{amount:,.1f} GiB asked for at once"


def main() -> None:
    """Console entry point: one line on stderr and a meaningful exit code for every known error."""
    # SIGTERM stops every command the way Ctrl-C does (exit 130 and one line), never with a
    # silent 143; training refines it (see saezoo.trainer.StopSignals).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    code = None
    try:
        _refuse_empty_arguments(sys.argv[1:])
        # Typer turns a KeyboardInterrupt inside a command into the return value 130, and
        # typer.Exit(code) into the return value code.
        code = app(standalone_mode=False)
        interrupted = code == 130
    except SaezooError as exc:
        print(f"saezoo: error: {' '.join(str(exc).split())}", file=sys.stderr)  # always one line
        sys.exit(exc.exit_code)
    except click_exceptions.UsageError as exc:
        print(f"saezoo: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as exc:  # torch's allocators raise RuntimeError (OutOfMemoryError on CUDA)
        asked = _allocation_failure(exc)
        if asked is None:
            raise
        print(
            f"saezoo: error: out of memory ({asked}); ask for less: a smaller width, batch size or token count",
            file=sys.stderr,
        )
        sys.exit(2)
    except typer.Abort:
        print("saezoo: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        interrupted = True
    if interrupted:
        print("saezoo: interrupted by SIGINT or SIGTERM", file=sys.stderr)
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
