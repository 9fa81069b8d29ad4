"""Sparse against dense decoding for the TopK SAE: full training steps on this machine.

    python benchmarks/sparse_decode.py                      # d_in 512, 16k latents, k 32
    python benchmarks/sparse_decode.py --batch-size 1024 --steps 3 --threads 1

Each step is what the trainer does: forward, backward, gradient surgery, Adam, the
unit-norm constraint. The two models (same initial weights, differing only in
``sparse_decode``) alternate step by step, so both see the same load on a shared machine,
and the table reports the median time per step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from saezoo_topk.sae import TopKConfig, TopKSAE


def train_step(sae: TopKSAE, opt: torch.optim.Optimizer, x: torch.Tensor) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one step."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = sae(x, {}, None)
    opt.zero_grad(set_to_none=True)
    sum(out.losses.values()).backward()
    sae.after_backward()
    opt.step()
    sae.after_step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d-in", type=int, default=512)
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model, after one warm-up step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's); 1 is steadier on a busy machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.width % args.d_in:
        parser.error("--width must be a multiple of --d-in")

    device = torch.device(args.device)
    models = {}
    for sparse in (True, False):
        torch.manual_seed(0)
        cfg = TopKConfig(expansion_factor=args.width // args.d_in, k=args.k, sparse_decode=sparse)
        sae = TopKSAE(args.d_in, cfg).to(device)
        models["sparse" if sparse else "dense"] = (sae, torch.optim.Adam(sae.parameters(), lr=1e-4))
    x = torch.randn(args.batch_size, args.d_in, device=device)

    times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
    for step in range(args.steps + 1):
        for name, (sae, opt) in models.items():
            elapsed = train_step(sae, opt, x)
            if step > 0:  # the first step pays for allocations
                times[name].append(elapsed)

    wall = {name: statistics.median(w for w, _ in t) for name, t in times.items()}
    cpu = {name: statistics.median(c for _, c in t) for name, t in times.items()}
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(
        f"TopK SAE, d_in {args.d_in}, {args.width} latents, k {args.k}, batch {args.batch_size}, "
        f"{device}{f' ({threads} threads)' if threads else ''}, median of {args.steps} steps"
    )
    # CPU time is what the step costs even when other processes share the cores (with one
    # thread; more threads add their waiting to it); on a GPU only the wall clock counts.
    print(f"{'decoding':<10}{'wall/step':>12}{'speed-up':>10}{'cpu/step':>12}{'speed-up':>10}")
    for name in models:
        print(
            f"{name:<10}{wall[name] * 1000:>10.0f}ms{wall['dense'] / wall[name]:>9.2f}x"
            f"{cpu[name] * 1000:>10.0f}ms{cpu['dense'] / cpu[name]:>9.2f}x"
        )


if __name__ == "__main__":
    main()
