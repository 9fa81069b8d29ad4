"""Corpora by name, file and directory; packing into contexts; the held-out split."""

from __future__ import annotations

import csv
import types

import pytest
from activations_helpers import corpus, make_tokenizer, write_jsonl

from saezoo.activations import text
from saezoo.errors import UsageError
from saezoo.hookspecs import hookimpl
from saezoo.plugins import register_plugin, unregister_plugin

DOCS = corpus(60)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"), DOCS)


def test_contexts_start_with_bos_and_mask_special_positions(tokenizer):
    contexts = list(text.pack_contexts(DOCS, tokenizer, 32))
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    assert all(len(ids) == 32 and len(mask) == 32 for ids, mask in contexts)
    assert all(ids[0] == bos and not mask[0] for ids, mask in contexts)
    for ids, mask in contexts:
        for token, is_text in zip(ids, mask):
            # Only the sink, separators and padding are masked; they never come from the text.
            assert is_text == (token not in (bos, eos, pad))
    # Every text token is kept exactly once, in order.
    kept = [t for ids, mask in contexts for t, m in zip(ids, mask) if m]
    expected = [t for doc in DOCS for t in tokenizer(doc, add_special_tokens=False)["input_ids"]]
    assert kept == expected
    # Only the last context is padded.
    assert contexts[-1][0][-1] == pad and all(pad not in ids for ids, _ in contexts[:-1])


def test_without_bos_eos_is_the_sink(tmp_path):
    tokenizer = make_tokenizer(tmp_path, DOCS, bos=False)
    ids, mask = next(text.pack_contexts(DOCS, tokenizer, 16))
    assert ids[0] == tokenizer.eos_token_id and not mask[0]


def test_special_token_strings_in_text_are_plain_text(tokenizer):
    ids, mask = next(text.pack_contexts(["the <bos> cat"], tokenizer, 16))
    assert ids.count(tokenizer.bos_token_id) == 1  # only the sink


def test_batches_have_fixed_shape(tokenizer):
    batches = list(text.batch_contexts(text.pack_contexts(DOCS, tokenizer, 16), 4))
    assert all(ids.shape == mask.shape for ids, mask in batches)
    assert all(ids.shape == (4, 16) for ids, _ in batches[:-1])


def test_split_is_deterministic_and_disjoint():
    docs = corpus(2000)
    train = list(text.split_documents(docs, "train"))
    held_out = list(text.split_documents(docs, "eval"))
    assert set(train).isdisjoint(held_out)
    assert len(train) + len(held_out) == len(docs)
    assert 0.07 < len(held_out) / len(docs) < 0.13  # one in text.EVAL_EVERY = 10
    assert held_out == list(text.split_documents(reversed(docs), "eval"))[::-1]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "txt", "dir"])
def test_local_files(tmp_path, kind):
    docs = DOCS[:10]
    if kind == "jsonl":
        path = write_jsonl(tmp_path / "c.jsonl", docs)
    elif kind == "csv":
        path = tmp_path / "c.csv"
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([["text"], *[[d] for d in docs]])
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "c.parquet"
        pq.write_table(pa.table({"text": docs}), path)
    elif kind == "txt":
        # One document per paragraph.
        path = tmp_path / "c.txt"
        path.write_text("\n\n".join(docs) + "\n")
    else:
        path = tmp_path / "corpus"
        path.mkdir()
        write_jsonl(path / "a.jsonl", docs[:5])
        write_jsonl(path / "b.jsonl", docs[5:])
    assert [d.strip() for d in text.iter_documents(str(path))] == docs


def test_missing_text_column(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:3], column="body")
    with pytest.raises(UsageError, match="no column 'text'.*body"):
        list(text.iter_documents(str(path)))
    assert list(text.iter_documents(str(path), "body")) == DOCS[:3]


def test_unknown_dataset_names_what_was_tried(tmp_path):
    with pytest.raises(UsageError, match="not a registered dataset.*python-docs.*hub id"):
        list(text.iter_documents("no-such/dataset-xyz"))
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(UsageError, match="no file with a supported extension"):
        list(text.iter_documents(str(tmp_path)))


def test_registered_dataset():
    plugin = types.SimpleNamespace(register_datasets=hookimpl(lambda register: register("tiny", lambda: ["a", "b"])))
    register_plugin(plugin, "tiny-corpus")
    try:
        assert list(text.iter_documents("tiny")) == ["a", "b"]
    finally:
        unregister_plugin(plugin)
