"""What comparing N variants costs against training one, on an uncached model source.

    python benchmarks/compare_cost.py                      # 3 flat SAEs (an L1 sweep) vs 1
    python benchmarks/compare_cost.py --steps 100 --dtype float32
    python benchmarks/compare_cost.py --rows seeds --steps 40 --dtype bfloat16   # K x N seeds vs K*N variants
    python benchmarks/compare_cost.py --rows seeds --source synthetic --steps 100 --dtype float32   # the SAE steps alone

Both runs are real ``saezoo`` subprocesses on the embedded default (SmolLM2-135M, middle
layer, python-docs) with ``data.cache=false``, so the model runs for every batch; the one
activation stream of ``compare`` should make N variants cost one harvest plus N training
steps per batch. The variants are three flat SAEs with L1 coefficients 1, 2 and 4 (each as
expensive to train as the single run). Periodic and downstream evaluation are off, so the
wall times measure harvest and training (plus start-up, model load and the final
activation metrics, in both). Target: compare / train < 1.5.

The ``seeds`` row: ``compare flat flat --seeds 2`` (K = 2 variants x N = 2 seeds) against
``compare flat flat flat flat`` (K x N = 4 variants, the same 4 trainees spelled out), both
real subprocesses in the same run, each twice (means of the two); the seeds differ only in initialisation, so per trainee
the two should cost the same. Measured in CPU time (the machine is shared: other work
stretches wall times unevenly), with the first-letter absorption off. Target: seeds /
variants <= 1.1 (timing noise).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table  # noqa: E402

HERE = Path(__file__).resolve().parent


def timed(args: list[str]) -> float:
    return timed_both(args)[0]


def timed_both(args: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system) of one saezoo subprocess. CPU time is the
    cost a busy machine measures fairly: other work stretches the wall time, not it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "saezoo.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"saezoo {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--dtype", nargs="+", default=["bfloat16", "float32"], help="model dtypes to measure")
    p.add_argument("--rows", nargs="+", choices=["sweep", "seeds"], default=["sweep", "seeds"],
                   help="sweep: compare 3 x flat vs train flat; seeds: 2 variants x 2 seeds vs 4 variants")
    p.add_argument("--source", choices=["model", "synthetic"], default="model",
                   help="seeds row only: synthetic measures the SAE steps alone (256-dimensional features)")
    p.add_argument("--out", type=Path, default=HERE / "compare_cost.json")
    a = p.parse_args(argv)

    # A run of some rows keeps the others' last measurement in --out.
    record = json.loads(a.out.read_text()) if a.out.exists() else {}
    m = machine()
    data = "uncached (the model runs for every batch)" if a.source == "model" else "synthetic source, d_in 256"
    head = f"{a.steps} steps of 1024 tokens, {data}; {m['cpu']}, {m['cores']} cores, load average {m.get('load_average')}"
    with tempfile.TemporaryDirectory(prefix="saezoo-cmpcost-") as tmp:
        for row in a.rows:
            rows, results = [], []
            for dtype in a.dtype:
                common = ["--steps", str(a.steps), "-q"]
                for s in ("data.cache=false", f"data.model_dtype={dtype}", "train.eval_every=0",
                          "train.downstream_tokens=0", "train.checkpoint_every=0"):
                    common += ["--set", s]
                if row == "sweep":
                    one = timed(["train", "flat", "--out", f"{tmp}/one-{dtype}", *common])
                    three = timed(["compare", "flat", "flat", "flat", "--set", "flat.sae.l1_coefficient=1",
                                   "--set", "flat#2.sae.l1_coefficient=2", "--set", "flat#3.sae.l1_coefficient=4",
                                   "--out", f"{tmp}/three-{dtype}", *common])
                    results.append({"dtype": dtype, "train_one_s": one, "compare_three_s": three, "ratio": three / one})
                    rows.append([dtype, one, three, three / one, "yes" if three / one < 1.5 else "no"])
                    print(f"{dtype}: one {one:.0f} s, three {three:.0f} s", file=sys.stderr)
                else:
                    # The first-letter absorption task costs both the same and is not what is measured.
                    common += ["--set", "train.absorption_words=0"]
                    if a.source == "synthetic":  # dtype and cache mean nothing there
                        common += ["--source", "synthetic", "--set", "data.synthetic.d_in=256"]
                    # In the order seeds, variants, variants, seeds (sums of two each): a drift in the
                    # machine's load, or a cold first model load, weighs on both alike.
                    runs = {"seeds": ["flat", "flat", "--seeds", "2"], "variants": ["flat", "flat", "flat", "flat"]}
                    spent = {name: [0.0, 0.0] for name in runs}
                    for i, name in enumerate(["seeds", "variants", "variants", "seeds"]):
                        wall, cpu = timed_both(["compare", *runs[name], "--out", f"{tmp}/{name}-{dtype}-{i}", *common])
                        spent[name][0] += wall / 2
                        spent[name][1] += cpu / 2
                    (seeded, seeded_cpu), (spelled, spelled_cpu) = spent["seeds"], spent["variants"]
                    ratio = seeded_cpu / spelled_cpu
                    results.append({"dtype": dtype, "compare_2x2_seeds_wall_s": seeded, "compare_4_variants_wall_s": spelled,
                                    "compare_2x2_seeds_cpu_s": seeded_cpu, "compare_4_variants_cpu_s": spelled_cpu,
                                    "per_trainee_seeds_cpu_s": seeded_cpu / 4, "per_trainee_variants_cpu_s": spelled_cpu / 4,
                                    "ratio_cpu": ratio})
                    rows.append([dtype, f"{seeded:.0f} / {seeded_cpu:.0f}", f"{spelled:.0f} / {spelled_cpu:.0f}",
                                 seeded_cpu / 4, spelled_cpu / 4, ratio, "yes" if ratio <= 1.1 else "no"])
                    print(f"{dtype}: 2 x 2 seeds {seeded:.0f} s ({seeded_cpu:.0f} s CPU), 4 variants {spelled:.0f} s "
                          f"({spelled_cpu:.0f} s CPU)", file=sys.stderr)
            if row == "sweep":
                header = ["model dtype", "train flat (s)", "compare 3 x flat (s)", "ratio", "< 1.5"]
                prefix = ""
            else:
                header = ["model dtype", "2 variants x 2 seeds (wall / CPU s)", "4 variants (wall / CPU s)",
                          "per trainee, seeds (CPU s)", "per trainee, variants (CPU s)", "CPU ratio", "<= 1.1"]
                prefix = "seeds_"
            record.update({f"{prefix}settings": vars(a) | {"out": str(a.out)}, f"{prefix}machine": m, f"{prefix}results": results,
                           f"{prefix}table": "\n".join([head, "", markdown_table(header, rows)])})
            print(record[f"{prefix}table"])
    a.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
