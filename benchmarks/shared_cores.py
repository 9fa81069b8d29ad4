"""Two training runs at once on one machine: each with every core (torch's default, what
saezoo did before saezoo/cpu_share.py), and sharing the cores (saezoo's default now).

    python benchmarks/shared_cores.py                 # 1500 steps of the synthetic tree HSAE
    python benchmarks/shared_cores.py --steps 500 --arch topk

Every run is a real ``saezoo train`` subprocess on the synthetic source; the second run of a
pair starts 3 s after the first. The reference is the same run alone, measured in the same
invocation: two runs one after the other take twice as long. Target: two runs at once, sharing,
finish within 1.15x of that (running them at once then costs little), where each with every
core does not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402

from saezoo.cpu_share import cores as machine_cores  # noqa: E402


def train(arch: str, steps: int, out: Path, cache: Path, threads: int | None, delay: float = 0.0) -> float:
    """Wall seconds of one ``saezoo train`` (started after ``delay`` seconds)."""
    time.sleep(delay)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["SAEZOO_CACHE"] = str(cache)  # the register of running processes lives in the cache
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    name, _, preset = arch.partition(":")
    cmd = [sys.executable, "-m", "saezoo.cli", "train", name, *(["--preset", preset] if preset else [])]
    cmd += ["--source", "synthetic", "--steps", str(steps)]
    cmd += ["--out", str(out), "-q", "--set", "train.eval_every=0"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def pair(arch: str, steps: int, where: Path, threads: int | None) -> float:
    """Wall seconds until both of two runs started 3 s apart have finished."""
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(train, arch, steps, where / f"run{i}", where / "cache", threads, 3.0 * i) for i in range(2)]
        for r in runs:
            r.result()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="hsae:tree", help="ARCH or ARCH:PRESET (default hsae:tree)")
    p.add_argument("--steps", type=int, default=1500)
    a = p.parse_args(argv)
    cores = machine_cores()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        alone = train(a.arch, a.steps, root / "alone", root / "cache", None)
        rows = [["one run alone", f"{alone:.1f}", "–"], ["two one after the other", f"{2 * alone:.1f}", "1.00"]]
        for label, threads in ((f"two at once, each with all {cores} cores", cores), ("two at once, sharing", None)):
            took = pair(a.arch, a.steps, root / label.replace(" ", "_"), threads)
            rows.append([label, f"{took:.1f}", f"{took / (2 * alone):.2f}"])
    print(machine())
    print(markdown_table(["runs", "wall seconds", "against one after the other"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
