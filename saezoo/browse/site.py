"""Build the static site: one pass of held-out contexts through the model and the SAE(s),
then the data written as JavaScript shards next to the page.

Layout of the output directory::

    index.html, browse.js, browse.css   the page (copied from the package, no build step)
    data/index.js                       site-wide: metrics, the latent index, the tree
    data/<side>-<shard>.js              SHARD latents each: contexts, histogram, tokens, neighbours
    plots/*.png                         the run's plots
    saezoo-browse.json                  what was built (marks the directory as a site)

Data files are scripts calling ``saezooData(key, value)`` rather than JSON: a page opened
from disk (``file://``) may not fetch files, but it may load scripts.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch import Tensor

from saezoo.activations.harvest import MEDIAN_SAMPLE_TOKENS
from saezoo.activations.model import hooked_activations
from saezoo.browse import features
from saezoo.api import Loaded
from saezoo.browse.load import check_same_source
from saezoo.browse.stats import BEFORE, WINDOW, LatentStats, bin_edges
from saezoo.config.resolve import run_from_dict
from saezoo.errors import UsageError
from saezoo.hierarchy import INFERRED_PARENT_SHARE, Cofiring

STATIC = Path(__file__).parent / "static"
MARKER = "saezoo-browse.json"
SHARD = 64
# Elements of codes handled at once ([contexts, T, width] float32: 64 MB).
CHUNK_ELEMENTS = 1 << 24
TOP_K, SAMPLES, SHOWN_SAMPLES, N_TOKENS, N_NEAR = 20, 24, 6, 10, 8


def prepare_out(out: Path) -> None:
    """``out`` may be new, empty, or a site built before (replaced, so it must hold nothing
    but what a build writes); nothing else."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: is a file, not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UsageError(
                f"--out {out}: holds other files; give a new or empty directory (or a site saezoo browse built)"
            )
        foreign = _foreign(out)
        if foreign is not None:
            raise UsageError(
                f"--out {out}: a site saezoo browse built, but {foreign} is no file of it and would be deleted with "
                "the old site; move it away or give a new directory"
            )


def _foreign(site: Path) -> Path | None:
    """A path in ``site`` that no build writes (see the module docstring for the layout)."""
    own = {f.name for f in STATIC.iterdir()} | {"data", "plots", MARKER}
    patterns = {"data": re.compile(r"(index|[ab]-\d+)\.js"), "plots": re.compile(r"[^/]+\.png")}
    for path in sorted(site.iterdir()):
        if path.name not in own or (path.name in patterns) != (path.is_dir() and not path.is_symlink()):
            return path
        for inner in sorted(path.iterdir()) if path.name in patterns else []:
            if not (inner.is_file() and not inner.is_symlink() and patterns[path.name].fullmatch(inner.name)):
                return inner
    return None


def build(
    targets: list[Loaded], out: Path, tokens: int, device: str | None = None, progress: bool = True
) -> dict[str, Any]:
    """Browse ``targets`` (one SAE, or two side by side) on ``tokens`` held-out tokens; write the site to ``out``."""
    from saezoo.trainer import resolve_device

    started = time.perf_counter()
    if tokens < 1:
        raise UsageError(f"--tokens must be >= 1, got {tokens}")
    prepare_out(out)
    if len(targets) == 2:
        check_same_source(*targets)
    run = run_from_dict(targets[0].header)
    if run.data.source != "model":
        raise UsageError(
            f"{targets[0].label}: browse needs text, and its source is {run.data.source!r}; browse SAEs of a language "
            "model"
        )
    dev = resolve_device(device or run.train.device)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # Written beside ``out`` and renamed into place: a killed build leaves the old site or none.
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the directory ({exc.strerror})") from None
    try:
        summary = _build_into(tmp, targets, run, tokens, dev, progress, started)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _build_into(
    tmp: Path, targets: list[Loaded], run, tokens: int, dev, progress: bool, started: float
) -> dict[str, Any]:
    from saezoo.activations.model_source import ModelSource

    # The outlier threshold is estimated on the first MEDIAN_SAMPLE_TOKENS of the training split
    # whatever the harvest's size, so the smallest harvest gives the run's threshold.
    source = ModelSource.from_config(run.data, tokens=MEDIAN_SAMPLE_TOKENS, seed=0, device=str(dev))
    threshold = source.outlier_threshold
    input_ids, mask = source.eval_contexts(tokens)
    saes = [t.sae.to(dev).eval() for t in targets]
    for t in targets:
        if t.sae.d_in != source.d_in:
            raise UsageError(
                f"{t.label}: the SAE reads {t.sae.d_in}-dimensional activations, the source gives {source.d_in}"
            )
    stats = [LatentStats(s.width, TOP_K, SAMPLES, keep_codes=s.latent_parents() is None) for s in saes]
    counted = _pass(source, saes, stats, input_ids, mask, threshold, tokens, dev, progress)
    if counted == 0:
        raise UsageError(f"no held-out token of {run.data.dataset!r} was counted (all outliers or special tokens)")
    tok = _TokenText(source.tokenizer)
    sides = [_side_data(t, s, st, source.model, tok) for t, s, st in zip(targets, saes, stats)]
    if len(sides) == 2:
        match, cos = features.nearest(saes[0].decoder_directions(), saes[1].decoder_directions(), 1, exclude_self=False)
        sides[0]["index"]["match"] = {
            "label": targets[1].label,
            "latent": match[:, 0].tolist(),
            "cosine": _round(cos[:, 0]),
        }
    n_contexts = max(max(int(st.top.context.max()), int(st.sample.context.max())) for st in stats) + 1
    summary = {
        "title": " vs ".join(t.label for t in targets),
        "tokens": counted,
        "contexts": n_contexts,
        "model": run.data.model,
        "hook": source.hook,
        "dataset": run.data.dataset,
        "seconds": round(time.perf_counter() - started, 1),  # the pass and the weights; writing follows
    }
    _write(tmp, targets, stats, sides, tok, input_ids[:n_contexts], mask[:n_contexts], summary)
    (tmp / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


@torch.no_grad()
def _pass(
    source, saes, stats, input_ids: Tensor, mask: Tensor, threshold: float | None, tokens: int, dev, progress: bool
) -> int:
    """Run the contexts through the model and each SAE; returns the tokens counted."""
    model, hook = source.model, source.hook
    batch = source.harvest_batch_size
    t = input_ids.shape[1]
    counted = 0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("browse", total=tokens)
        for start in range(0, len(input_ids), batch):
            ids, m = input_ids[start : start + batch], mask[start : start + batch]
            acts = hooked_activations(model, hook, ids)
            keep = m.clone()
            if threshold is not None:
                keep &= acts.norm(dim=-1) <= threshold
            n_keep = int(keep.sum())
            for sae, st in zip(saes, stats):
                per_chunk = max(1, CHUNK_ELEMENTS // (t * sae.width))
                for c in range(0, len(ids), per_chunk):
                    a, k = acts[c : c + per_chunk], keep[c : c + per_chunk]
                    codes = torch.zeros(*k.shape, sae.width)
                    if k.any():
                        codes[k] = sae.encode(a[k].to(dev)).float().cpu()
                    if not torch.isfinite(codes).all():
                        raise UsageError(
                            "the SAE gave non-finite codes on held-out activations; its weights are broken"
                        )
                    st.update(codes, int(k.sum()))
            counted += n_keep
            bar.advance(task, n_keep)
    return counted


class _TokenText:
    """Token ids to display strings, decoded one by one (and remembered)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            self.cache[token] = self.tokenizer.decode([token])
        return self.cache[token]


def _round(t: Tensor, digits: int = 4) -> Any:
    """``t`` as nested lists of floats with ``digits`` significant digits (compact JSON);
    0 for 0 and non-finite values."""
    t = t.double()
    ok = torch.isfinite(t) & (t != 0)
    magnitude = torch.where(ok, t.abs(), 1.0).log10().floor() - (digits - 1)
    # Divide by a power of ten >= 1, multiply by one < 1: both exact, so the floats print short.
    up, down = torch.pow(10.0, -magnitude.clamp_max(0)), torch.pow(10.0, magnitude.clamp_min(0))
    return torch.where(ok, (t * up / down).round() * down / up, 0.0).tolist()


def _side_data(target: Loaded, sae, st: LatentStats, model, tok: _TokenText) -> dict[str, Any]:
    """Everything about one SAE's latents except their contexts."""
    directions = sae.decoder_directions().detach().cpu()
    pos, pos_val, neg, neg_val = features.output_tokens(directions, model, N_TOKENS)
    near, near_cos = features.nearest(directions, directions, N_NEAR, exclude_self=True)
    parents = sae.latent_parents()
    tree = None
    if parents is not None:
        tree = {"kind": "structural", "parents": parents.tolist()}
    else:  # the hierarchy metrics' inferred tree, from the same codes
        tree = {
            "kind": "inferred",
            "parents": Cofiring(st.record, [torch.arange(sae.width)]).inferred.tolist(),
            "min_share": INFERRED_PARENT_SHARE,
        }
    top_values = st.top.values[0]
    index = {
        "label": target.label,
        "architecture": target.header.get("architecture"),
        "width": sae.width,
        "groups": [list(g) for g in sae.latent_groups()],
        "density": _round(st.fires.double() / max(st.tokens, 1)),
        "max": _round(top_values),
        "tree": tree,
        "metrics": {k: v for k, v in target.metrics.items() if isinstance(v, (int, float))},
    }
    return {
        "index": index,
        "pos": (pos, pos_val),
        "neg": (neg, neg_val),
        "near": (near, near_cos),
    }


class _Examples:
    """The kept examples of the latents ``cols`` (a slice: one shard) as Python lists
    (``[latent][n]``), for writing them latent by latent."""

    def __init__(self, ex, cols: slice, ids_pad: list[list[int]], real_pad: list[list[bool]]):
        self.values = ex.values[:, cols].T.tolist()
        self.context = ex.context[:, cols].T.tolist()
        self.position = ex.position[:, cols].T.tolist()
        self.window = _round(ex.window[:, cols].transpose(0, 1), 2)  # shading needs no more
        self.ids_pad, self.real_pad = ids_pad, real_pad

    def of(self, latent: int, strings: dict[int, int], which: list[int] | None = None) -> list[list]:
        """Examples ``which`` (default: all with value > 0) of one latent: ``[context, [token
        string index], [activation], index of the example's token]``; padding is left out."""
        out = []
        for i in range(len(self.values[latent])) if which is None else which:
            value, ctx, pos, acts = (
                self.values[latent][i],
                self.context[latent][i],
                self.position[latent][i],
                self.window[latent][i],
            )
            if value <= 0:
                continue
            window_ids = self.ids_pad[ctx][pos : pos + WINDOW]
            shown = self.real_pad[ctx][pos : pos + WINDOW]
            toks, vals, focus = [], [], 0
            for j, (tid, ok, act) in enumerate(zip(window_ids, shown, acts)):
                if j == BEFORE:
                    focus = len(toks)
                if ok:
                    toks.append(strings.setdefault(tid, len(strings)))
                    vals.append(act)
            out.append([ctx, toks, vals, focus])
        return out


def _write(root: Path, targets, stats, sides, tok, ids: Tensor, mask: Tensor, summary: dict) -> None:
    for f in STATIC.iterdir():
        shutil.copyfile(f, root / f.name)
    data = root / "data"
    data.mkdir()
    plots = []
    if targets[0].plots:
        (root / "plots").mkdir()
        for p in targets[0].plots:
            shutil.copyfile(p, root / "plots" / p.name)
            plots.append(f"plots/{p.name}")
    # Windows reach BEFORE positions back and AFTER forward. Padding (after the last text token
    # of the last context) is never shown; the sink token and separators are, so the reader
    # sees where a document starts.
    positions = torch.arange(ids.shape[1])
    last_text = torch.where(mask, positions, -1).max(dim=1).values
    real = positions <= last_text.unsqueeze(1)
    ids_pad = torch.nn.functional.pad(ids, (BEFORE, WINDOW - BEFORE)).tolist()
    real_pad = torch.nn.functional.pad(real, (BEFORE, WINDOW - BEFORE)).tolist()
    edges = bin_edges()
    names = ["a", "b"][: len(sides)]
    for name, side, st in zip(names, sides, stats):
        width = side["index"]["width"]
        for shard_start in range(0, width, SHARD):
            # Python lists of one shard at a time: for 65k latents the whole would be gigabytes.
            cols = slice(shard_start, min(shard_start + SHARD, width))
            lists = {
                "top": _Examples(st.top, cols, ids_pad, real_pad),
                "sample": _Examples(st.sample, cols, ids_pad, real_pad),
                "hist": st.histogram()[cols].tolist(),
                "fires": st.fires[cols].tolist(),
                "pos": (side["pos"][0][cols].tolist(), _round(side["pos"][1][cols], 3)),
                "neg": (side["neg"][0][cols].tolist(), _round(side["neg"][1][cols], 3)),
                "near": (side["near"][0][cols].tolist(), _round(side["near"][1][cols], 3)),
            }
            strings: dict[int, int] = {}
            latents = {}
            for j in range(cols.start, cols.stop):
                latents[j] = _latent_record(j - cols.start, lists, strings)
            texts = [""] * len(strings)
            for tid, k in strings.items():
                texts[k] = tok(tid)
            _write_js(
                data / f"{name}-{shard_start // SHARD}.js",
                f"{name}:{shard_start // SHARD}",
                {"strings": texts, "latents": latents},
            )
    for side, st in zip(sides, stats):
        # The token of each latent's best example, for the index's search by token.
        firing = st.top.values[0] > 0
        best = ids[st.top.context[0].clamp_min(0), st.top.position[0]].tolist()
        side["index"]["token"] = [tok(int(t)) if f else "" for t, f in zip(best, firing.tolist())]
    site = {
        **summary,
        "shard": SHARD,
        "edges": _round(torch.tensor(edges)),
        "plots": plots,
        "sides": [s["index"] for s in sides],
    }
    _write_js(data / "index.js", "index", site)


def _latent_record(j: int, lists: dict[str, Any], strings: dict[int, int]) -> dict[str, Any]:
    top = lists["top"].of(j, strings)
    sampled = lists["sample"].values[j]
    ranked = sorted((v, i) for i, v in enumerate(sampled) if v > 0)
    picks: dict[int, float] = {}
    # Evenly spaced quantiles of a uniform sample of the firings: the typical firing, not the extreme.
    for q in range(SHOWN_SAMPLES if ranked else 0):
        frac = (q + 0.5) / SHOWN_SAMPLES
        picks.setdefault(ranked[min(int(frac * len(ranked)), len(ranked) - 1)][1], round(frac, 3))
    shown = zip(picks.values(), lists["sample"].of(j, strings, list(picks)))
    counts = lists["hist"][j]
    nz = [i for i, c in enumerate(counts) if c]
    h = [nz[0], counts[nz[0] : nz[-1] + 1]] if nz else [0, []]

    def tokens(name: str) -> list:
        ids, values = lists[name]
        return [[strings.setdefault(t, len(strings)), v] for t, v in zip(ids[j], values[j])]

    return {
        "fires": lists["fires"][j],
        "top": top,
        "samples": [[frac, e] for frac, e in shown],
        "hist": h,
        "pos": tokens("pos"),
        "neg": tokens("neg"),
        "near": [list(pair) for pair in zip(*(x[j] for x in lists["near"]))],
    }


def _write_js(path: Path, key: str, value: Any) -> None:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    # "</" would end an inline script; these files are loaded by src, but keep them safe anywhere.
    text = text.replace("</", "<\\/")
    path.write_text(f"saezooData({json.dumps(key)},{text});\n", encoding="utf-8")
