"""ModelSource on a tiny real model: cache, shuffle buffer, resume, outliers, held-out data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from activations_helpers import REPO, corpus, corpus_file, llama_dir, make_model  # noqa: F401  (fixtures)

from saezoo.activations import text
from saezoo.activations.cache import CacheWriter, activations_dir, clear_cache, list_cache, lookup
from saezoo.activations.model import hooked_activations
from saezoo.activations.model_source import ModelSource
from saezoo.errors import UsageError
from saezoo.hookspecs import hookimpl
from saezoo.plugins import register_plugin, unregister_plugin


def source(model_dir, dataset, cache_dir, **kw) -> ModelSource:
    options = dict(context_length=32, n_tokens=3000, shard_tokens=512, buffer_tokens=1024, harvest_batch_size=8)
    return ModelSource(str(model_dir), dataset=str(dataset), cache_dir=cache_dir, **{**options, **kw})


def rows(t: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(map(tuple, t.tolist()))


def test_harvest_then_cache_hit_without_the_model(tmp_path, llama_dir, corpus_file):  # noqa: F811
    model_dir = make_model(tmp_path / "model", "llama")
    first = source(model_dir, corpus_file, tmp_path)
    assert first.d_in == 32 and first.hook == "model.layers.2"
    batches = [b for _, b in zip(range(4), first.batches(256))]
    eval_x = first.eval_activations(400)
    [entry] = [e for e in list_cache(tmp_path) if e["split"] == "train"]
    assert entry["n_tokens"] == 3000 and entry["hook"] == "model.layers.2"

    # Spoil the weights (same size and time, so the cache key is unchanged): a second run must be
    # served from the cache without loading the model.
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"\0" * stat.st_size)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = source(model_dir, corpus_file, tmp_path)
    assert second.d_in == 32 and second.hook == "model.layers.2"
    for a, b in zip(batches, second.batches(256)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(second.eval_activations(400), eval_x)
    assert second._model is None


def test_stream_matches_the_model(tmp_path, llama_dir, corpus_file):  # noqa: F811
    src = source(llama_dir, corpus_file, tmp_path, max_norm_multiple=0)
    ids, mask = src.eval_contexts(500)
    direct = hooked_activations(src.model, src.hook, ids)[mask]
    torch.testing.assert_close(src.eval_activations(len(direct)), direct)


def test_shuffle_deterministic_resumable_and_an_epoch_is_a_permutation(tmp_path, llama_dir, corpus_file):  # noqa: F811
    src = source(llama_dir, corpus_file, tmp_path)
    epoch = 3000 // 100
    stream = [b for _, b in zip(range(2 * epoch + 5), src.batches(100))]
    assert all(b.shape == (100, 32) for b in stream)
    again = source(llama_dir, corpus_file, tmp_path)
    for a, b in zip(stream, again.batches(100)):
        assert torch.equal(a, b)
    for start in (1, 7, epoch, epoch + 3):
        resumed = [b for _, b in zip(range(3), src.batches(100, start=start))]
        assert all(torch.equal(a, b) for a, b in zip(stream[start:], resumed))
    harvested = lookup(src._train.manifest["key"], tmp_path).read()
    assert rows(torch.cat(stream[:epoch])) == rows(harvested)
    assert not torch.equal(stream[0], harvested[:100])  # shuffled
    assert not torch.equal(torch.cat(stream[:epoch]), torch.cat(stream[epoch : 2 * epoch]))  # reshuffled per epoch
    other_seed = source(llama_dir, corpus_file, tmp_path, seed=1)
    assert not torch.equal(next(other_seed.batches(100)), stream[0])


def test_without_cache_same_tokens(tmp_path, llama_dir, corpus_file):  # noqa: F811
    cached = source(llama_dir, corpus_file, tmp_path)
    streamed = source(llama_dir, corpus_file, tmp_path / "unused", cache=False)
    epoch = [b for _, b in zip(range(30), streamed.batches(100))]
    assert rows(torch.cat(epoch)) == rows(lookup(cached._prepare()["key"], tmp_path).read())
    assert streamed.outlier_threshold == pytest.approx(cached.outlier_threshold)
    assert not activations_dir(tmp_path / "unused").exists()
    resumed = next(streamed.batches(100, start=5))
    assert torch.equal(resumed, epoch[5])


def test_outliers_excluded_and_counted(tmp_path, corpus_file):  # noqa: F811
    model_dir = make_model(tmp_path / "model", "llama", outlier_scale=300.0)
    src = source(model_dir, corpus_file, tmp_path, n_tokens=4000)
    threshold = src.outlier_threshold
    assert threshold == pytest.approx(10 * src.median_norm)
    train = lookup(src._train.manifest["key"], tmp_path).read()
    assert train.norm(dim=-1).max() <= threshold
    # Every occurrence of the outlier word in the harvested text, and nothing else, was excluded.
    documents = list(src._documents("train"))
    ids, mask = _train_contexts(src, documents)
    outlier_id = src.tokenizer.convert_tokens_to_ids("zzz")
    kept_ids = ids[mask][: 4000 + src.excluded_outliers]
    assert src.excluded_outliers == int((kept_ids == outlier_id).sum()) > 0
    eval_x = src.eval_activations(300)
    assert eval_x.norm(dim=-1).max() <= threshold and src.eval_excluded_outliers > 0
    # A cache hit reports the same count.
    assert source(model_dir, corpus_file, tmp_path, n_tokens=4000).excluded_outliers == src.excluded_outliers
    unfiltered = source(model_dir, corpus_file, tmp_path, n_tokens=4000, max_norm_multiple=None)
    assert unfiltered.excluded_outliers == 0 and unfiltered.outlier_threshold is None


def _train_contexts(src, documents):
    contexts = list(text.pack_contexts(documents, src.tokenizer, src.context_length))
    return next(text.batch_contexts(contexts, len(contexts)))


def test_eval_documents_are_held_out(tmp_path, llama_dir, corpus_file):  # noqa: F811
    docs = corpus()
    src = source(llama_dir, corpus_file, tmp_path)
    eval_ids, eval_mask = src.eval_contexts(10_000)
    eval_words = set(src.tokenizer.convert_ids_to_tokens(eval_ids[eval_mask].tolist()))
    # Each document starts with a unique "docN" word: no document is on both sides.
    train_docs = {d.split()[0] for d in docs if not text.is_eval_document(d)}
    eval_docs = {w for w in eval_words if w.startswith("doc") and w[3:].isdigit()}
    assert eval_docs and eval_docs.isdisjoint(train_docs)


def test_failed_harvest_leaves_no_entry(tmp_path, llama_dir):  # noqa: F811
    def breaking_corpus():
        yield from corpus()
        # The stream breaks after shards were written.
        assert list(activations_dir(tmp_path).glob(".tmp-*/shard-00003.safetensors"))
        raise ConnectionError("stream lost")

    plugin = types.SimpleNamespace(register_datasets=hookimpl(lambda register: register("breaking", breaking_corpus)))
    register_plugin(plugin, "breaking")
    try:
        with pytest.raises(ConnectionError):
            _ = source(llama_dir, "breaking", tmp_path, n_tokens=100_000).d_in
    finally:
        unregister_plugin(plugin)
    assert list_cache(tmp_path) == [] and list(activations_dir(tmp_path).iterdir()) == []


KILLED_HARVEST = """
import itertools, sys, types
sys.path[:0] = [{tests!r}]
import activations_helpers
from saezoo.hookspecs import hookimpl
from saezoo.plugins import register_plugin
from saezoo.activations.model_source import ModelSource

endless = types.SimpleNamespace(register_datasets=hookimpl(
    lambda register: register("endless", lambda: itertools.cycle(activations_helpers.corpus()))))
register_plugin(endless, "endless")
ModelSource({model!r}, dataset="endless", cache_dir={cache!r}, context_length=32, n_tokens=10**9,
            shard_tokens=256, harvest_batch_size=2).d_in
"""


@pytest.mark.slow  # a fresh interpreter imports torch and transformers
def test_killed_harvest_leaves_no_usable_cache(tmp_path, llama_dir, corpus_file):  # noqa: F811
    code = KILLED_HARVEST.format(tests=str(REPO / "tests"), model=str(llama_dir), cache=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 600  # importing torch and transformers took over 120 s on a loaded 2-core machine
        while not list(activations_dir(tmp_path).glob(".tmp-*/shard-00002.safetensors")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the harvest wrote no shard in time"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list_cache(tmp_path) == []
    [leftover] = activations_dir(tmp_path).iterdir()
    assert not (leftover / "manifest.json").exists()
    # The next harvest removes the dead process's leftovers.
    assert source(llama_dir, corpus_file, tmp_path, n_tokens=600).d_in == 32
    assert [p.name.startswith(".tmp-") for p in activations_dir(tmp_path).iterdir()] == [False]


def test_a_harvest_removes_only_this_machine_s_dead_leftovers(tmp_path):
    """A cache on a shared filesystem holds other machines' harvests in progress, whose process
    ids mean nothing here: a harvest removes the directories of this machine's dead harvests
    (and those named before the host was in the name), and no other."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root = activations_dir(tmp_path)
    host, key = socket.gethostname(), "0123456789abcdef"
    names = {
        "dead here": f".tmp-{key}-{host}-{gone.pid}-aaaaaaaa",
        "dead, named before the host": f".tmp-{key}-{gone.pid}-bbbbbbbb",
        "running here": f".tmp-{key}-{host}-{os.getpid()}-cccccccc",
        "another machine's": f".tmp-{key}-not-{host}-{gone.pid}-dddddddd",
    }
    for name in names.values():
        (root / name).mkdir(parents=True)
    writer = CacheWriter({"test": 1}, tmp_path)
    assert writer.tmp.name.startswith(f".tmp-{writer.name}-{host}-{os.getpid()}-")
    writer.abort()
    assert sorted(p.name for p in root.iterdir()) == sorted([names["running here"], names["another machine's"]])


def test_list_and_clear(tmp_path, llama_dir, corpus_file):  # noqa: F811
    assert source(llama_dir, corpus_file, tmp_path, n_tokens=600).d_in == 32
    assert source(llama_dir, corpus_file, tmp_path, n_tokens=700).d_in == 32
    entries = list_cache(tmp_path)
    assert sorted(e["n_tokens"] for e in entries) == [600, 700]
    assert all(e["model"] == str(llama_dir) and e["d_in"] == 32 and e["bytes"] > 0 for e in entries)
    with pytest.raises(UsageError, match="no cache entry"):
        clear_cache("nope", tmp_path)
    assert clear_cache(entries[0]["id"], tmp_path) == 1
    # An entry linked in from elsewhere: clearing removes the link, never what it points to.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "keep").mkdir(parents=True)
    (Path(entries[1]["path"]).parent / "0123456789abcdef").symlink_to(elsewhere)
    # A directory that is no entry (not named as entries are) is not the cache's to remove.
    (Path(entries[1]["path"]).parent / "notes" / "keep").mkdir(parents=True)
    assert clear_cache("all", tmp_path) == 2 and list_cache(tmp_path) == []
    assert (elsewhere / "keep").is_dir()
    assert (Path(entries[1]["path"]).parent / "notes" / "keep").is_dir()


def _overwrite_4k(path):
    with open(path, "r+b") as f:  # same size: only the checksum can tell
        f.seek(200)
        f.write(b"\xff" * 4096)


DAMAGE = {
    "shard-bytes": ("shard-00000.safetensors", _overwrite_4k, "does not match its sha256"),
    "truncated-shard": ("shard-00001.safetensors", lambda p: p.write_bytes(p.read_bytes()[:100]), "the manifest says"),
    "garbled-manifest": ("manifest.json", lambda p: p.write_bytes(b"\xff" * 64), "unreadable manifest"),
    "manifest-missing-keys": ("manifest.json", lambda p: p.write_text('{"key": {}}'), "unreadable manifest"),
    "missing-shard": ("shard-00000.safetensors", lambda p: p.unlink(), "is missing"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_cache_entry_is_reported_and_rebuilt(tmp_path, llama_dir, corpus_file, capfd, damage):  # noqa: F811
    """Damage is found before anything is read, reported in one line, and the entry is
    harvested again: the next source gives the same activations as before the damage."""
    first = source(llama_dir, corpus_file, tmp_path, n_tokens=600)
    before = torch.cat([b for _, b in zip(range(3), first.batches(256))])
    name, spoil, reason = DAMAGE[damage]
    [entry] = [e for e in list_cache(tmp_path) if e["split"] == "train"]
    spoil(activations_dir(tmp_path) / entry["id"] / name)
    capfd.readouterr()
    again = source(llama_dir, corpus_file, tmp_path, n_tokens=600)
    after = torch.cat([b for _, b in zip(range(3), again.batches(256))])
    notes = [line for line in capfd.readouterr().err.splitlines() if "saezoo: note" in line]
    assert len(notes) == 1 and entry["id"] in notes[0] and "damaged" in notes[0] and reason in notes[0], notes
    assert torch.equal(before, after) and again._model is not None  # harvested anew
    assert lookup(again._train.manifest["key"], tmp_path) is not None
    assert not [p for p in activations_dir(tmp_path).iterdir() if p.name.startswith(".tmp-")]


def test_bad_arguments(tmp_path, llama_dir, corpus_file):  # noqa: F811
    with pytest.raises(UsageError, match="n_tokens must be positive"):
        source(llama_dir, corpus_file, tmp_path, n_tokens=0)
    with pytest.raises(UsageError, match="no module 'model.layers.9'.*model.layers.3"):
        _ = source(llama_dir, corpus_file, tmp_path, hook="model.layers.9").d_in


def test_from_config(tmp_path, llama_dir, corpus_file):  # noqa: F811
    from saezoo.config import DataConfig

    data = DataConfig(model=str(llama_dir), dataset=str(corpus_file), context_length=32, cache_dir=str(tmp_path))
    src = ModelSource.from_config(data, tokens=600, seed=3)
    assert (src.model_name, src.context_length, src.n_tokens, src.seed) == (str(llama_dir), 32, 600, 3)
    assert src.describe()["hook"] == "model.layers.2"
