"""A checkpoint is one atomic thing: a kill at any instant leaves the old step or the new
one, SIGINT/SIGTERM stop any phase of a run with exit 130 and a line that says how to go
on, a run stopped before its first checkpoint resumes from step 0, and two processes never
train in one directory at once."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from saezoo import checkpoint as ckpt

from helpers import checkpoint_view, fast_train_args, run_cli

HERE = Path(__file__).parent
STEPS = 7
EXTRA = ["--set", "train.checkpoint_every=5", "--set", "train.seed=11"]

# Runs the CLI with SIGTERM sent to itself at one instant: MODE AT ARGS...
#   save N     while checkpoint N is written (before its files)
#   eval 0     as the final evaluation of a run, or `saezoo eval`, begins
#   cfg 0      right after cfg.json is written, before the first checkpoint
DRIVER = """
import os, signal, sys
import saezoo.cli, saezoo.trainer
from saezoo import checkpoint as ckpt
mode, at = sys.argv[1], int(sys.argv[2])
sys.argv[1:3] = []
term = lambda: os.kill(os.getpid(), signal.SIGTERM)
if mode == "save":
    real_write = ckpt.write_checkpoint
    def write_checkpoint(run_dir, step, write):
        def term_then_write(directory):
            if step == at:
                term()
            write(directory)
        real_write(run_dir, step, term_then_write)
    ckpt.write_checkpoint = write_checkpoint
elif mode == "eval":
    import saezoo.evaluation
    real_eval = saezoo.evaluation.full_evaluation
    def full_evaluation(*args, **kwargs):
        term()
        return real_eval(*args, **kwargs)
    saezoo.evaluation.full_evaluation = saezoo.trainer.full_evaluation = full_evaluation
elif mode == "cfg":
    real_json = ckpt.write_json
    def write_json(path, data):
        real_json(path, data)
        if path.name == "cfg.json":
            term()
    ckpt.write_json = write_json
saezoo.cli.main()
"""


def drive(mode: str, at: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, mode, str(at), *args], capture_output=True, text=True, timeout=600
    )


def one_line(proc: subprocess.CompletedProcess, code: int) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_tensors(run / ckpt.WEIGHTS_FILE)[0]


def assert_bit_identical(a: Path, b: Path) -> None:
    x, y = weights(a), weights(b)
    assert x.keys() == y.keys()
    for name in x:
        assert torch.equal(x[name], y[name]), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("atomic") / "reference"
    proc = run_cli(*fast_train_args("flat", run, STEPS, *EXTRA))
    assert proc.returncode == 0, proc.stderr
    return run


@pytest.mark.slow
def test_sigkill_inside_checkpoint_writing_never_tears_it(tmp_path):
    """30 SIGKILLs at random instants, almost all inside checkpoint writing (see
    tests/checkpoint_kills.py); eval and --resume see one step each time, and the run
    finished by a last --resume is bit-identical to an uninterrupted one."""
    seed = random.randrange(1 << 30)
    proc = subprocess.run(
        [sys.executable, str(HERE / "checkpoint_kills.py"), str(tmp_path), "30", str(seed)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    print(f"seed {seed}: {out}")
    assert "error" not in out, out
    assert out["tries"] == 30
    assert out["inside_checkpoint"] >= out["tries"] // 2, out  # most kills did land inside checkpoint writing
    assert out["torn"] == 0, out["torn_examples"]
    assert out["rollbacks"] == 0
    assert out["eval_rc"] == (0 if out["steps"][-1] is not None else 2)
    assert out["resume_rc"] == 0 and out["reference_rc"] == 0
    assert out["final_step"] == 100 and out["bit_identical"]
    assert out["leftovers"] == []


@pytest.mark.slow
def test_sigterm_in_final_save_and_final_eval(tmp_path, reference):
    """SIGTERM while the last checkpoint is written: it is finished, then exit 130 with the
    step and how to resume; resuming then stops in the final evaluation the same way; a
    last resume evaluates the saved step without replaying any step."""
    run = tmp_path / "run"
    line = one_line(drive("save", STEPS, *fast_train_args("flat", run, STEPS, *EXTRA)), 130)
    assert line == f"saezoo: error: SIGTERM received: checkpoint saved at step {STEPS}; resume with: saezoo train --resume {run}"
    assert checkpoint_view(run) == (STEPS, None)
    assert not (run / ckpt.METRICS_FILE).exists()

    line = one_line(drive("eval", 0, "train", "--resume", str(run), "-q"), 130)
    assert line == (
        f"saezoo: error: SIGTERM received during the final evaluation: checkpoint saved at step {STEPS}; "
        f"resume with: saezoo train --resume {run}"
    )
    assert checkpoint_view(run) == (STEPS, None)

    proc = run_cli("train", "--resume", str(run), "-q")
    assert proc.returncode == 0, proc.stderr
    assert checkpoint_view(run) == (STEPS, None)  # Adam took STEPS steps, not more
    assert json.loads((run / ckpt.METRICS_FILE).read_text())["step"] == STEPS
    assert_bit_identical(run, reference)


@pytest.mark.slow
def test_run_stopped_before_its_first_checkpoint_resumes_from_step_0(tmp_path, reference):
    run = tmp_path / "run"
    line = one_line(drive("cfg", 0, *fast_train_args("flat", run, STEPS, *EXTRA)), 130)
    assert line == (
        f"saezoo: error: SIGTERM received during start-up, before the first checkpoint; "
        f"resume with: saezoo train --resume {run} (it starts from step 0)"
    )
    assert (run / ckpt.CFG_FILE).exists() and checkpoint_view(run) == (None, None)
    # What a kill inside the first save leaves: a half-written step-0 directory.
    (run / "state" / ckpt.step_dir_name(0)).mkdir(parents=True)
    (run / "state" / ckpt.step_dir_name(0) / "trainer.safetensors").write_bytes(b"\0" * 100)

    again = run_cli(*fast_train_args("flat", run, STEPS, *EXTRA))
    assert "already holds a run; resume it with --resume" in one_line(again, 2)

    proc = run_cli("train", "--resume", str(run), "-q")
    assert proc.returncode == 0, proc.stderr
    assert f"saezoo: note: {run} holds no checkpoint (the run stopped before its first); starting it from step 0" in proc.stderr
    assert checkpoint_view(run) == (STEPS, None)
    assert_bit_identical(run, reference)
    assert sorted(p.name for p in (run / "state").iterdir()) == [ckpt.CURRENT, ckpt.step_dir_name(STEPS)]


@pytest.mark.slow
def test_second_process_refuses_and_a_killed_holder_leaves_no_lock(tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "saezoo.cli", *fast_train_args("flat", run, 100000)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not (run / "state" / ckpt.CURRENT).is_symlink() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended early"
        second = run_cli("train", "--resume", str(run), "-q")
        assert one_line(second, 2) == (
            f"saezoo: error: {run} is in use by another saezoo process (pid {first.pid}); wait for it to finish or stop it"
        )
        fresh = run_cli(*fast_train_args("flat", run, 5))
        assert "is in use by another saezoo process" in one_line(fresh, 2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    fd = os.open(run / ckpt.LOCK_FILE, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the lock outlived its holder
    finally:
        os.close(fd)
    assert checkpoint_view(run)[1] is None


def test_sigterm_stops_any_command_with_exit_130(reference):
    before = (reference / ckpt.METRICS_FILE).read_bytes()
    line = one_line(drive("eval", 0, "eval", str(reference)), 130)
    assert line == "saezoo: interrupted by SIGINT or SIGTERM"
    assert (reference / ckpt.METRICS_FILE).read_bytes() == before


def test_an_out_holding_a_run_anywhere_is_refused(tmp_path):
    """train and compare share one rule: no cfg.json in --out or in any directory below it,
    and no other file."""
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / ckpt.LOCK_FILE).write_text("")
    ckpt.refuse_occupied(out)  # nothing refused: empty directories and a lock
    (out / "notes" / "plan.txt").write_text("files of one's own")
    with pytest.raises(ckpt.UsageError) as stray:
        ckpt.refuse_occupied(out)  # a run's checkpoints, plots and weights would replace or delete them
    assert str(stray.value).startswith(f"--out {out} is not empty (notes/plan.txt is there)")
    (out / "notes" / "plan.txt").unlink()
    (out / "cmp" / "flat" / "seed-1").mkdir(parents=True)
    (out / "cmp" / "flat" / "seed-1" / ckpt.CFG_FILE).write_text("{}")
    with pytest.raises(ckpt.UsageError) as below:
        ckpt.refuse_occupied(out)
    assert str(below.value) == f"--out {out} already holds a run in cmp/flat/seed-1; choose another --out"
    (out / ckpt.CFG_FILE).write_text("{}")
    with pytest.raises(ckpt.UsageError) as here:
        ckpt.refuse_occupied(out)
    assert str(here.value) == f"--out {out} already holds a run; resume it with --resume {out} or choose another --out"


@pytest.mark.parametrize("d_in", [0, -3, 2.5, "64"])
def test_a_cfg_with_no_positive_integer_d_in_is_refused_before_building(tmp_path, d_in):
    from saezoo.errors import UsageError

    ckpt.write_json(tmp_path / ckpt.CFG_FILE, ckpt.run_header("flat", 8, {"sae": {}}, {}) | {"d_in": d_in})
    with pytest.raises(UsageError, match="d_in must be a positive integer"):
        ckpt.load_sae(tmp_path)
