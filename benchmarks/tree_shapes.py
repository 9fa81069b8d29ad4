"""Does the tree-gated HSAE find the tree on shapes it was not tuned on? Issue 17's bar
(structural precision and recall >= 0.9 at every depth) on several synthetic trees and seeds.

    python benchmarks/tree_shapes.py                              # every shape, seeds 0 and 1
    python benchmarks/tree_shapes.py --shapes 6,4,2 4,3,2 --seeds 0 1 2
    python benchmarks/tree_shapes.py --jobs 2 --out /tmp/shapes    # two runs at a time
    python benchmarks/tree_shapes.py --set sae.orthogonal_children=false --out /tmp/free-rows

One rule sets every shape's model from its source, so no shape gets settings of its own
(the synthetic defaults: d_in 64, 64 independent features, p_parent 0.08, p_child 0.8,
p_independent 0.03):

* tier budgets (k split by tier shares): the source's mean active features per depth (the
  top level counts the roots and the independent features), and in the last tier also the
  corrections its spare slots hold (a parent's "no child fires" latent, on the 1 - p_child of
  its parent's tokens where no child fires: session 12). In a tree of three levels or more
  the last tier's budget is then its parents' rate, the budget of the tier above; that tier
  keeps at most its budget, each kept latent offers one candidate, and so the last tier keeps
  every positive candidate: its budget never binds. In a tree of two levels the tier above
  also keeps the independent features, so the last tier's budget binds whatever it is, and
  room for the corrections is room for independent features hosted in child slots: on
  ``[8, 3]`` (the default source), seeds 0-5 at 4000 steps, 0 of 6 runs at the bar with the
  corrections' budget and slot, 0 of 6 with the budget alone, 3 of 6 with neither (5 of 6
  with those shares rounded to two decimals; plugins/saezoo_hsae/NOTEBOOK.md, session 25). So a
  two-level tree gets its features' rates and no extra slot. k is the sum rounded up.
  With the features alone (the rule until session 23) the last tier's budget made a rotated
  basis cheaper than the true tree: a latent that takes in its most frequent child, and a
  correction under it where that child is absent, spend fewer latents of the last tier than
  the true tree and its corrections do (plugins/saezoo_hsae/NOTEBOOK.md, sessions 23 and 24);
* widths: tier 1 is 2.5 x d_in (room for every top-level feature and as many again); each
  deeper tier gives every latent as many child slots as the source's nodes have children,
  and the last tier of a tree of three levels or more one more: the slot that a parent's
  "no child fires" correction takes (plugins/saezoo_hsae/NOTEBOOK.md, session 12). So
  [8, 4, 3] gets 160 / 640 / 2560 and [12, 3, 2] 160 / 480 / 1440. ``hierarchy_answer.py``
  sets its tree HSAEs by this rule too (:func:`tree_model`).

Each run is ``saezoo train hsae --preset tree`` in a subprocess; its metrics.json is read back.
A run whose metrics.json exists under ``--out`` is not run again (delete it to rerun), and one
stopped part-way goes on from its last checkpoint (``saezoo train --resume``), so a benchmark
that was stopped goes on where it was; both only for the settings the run was started with
(kept beside it as ``<run>.json``), otherwise the script stops and asks for another ``--out``. Prints one row per run and one per shape.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table  # noqa: E402

# Steps per shape: [12, 3, 2] needs 8000 (at 4000, 1 of 5 seeds reached the bar; session 17).
# [8, 3] is the default source; it needs 8000 as well (seeds 0-5: 3 of 6 at 4000, 6 of 6 at
# 8000; session 26): placement's last windows after the prefix losses stop move latents that
# only later windows put back, and 4000 steps leave four such windows. [6, 4, 2] needs 16,000
# (seeds 0-5: 3 of 6 at 4000, 4 of 6 at 12,000, 5 of 6 at 16,000; sessions 24, 25 and 28; 7 of
# seeds 0-9 at 16,000 before session 29's rule for guests, 9 of 10 with it, 10 of 10 with
# session 31's rules for full slots; sessions 30-32): its
# rotated child/grandchild pairs leave slowly. hierarchy_answer.py trains its synthetic
# comparisons for these steps too.
SHAPES = {(8, 4, 3): 4000, (12, 3, 2): 8000, (10, 3, 3): 6000, (6, 4, 2): 16000, (4, 3, 2): 8000, (8, 3): 8000}
SOURCE = dict(d_in=64, n_independent=64, p_parent=0.08, p_child=0.8, p_independent=0.03)
BAR = 0.9


def tree_model(branching: list[int]) -> dict:
    """The tree HSAE the rule above gives the tree of ``branching``: its ``k``,
    ``tier_expansion`` and ``tier_shares``."""
    s = SOURCE
    tree = [branching[0] * s["p_parent"] * s["p_child"] ** d for d in range(len(branching))]
    rates = [tree[0] + s["n_independent"] * s["p_independent"], *tree[1:]]
    ratios = list(branching[1:])
    if len(branching) > 2:  # the corrections, and their slots (the docstring: not in two levels)
        rates[-1] += tree[-2] * (1 - s["p_child"])
        ratios[-1] += 1
    expansion = [2.5]
    for r in ratios:
        expansion.append(expansion[-1] * r)
    return {
        "k": math.ceil(sum(rates)),
        "tier_expansion": expansion,
        "tier_shares": [round(r / sum(rates), 4) for r in rates],
    }


def settings(branching: list[int]) -> list[str]:
    """The ``--set`` options the rule above gives the tree of ``branching``."""
    return [
        f"data.synthetic.branching={compact(branching)}",
        *(f"data.synthetic.{key}={value}" for key, value in SOURCE.items()),
        *(f"sae.{key}={compact(value)}" for key, value in tree_model(branching).items()),
    ]


def compact(value: list) -> str:
    return json.dumps(value, separators=(",", ":"))


def by_depth(scores: list[float]) -> str:
    return " / ".join(f"{x:.3f}" for x in scores)


def run(branching: list[int], steps: int, seed: int, out: Path, threads: int, extra: list[str]) -> dict:
    name = "-".join(map(str, branching)) + f"_seed{seed}"
    where = out / name
    # What was asked of the run, kept beside it: a run directory is reused or resumed only for
    # the same request, never read back as the result of other settings.
    options = [f"train.seed={seed}", *settings(branching), *extra]
    request = {"steps": steps, "set": options}
    asked = out / f"{name}.json"
    if where.exists():
        if not asked.exists() or json.loads(asked.read_text()) != request:
            raise ValueError(f"{where} holds a run with other settings than these; give another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        asked.write_text(json.dumps(request))
    if not (where / "metrics.json").exists():
        if (where / "cfg.json").exists():  # stopped part-way: go on from its last checkpoint
            cmd = [sys.executable, "-m", "saezoo.cli", "train", "--resume", str(where), "-q"]
        else:
            cmd = [sys.executable, "-m", "saezoo.cli", "train", "hsae", "--preset", "tree", "--source", "synthetic"]
            cmd += ["--steps", str(steps), "--out", str(where), "-q"]
            for option in options:
                cmd += ["--set", option]
        print(" ".join(cmd), file=sys.stderr, flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    m = json.loads((where / "metrics.json").read_text())
    depths = range(1, len(branching))
    scores = [m[f"tree_{s}/structural/depth{d}"] for s in ("precision", "recall") for d in depths]
    return {
        "shape": branching,
        "seed": seed,
        "steps": steps,
        "scores": scores,
        "absorption": m["absorption"],
        "explained_variance": m["explained_variance"],
        "at_bar": min(scores) >= BAR,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--shapes",
        nargs="+",
        help="trees as comma lists, e.g. 6,4,2 (default: " + " ".join(",".join(map(str, s)) for s in SHAPES) + ")",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--steps", type=int, help="optimiser steps for every shape (default: each shape's own)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cpus / jobs threads)")
    p.add_argument("--out", type=Path, default=Path("runs/tree-shapes"))
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for every run, after the rule's (e.g. sae.prefix_until=1)",
    )
    a = p.parse_args(argv)
    try:
        shapes = [[int(b) for b in s.split(",")] for s in a.shapes] if a.shapes else [list(s) for s in SHAPES]
    except ValueError:
        p.error(f"--shapes takes comma lists of integers such as 6,4,2; got {a.shapes}")
    if any(len(s) < 2 or min(s) < 1 for s in shapes):
        p.error("each shape needs two levels or more of positive branching, such as 6,4,2")
    if a.jobs < 1:
        p.error("--jobs must be at least 1")
    threads = max(1, (os.cpu_count() or 1) // a.jobs)
    jobs = [(s, a.steps or SHAPES.get(tuple(s), 4000), seed) for s in shapes for seed in a.seeds]
    try:
        with ThreadPoolExecutor(a.jobs) as pool:
            results = list(pool.map(lambda j: run(*j, a.out, threads, a.sets), jobs))
    except subprocess.CalledProcessError as e:  # saezoo has said why on stderr
        print(f"tree_shapes.py: a run failed (exit {e.returncode}): {' '.join(e.cmd)}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"tree_shapes.py: {e}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1))

    rows = []
    for r in results:
        n = len(r["scores"]) // 2
        rows.append(
            [
                r["shape"],
                r["seed"],
                r["steps"],
                by_depth(r["scores"][:n]),
                by_depth(r["scores"][n:]),
                f"{r['absorption']:.3f}",
                f"{r['explained_variance']:.3f}",
                "yes" if r["at_bar"] else "no",
            ]
        )
    print(
        markdown_table(
            ["shape", "seed", "steps", "precision by depth", "recall by depth", "absorption", "EV", f"all >= {BAR}"],
            rows,
        )
    )
    summary = []
    for s in shapes:
        mine = [r for r in results if r["shape"] == s]
        worst = [min(r["scores"]) for r in mine]
        summary.append(
            [
                s,
                f"{sum(r['at_bar'] for r in mine)} of {len(mine)}",
                f"{min(worst):.3f}",
                f"{sum(worst) / len(worst):.3f}",
            ]
        )
    print()
    print(markdown_table(["shape", "runs at the bar", "worst score, worst run", "worst score, mean"], summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
