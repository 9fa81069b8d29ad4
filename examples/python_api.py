"""saezoo from Python (docs/python.md): train a small SAE on the synthetic source, load it
back by path and by registry name, encode and decode, evaluate it, and compare it with a
flat SAE trained on the same stream. About 12 CPU-seconds (43 s wall on a loaded 2-core machine).

    python examples/python_api.py [WORK_DIR]
"""

import os
import sys
import tempfile
from pathlib import Path

import torch

import saezoo

work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="saezoo-example-"))
os.environ["SAEZOO_REGISTRY"] = str(work / "registry")  # a registry of our own, not the checkout's

# Every run below reads the synthetic source (ground-truth features, no model needed); short
# runs, evaluated once at the end on 4096 held-out tokens.
small = dict(source="synthetic", steps=60, train={"eval_tokens": 4096, "eval_every": 0})

# Train: the architecture, then settings as keywords (k is a field of topk's config).
run = saezoo.train("topk", k=4, out=work / "topk", register="my-topk", **small)
print(f"trained {run.path}: explained variance {run.metrics['explained_variance']:.3f}, L0 {run.metrics['l0']:.1f}")

# Load it back, by path and by registry name; both take raw activations of the source.
by_path = saezoo.load(run.path)
by_name = saezoo.load("my-topk")
x = torch.randn(16, by_path.d_in)
codes = by_path.encode(x)
x_hat = by_path.decode(codes)
assert torch.equal(codes, by_name.encode(x)) and x_hat.shape == x.shape
print(f"encode: {tuple(x.shape)} -> {tuple(codes.shape)}, {int((codes != 0).sum(-1).max())} active latents at most")

# Evaluate on held-out activations of its own source (writes metrics.json into the run).
metrics = saezoo.evaluate(run.path)
print(f"evaluated: explained variance {metrics['explained_variance']:.3f}, dead {metrics['dead_fraction']:.3f}")

# Compare: flat is trained on the stream; the registry entry is evaluated on the same tokens.
comparison = saezoo.compare("flat", "my-topk", out=work / "compare", **small)
for label, m in comparison.metrics.items():
    print(f"{label}: explained variance {m['explained_variance']:.3f}, L0 {m['l0']:.1f}")
print(f"report: {comparison.out / 'report.md'}")
