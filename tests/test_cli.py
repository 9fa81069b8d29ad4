"""The real CLI in a subprocess: bad input answered in one line, runs leave their files."""

from __future__ import annotations

import json
import textwrap

import pytest

from helpers import assert_one_line_error, fast_train_args, run_cli


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = run_cli(*fast_train_args("flat", out, 30))
    assert proc.returncode == 0, proc.stderr
    return out


def test_train_writes_run_directory(trained_run):
    assert {"cfg.json", "sae.safetensors", "metrics.json", "feature_density.png", "state", "tb"} <= {p.name for p in trained_run.iterdir()}
    cfg = json.loads((trained_run / "cfg.json").read_text())
    assert cfg["architecture"] == "flat" and cfg["d_in"] == 64 and cfg["source"]["source"] == "synthetic"
    assert not list(trained_run.rglob("*.tmp")), "temporary files left behind"


def test_tensorboard_events_hold_every_loss_term(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained_run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/mse", "loss/l1", "loss/total", "l0", "dead_fraction", "lr", "eval/explained_variance"} <= tags
    steps = [e.step for e in acc.Scalars("loss/mse")]
    assert steps[-1] == 30 and len(steps) >= 6


def test_eval_json(trained_run):
    proc = run_cli("eval", str(trained_run), "--json", "--tokens", "2048")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert {"explained_variance", "fvu", "mse", "l0", "dead_fraction", "mean_max_cosine", "recovered_fraction"} <= set(metrics)


def test_console_script_is_installed():
    import shutil
    import subprocess

    exe = shutil.which("saezoo")
    assert exe, "the saezoo console script is not on PATH (pip install -e .)"
    proc = subprocess.run([exe, "list", "architectures"], capture_output=True, text=True)
    assert proc.returncode == 0 and "flat" in proc.stdout


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["train", "flta", "--source", "synthetic"], ["unknown architecture 'flta'", "did you mean 'flat'"]),
        (["train", "flat", "--source", "synthetic", "--set", "l1_coef=2"], ["unknown setting 'sae.l1_coef'"]),
        (["train", "flat", "--source", "synthetic", "--set", "train.steps=many"], ["train.steps: 'many' is not an integer"]),
        (["train", "flat", "--source", "synthetic", "--set", "l1_coefficient=-1"], ["l1_coefficient must be >= 0"]),
        (["train", "flat", "--source", "synthetic", "--curriculum", "nope"], ["unknown curriculum 'nope'"]),
        (["train", "flat", "--source", "synthetic", "--preset", "nope"], ["unknown preset"]),
        (["train", "flat", "--source", "web"], ["data.source"]),
        (["train", "flat", "--steps", "5", "--tokens", "5"], ["--steps or --tokens"]),
        (["train", "flat", "--bogus"], ["No such option"]),
        (["eval", "/nonexistent/run"], ["no such run directory"]),
        (["list", "gizmos"], ["unknown kind 'gizmos'"]),
        (["describe", "flatt"], ["did you mean 'flat'"]),
        (["--plugins-dir", "/nonexistent", "list"], ["not a directory"]),
    ],
)
def test_bad_input_is_one_line(args, needles):
    assert_one_line_error(run_cli(*args), *needles)


def test_corrupt_weights_are_one_line(trained_run, tmp_path):
    import shutil

    run = tmp_path / "corrupt"
    shutil.copytree(trained_run, run)
    data = bytearray((run / "sae.safetensors").read_bytes())
    data[-20:] = b"\x00" * 20  # flip tensor bytes: the checksum must catch it
    (run / "sae.safetensors").write_bytes(bytes(data))
    assert_one_line_error(run_cli("eval", str(run)), "checksum mismatch")
    (run / "sae.safetensors").write_bytes(bytes(data[:100]))  # truncated
    assert_one_line_error(run_cli("eval", str(run)), "corrupt or truncated")


def test_existing_run_is_not_overwritten(trained_run):
    assert_one_line_error(run_cli(*fast_train_args("flat", trained_run, 5)), "already holds a run")


def test_guard_stops_a_nan_plugin(tmp_path):
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "nan_after.py").write_text(
        textwrap.dedent(
            """
            import torch
            from saezoo import hookimpl
            from saezoo_flat.sae import FlatSAE

            class NanAfter20(FlatSAE):
                '''Flat, until its loss turns NaN at step 20.'''
                calls = 0

                def forward(self, x, knobs=None, dead_mask=None):
                    out = super().forward(x, knobs, dead_mask)
                    type(self).calls += 1
                    if type(self).calls > 20:
                        out.losses["mse"] = out.losses["mse"] * float("nan")
                    return out

            @hookimpl
            def register_architectures(register):
                register("nan-after-20", NanAfter20)
            """
        )
    )
    out = tmp_path / "run"
    args = fast_train_args("nan-after-20", out, 100, "--set", "train.checkpoint_every=10", "--set", "train.max_nonfinite_steps=5")
    proc = run_cli("--plugins-dir", str(plugin_dir), *args)
    assert proc.returncode == 3, proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.strip()]  # no torch warning ahead of it
    assert "training diverged: 5 consecutive non-finite steps at step 25" in line
    assert "last good checkpoint" in proc.stderr and "step 20" in proc.stderr
    evaluated = run_cli("--plugins-dir", str(plugin_dir), "eval", str(out), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["explained_variance"] > 0


def test_non_finite_final_weights_never_exit_0(tmp_path):
    """lr 1e30 sends the weights to ~1e30 at once; every later step is non-finite and
    skipped, too few in 10 steps for the guard. The run used to save them and exit 0."""
    out = tmp_path / "run"
    proc = run_cli(*fast_train_args("flat", out, 10, "--set", "train.lr=1e30", "--set", "train.grad_clip=none"))
    assert proc.returncode == 3, proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "training ended with non-finite metrics (mse, explained_variance)" in line
    evaluated = run_cli("eval", str(out), "--json")
    assert evaluated.returncode == 3 and "non-finite metrics" in evaluated.stderr
    metrics = json.loads(evaluated.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} is not JSON"))
    assert metrics["mse"] is None and metrics["l0"] >= 0
    on_disk = json.loads((out / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} is not JSON"))
    assert on_disk["explained_variance"] is None
