"""Training on the synthetic source: quality bars a broken trainer cannot pass."""

from __future__ import annotations

import json

import pytest

from saezoo.train import lr_factor

from helpers import assert_same_training, fast_train_args, run_cli


def test_lr_schedule():
    assert lr_factor(0, 100, 10, "linear", "none", 0.2) == pytest.approx(0.1)
    assert lr_factor(0, 100, 10, "cubic", "none", 0.2) == pytest.approx(0.001)
    assert lr_factor(50, 100, 10, "linear", "linear", 0.2) == 1.0
    assert lr_factor(90, 100, 10, "linear", "linear", 0.2) == pytest.approx(0.5)
    assert lr_factor(90, 100, 10, "linear", "cosine", 0.2) == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "linear", "linear", 0.2) == pytest.approx(0.05)


@pytest.mark.slow
def test_flat_recovers_synthetic_features(tmp_path):
    out = tmp_path / "flat"
    proc = run_cli("train", "flat", "--source", "synthetic", "--steps", "2000", "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("eval", str(out), "--json")
    metrics = json.loads(proc.stdout)
    print(json.dumps(metrics, indent=1))
    assert metrics["explained_variance"] >= 0.9
    assert metrics["recovered_fraction"] >= 0.6
    assert metrics["dead_fraction"] <= 0.9
    assert metrics["l0"] <= 20


@pytest.mark.slow
def test_compiled_forward_trains_like_eager(tmp_path):
    """train.compile only changes how the forward pass runs, not what it computes."""
    for name, compile_ in (("eager", "false"), ("compiled", "true")):
        proc = run_cli(*fast_train_args("flat", tmp_path / name, 20, "--set", f"train.compile={compile_}"))
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_training(tmp_path / "eager", tmp_path / "compiled")
