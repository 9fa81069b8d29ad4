"""``saezoo check``: the contract checks (saezoo/contract.py) on an installed third-party
plugin, as its author runs them: a real subprocess with entry points loaded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from saezoo import contract

from helpers import assert_one_line_error, run_cli

HERE = Path(__file__).resolve().parent


def install(site: Path) -> dict[str, str]:
    """tests/thirdparty_plugin.py installed into ``site`` as pip would install a package that
    declares it in the entry-point group ``saezoo``; the environment that sees it, autoload on."""
    shutil.copy(HERE / "thirdparty_plugin.py", site / "thirdparty_plugin.py")
    dist = site / "saezoo_thirdparty-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: saezoo-thirdparty\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[saezoo]\nthirdparty = thirdparty_plugin\n")
    # Empty: run_cli adds this environment to the test's, where tests/conftest.py turned autoload off.
    return {"SAEZOO_DISABLE_PLUGIN_AUTOLOAD": "", "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_check_an_installed_plugin(tmp_path):
    env = install(tmp_path)
    proc = run_cli("check", "plain-relu", "shifted", env=env)
    lines = proc.stdout.splitlines()
    # plain-relu fulfils the contract, its SAELens export included.
    plain = [line for line in lines if line.startswith("plain-relu (thirdparty) ")]
    assert len(plain) == len(contract.CHECKS) and all(": ok" in line or ": skip" in line for line in plain), proc.stdout
    assert "plain-relu (thirdparty) saelens_round_trip: ok" in lines
    # shifted's encoder ignores b_dec, so the default SAELens mapping does not hold: a failed check.
    (failed,) = [line for line in lines if ": FAIL" in line]
    assert failed.startswith("shifted (thirdparty) saelens_round_trip: FAIL") and "does not hold" in failed
    assert lines[-1] == "2 architecture(s): 1 check(s) failed"
    assert proc.returncode == 1, proc.stderr


def test_check_names_an_unknown_architecture(tmp_path):
    proc = run_cli("check", "plain-relu", env={"SAEZOO_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert_one_line_error(proc, "unknown architecture 'plain-relu'")
