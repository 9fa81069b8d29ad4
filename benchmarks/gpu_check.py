"""A few minutes on a CUDA machine: every architecture trains with bf16 autocast.

    python benchmarks/gpu_check.py                    # cuda, every architecture
    python benchmarks/gpu_check.py --compile          # the same with train.compile
    python benchmarks/gpu_check.py --device cpu --steps 30 --arch flat   # try the script here

For each registered architecture: ``--steps`` training steps through saezoo's real
``Trainee.train_step`` with ``train.autocast=bf16`` on saezoo's synthetic source (the
benchmarks' settings: d_in 512, 4096 latents, batches of 4096 tokens), then held-out
explained variance and L0. A row fails when any step was non-finite or explained variance
is below ``--min-ev``. tokens/s is timed with the device synchronised after every step.

The ceiling, as in ``limit.py``: the six matmuls of a dense step at the SAE's shapes, in
bf16 on the device; "of matmul rate" is a dense step's work (10*B*d_in*d_sae FLOP) over
the architecture's step time, as a share of that rate. Exit status 1 when any row fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from architectures import build_trainee  # noqa: E402
from common import markdown_table, synthetic_source  # noqa: E402
from limit import six_matmuls  # noqa: E402


def check(arch: str, source, batches, eval_x, a) -> dict:
    import torch

    sample = torch.cat(batches[: max(1, 16384 // a.batch)])
    with tempfile.TemporaryDirectory(prefix="saezoo-gpu-") as tmp:
        t0 = time.perf_counter()
        trainee = build_trainee(arch, a.d_in, a.width, a.batch, a.lr, 0, Path(tmp), sample,
                                device=a.device, autocast=a.autocast, compile=a.compile)
        try:
            sync = torch.cuda.synchronize if trainee.device.type == "cuda" else (lambda: None)
            times = []
            for i in range(a.steps):
                sync()
                t_step = time.perf_counter()
                trainee.train_step(batches[i % len(batches)])
                sync()
                times.append(time.perf_counter() - t_step)
            metrics = trainee.evaluate(eval_x, source)
            steady = sorted(times[a.steps // 10:])  # the first steps pay for kernel selection (and compilation)
            median = steady[len(steady) // 2]
            ok = trainee.nonfinite_total == 0 and metrics["explained_variance"] >= a.min_ev
            return {"architecture": arch, "width": trainee.sae.width, "tokens_per_s": a.batch / median, "step_ms": 1000 * median,
                    "first_step_s": times[0], "total_s": time.perf_counter() - t0,
                    "ev": metrics["explained_variance"], "l0": metrics["l0"], "nonfinite": trainee.nonfinite_total, "ok": ok}
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
    p.add_argument("--autocast", choices=["bf16", "none"], default="bf16")
    p.add_argument("--compile", action="store_true", help="train with train.compile (torch.compile of the forward pass)")
    # 400 steps on the synthetic source reach 0.34-0.86 (the same in float32, on the CPU too:
    # benchmarks/README.md); a run that diverged or learned nothing stays at or below 0.
    p.add_argument("--min-ev", type=float, default=0.3, help="explained variance a row must reach")
    p.add_argument("--out", type=Path, help="also write the results here as JSON")
    a = p.parse_args(argv)

    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine or pass --device cpu", file=sys.stderr)
        return 2
    from saezoo.plugins import get_plugins

    dtype = "bfloat16" if a.autocast == "bf16" else "float32"
    ceiling = six_matmuls(a.batch, a.d_in, a.width, a.device, dtype)
    for _ in range(3):
        ceiling()
    matmul_gflops = 12.0 * a.batch * a.d_in * a.width / statistics.median(ceiling() for _ in range(20)) / 1e9

    source = synthetic_source(a.d_in)
    stream = source.batches(a.batch)
    batches = [next(stream).to(a.device) for _ in range(16)]
    eval_x = source.eval_activations(16384)
    results, rows = [], []
    for arch in a.arch or get_plugins().architectures.names():
        r = check(arch, source, batches, eval_x, a)
        # The dense step at the SAE's own width (a width the architecture cannot take falls back to its default).
        dense_step = 10.0 * a.batch * a.d_in * r["width"]
        r["matmul_fraction"] = dense_step / (r["step_ms"] / 1000) / 1e9 / matmul_gflops
        print(f"{arch}: {r['tokens_per_s']:,.0f} tok/s, EV {r['ev']:.3f}", file=sys.stderr)
        results.append(r)
        rows.append([arch, r["width"], r["tokens_per_s"], r["step_ms"], f"{r['matmul_fraction']:.0%}", r["first_step_s"],
                     r["ev"], r["l0"], r["nonfinite"], "ok" if r["ok"] else "FAIL"])
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    text = "\n".join([
        f"{name}, torch {torch.__version__}, autocast {a.autocast}, compile {a.compile}, d_in {a.d_in}, width {a.width}, "
        f"batch {a.batch}, {a.steps} steps, Adam lr {a.lr}; six-matmul rate ({dtype}) {matmul_gflops:,.0f} GFLOP/s",
        "",
        markdown_table(["architecture", "width", "tokens/s", "step ms", "of matmul rate", "first step s", "explained variance", "L0",
                        "non-finite steps", "check"], rows),
    ])
    print("\n" + text)
    if a.out:
        a.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(a).items()}, "device_name": name,
                                     "matmul_gflops": matmul_gflops, "results": results, "table": text}, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
