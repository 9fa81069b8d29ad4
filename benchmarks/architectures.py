"""Training-step throughput of every registered architecture at one common width.

    python benchmarks/architectures.py                  # every architecture, 4096 latents
    python benchmarks/architectures.py --arch flat topk --steps 50

Each architecture trains through saezoo's real ``Trainee.train_step`` (set up as
``train_many`` does it: ``resolve_run``, ``Trainee.start``), on saezoo's synthetic source
(d_in 512 by default, batches of 4096 tokens), Adam at a constant lr 1e-3, 2 threads.
The width is made common by setting ``expansion_factor`` (or, for the hierarchical SAE,
``tier_expansion`` in its default tiers' proportions); an architecture with neither keeps
its default width, which the table shows. Besides tokens/s the table gives the matmul
FLOP of one step as ``torch.utils.flop_counter`` counts them (``limit.py`` divides by
the machine's matmul rate).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, set_threads, synthetic_source, throughput  # noqa: E402

HERE = Path(__file__).resolve().parent


def width_options(arch: str, d_in: int, width: int) -> dict[str, Any]:
    """Config overrides giving ``arch`` ``width`` latents, where its Config allows."""
    import dataclasses

    from saezoo.plugins import get_plugins

    fields = {f.name: f for f in dataclasses.fields(get_plugins().architectures.get(arch).Config)}
    if "expansion_factor" in fields and width % d_in == 0:
        return {"expansion_factor": width // d_in}
    if "tier_expansion" in fields:
        # The default tiers' proportions, rounded to whole latents that add up to width.
        default = fields["tier_expansion"].default_factory()  # type: ignore[misc]
        exact = [e / sum(default) * width for e in default]
        widths = [int(w) for w in exact]
        for i in sorted(range(len(exact)), key=lambda i: widths[i] - exact[i])[: width - sum(widths)]:
            widths[i] += 1
        return {"tier_expansion": [w / d_in for w in widths]}
    return {}


def build_trainee(arch: str, d_in: int, width: int, batch: int, lr: float, seed: int, out_dir: Path, sample, extra=None,
                  device: str = "cpu", autocast: str = "none", compile: bool = False):
    import torch

    from saezoo.config.resolve import resolve_run
    from saezoo.trainer import Trainee

    run = resolve_run(
        arch,
        options={
            "train": {
                "batch_size": batch,
                "lr": lr,
                "warmup_steps": 0,
                "decay": "none",
                "device": device,
                "autocast": autocast,
                "compile": compile,
                "seed": seed,
                "eval_every": 0,
                "checkpoint_every": 0,
            },
            "sae": {**width_options(arch, d_in, width), **(extra or {})},
        },
    )
    trainee = Trainee(run, d_in, out_dir, {"source": "benchmark"}, torch.device(device))
    trainee.start(sample)
    return trainee


def step_flops(trainee, x) -> float:
    """Matmul FLOP of one ``train_step`` (forward + backward), as torch counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainee.train_step(x)
    return float(counter.get_total_flops())


def measure(arch: str, batches: list, d_in: int, width: int, warmup: int, steps: int, lr: float = 1e-3,
            seed: int = 0, extra: dict[str, Any] | None = None, between=None) -> dict[str, Any]:
    """tokens/s of ``Trainee.train_step`` for ``arch``; ``batches`` are cycled.
    ``between()``, if given, runs (untimed here) after each timed step."""
    import torch

    batch = batches[0].shape[0]
    sample = torch.cat(batches[: max(1, 16384 // batch)])
    with tempfile.TemporaryDirectory(prefix="saezoo-bench-") as tmp:
        trainee = build_trainee(arch, d_in, width, batch, lr, seed, Path(tmp), sample, extra)
        try:
            times, cpu_times = [], []
            for i in range(warmup + steps):
                x = batches[i % len(batches)]
                t0, c0 = time.perf_counter(), time.process_time()
                trainee.train_step(x)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
                    cpu_times.append(time.process_time() - c0)
                    if between is not None:
                        between()
            flops = step_flops(trainee, batches[0])
            return {
                "architecture": arch,
                "width": trainee.sae.width,
                "parameters": sum(p.numel() for p in trainee.sae.parameters()),
                "step_flop": flops,
                "l0_last": trainee.stats.get("l0"),
                "step_times_s": times,
                **throughput(times, batch, cpu_times),
            }
        finally:
            trainee.close()


def make_batches(d_in: int, batch: int, n: int, seed: int = 0) -> list:
    src = synthetic_source(d_in, seed)
    it = src.batches(batch)
    return [next(it) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="tokens/s of a training step for every registered architecture")
    p.add_argument("--arch", nargs="+", help="architectures (default: every registered one)")
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-batches", type=int, default=8, help="distinct batches, cycled")
    p.add_argument("--out", type=Path, default=HERE / "architectures.json")
    a = p.parse_args(argv)
    set_threads(a.threads)

    from saezoo.plugins import get_plugins

    names = a.arch or get_plugins().architectures.names()
    batches = make_batches(a.d_in, a.batch, a.data_batches)
    results = []
    for name in names:
        try:
            r = measure(name, batches, a.d_in, a.width, a.warmup, a.steps)
        except Exception as exc:  # noqa: BLE001 - one broken plugin should not hide the rest
            r = {"architecture": name, "error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: " + (f"{r['tokens_per_s_median']:,.0f} tok/s" if "error" not in r else r["error"]), file=sys.stderr)
        results.append(r)

    m = machine()
    rows = [
        [r["architecture"], r.get("width"), r.get("tokens_per_s_median"), r.get("step_ms_median"),
         r.get("tokens_per_cpu_s"), r["step_flop"] / 1e9 if "step_flop" in r else None, r.get("l0_last"), r.get("error", "")]
        for r in results
    ]
    text = "\n".join([
        f"d_in {a.d_in}, width {a.width}, batch {a.batch}, Adam lr 1e-3 constant, {a.warmup} warm-up + {a.steps} timed steps "
        f"(median step), {a.threads} threads; {m['cpu']}, {m['cores']} cores, load average {m.get('load_average')}",
        "",
        markdown_table(["architecture", "width", "tokens/s", "step ms", "tokens/CPU-s", "matmul GFLOP/step", "L0 (last logged)", "error"], rows),
    ])
    print(text)
    a.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(a).items()}, "machine": m,
                                 "results": results, "table": text}, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
