"""How fast ``saezoo browse`` builds a site and how fast its index opens in headless Chromium.

    python benchmarks/browse_speed.py --wide          # 4,608- and 65,536-latent sites: build, size, index render
    python benchmarks/browse_speed.py --smollm2       # saezoo browse smollm2-flat --tokens 100000 under /usr/bin/time -v
    python benchmarks/browse_speed.py --sites DIR...  # only the index render time of sites built already

``--wide`` builds the sites from random flat SAEs (encoder rows = decoder rows, bias at −3σ of
the pre-activations: about 0.13 % density) on a tiny random Llama (d 64, the test suite's
word-level tokenizer), so the page's data has the shape of a real SAE's of that width; the
index render time is from navigation start to the index table being on the page
(``body[data-ready=index]``), median of 5 fresh page loads. ``--smollm2`` runs the real CLI
in a subprocess and reads wall time, CPU time and peak RSS from ``/usr/bin/time -v``; the load
average before and after goes in the table, since the machine is shared.

Prints a markdown table; writes ``benchmarks/browse.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins"), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from common import markdown_table  # noqa: E402


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def random_run(root: Path, model_dir: Path, data: Path, width: int) -> Path:
    import torch

    from saezoo import checkpoint
    from saezoo.activations.model import hooked_activations
    from saezoo.activations.model_source import ModelSource

    d = 64
    src = ModelSource(str(model_dir), "model.layers.1", str(data), context_length=128, cache_dir=root / "cache", model_dtype="float32")
    ids, mask = src.eval_contexts(2048)
    x = hooked_activations(src.model, "model.layers.1", ids)[mask]
    g = torch.Generator().manual_seed(width)
    W_dec = torch.nn.functional.normalize(torch.randn(width, d, generator=g), dim=1)
    pre_std = float((x @ W_dec.T[:, :256]).std())
    tensors = {"W_enc": W_dec.T.contiguous(), "b_enc": torch.full((width,), -3 * pre_std), "W_dec": W_dec, "b_dec": torch.zeros(d)}
    run = root / f"random-{width}"
    data_cfg = {"source": "model", "model": str(model_dir), "hook": "model.layers.1", "dataset": str(data), "context_length": 128, "model_dtype": "float32"}
    header = checkpoint.run_header("flat", d, {"sae": {"expansion_factor": width // d}, "data": data_cfg, "train": {}}, {})
    checkpoint.write_json(run / checkpoint.CFG_FILE, header)
    checkpoint.save_tensors(run / checkpoint.WEIGHTS_FILE, tensors)
    return run


def render_times(site: Path, repeats: int = 5) -> list[float]:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("SAEZOO_CHROMIUM") or shutil.which("chromium")
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for _ in range(repeats):
            page = browser.new_page()
            page.goto((site / "index.html").as_uri())
            page.wait_for_selector("body[data-ready=index]", timeout=60_000)
            # performance.now() counts from navigation start; the ready mark is set right after rendering.
            out.append(page.evaluate("window.saezooReadyAt") / 1000)
            page.close()
        browser.close()
    return out


def wide(rows: list, results: dict, tokens: int) -> None:
    from activations_helpers import corpus, make_model, write_jsonl

    root = Path(tempfile.mkdtemp(prefix="browse-bench-"))
    docs = corpus(4000)
    model_dir = make_model(root / "model", "llama", layers=2, hidden=64, docs=docs)
    data = write_jsonl(root / "corpus.jsonl", docs)
    for width in (4608, 65536):
        run = random_run(root, model_dir, data, width)
        site = root / f"site-{width}"
        before = load()
        started = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "saezoo.cli", "browse", str(run), "--tokens", str(tokens), "--out", str(site), "-q"],
                              capture_output=True, text=True, env={**os.environ, "SAEZOO_CACHE": str(root / "cache")})
        build = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        rss_gb = peak_rss_gb(proc.stderr)
        row = measure_site(site, results, f"wide_{width}")
        results[f"wide_{width}"].update({"build_s": build, "tokens": tokens, "peak_rss_gb": rss_gb, "load_before": before})
        rows.append([f"{width:,} latents (random flat, tiny Llama), {tokens:,} tokens", f"{build:.0f} s", *row[:2], f"{rss_gb:.2f} GB", f"{before} / {row[2]}"])
    shutil.rmtree(root)


def measure_site(site: Path, results: dict, key: str) -> list[str]:
    """Shard files, index size and index render times of a built site: (data, render, load after) cells."""
    files = list((site / "data").iterdir())
    index_mb = (site / "data" / "index.js").stat().st_size / 1e6
    shard_kb = statistics.median(f.stat().st_size for f in files if f.name != "index.js") / 1e3
    times = render_times(site)
    results[key] = {"files": len(files), "index_mb": index_mb, "median_shard_kb": shard_kb, "render_s": times, "load_after": load()}
    return [f"{len(files):,} files, index {index_mb:.2f} MB, shard {shard_kb:.0f} kB",
            f"{statistics.median(times):.2f} s (of {', '.join(f'{t:.2f}' for t in times)})", load()]


def peak_rss_gb(time_v: str) -> float:
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_v).group(1)) / 1024**2


def smollm2(rows: list, results: dict, tokens: int, keep: Path | None) -> None:
    out = keep or Path(tempfile.mkdtemp(prefix="browse-smollm2-")) / "site"
    before = load()
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "saezoo.cli", "browse", "smollm2-flat", "--tokens", str(tokens), "--out", str(out), "-q"],
                          capture_output=True, text=True, cwd=ROOT)
    after = load()
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    text = proc.stderr
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text).group(1)
    seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
    rss_gb = peak_rss_gb(text)
    cpu = float(re.search(r"User time \(seconds\): (\S+)", text).group(1)) + float(re.search(r"System time \(seconds\): (\S+)", text).group(1))
    summary = json.loads((out / "saezoo-browse.json").read_text())
    results["smollm2_flat"] = {"wall_s": seconds, "cpu_s": cpu, "peak_rss_gb": rss_gb, "tokens": summary["tokens"], "load_before": before, "load_after": after, "stdout": proc.stdout.strip()}
    rows.append([f"smollm2-flat (4,608 latents), {summary['tokens']:,} tokens", f"{seconds:.0f} s wall, {cpu:.0f} CPU-s", "–", "–", f"{rss_gb:.2f} GB", f"{before} / {after}"])
    if keep is None:
        shutil.rmtree(out.parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wide", action="store_true")
    parser.add_argument("--smollm2", action="store_true")
    parser.add_argument("--wide-tokens", type=int, default=2048)
    parser.add_argument("--smollm2-tokens", type=int, default=100_000)
    parser.add_argument("--sites", type=Path, nargs="*", default=[], help="sites built already: their index render time only")
    parser.add_argument("--keep", type=Path, help="--smollm2: write the site here and keep it (for a screenshot)")
    args = parser.parse_args()
    results_file = ROOT / "benchmarks" / "browse.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    rows: list = []
    if args.wide:
        wide(rows, results, args.wide_tokens)
    for site in args.sites:
        meta = json.loads((site / "saezoo-browse.json").read_text())
        before = load()
        row = measure_site(site, results, f"site_{site.name}")
        rows.append([f"{site.name}: {meta['title']}, {meta['tokens']:,} tokens", "–", *row[:2], "–", f"{before} / {row[2]}"])
    if args.smollm2:
        smollm2(rows, results, args.smollm2_tokens, args.keep)
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown_table(["site", "build", "data", "index rendered (headless Chromium)", "peak RSS", "load avg before / after"], rows))


if __name__ == "__main__":
    main()
