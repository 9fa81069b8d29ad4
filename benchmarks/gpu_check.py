"""A few minutes on a CUDA machine: every architecture trains with bf16 autocast.

    python benchmarks/gpu_check.py                    # cuda, every architecture
    python benchmarks/gpu_check.py --device cpu --steps 30 --arch flat   # try the script here

For each registered architecture: ``--steps`` training steps through saezoo's real
``Trainee.train_step`` with ``train.autocast=bf16`` on saezoo's synthetic source (the
benchmarks' settings: d_in 512, 4096 latents, batches of 4096 tokens), then held-out
explained variance and L0. A row fails when any step was non-finite or explained variance
is below ``--min-ev``. tokens/s is timed with the device synchronised after every step.
Exit status 1 when any row fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from architectures import build_trainee  # noqa: E402
from common import markdown_table, synthetic_source  # noqa: E402


def check(arch: str, source, batches, eval_x, a) -> dict:
    import torch

    sample = torch.cat(batches[: max(1, 16384 // a.batch)])
    with tempfile.TemporaryDirectory(prefix="saezoo-gpu-") as tmp:
        trainee = build_trainee(arch, a.d_in, a.width, a.batch, a.lr, 0, Path(tmp), sample,
                                device=a.device, autocast="bf16")
        try:
            sync = torch.cuda.synchronize if trainee.device.type == "cuda" else (lambda: None)
            times = []
            for i in range(a.steps):
                sync()
                t0 = time.perf_counter()
                trainee.train_step(batches[i % len(batches)])
                sync()
                times.append(time.perf_counter() - t0)
            metrics = trainee.evaluate(eval_x, source)
            steady = sorted(times[a.steps // 10:])  # the first steps pay for kernel selection
            median = steady[len(steady) // 2]
            ok = trainee.nonfinite_total == 0 and metrics["explained_variance"] >= a.min_ev
            return {"architecture": arch, "tokens_per_s": a.batch / median, "ev": metrics["explained_variance"],
                    "l0": metrics["l0"], "nonfinite": trainee.nonfinite_total, "ok": ok}
        finally:
            trainee.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", nargs="+", help="architectures (default: every registered one)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-ev", type=float, default=0.7, help="explained variance a row must reach")
    a = p.parse_args(argv)

    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine or pass --device cpu", file=sys.stderr)
        return 2
    from saezoo.plugins import get_plugins

    source = synthetic_source(a.d_in)
    stream = source.batches(a.batch)
    batches = [next(stream).to(a.device) for _ in range(16)]
    eval_x = source.eval_activations(16384)
    rows = []
    for arch in a.arch or get_plugins().architectures.names():
        r = check(arch, source, batches, eval_x, a)
        print(f"{arch}: {r['tokens_per_s']:,.0f} tok/s, EV {r['ev']:.3f}", file=sys.stderr)
        rows.append([r["architecture"], r["tokens_per_s"], r["ev"], r["l0"], r["nonfinite"], "ok" if r["ok"] else "FAIL"])
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    print(f"\n{name}, bf16 autocast, d_in {a.d_in}, width {a.width}, batch {a.batch}, {a.steps} steps, Adam lr {a.lr}\n")
    print(markdown_table(["architecture", "tokens/s", "explained variance", "L0", "non-finite steps", "check"], rows))
    return 0 if all(row[-1] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
