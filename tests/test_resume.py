"""Nothing lost on a crash: SIGKILL at a random step, resume, identical final weights; a resume
continues from its checkpoint instead of redoing the work."""

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


# The tree-gated HSAE keeps state beyond its weights: placement's firing counts of the window
# under way (a window of 20 steps: most checkpoints fall inside one) and which latents have just
# moved or were sent up as guests.
TREE = ["--preset", "tree", "--set", "sae.regraft_every=20", "--set", "sae.k=4", "--set", "sae.tier_shares=[0.83,0.17]"]


@pytest.mark.slow
@pytest.mark.parametrize("arch, extra", [("flat", []), ("hsae", TREE)], ids=["flat", "hsae-tree"])
def test_sigkill_then_resume_is_bit_identical(arch, extra, tmp_path):
    args = [*EXTRA, *extra]
    reference = tmp_path / "reference"
    proc = run_cli(*fast_train_args(arch, reference, STEPS, *args))
    assert proc.returncode == 0, proc.stderr

    killed = tmp_path / "killed"
    target = random.Random().choice(range(13, STEPS - 13, 13))
    child = subprocess.Popen(
        [sys.executable, "-m", "saezoo.cli", *fast_train_args(arch, killed, STEPS, *args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while _state_step(killed) < target and child.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert _state_step(killed) < STEPS, "the run finished before it could be killed"

    killed_at = _state_step(killed)
    events_before = set((killed / "tb").iterdir())
    resumed = run_cli("train", "--resume", str(killed), "-q")
    assert resumed.returncode == 0, resumed.stderr
    # Through the CLI too: the resumed process logged only steps after its checkpoint.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (new_events,) = set((killed / "tb").iterdir()) - events_before
    acc = EventAccumulator(str(new_events))
    acc.Reload()
    logged = [e.step for e in acc.Scalars("loss/mse")]
    assert logged and min(logged) > killed_at and max(logged) == STEPS, (killed_at, logged)
    a, _ = load_tensors(reference / "sae.safetensors")
    b, _ = load_tensors(killed / "sae.safetensors")
    assert a.keys() == b.keys()
    differ = {name: float((a[name] - b[name]).abs().max()) for name in a if not (a[name] == b[name]).all()}
    if differ:
        # Tell a resume that lost state from training that is not reproducible on this machine:
        # a second run without a kill, compared with the first.
        again = tmp_path / "again"
        assert run_cli(*fast_train_args(arch, again, STEPS, *args)).returncode == 0
        c, _ = load_tensors(again / "sae.safetensors")
        repeatable = all((a[name] == c[name]).all() for name in a)
        pytest.fail(
            f"after a kill at step {killed_at} (target {target}) and a resume, max |difference| {differ}; "
            f"two runs without a kill {'agree' if repeatable else 'differ too'}"
        )
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


def test_resume_continues_from_the_checkpointed_step(tmp_path, monkeypatch):
    """A resumed run takes only the remaining optimiser steps, from the checkpointed step, on
    the batches that follow it and with the RNG state the interrupted run had there.

    Training is deterministic, so equal final weights alone would not tell a resume from a
    silent restart at step 0; this counts and compares the work itself.
    """
    import torch

    from saezoo.activations.synthetic import SyntheticConfig, SyntheticSource
    from saezoo.config.resolve import resolve_run
    from saezoo.trainer import Interrupted, Trainee, train_many

    steps, stop_at, batch_size = 12, 5, 256
    train = {"steps": steps, "batch_size": batch_size, "eval_tokens": 512, "eval_every": 0, "checkpoint_every": 0,
             "warmup_steps": 2, "log_every": 1}
    run = resolve_run("flat", options={"train": train})

    calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (step, RNG state, batch) at each step's entry
    opt_steps = [0]
    stop = [False]
    real_train_step, real_opt_step = Trainee.train_step, torch.optim.Adam.step

    def recording_train_step(self, x):
        calls.append((self.step, torch.get_rng_state(), x.clone()))
        torch.rand(1)  # as a stochastic architecture would: the RNG state moves every step
        if stop[0] and self.step == stop_at - 1:
            signal.raise_signal(signal.SIGTERM)  # the real interrupt path: checkpoint, then exit
        return real_train_step(self, x)

    def counting_opt_step(self, *args, **kwargs):
        opt_steps[0] += 1
        return real_opt_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainee, "train_step", recording_train_step)
    monkeypatch.setattr(torch.optim.Adam, "step", counting_opt_step)

    def train_run(out, resume=False):
        calls.clear()
        opt_steps[0] = 0
        train_many([run], [out], SyntheticSource(SyntheticConfig()), resume=resume, progress=False, downstream=False)
        return list(calls), opt_steps[0]

    reference_calls, reference_opt_steps = train_run(tmp_path / "reference")
    assert [c[0] for c in reference_calls] == list(range(steps)) and reference_opt_steps == steps

    stop[0] = True
    with pytest.raises(Interrupted):
        train_run(tmp_path / "run")
    stop[0] = False
    assert _state_step(tmp_path / "run") == stop_at

    resumed_calls, resumed_opt_steps = train_run(tmp_path / "run", resume=True)
    assert [c[0] for c in resumed_calls] == list(range(stop_at, steps)), "resume did not continue from the checkpoint"
    assert resumed_opt_steps == steps - stop_at, "resume redid or skipped optimiser steps"
    # The data position: the batches after the checkpoint, from an independent reading of the stream.
    stream = SyntheticSource(SyntheticConfig()).batches(batch_size, start=0)
    expected = [b for _, b in zip(range(steps), stream)][stop_at:]
    for (step, _, x), want in zip(resumed_calls, expected):
        assert torch.equal(x, want), f"step {step} trained on the wrong batch"
    # The RNG state: what the uninterrupted run had at the same step (and not the state of a fresh start).
    assert not torch.equal(reference_calls[stop_at][1], reference_calls[0][1])
    assert torch.equal(resumed_calls[0][1], reference_calls[stop_at][1]), "the RNG state was not restored"
    a, _ = load_tensors(tmp_path / "reference" / "sae.safetensors")
    b, _ = load_tensors(tmp_path / "run" / "sae.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
