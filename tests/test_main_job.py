"""The README's main job, `saezoo train hsae` on the embedded default (SmolLM2-135M,
python-docs), through the real CLI with a tiny budget: if `make train` breaks, this fails."""

from __future__ import annotations

import json
import math
import pytest

from helpers import HAS_SMOLLM2, demo_cache, run_cli

# Small enough for about a minute on 2 CPU cores (88 s of CPU time measured); everything
# else is the default.
BUDGET = ["--steps", "20", "--set", "train.batch_size=256", "--set", "data.harvest_tokens=4096",
          "--set", "train.eval_tokens=1024", "--set", "train.downstream_tokens=256"]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SMOLLM2, reason="SmolLM2 not converted: bash scripts/setup.sh")
def test_train_hsae_on_the_embedded_default(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "hsae", "--out", str(out), "-q", *BUDGET, env={"SAEZOO_CACHE": str(demo_cache(tmp_path))})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    print(json.dumps(metrics, indent=1, sort_keys=True))
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["step"] == 20 and metrics["nonfinite_steps"] == 0
    # What any working default reaches in 20 steps (measured: explained variance 0.73, cosine
    # 0.95, CE recovered 0.96); a broken encoder, decoder or splice falls far below.
    assert metrics["explained_variance"] > 0.4
    assert metrics["cosine"] > 0.8
    assert metrics["ce_recovered"] > 0.6 and metrics["downstream_positions"] > 0
    assert 0 < metrics["l0"] and metrics["dead_fraction"] < 0.5
    tiers = [k for k in metrics if k.startswith("l0/")]
    assert len(tiers) >= 2 and all(metrics[k] > 0 for k in tiers), "the HSAE's tiers are not reported"
    assert any(k.startswith("ccr/") for k in metrics), "composition coverage is missing"
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "hsae" and cfg["source"]["model"] == "smollm2-135m"
