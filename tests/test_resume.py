"""Nothing lost on a crash: SIGKILL at a random step, resume, identical final weights."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from saezoo.checkpoint import load_tensors

from helpers import fast_train_args, run_cli

STEPS = 150
EXTRA = ["--set", "train.checkpoint_every=13", "--set", "train.seed=3"]


def _state_step(run):
    try:
        return json.loads((run / "state" / "current" / "trainer.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return -1


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["flat"])
def test_sigkill_then_resume_is_bit_identical(arch, tmp_path):
    reference = tmp_path / "reference"
    proc = run_cli(*fast_train_args(arch, reference, STEPS, *EXTRA))
    assert proc.returncode == 0, proc.stderr

    killed = tmp_path / "killed"
    target = random.Random().choice(range(13, STEPS - 13, 13))
    child = subprocess.Popen(
        [sys.executable, "-m", "saezoo.cli", *fast_train_args(arch, killed, STEPS, *EXTRA)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while _state_step(killed) < target and child.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert _state_step(killed) < STEPS, "the run finished before it could be killed"

    resumed = run_cli("train", "--resume", str(killed), "-q")
    assert resumed.returncode == 0, resumed.stderr
    a, _ = load_tensors(reference / "sae.safetensors")
    b, _ = load_tensors(killed / "sae.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), f"{name} differs after resume (killed near step {target})"
    assert not [p for p in killed.rglob("*.tmp")], "temporary files left after the kill were not cleaned"


def test_sigterm_saves_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    child = subprocess.Popen(
        [sys.executable, "-m", "saezoo.cli", *fast_train_args("flat", run, 100000)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    deadline = time.time() + 300
    while _state_step(run) < 0 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert "resume with: saezoo train --resume" in err
    assert _state_step(run) > 0
    assert "Traceback" not in err
