"""Helpers shared by tests: the real CLI in a subprocess, and a small synthetic run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

# Small and fast: a synthetic source and short runs.
FAST_SETS = [
    "train.batch_size=1024",
    "train.eval_tokens=4096",
    "train.log_every=5",
    "train.eval_every=0",
    "train.warmup_steps=5",
]


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``saezoo ARGS`` as a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "saezoo.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


def fast_train_args(arch: str, out: Path, steps: int = 20, *extra: str) -> list[str]:
    args = ["train", arch, "--source", "synthetic", "--steps", str(steps), "--out", str(out), "-q"]
    for s in FAST_SETS:
        args += ["--set", s]
    return [*args, *extra]


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, exactly one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def assert_same_weights(a: dict, b: dict) -> None:
    """Two trainings that should differ only in floating-point summation order ended with the
    same weights (name -> tensor)."""
    assert a.keys() == b.keys()
    for name in a:
        diff = (a[name] - b[name]).abs()
        # Adam divides by the root of tiny second moments, so a few near-zero-gradient
        # entries move by up to about one learning rate; everything else agrees to float
        # precision.
        assert diff.max() < 3e-3, (name, float(diff.max()))
        assert (diff > 1e-5).float().mean() < 0.01, (name, float((diff > 1e-5).float().mean()))


def checkpoint_view(run: Path) -> tuple[int | None, str | None]:
    """Read a run directory as `eval` and `--resume` read it: (the checkpoint's step, or None
    if it has none yet; what is torn, or None). The three files of a checkpoint are of one
    step when the weights eval scores are the checkpoint's training weights with the scale
    folded in, and Adam's step count is the checkpoint's step (in a run without skipped steps)."""
    import torch

    from saezoo import checkpoint as ckpt
    from saezoo.errors import UsageError

    try:
        state_dir = ckpt.checkpoint_dir(run)
        if state_dir is None:
            try:
                ckpt.load_sae(run)
            except UsageError:
                return None, None
            return None, "eval reads weights but resume finds no checkpoint"
        meta = ckpt.read_json(state_dir / "trainer.json", "trainer state")
        tensors, _ = ckpt.load_tensors(state_dir / "trainer.safetensors")
        evaluated, cfg = ckpt.load_sae(run)
    except UsageError as exc:
        return None, f"unreadable: {exc}"
    step = meta["step"]
    adam = {float(v) for k, v in tensors.items() if k.startswith("opt.") and k.endswith(".step")}
    if adam and adam != {float(step)}:
        return step, f"trainer.json at step {step}, Adam at {sorted(adam)}"
    resumed = ckpt.build_sae(cfg["architecture"], cfg["d_in"], cfg["sae"])
    ckpt.load_state(resumed, {k[4:]: v for k, v in tensors.items() if k.startswith("sae.")}, state_dir)
    resumed = resumed.float()
    resumed.fold_input_scale(meta["scale"])
    theirs = evaluated.state_dict()
    for name, value in resumed.state_dict().items():
        if not torch.equal(value, theirs[name]):
            return step, f"sae.safetensors is not the checkpoint's weights ({name}, step {step})"
    return step, None


# The embedded default's assets, converted by scripts/setup.sh outside the tests' private cache.
USER_CACHE = Path("~/.cache/saezoo").expanduser()
HAS_SMOLLM2 = (USER_CACHE / "models" / "smollm2-135m" / "config.json").is_file()


def demo_cache(root: Path) -> Path:
    """A private cache that sees the converted model and corpora but keeps its own activations."""
    cache = root / "cache"
    cache.mkdir()
    for name in ("models", "assets"):
        (cache / name).symlink_to(USER_CACHE / name)
    return cache


def drifting_eval_l0(sae, steps: int = 400, shrink: float = 0.99865) -> float:
    """Held-out L0 of a thresholded TopK-family SAE, as a share of what the batch selection
    keeps, after ``steps`` training-mode batches of random inputs during which its encoder
    shrinks by ``shrink`` a step, as the selected values fell on SmolLM2 (the tree HSAE's
    tier-1 threshold went 1.20 -> 0.71 over the main job's 400 steps): the threshold that
    replaces the batch selection in eval mode must keep up."""
    gen = torch.Generator().manual_seed(0)
    held_out = torch.randn(2048, sae.d_in, generator=gen)
    with torch.no_grad():
        for _ in range(steps):
            sae(torch.randn(256, sae.d_in, generator=gen))
            sae.W_enc.mul_(shrink)
        l0 = []
        for training in (False, True):
            sae.train(training)
            l0.append(float((sae.encode(held_out) > 0).sum(-1).float().mean()))
        return l0[0] / l0[1]
