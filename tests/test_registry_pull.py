"""The registry outside git: weights pulled through huggingface_hub's real client from a server on
127.0.0.1 speaking the hub's file layout (HF_ENDPOINT), checked against the manifest's sha256;
entries rebuilt by `saezoo registry reproduce`; list and show from the manifests alone."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import FAST_SETS, assert_one_line_error, run_cli
from hub_server import COMMIT, HubServer
from saezoo import catalog

ROOT = Path(__file__).resolve().parents[1]
REPO = "test-owner/test-registry"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A small entry whose manifest names hf://REPO/tiny.safetensors, and its weights (the
    bytes the server publishes), with no local copy."""
    root = tmp_path_factory.mktemp("published")
    registry = root / "registry"
    args = ["train", "flat", "--source", "synthetic", "--steps", "10", "--out", str(root / "run"), "-q", "--register", "tiny"]
    for s in FAST_SETS:
        args += ["--set", s]
    proc = run_cli(*args, env={"SAEZOO_REGISTRY": str(registry)})
    assert proc.returncode == 0, proc.stderr
    weights = registry / "weights" / "tiny.safetensors"
    content = weights.read_bytes()
    weights.unlink()
    manifest = registry / "tiny.toml"
    text = manifest.read_text().replace('path = "weights/tiny.safetensors"', f'url = "hf://{REPO}/tiny.safetensors"')
    manifest.write_text(text)
    return registry, content


def hub_env(registry: Path, cache: Path, hub: HubServer | None = None) -> dict[str, str]:
    env = {"SAEZOO_REGISTRY": str(registry), "HF_HUB_CACHE": str(cache)}
    if hub is not None:  # conftest sets HF_HUB_OFFLINE=1 for every test; this one talks to the local hub
        env.update(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
    return env


def cached_files(cache: Path) -> list[Path]:
    """What the cache holds of downloads: its blobs and snapshots (not its locks, refs and tag)."""
    return [p for p in cache.rglob("*") if p.is_file() and {"blobs", "snapshots"} & set(p.parts)]


def test_pull_through_the_hub_client(published, tmp_path):
    registry, content = published
    cache = tmp_path / "hf-cache"
    with HubServer({(REPO, "tiny.safetensors"): content}) as hub:
        proc = run_cli("registry", "pull", "tiny", env=hub_env(registry, cache, hub))
        assert proc.returncode == 0, proc.stderr
        assert ("HEAD", f"/{REPO}/resolve/main/tiny.safetensors") in hub.requests
        assert ("GET", f"/{REPO}/resolve/main/tiny.safetensors") in hub.requests
    snapshot = cache / "models--test-owner--test-registry" / "snapshots" / COMMIT / "tiny.safetensors"
    assert proc.stdout.strip() == f"tiny: {snapshot}"
    assert snapshot.read_bytes() == content
    # Offline now, the server gone: show and eval find the cache's copy.
    show = run_cli("registry", "show", "tiny", env=hub_env(registry, cache))
    assert show.returncode == 0 and show.stdout.strip().endswith(f"weights: {snapshot}")
    ev = run_cli("eval", "tiny", "--tokens", "1024", "--json", env=hub_env(registry, cache))
    assert ev.returncode == 0, ev.stderr
    # Altered in the cache: refused, and removed so that the next pull fetches it again.
    snapshot.resolve().write_bytes(content[:-4] + b"\0\0\0\0")
    assert_one_line_error(run_cli("registry", "show", "tiny", env=hub_env(registry, cache)), "does not match the manifest's sha256")
    assert cached_files(cache) == []


def test_wrong_sha_is_refused_and_nothing_stays_in_the_cache(published, tmp_path):
    registry, content = published
    cache = tmp_path / "hf-cache"
    with HubServer({(REPO, "tiny.safetensors"): content[:-4] + b"\0\0\0\0"}) as hub:
        proc = run_cli("registry", "pull", "tiny", env=hub_env(registry, cache, hub))
        assert any(method == "GET" for method, _ in hub.requests)  # it was downloaded, then refused
    assert_one_line_error(proc, "registry entry 'tiny'", f"hf://{REPO}/tiny.safetensors", "does not match the manifest's sha256", "removed from the cache")
    assert cached_files(cache) == []


def test_no_copy_reachable_points_at_reproduce(published, tmp_path):
    registry, _ = published
    env = hub_env(registry, tmp_path / "hf-cache")  # offline (conftest), an empty cache
    assert_one_line_error(run_cli("registry", "pull", "tiny", env=env), "cannot fetch", "saezoo registry reproduce tiny")
    # What needs the weights says the same; show and list work from the manifest alone.
    assert_one_line_error(run_cli("eval", "tiny", env=env), "cannot fetch", "saezoo registry reproduce tiny")
    show = run_cli("registry", "show", "tiny", env=env)
    assert show.returncode == 0 and 'name = "tiny"' in show.stdout
    assert "weights: not on this machine; saezoo registry pull tiny fetches them" in show.stdout


def test_registry_in_git_is_manifests_only():
    """The registry's tracked files are small (the weights are published, not committed), and
    every shipped manifest names its url and reads from the manifests alone."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files", "registry"], cwd=ROOT, capture_output=True, text=True, check=True)
    tracked = [ROOT / f for f in files.stdout.split()]
    assert not [f for f in tracked if f.suffix == ".safetensors"]
    assert sum(f.stat().st_size for f in tracked if f.exists()) < 1_000_000
    ignored = subprocess.run(["git", "check-ignore", "-q", "registry/weights/any.safetensors"], cwd=ROOT)
    assert ignored.returncode == 0, "registry/weights/ (local copies) must be ignored by git"


def test_fresh_machine_lists_and_shows(tmp_path):
    """The shipped manifests without any weights (a fresh clone, offline): list and show work."""
    registry = tmp_path / "registry"
    registry.mkdir()
    for manifest in (ROOT / "registry").glob("*.toml"):
        shutil.copy(manifest, registry)
    env = hub_env(registry, tmp_path / "hf-cache")
    listing = run_cli("registry", "list", env={**env, "COLUMNS": "200"})  # rich shortens names to fit
    assert listing.returncode == 0 and {"smollm2-flat", "smollm2-hsae", "synthetic-topk"} <= set(listing.stdout.split())
    show = run_cli("registry", "show", "smollm2-flat", env=env)
    assert show.returncode == 0 and "saezoo registry reproduce smollm2-flat rebuilds them" in show.stdout


@pytest.mark.slow
def test_reproduce_rebuilds_the_synthetic_entry(tmp_path):
    """`reproduce` retrains synthetic-topk from its manifest, checks the recorded metrics and
    installs the result as the entry's rebuilt copy, which loading then uses."""
    registry = tmp_path / "registry"
    registry.mkdir()
    shutil.copy(ROOT / "registry" / "synthetic-topk.toml", registry)
    env = hub_env(registry, tmp_path / "hf-cache")
    proc = run_cli("registry", "reproduce", "synthetic-topk", "--out", str(tmp_path / "rep"), "-q", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rebuilt = registry / "weights" / "synthetic-topk.rebuilt.safetensors"
    # On the CPU that made the entry the tensors come out the same; on another, summation order may differ.
    same = re.search(r"synthetic-topk: reproduced; (the same|other) tensors .*; rebuilt weights: (.*)$", proc.stdout, re.M)
    assert same and same[2] == str(rebuilt), proc.stdout
    assert "NO" not in proc.stdout and "explained_vari" in proc.stdout
    show = run_cli("registry", "show", "synthetic-topk", env=env)
    assert f"weights: {rebuilt} (rebuilt by saezoo registry reproduce" in show.stdout
    ev = run_cli("eval", "synthetic-topk", "--json", env=env)
    assert ev.returncode == 0, ev.stderr
    # A new recipe arrives (a `git pull`): the copy rebuilt from the old one is not used.
    manifest = registry / "synthetic-topk.toml"
    manifest.write_text(manifest.read_text().replace("seed = 0", "seed = 1", 1))
    show = run_cli("registry", "show", "synthetic-topk", env=env)
    assert "not on this machine (the copy reproduce rebuilt is of another manifest)" in show.stdout, show.stdout
    assert_one_line_error(run_cli("eval", "synthetic-topk", env={**env, "HF_HUB_OFFLINE": "1"}), "cannot fetch")


def test_reproduction_check(tmp_path, monkeypatch):
    """Each metric within its tolerance (absolute for explained variance, dead fraction and CE
    recovered, relative for L0); NaN or a missing metric fails."""
    monkeypatch.setenv("SAEZOO_REGISTRY", str(ROOT / "registry"))
    entry = catalog.get_entry("synthetic-topk")
    recorded = entry.metrics
    rows, ok = catalog.check_reproduction(entry, dict(recorded))
    assert ok and [r[0] for r in rows] == ["explained_variance", "l0", "dead_fraction"]
    near = {**recorded, "explained_variance": recorded["explained_variance"] - 0.009, "l0": recorded["l0"] * 1.049}
    assert catalog.check_reproduction(entry, near)[1]
    for far in ({"explained_variance": recorded["explained_variance"] + 0.011}, {"l0": recorded["l0"] * 1.06},
                {"dead_fraction": recorded["dead_fraction"] + 0.021}, {"explained_variance": float("nan")}):
        rows, ok = catalog.check_reproduction(entry, {**recorded, **far})
        assert not ok and [r[5] for r in rows].count(False) == 1, far
    assert not catalog.check_reproduction(entry, {})[1]


def test_weights_url():
    from saezoo.errors import UsageError
    from saezoo.hub import HubFile, parse_url

    assert parse_url("hf://saezoo/registry/smollm2-flat.safetensors") == HubFile("saezoo/registry", "smollm2-flat.safetensors", "main")
    assert parse_url("hf://o/r@v1.0/sub/w.safetensors") == HubFile("o/r", "sub/w.safetensors", "v1.0")
    for bad in ("https://huggingface.co/o/r/w.safetensors", "hf://o/w.safetensors", "hf://o/r/../w.safetensors", "hf://o/r/"):
        with pytest.raises(UsageError, match="expected hf://OWNER/REPO"):
            parse_url(bad)
