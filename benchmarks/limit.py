"""How close each architecture's training step comes to the machine's dense matmul rate.

    python benchmarks/limit.py                     # flat and topk
    python benchmarks/limit.py --arch all          # every registered architecture

1. The ceiling: the matmuls of an SAE step at the benchmark's shapes (batch B = 4096,
   d_in = 512, d_sae = 4096), each 2*B*d_in*d_sae FLOP, timed back to back with the
   operand layouts autograd uses:

       forward   x[B,d] @ W_enc[d,s]            codes[B,s] @ W_dec[s,d]
       backward  g_xhat[B,d] @ W_dec^T[d,s]     codes^T[s,B] @ g_xhat[B,d]
                 g_pre[B,s] @ W_enc^T[s,d]      x^T[d,B] @ g_pre[B,s]

   The matmul rate is their total FLOP over their total time.

2. Each architecture's step through ``Trainee.train_step`` (as ``architectures.py``
   measures it), reported two ways: the *nominal* rate, the work of a dense SAE step,
   10*B*d_in*d_sae FLOP (five of the matmuls above: g_pre @ W_enc^T, the input's
   gradient, is not needed), over the step time (a sparse architecture doing less work
   can exceed 100%); and the *counted* rate, the matmul FLOP torch's flop counter sees
   in that step over the step time (how busy the step keeps the matmul units: Gated's
   auxiliary reconstruction adds two matmuls, HSAE's tiers several).

On a shared machine the load moves, so the six matmuls also run right after every timed
step, and each architecture's share is the median over its steps of (its rate in that
step) / (the matmul rate just after it). The "matmul rate alongside" column is the
median of those ceilings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, set_threads  # noqa: E402

HERE = Path(__file__).resolve().parent


def six_matmuls(batch: int, d_in: int, d_sae: int, device: str = "cpu", dtype: str = "float32"):
    """A function running the six matmuls once and returning the seconds they took."""
    import torch

    shapes = _shapes(batch, d_in, d_sae, device, dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def run() -> float:
        sync()
        t0 = time.perf_counter()
        for a, b in shapes.values():
            torch.mm(a, b)
        sync()
        return time.perf_counter() - t0

    return run


def _shapes(batch: int, d_in: int, d_sae: int, device: str = "cpu", dtype: str = "float32") -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    B, d, s = batch, d_in, d_sae

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device, getattr(torch, dtype))

    x = randn(B, d)
    W_enc = randn(d, s)
    W_dec = randn(s, d)
    codes = torch.relu(randn(B, s))
    g_xhat = randn(B, d)
    g_pre = randn(B, s)
    return {
        "x @ W_enc": (x, W_enc),
        "codes @ W_dec": (codes, W_dec),
        "g_xhat @ W_dec^T": (g_xhat, W_dec.t()),
        "codes^T @ g_xhat": (codes.t(), g_xhat),
        "g_pre @ W_enc^T": (g_pre, W_enc.t()),
        "x^T @ g_pre": (x.t(), g_pre),
    }


def matmul_rates(batch: int, d_in: int, d_sae: int, reps: int) -> dict:
    import torch

    shapes = _shapes(batch, d_in, d_sae)
    flop = 2.0 * batch * d_in * d_sae
    per_shape: dict[str, list[float]] = {k: [] for k in shapes}
    totals = []
    for a, b in shapes.values():  # warm-up
        torch.mm(a, b)
    for _ in range(reps):
        total = 0.0
        for name, (a, b) in shapes.items():
            t0 = time.perf_counter()
            torch.mm(a, b)
            dt = time.perf_counter() - t0
            per_shape[name].append(dt)
            total += dt
        totals.append(total)
    return {
        "flop_per_matmul": flop,
        "per_shape_gflops_median": {k: flop / statistics.median(v) / 1e9 for k, v in per_shape.items()},
        "per_shape_gflops_best": {k: flop / min(v) / 1e9 for k, v in per_shape.items()},
        "step_gflops_median": 6 * flop / statistics.median(totals) / 1e9,
        "step_gflops_best": 6 * flop / min(totals) / 1e9,
        "dense_step_ms_median": 1000 * statistics.median(totals),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the machine's dense matmul rate, and each architecture's share of it")
    p.add_argument("--arch", nargs="+", default=["flat", "topk"], help="architectures, or 'all'")
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--reps", type=int, default=10, help="repetitions of the six matmuls")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "limit.json")
    a = p.parse_args(argv)
    set_threads(a.threads)

    from architectures import make_batches, measure
    from saezoo.plugins import get_plugins

    names = get_plugins().architectures.names() if a.arch == ["all"] else a.arch
    rates = matmul_rates(a.batch, a.d_in, a.width, a.reps)
    print(f"dense matmul rate: {rates['step_gflops_median']:.1f} GFLOP/s (best {rates['step_gflops_best']:.1f})", file=sys.stderr)
    batches = make_batches(a.d_in, a.batch, 8)
    nominal = 10.0 * a.batch * a.d_in * a.width
    results = []
    ceiling = six_matmuls(a.batch, a.d_in, a.width)
    for name in names:
        matmul_times: list[float] = []
        try:
            # The six matmuls run right after every timed step, so each step has a ceiling
            # measured under the same momentary load.
            r = measure(name, batches, a.d_in, a.width, a.warmup, a.steps, between=lambda: matmul_times.append(ceiling()))
        except Exception as exc:  # noqa: BLE001
            results.append({"architecture": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        step_s = r["step_ms_median"] / 1000
        r["nominal_gflops"] = nominal / step_s / 1e9
        r["counted_gflops"] = r["step_flop"] / step_s / 1e9
        six = 12.0 * a.batch * a.d_in * a.width  # the ceiling's six matmuls
        r["ceiling_gflops"] = six / statistics.median(matmul_times) / 1e9
        # Per step: (dense work / step time) / (six matmuls' FLOP / their time just after).
        share = [(nominal / t) / (six / m) for t, m in zip(r["step_times_s"], matmul_times)]
        r["nominal_fraction"] = statistics.median(share)
        r["counted_fraction"] = statistics.median(s * r["step_flop"] / nominal for s in share)
        r["matmul_times_s"] = matmul_times
        print(f"{name}: {r['nominal_fraction']:.0%} of the matmul rate (nominal)", file=sys.stderr)
        results.append(r)
    # Measure the ceiling again after the steps: on a shared machine the load moves.
    after = matmul_rates(a.batch, a.d_in, a.width, a.reps)

    m = machine()
    shape_rows = [[k, rates["per_shape_gflops_median"][k], rates["per_shape_gflops_best"][k]] for k in rates["per_shape_gflops_median"]]
    shape_rows.append(["all six, before", rates["step_gflops_median"], rates["step_gflops_best"]])
    shape_rows.append(["all six, after the architectures ran", after["step_gflops_median"], after["step_gflops_best"]])
    def pct(v):
        return f"{v:.0%}" if v is not None else None

    arch_rows = [
        [r["architecture"], r.get("width"), r.get("step_ms_median"), r.get("tokens_per_s_median"), r.get("ceiling_gflops"),
         r.get("nominal_gflops"), pct(r.get("nominal_fraction")), r["step_flop"] / 1e9 if "step_flop" in r else None,
         r.get("counted_gflops"), pct(r.get("counted_fraction")), r.get("error", "")]
        for r in results
    ]
    text = "\n".join([
        f"B={a.batch}, d_in={a.d_in}, d_sae={a.width}, {a.threads} threads, fp32; {m['cpu']}, {m['cores']} cores, "
        f"load average {m.get('load_average')}. Dense step = 5 matmuls x 2*B*d_in*d_sae = "
        f"{nominal / 1e9:.1f} GFLOP (10*B*d_in*d_sae).",
        "",
        markdown_table(["matmul", "GFLOP/s (median)", "GFLOP/s (best)"], shape_rows),
        "",
        markdown_table(["architecture", "width", "step ms", "tokens/s", "matmul rate alongside, GFLOP/s", "nominal GFLOP/s", "of matmul rate",
                        "counted GFLOP/step", "counted GFLOP/s", "of matmul rate", "error"], arch_rows),
    ])
    print(text)
    a.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(a).items()}, "machine": m, "matmul": rates,
                                 "matmul_after": after, "nominal_step_flop": nominal, "results": results, "table": text},
                                indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
