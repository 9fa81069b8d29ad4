"""The embedded default: the python-docs and austen corpora and the SmolLM2-135M model."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest
from activations_helpers import REPO  # also puts the built-in plugins on the path
from saezoo_demo import assets, corpora

from saezoo.activations import text
from saezoo.activations.model import default_hook, hooked_activations, load_model
from saezoo.errors import UsageError

# Assets converted by `bash scripts/fetch_assets.sh` outside the test's private cache.
USER_CACHE = Path("~/.cache/saezoo").expanduser()


def test_python_docs_is_deterministic_and_about_1_4_mb():
    docs = corpora.python_docs()
    assert docs == corpora.python_docs()
    assert 1_000_000 < sum(map(len, docs)) < 2_000_000
    assert any(d.startswith('The "for" statement') for d in docs)  # a pydoc topic
    assert inspect.cleandoc(textwrap.dedent.__doc__) in docs  # a standard-library docstring
    held_out = list(text.split_documents(docs, "eval"))
    assert 0.06 < len(held_out) / len(docs) < 0.14  # one in text.EVAL_EVERY = 10


def test_registered_names():
    assert list(text.iter_documents("python-docs"))[:3] == corpora.python_docs()[:3]


def test_missing_austen_names_the_fetch_command():
    with pytest.raises(UsageError) as err:
        next(text.iter_documents("austen"))
    assert "run: bash scripts/fetch_assets.sh" in str(err.value)
    assert (REPO / "scripts" / "fetch_assets.sh").is_file()


def test_chapters_reflow_paragraphs():
    lines = ["PERSUASION", "", "Chapter 1", "", "Sir Walter Elliot, of Kellynch", "Hall, in Somersetshire,", "",
             "was a man.", "", "CHAPTER II", "", "Mr Shepherd."]
    assert assets._chapters(lines) == [
        "PERSUASION",
        "Chapter 1\n\nSir Walter Elliot, of Kellynch Hall, in Somersetshire,\n\nwas a man.",
        "CHAPTER II\n\nMr Shepherd.",
    ]


@pytest.mark.slow  # imports rdata
@pytest.mark.skipif(not (USER_CACHE / "assets" / "janeaustenr" / "extracted").is_dir(),
                    reason="r-cran-janeaustenr not fetched: bash scripts/fetch_assets.sh")
def test_convert_austen(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEZOO_CACHE", str(tmp_path))
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "janeaustenr").symlink_to(USER_CACHE / "assets" / "janeaustenr")
    assets.convert_austen()
    chapters = list(corpora.austen())
    assert 250 < len(chapters) < 300
    assert 3_500_000 < sum(map(len, chapters)) < 4_500_000
    assert any(c.startswith("Chapter 1\n\nIt is a truth universally acknowledged") for c in chapters)


@pytest.mark.slow
@pytest.mark.skipif(not (USER_CACHE / "models" / "smollm2-135m" / "config.json").is_file(),
                    reason="SmolLM2 not converted: bash scripts/fetch_assets.sh")
def test_smollm2_middle_layer_has_a_massive_sink(monkeypatch):
    monkeypatch.setenv("SAEZOO_CACHE", str(USER_CACHE))
    model, tokenizer = load_model("smollm2-135m")
    assert default_hook(model) == "model.layers.15"
    ids, mask = next(text.batch_contexts(text.pack_contexts(corpora.python_docs()[:5], tokenizer, 128), 1))
    norms = hooked_activations(model, "model.layers.15", ids)[0].norm(dim=-1)
    median = norms[mask[0]].median()
    assert 50 < median < 500
    # The first position (BOS, the attention sink) is the massive activation design §5 describes.
    assert norms[0] > 20 * median
