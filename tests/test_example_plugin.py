"""The third-party plugin template (examples/saezoo-example-plugin), installed as a user would
install it: the real CLI, with entry-point autoload on, lists it and trains it."""

from __future__ import annotations

import importlib.metadata
import json
import os

import pytest

from helpers import FAST_SETS, run_cli


def _installed() -> bool:
    try:
        importlib.metadata.distribution("saezoo-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _installed(),
    reason="saezoo-example-plugin is not installed; scripts/setup.sh installs it "
    "(python3 -m pip install -e examples/saezoo-example-plugin)",
)


@pytest.fixture
def autoload(monkeypatch):
    """The subprocess environment with entry points loaded (tests/conftest.py turns them off)."""
    monkeypatch.delenv("SAEZOO_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("SAEZOO_BLOCK_PLUGINS", raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no wrapped names
    assert "SAEZOO_DISABLE_PLUGIN_AUTOLOAD" not in os.environ


def test_plugins_lists_the_example(autoload):
    proc = run_cli("plugins")
    assert proc.returncode == 0, proc.stderr
    (row,) = [line for line in proc.stdout.splitlines() if " example " in line]
    assert "entry point" in row and "register_architectures" in row and "example-tied" in row, row


def test_train_the_example_architecture(autoload, tmp_path):
    out = tmp_path / "tied"
    args = ["train", "example-tied", "--source", "synthetic", "--steps", "20", "--out", str(out), "-q"]
    for s in FAST_SETS:
        args += ["--set", s]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "example-tied" and (out / "sae.safetensors").is_file()


def test_autoload_off_hides_it(monkeypatch):
    monkeypatch.setenv("SAEZOO_DISABLE_PLUGIN_AUTOLOAD", "1")
    proc = run_cli("train", "example-tied", "--source", "synthetic", "--steps", "1")
    assert proc.returncode == 2 and "unknown architecture 'example-tied'" in proc.stderr


@pytest.mark.slow
def test_the_template_s_own_tests_pass():
    """The template's tests run on their own, as they would in a copy of it."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "examples/saezoo-example-plugin/tests"],
        cwd=root, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
