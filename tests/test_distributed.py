"""torchrun with 2 CPU processes matches one process with the same global batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from saezoo.checkpoint import load_tensors

from helpers import assert_same_weights, fast_train_args, run_cli


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single = tmp_path / "single"
    proc = run_cli(*fast_train_args("flat", single, 25))
    assert proc.returncode == 0, proc.stderr
    torchrun = shutil.which("torchrun") or ""
    launcher = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    multi = tmp_path / "multi"
    proc = subprocess.run(
        # --standalone takes a free port: a fixed one failed when two suites ran at once.
        [*launcher, "--standalone", "--nproc_per_node", "2", "-m", "saezoo.cli", *fast_train_args("flat", multi, 25)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Summation order differs between one process and two.
    assert_same_weights(load_tensors(single / "sae.safetensors")[0], load_tensors(multi / "sae.safetensors")[0])
    # only rank 0 wrote: one TensorBoard writer, one metrics file
    assert len(list((multi / "tb").iterdir())) == 1
