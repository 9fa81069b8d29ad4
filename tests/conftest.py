"""Test isolation: only saezoo's own plugins, a private cache, no hub."""

from __future__ import annotations

import os

# Before saezoo loads any plugin: nothing that happens to be installed leaks into tests.
os.environ["SAEZOO_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.pop("SAEZOO_BLOCK_PLUGINS", None)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
import pytest  # noqa: E402
import torch  # noqa: E402

from saezoo import plugins  # noqa: E402
from saezoo.cpu_share import cores  # noqa: E402

# Under pytest-xdist (the suite's -n in pyproject.toml) each worker is a process of its own,
# and torch would give each one thread per core: two workers on 2 cores would run four OpenMP
# threads, which wait for each other (saezoo/cpu_share.py says why that is slow). Each worker
# takes its share of the cores, and the CLI subprocesses it starts inherit it.
if "PYTEST_XDIST_WORKER" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    share = max(1, cores() // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(share)
    torch.set_num_threads(share)  # torch was imported before the variable was set


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """A fresh plugin manager and a private activation cache for every test."""
    monkeypatch.setenv("SAEZOO_CACHE", str(tmp_path_factory.getbasetemp() / "saezoo-cache"))
    plugins.set_plugins_dir(None)
    yield
    plugins.set_plugins_dir(None)
