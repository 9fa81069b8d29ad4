"""Processes that compute on one machine share its cores (saezoo/cpu_share.py): real
processes, a real register of locked files, a real kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from helpers import fast_train_args, run_cli

from saezoo.cpu_share import cores

# Registers itself, says how many threads it took, then on each line of stdin looks at the
# others again and says it again; ends at EOF.
HOLDER = r"""
import sys
import torch
from saezoo import cpu_share
with cpu_share.sharing():
    print(torch.get_num_threads(), flush=True)
    for _ in sys.stdin:
        cpu_share._share.take()
        print(torch.get_num_threads(), flush=True)
"""


def holder(cache, threads: int | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["SAEZOO_CACHE"] = str(cache)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )


def threads_of(proc: subprocess.Popen, ask: bool = False) -> int:
    if ask:
        proc.stdin.write("\n")
        proc.stdin.flush()
    return int(proc.stdout.readline())


def test_two_processes_take_half_the_cores_each_and_a_killed_one_counts_for_nothing(tmp_path):
    first = holder(tmp_path)
    try:
        everything = threads_of(first)  # alone: torch's own choice (a thread per core or physical core)
        half = max(1, everything // 2)
        second = holder(tmp_path)
        try:
            assert threads_of(second) == half
            assert threads_of(first, ask=True) == half  # it looked again and made room
        finally:
            second.stdin.close()
            second.wait(timeout=60)
        assert threads_of(first, ask=True) == everything  # alone again
        third = holder(tmp_path)
        assert threads_of(third) == half
        third.send_signal(signal.SIGKILL)  # no clean-up: its file stays, unlocked
        third.wait(timeout=60)
        # A process killed between staging its file and renaming it leaves a hidden one, unlocked.
        (tmp_path / "running" / f".{os.uname().nodename}-{third.pid}").write_text("1")
        assert threads_of(first, ask=True) == everything
        assert [p.name for p in (tmp_path / "running").iterdir()] == [f"{os.uname().nodename}-{first.pid}"]
    finally:
        first.stdin.close()
        first.wait(timeout=60)
    assert list((tmp_path / "running").iterdir()) == []


def test_threads_the_user_chose_are_kept_and_oversubscription_is_said_once(tmp_path):
    env = {"SAEZOO_CACHE": str(tmp_path), "OMP_NUM_THREADS": str(cores())}
    other = holder(tmp_path, threads=cores())
    try:
        assert threads_of(other) == cores()
        proc = run_cli(*fast_train_args("topk", tmp_path / "run"), env=env)
        assert proc.returncode == 0, proc.stderr
        warnings = [line for line in proc.stderr.splitlines() if "other saezoo process" in line]
        assert len(warnings) == 1, proc.stderr
        assert f"with {cores()} thread(s), and this one with {cores()} (OMP_NUM_THREADS)" in warnings[0]
        assert threads_of(other, ask=True) == cores()  # chosen: never changed
        # Evaluating computes too (so do harvesting and the language-model metrics).
        proc = run_cli("eval", str(tmp_path / "run"), env=env)
        assert proc.returncode == 0 and proc.stderr.count("other saezoo process") == 1, proc.stderr
    finally:
        other.stdin.close()
        other.wait(timeout=60)
    # Alone, the same run says nothing, and leaves nothing in the register.
    proc = run_cli(*fast_train_args("topk", tmp_path / "run2"), env=env)
    assert proc.returncode == 0 and "other saezoo process" not in proc.stderr, proc.stderr
    assert list((tmp_path / "running").iterdir()) == []
