"""What tree gating costs: a training step of the tree-gated HSAE against TopK's, side by side.

    python benchmarks/tree_cost.py                      # d_in 576, batches of 4096, k 40
    python benchmarks/tree_cost.py --rounds 3 --no-memory

The tree-gated HSAE (``hsae``, ``coupling=tree``) and ``topk`` train through saezoo's real
``Trainee.train_step`` (set up as ``architectures.py`` does) on the benchmarks' synthetic
source, at 16,128 latents (TopK's 28 x d_in; the tree as 768 / 3072 / 12288); the tree
also at 16,384 (1024 / 3072 / 12288, and the ``tree`` preset's two tiers 4096 / 12288)
against TopK's 16,128. The timed steps alternate
between the models, round after round, so all see the same machine load; the table gives
the median step. Peak memory is each model's own process (VmHWM of a child that builds the
model and takes two steps): memory that grew as width^2 would quadruple from half width to
full width, the dictionary's share only doubles.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from architectures import build_trainee, make_batches  # noqa: E402
from common import machine, markdown_table, set_threads, vm_hwm_mib  # noqa: E402

HERE = Path(__file__).resolve().parent


def models(d_in: int, k: int) -> dict[str, tuple[str, int, dict]]:
    """label -> (architecture, width, sae overrides)."""

    def tree(*widths: int, shares: list[float] | None = None) -> tuple[str, int, dict]:
        sae = {"coupling": "tree", "tier_expansion": [w / d_in for w in widths], "k": k, "tier_shares": shares}
        return "hsae", sum(widths), sae

    return {
        "topk 8064": ("topk", 14 * d_in, {"k": k}),
        "tree 8064 (384/1536/6144)": tree(384, 1536, 6144),
        "topk 16128": ("topk", 28 * d_in, {"k": k}),
        "tree 16128 (768/3072/12288)": tree(768, 3072, 12288),
        "tree 16384 (1024/3072/12288)": tree(1024, 3072, 12288),
        # The preset's shape (two tiers, 1 : 3, shares 0.7 / 0.3): a wider first tier, whose
        # pre-activations are all computed.
        "tree 16384 (4096/12288, preset)": tree(4096, 12288, shares=[0.7, 0.3]),
    }


def child(label: str, d_in: int, batch: int, k: int) -> None:
    """Build one model, take two steps, print its peak RSS (MiB)."""
    import torch

    arch, width, extra = models(d_in, k)[label]
    batches = make_batches(d_in, batch, 2)
    with tempfile.TemporaryDirectory(prefix="saezoo-bench-") as tmp:
        trainee = build_trainee(arch, d_in, width, batch, 1e-3, 0, Path(tmp), torch.cat(batches), extra)
        for x in batches:
            trainee.train_step(x)
        trainee.close()
    print(json.dumps({"peak_rss_mib": vm_hwm_mib()}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d-in", type=int, default=576)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--k", type=int, default=40)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="timed steps of each model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=HERE / "tree_cost.json")
    a = p.parse_args(argv)
    set_threads(a.threads)
    if a.child:
        child(a.child, a.d_in, a.batch, a.k)
        return 0

    import torch

    specs = models(a.d_in, a.k)
    timed = {label: spec for label, spec in specs.items() if spec[1] > 14 * a.d_in}  # half widths: memory only
    batches = make_batches(a.d_in, a.batch, 4)
    sample = torch.cat(batches)
    times: dict[str, list[float]] = {label: [] for label in timed}
    with tempfile.TemporaryDirectory(prefix="saezoo-bench-") as tmp:
        trainees = {
            label: build_trainee(arch, a.d_in, width, a.batch, 1e-3, 0, Path(tmp) / str(i), sample, extra)
            for i, (label, (arch, width, extra)) in enumerate(timed.items())
        }
        try:
            for r in range(a.warmup + a.rounds):
                for label, trainee in trainees.items():
                    t0 = time.perf_counter()
                    trainee.train_step(batches[r % len(batches)])
                    if r >= a.warmup:
                        times[label].append(time.perf_counter() - t0)
            l0 = {label: t.stats.get("l0") for label, t in trainees.items()}
        finally:
            for trainee in trainees.values():
                trainee.close()
    memory = {}
    if not a.no_memory:
        for label in specs:
            cmd = [sys.executable, __file__, "--child", label, "--d-in", str(a.d_in), "--batch", str(a.batch),
                   "--k", str(a.k), "--threads", str(a.threads)]
            memory[label] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)["peak_rss_mib"]

    median = {label: statistics.median(t) for label, t in times.items()}
    rows = [
        [label, specs[label][1], 1000 * median[label] if label in median else None,
         median[label] / median["topk 16128"] if label in median else None, l0.get(label), memory.get(label)]
        for label in specs
    ]
    m = machine()
    text = "\n".join([
        f"d_in {a.d_in}, batch {a.batch}, k {a.k}, Adam lr 1e-3, {a.warmup} warm-up + {a.rounds} timed steps each, "
        f"alternating; {a.threads} threads; {m['cpu']}, {m['cores']} cores, load average {m.get('load_average')}",
        "",
        markdown_table(["model", "latents", "step ms (median)", "x topk 16128", "L0 (last logged)", "peak RSS MiB"], rows),
    ])
    print(text)
    a.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(a).items()}, "machine": m, "step_times_s": times,
                                 "peak_rss_mib": memory, "table": text}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
