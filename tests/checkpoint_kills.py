"""SIGKILL `saezoo train` at random instants inside checkpoint writing; used by
tests/test_checkpoint_atomic.py.

    python tests/checkpoint_kills.py WORKDIR TRIES SEED

One process imports saezoo once and forks a child per try that runs the real CLI
(`saezoo train`, then `saezoo train --resume` on the same directory). The child sleeps
briefly before every file-system commit (fsync, rename, symlink, mkdir), so most of its
time is spent inside checkpoint writing and the kill lands between any two of them. Once
the child has begun checkpointing, the parent SIGKILLs it after a random delay and reads
the directory as `eval` and `--resume` read it: the three files of the checkpoint must be
of one step (the weights eval scores are the checkpoint's training weights with the scale
folded in, Adam's step count is the checkpoint's step) and the step never goes back.
Then the real `saezoo eval` runs on the killed directory, a last `--resume` finishes the
run, and its weights are compared bit for bit with an uninterrupted run's. Prints one
JSON object of counts.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import signal
import struct
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)  # forked children must not inherit a thread pool; also the reference's setting

import saezoo.cli  # noqa: E402  (import everything once, before the first fork)
import saezoo.evaluation  # noqa: E402,F401
import saezoo.plots  # noqa: E402,F401
import saezoo.trainer  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401  (the optimiser imports it lazily; seconds per child otherwise)
from saezoo import checkpoint as ckpt  # noqa: E402
from saezoo.plugins import get_plugins  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from helpers import checkpoint_view as view  # noqa: E402
from helpers import fast_train_args  # noqa: E402

STEPS = 100
EXTRA = ["--set", "train.checkpoint_every=1", "--set", "train.seed=5", "--set", "train.downstream_tokens=0"]
STALL = 0.003  # seconds before each file-system commit of a stalled child

# Shared with the children: [inside a checkpoint now, checkpoints begun by this child].
SHARED = mmap.mmap(-1, 16)


def _shared() -> tuple[int, int]:
    return struct.unpack("qq", SHARED[:16])


def _set_shared(inside: int, begun: int) -> None:
    SHARED[:16] = struct.pack("qq", inside, begun)


def _child(argv: list[str], log: Path, stall: bool) -> None:
    """Run the CLI in this forked process; never returns."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if stall:
            for name in ("fsync", "replace", "symlink", "mkdir"):
                real = getattr(os, name)

                def slow(*args, _real=real, **kwargs):
                    time.sleep(STALL)
                    return _real(*args, **kwargs)

                setattr(os, name, slow)
        real_write = ckpt.write_checkpoint
        begun = 0

        def write_checkpoint(*args, **kwargs):
            nonlocal begun
            begun += 1
            _set_shared(1, begun)
            real_write(*args, **kwargs)
            _set_shared(0, begun)

        ckpt.write_checkpoint = write_checkpoint
        sys.argv = ["saezoo", *argv]
        try:
            saezoo.cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run_to_end(argv: list[str], log: Path) -> int:
    pid = os.fork()
    if pid == 0:
        _child(argv, log, stall=False)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def main(workdir: Path, tries: int, seed: int) -> dict:
    get_plugins()
    rng = random.Random(seed)
    reference, run = workdir / "reference", workdir / "killed"
    fresh = fast_train_args("flat", run, STEPS, *EXTRA)
    t0 = time.time()
    out = {"tries": 0, "inside_checkpoint": 0, "torn": 0, "torn_examples": [], "rollbacks": 0, "steps": []}
    last = -1
    for i in range(tries):
        argv = ["train", "--resume", str(run), "-q"] if (run / ckpt.CFG_FILE).exists() else fresh
        _set_shared(0, 0)
        pid = os.fork()
        if pid == 0:
            _child(argv, workdir / "child.log", stall=True)
        # Wait for the child's first, second or third checkpoint to begin (its first is the
        # step-0 one of a fresh run, or the step after the one it resumed from).
        wait_for = rng.choice([1, 2, 3])
        deadline = time.time() + 120
        while _shared()[1] < wait_for and time.time() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.15))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        status = os.waitpid(pid, 0)[1]
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            out["error"] = f"try {i}: the child ended before the kill: {(workdir / 'child.log').read_text()[-2000:]}"
            return out
        out["tries"] += 1
        out["inside_checkpoint"] += _shared()[0]
        step, torn = view(run)
        out["steps"].append(step)
        if torn:
            out["torn"] += 1
            out["torn_examples"].append(torn)
        if step is not None:
            out["rollbacks"] += step < last
            last = step
    out["seconds_kills"] = round(time.time() - t0, 1)
    out["eval_rc"] = _run_to_end(["eval", str(run), "--json", "--downstream-tokens", "0"], workdir / "eval.log")
    out["seconds_eval"] = round(time.time() - t0, 1)
    out["resume_rc"] = _run_to_end(["train", "--resume", str(run), "-q"], workdir / "resume.log")
    out["seconds_resume"] = round(time.time() - t0, 1)
    out["reference_rc"] = _run_to_end(fast_train_args("flat", reference, STEPS, *EXTRA), workdir / "reference.log")
    a, _ = ckpt.load_tensors(reference / ckpt.WEIGHTS_FILE)
    b, _ = ckpt.load_tensors(run / ckpt.WEIGHTS_FILE)
    out["bit_identical"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out["final_step"] = view(run)[0]
    out["leftovers"] = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name.endswith(".tmp") or p.parent.name == "state" and p.name.startswith("step-") and p.name != ckpt.step_dir_name(STEPS))
    out["seconds"] = round(time.time() - t0, 1)
    return out


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
