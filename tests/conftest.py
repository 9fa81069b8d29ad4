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

from saezoo import plugins  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """A fresh plugin manager and a private activation cache for every test."""
    monkeypatch.setenv("SAEZOO_CACHE", str(tmp_path_factory.getbasetemp() / "saezoo-cache"))
    plugins.set_plugins_dir(None)
    yield
    plugins.set_plugins_dir(None)
