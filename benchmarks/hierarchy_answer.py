"""Does a hierarchical SAE beat a flat one? The comparison of issue 17, regenerated.

    python benchmarks/hierarchy_answer.py                    # all three comparisons
    python benchmarks/hierarchy_answer.py --only tree843     # one of tree843, tree1232, synthetic, smollm2
    python benchmarks/hierarchy_answer.py --steps 500 --out /tmp/answer
    python benchmarks/hierarchy_answer.py --only tree843 --reevaluate   # today's metrics, no training

Each comparison is one ``saezoo compare`` (one stream, every variant at matched L0 through
``--target-l0``: k for the TopK family and the tree-gated HSAE, the target-l0 curriculum for
the L1 SAEs) of flat, topk, batchtopk, matryoshka, hsae with the dense coupling and input
skip (``hsae:dense``, the default) and hsae with tree gating (``hsae:tree``), at about equal
widths. Its report.json lands under ``--out``; this script prints the columns the issue asks
for as markdown tables.

The three synthetic comparisons set the tree HSAE by ``tree_shapes.py``'s rule (one rule for
every tree: k, tier widths and shares from the source's firing rates; its docstring), steer
every variant to that k, and give the flat family the tree's width rounded up to a whole
expansion factor:

* ``tree843``: a three-level tree ``branching = [8, 4, 3]`` (plus 64 independent features),
  d_in 64, L0 4 (the source's mean is about 3.5 features per token); the tree 160 / 640 /
  2560 latents, the flat family 3392 (expansion 53); 4000 steps.
* ``tree1232``: another shape, ``branching = [12, 3, 2]``, L0 5; the tree 160 / 480 / 1440,
  the flat family 2112 (expansion 33); 8000 steps, as the tree's placement needs them on this
  shape (at 4000, 1 of 5 seeds reached issue 17's bar: plugins/saezoo_hsae/NOTEBOOK.md, session
  17).
* ``synthetic``: the default two-level source (8 parents x 3 children, 64 independent), L0 4;
  the tree 160 / 480 (a tree of two levels gets no correction slot: the rule's docstring),
  the flat family 640 (expansion 10); 8000 steps (at 4000, 3 of 6 seeds reached issue 17's
  bar, at 8000 6 of 6: plugins/saezoo_hsae/NOTEBOOK.md, session 26).

And one on the language model:

* ``smollm2``: SmolLM2-135M ``model.layers.15`` on python-docs (the embedded default), the
  default budget, L0 40; 5760 latents (expansion 10; the tree preset's 1440 / 4320, and a
  second tree of three tiers, 576 / 1728 / 3456 with shares 0.5 / 0.3 / 0.2, the preset until
  session 16; the dense HSAE its preset's 1152 / 1728 / 2304). The variants that select by a
  running threshold in eval (batchtopk, matryoshka, the trees) get a k below 40: the
  thresholds follow the training tokens, which the SAE sees about six times at this budget
  (65,536 harvested, 409,600 trained on), and held-out text passes them more often (at k 40,
  held-out L0 43.5 for batchtopk and matryoshka, 42.5 for the two-tier tree, 40.8 for the
  three-tier one; on the training tokens batchtopk kept 40.2 and the three-tier tree 39.0).
  These k bring each to a held-out L0 of about 40, as topk's is exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tree_shapes import SHAPES, tree_model  # noqa: E402

VARIANTS = ["flat", "topk", "batchtopk", "matryoshka", "hsae:dense", "hsae:tree"]
FLAT_FAMILY = ["flat", "topk", "batchtopk", "matryoshka"]
SYNTHETIC_COLUMNS = [
    "explained_variance", "l0", "tree_f1/", "tree_precision/", "tree_recall/", "consistency/", "absorption"
]


def widths(expansion: int, tree: list[float], shares: list[float]) -> list[str]:
    """The flat family's expansion factor and the tree HSAE's tier widths and shares."""
    return [
        *(f"{arch}.sae.expansion_factor={expansion}" for arch in FLAT_FAMILY),
        f"hsae:tree.sae.tier_expansion={json.dumps(tree)}",
        f"hsae:tree.sae.tier_shares={json.dumps(shares)}",
    ]


def synthetic(branching: list[int]) -> dict[str, list[str]]:
    """A comparison on the synthetic tree of ``branching``: the tree HSAE as tree_shapes.py's
    rule sets it (the L0 every variant is steered to is its k), the flat family as wide (the
    tree's width rounded up to a whole expansion factor), every variant trained for the steps
    tree_shapes.py gives the shape."""
    tree = tree_model(branching)
    return {
        "args": ["--source", "synthetic", "--target-l0", str(tree["k"]), "--steps", str(SHAPES[tuple(branching)])],
        "sets": [
            f"data.synthetic.branching={json.dumps(branching, separators=(',', ':'))}",
            *widths(math.ceil(sum(tree["tier_expansion"])), tree["tier_expansion"], tree["tier_shares"]),
        ],
    }


COMPARISONS: dict[str, dict] = {
    "tree843": {**synthetic([8, 4, 3]), "columns": SYNTHETIC_COLUMNS},
    "tree1232": {**synthetic([12, 3, 2]), "columns": SYNTHETIC_COLUMNS},
    # The default source is the tree [8, 3]; naming it changes nothing in the stream.
    "synthetic": {**synthetic([8, 3]), "columns": SYNTHETIC_COLUMNS},
    "smollm2": {
        "args": ["--target-l0", "40"],
        "variants": [*VARIANTS, "hsae:tree"],  # given twice: the second is labelled hsae:tree#2
        "sets": [
            *widths(10, [2.5, 7.5], [0.7, 0.3]),
            "hsae:tree#2.sae.tier_expansion=[1,3,6]",
            "hsae:tree#2.sae.tier_shares=[0.5,0.3,0.2]",
            "batchtopk.sae.k=37",
            "matryoshka.sae.k=37",
            "hsae:tree.sae.k=38",
            "hsae:tree#2.sae.k=40",
        ],
        "columns": ["explained_variance", "l0", "ce_recovered", "kl_sae", "dead_fraction", "alive_fraction/",
                    "absorption_first_letter/mean", "ccr/", "ccr_chance/"],
    },
}


def run(name: str, out: Path, steps: int | None) -> dict:
    spec = COMPARISONS[name]
    args = list(spec["args"])
    if steps is not None and "--steps" in args:
        args[args.index("--steps") + 1] = str(steps)
    elif steps is not None:
        args += ["--steps", str(steps)]
    variants = spec.get("variants", VARIANTS)
    cmd = [sys.executable, "-m", "saezoo.cli", "compare", *variants, *args, "--out", str(out / name), "-q"]
    for s in spec["sets"]:
        cmd += ["--set", s]
    print(" ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    return json.loads((out / name / "report.json").read_text())


def table(report: dict, columns: list[str]) -> str:
    """One row per variant; a column ending in / stands for every metric of that family."""
    variants = report["variants"]
    keys = sorted({k for v in variants.values() for k in v["metrics"]})
    chosen = [k for c in columns for k in ([c] if not c.endswith("/") else [k for k in keys if k.startswith(c)]) if k in keys]
    lines = ["| variant | " + " | ".join(chosen) + " |", "|---" * (len(chosen) + 1) + "|"]
    for label, v in variants.items():
        m = v["metrics"]
        lines.append(f"| {label} | " + " | ".join("–" if m.get(k) is None else f"{m[k]:.3g}" for k in chosen) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=list(COMPARISONS), help="run only these comparisons")
    p.add_argument("--steps", type=int, help="optimiser steps (default: each comparison's own)")
    p.add_argument("--out", type=Path, default=Path("runs/hierarchy-answer"))
    p.add_argument("--report-only", action="store_true", help="print the tables of reports already under --out")
    p.add_argument(
        "--reevaluate",
        action="store_true",
        help="evaluate the SAEs of reports already under --out again with today's metrics (saezoo eval), "
        "without training; written to reevaluated.json beside each report",
    )
    a = p.parse_args(argv)
    for name in a.only or list(COMPARISONS):
        path = a.out / name / "report.json"
        if a.reevaluate:
            report = reevaluate(json.loads(path.read_text()), a.out / name / "reevaluated.json")
        elif a.report_only:
            report = json.loads(path.read_text())
        else:
            report = run(name, a.out, a.steps)
        print(f"\n## {name}\n\n{table(report, COMPARISONS[name]['columns'])}")
    return 0


def reevaluate(report: dict, out: Path) -> dict:
    """``report`` with each variant's metrics from ``saezoo eval`` of its run directory now
    (the same SAEs and held-out tokens; the metrics of the code checked out)."""
    for v in report["variants"].values():
        if not v["run_dir"]:
            continue  # a registry entry: compare evaluated it, nothing was trained
        cmd = [sys.executable, "-m", "saezoo.cli", "eval", v["run_dir"], "--json"]
        print(" ".join(cmd), file=sys.stderr, flush=True)
        v["metrics"] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    sys.exit(main())
