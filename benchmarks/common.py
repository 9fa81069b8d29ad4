"""Small helpers shared by the benchmark scripts.

Plain torch and the standard library only: ``benchmarks/peers/drivers.py`` imports this
module from the peers' virtual environment, where saezoo is not installed.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


# The synthetic activations every benchmark trains on (saezoo's SyntheticSource with these
# settings): more features (4416) than a 4096-latent SAE has latents, about 30 active per
# token, scaled so that E||x||^2 = d_in.
SYNTHETIC = dict(n_parents=64, children_per_parent=4, n_independent=4096, p_parent=0.1, p_child=0.8,
                 p_independent=0.005, noise=0.01)


def synthetic_source(d_in: int, seed: int = 0):
    """saezoo's SyntheticSource with :data:`SYNTHETIC`, scaled to E||x||^2 = d_in."""
    import dataclasses

    from saezoo.activations.synthetic import SyntheticConfig, SyntheticSource

    cfg = SyntheticConfig(d_in=d_in, seed=seed, **SYNTHETIC)
    probe = SyntheticSource(cfg).eval_activations(8192)
    cfg = dataclasses.replace(cfg, scale=float((d_in / probe.pow(2).sum(-1).mean()) ** 0.5))
    return SyntheticSource(cfg)


def set_threads(n: int) -> None:
    """Pin torch (and the BLAS/OpenMP pools it starts) to ``n`` threads."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    torch.set_num_threads(n)


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB).

    Linux carries ru_maxrss across exec, so a child started by a big parent inherits the
    parent's peak: start benchmark processes from a small one (run.py imports no torch)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_hwm_mib() -> float | None:
    """Peak RSS of this process's own address space (VmHWM), which exec resets."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def time_steps(step: Callable[[int], Any], warmup: int, steps: int) -> list[float]:
    """Run ``step(i)`` for ``warmup`` untimed then ``steps`` timed iterations; the
    seconds each timed call took."""
    for i in range(warmup):
        step(i)
    times = []
    for i in range(warmup, warmup + steps):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    return times


def throughput(times: Sequence[float], tokens_per_step: int, cpu_times: Sequence[float] | None = None) -> dict[str, float]:
    """Tokens/s over the whole timed run, and from the median step (robust to a
    contended machine's stalls); with ``cpu_times`` (process CPU seconds per step, all
    threads), tokens per CPU-second too: on a shared machine wall time counts the waits
    for a core, CPU time does not."""
    out = {
        "tokens_per_s": tokens_per_step * len(times) / sum(times),
        "tokens_per_s_median": tokens_per_step / statistics.median(times),
        "step_ms_median": 1000 * statistics.median(times),
        "step_ms_mean": 1000 * sum(times) / len(times),
    }
    if cpu_times:
        out["tokens_per_cpu_s"] = tokens_per_step * len(cpu_times) / sum(cpu_times)
        out["cpu_ms_per_step_median"] = 1000 * statistics.median(cpu_times)
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on (torch's version and threads only where torch
    is already imported: the orchestrators stay small)."""
    import sys

    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats are printed with sensible precision."""

    def cell(v: Any) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            if v != v:  # NaN
                return "n/a"
            if abs(v) >= 1000:
                return f"{v:,.0f}"
            if abs(v) >= 10:
                return f"{v:.1f}"
            return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
