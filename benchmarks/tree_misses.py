"""What a tree-gated HSAE run on a synthetic tree gets wrong, latent by latent: each true edge
its structural tree misses and each edge it claims that is false, with where the latents sit,
how often they fire and what the parent's child slots hold instead. The tree scores of issue 17
count these edges; this says which kind of miss each one is (a child left in tier 1, a
grandchild in its root's slot, an independent feature hosted by another, a slot taken by a
latent that stands for no feature).

    python benchmarks/tree_misses.py runs/tree-shapes/6-4-2_seed1

Features are matched to latents as the metrics match them (docs/metrics.md), on the run's own
held-out tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from saezoo.activations.factory import build_source
from saezoo.api import open_sae
from saezoo.config.resolve import run_from_dict
from saezoo.errors import SaezooError
from saezoo.hierarchy import CodeRecord, match_truth


def misses(path: Path) -> list[str]:
    loaded = open_sae(path)
    sae = loaded.sae.eval()
    run = run_from_dict(loaded.header)
    parents = sae.latent_parents()
    if run.data.source != "synthetic" or parents is None:
        raise SaezooError(f"{path}: not a tree-gated SAE trained on the synthetic source")
    source = build_source(run.data, tokens=0, seed=run.train.seed)
    truth = source.ground_truth
    x, coeffs = source.eval_activations(run.train.eval_tokens), source.eval_features(run.train.eval_tokens)
    with torch.no_grad():
        codes = sae.encode(x)
    on, present = codes > 0, coeffs != 0
    match = match_truth(sae, CodeRecord.from_codes(codes), truth, coeffs)
    feature_of = {int(m): f for f, m in enumerate(match.tolist()) if m >= 0}
    starts = torch.tensor(sae.tier_widths).cumsum(0)
    parents = parents.long()

    def feature(f: int) -> str:
        return "no feature" if f < 0 else f"{truth.kind[f]} {f} (depth {int(truth.depth[f])})"

    def latent(i: int) -> str:
        if i < 0:
            return "none"
        return f"latent {i} (tier {int((starts <= i).sum()) + 1}, fires {int(on[:, i].sum())}, {feature(feature_of.get(i, -1))})"

    def slots(i: int) -> str:
        held = (parents == i).nonzero().flatten().tolist()
        return "; ".join(latent(j) for j in held) or "no slots"

    lines = ["false edges (the tree puts a child under a latent of another feature):"]
    for f, m in enumerate(match.tolist()):
        p = int(parents[m]) if m >= 0 else -1
        if p in feature_of and feature_of[p] != int(truth.parent[f]):
            true_parent = int(truth.parent[f])
            where = latent(int(match[true_parent])) if true_parent >= 0 else "none (a top-level feature)"
            lines.append(f"  {feature(f)} at {latent(m)}, under {latent(p)}; its true parent is at {where}")
    lines.append("missed edges (a true child not under its parent's latent):")
    for f in (truth.parent >= 0).nonzero().flatten().tolist():
        m, pm = int(match[f]), int(match[truth.parent[f]])
        if m >= 0 and pm >= 0 and int(parents[m]) == pm:
            continue
        share = float((on[:, m] & present[:, f]).sum() / present[:, f].sum()) if m >= 0 else 0.0
        under = latent(int(parents[m])) if m >= 0 and parents[m] >= 0 else "nothing (tier 1)"
        lines.append(f"  {feature(f)} at {latent(m)}, firing on {share:.2f} of its tokens, under {under}")
        lines.append(f"    its parent, {feature(int(truth.parent[f]))}, is at {latent(pm)}, whose slots hold: {slots(pm)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run directory of `saezoo train hsae --preset tree --source synthetic`")
    a = p.parse_args(argv)
    try:
        print("\n".join(misses(a.run)))
    except SaezooError as e:
        print(f"tree_misses.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
