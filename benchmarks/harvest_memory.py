"""Peak memory of harvest + one epoch of shuffled batches, for N and 10 N tokens.

    python benchmarks/harvest_memory.py               # N = 65536
    python benchmarks/harvest_memory.py --tokens 131072

Each size runs in a fresh process (peak RSS is a per-process high-water mark) on a small
random-init Llama (d = 128) reading a generated text file through ``datasets``. If any stage held
the token budget in memory, 10 N tokens (335 MB of float32 activations at the default, against a
baseline of about 800 MB) would show; the bounded shuffle buffer and streaming harvest keep the
peaks within 10 %.
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "tests"))


def child(model_dir: str, corpus: str, n_tokens: int, cache_dir: str) -> None:
    from saezoo.activations.model_source import ModelSource

    t = time.perf_counter()
    source = ModelSource(model_dir, dataset=corpus, n_tokens=n_tokens, cache_dir=cache_dir, context_length=128,
                         harvest_batch_size=32)
    d_in = source.d_in  # harvests into the cache
    harvest_s = time.perf_counter() - t
    batch = 4096
    seen = 0
    for _, x in zip(range(n_tokens // batch), source.batches(batch)):
        seen += len(x)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens": n_tokens, "d_in": d_in, "peak_mb": peak_mb, "harvest_s": harvest_s, "epoch_tokens": seen}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=65536, help="N (the second run uses 10 N)")
    parser.add_argument("--child", nargs=4, metavar=("MODEL", "CORPUS", "TOKENS", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model_dir, corpus, n_tokens, cache_dir = args.child
        child(model_dir, corpus, int(n_tokens), cache_dir)
        return

    from activations_helpers import corpus, make_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = make_model(tmp / "model", "llama", layers=2, hidden=128)
        # Enough paragraphs for 10 N text tokens in the training split (about 36 tokens each).
        docs = corpus(n_docs=int(10 * args.tokens / 30), seed=1)
        (tmp / "corpus.txt").write_text("\n\n".join(docs) + "\n")
        rows = []
        for n in (args.tokens, 10 * args.tokens):
            command = [sys.executable, __file__, "--child", str(model_dir), str(tmp / "corpus.txt"), str(n), str(tmp / f"c{n}")]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
            proc = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"\n{'tokens':>10}{'d_in':>6}{'peak RSS (MB)':>16}{'harvest (s)':>14}{'epoch tokens read':>20}")
    for r in rows:
        print(f"{r['tokens']:>10}{r['d_in']:>6}{r['peak_mb']:>16.0f}{r['harvest_s']:>14.1f}{r['epoch_tokens']:>20}")
    ratio = rows[1]["peak_mb"] / rows[0]["peak_mb"]
    print(f"\npeak RSS ratio 10N / N: {ratio:.3f} ({'within' if ratio <= 1.10 else 'OVER'} the 10 % target)")


if __name__ == "__main__":
    main()
