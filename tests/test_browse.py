"""saezoo browse: the streaming statistics against brute force, and a site built by the real CLI
on a tiny real model with a hand-built SAE whose latents are planted on known words, checked
in its data files and in headless Chromium (Debian's chromium, driven by playwright)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from activations_helpers import corpus, make_model, write_jsonl
from helpers import run_cli
from saezoo import checkpoint
from saezoo.browse.stats import AFTER, BEFORE, HIST_BINS, LatentStats

# --- the streaming statistics ---------------------------------------------------------------


def sparse_codes(contexts: int, t: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.rand(contexts, t, width, generator=g) * 5
    return codes * (torch.rand(contexts, t, width, generator=g) < 0.15)


def fed(codes: torch.Tensor, chunk: int, **options) -> LatentStats:
    st = LatentStats(codes.shape[-1], **options)
    for start in range(0, len(codes), chunk):
        st.update(codes[start : start + chunk], codes[start : start + chunk].shape[0] * codes.shape[1])
    return st


def test_top_examples_equal_a_brute_force_sort():
    codes = sparse_codes(13, 9, 6, seed=0)
    k = 5
    st = fed(codes, chunk=3, k=k)
    flat = codes.reshape(-1, 6)
    brute = flat.sort(dim=0, descending=True).values[:k]
    assert torch.equal(st.top.values, brute)
    padded = torch.nn.functional.pad(codes, (0, 0, BEFORE, AFTER))
    for j in range(6):
        for i in range(k):
            ctx, pos = int(st.top.context[i, j]), int(st.top.position[i, j])
            assert codes[ctx, pos, j] == st.top.values[i, j]
            # The window: the same latent's activations around the example, zeros past the context.
            assert torch.equal(st.top.window[i, j], padded[ctx, pos : pos + BEFORE + 1 + AFTER, j])


def test_counts_histogram_reservoir_and_record_equal_brute_force():
    codes = sparse_codes(11, 7, 5, seed=1)
    st = fed(codes, chunk=4, samples=6, keep_codes=True)
    flat = codes.reshape(-1, 5)
    firing = flat > 0
    assert torch.equal(st.fires, firing.sum(0))
    assert torch.equal(st.histogram().sum(1), firing.sum(0))
    assert st.tokens == len(flat)
    assert torch.equal(st.record.firing(torch.arange(5)), firing)  # the codes kept for the tree
    # Every reservoir entry is a real firing of its latent, and no firing is drawn twice.
    for j in range(5):
        taken = [(int(c), int(p)) for c, p, v in zip(st.sample.context[:, j], st.sample.position[:, j], st.sample.values[:, j]) if v > 0]
        assert len(taken) == min(6, int(firing[:, j].sum())) == len(set(taken))
        for c, p in taken:
            assert codes[c, p, j] > 0


def test_reservoir_is_uniform_over_firings():
    """Each of 40 firings of one latent lands in an 8-slot reservoir with probability 1/5."""
    codes = torch.zeros(40, 1, 1)
    codes[:, 0, 0] = torch.arange(1, 41).float()
    hits = torch.zeros(40)
    for seed in range(300):
        st = fed(codes, chunk=7, samples=8, seed=seed)
        hits[st.sample.context[:, 0]] += 1
    share = hits / 300
    assert (share - 0.2).abs().max() < 0.1, share
    # Early and late firings alike: no bias towards the first or the last chunks.
    assert abs(float(share[:20].mean() - share[20:].mean())) < 0.03


def test_histogram_bins_by_log_activation():
    codes = torch.tensor([0.0011, 0.0125, 1.05, 999.0, 1e6]).reshape(5, 1, 1)
    st = fed(codes, chunk=5)
    h = st.histogram()[0]
    assert int(h.sum()) == 5
    assert h[0] == 1 and h[HIST_BINS // 6] == 1 and h[HIST_BINS // 2] == 1 and h[-1] == 2


# --- a planted SAE on a tiny real model -----------------------------------------------------------

WIDTH_PER_DIM = 1
CAT, PARENT = 2, 21  # latent 2 fires on "cat"; latent 21 on the same direction, twice as often


def planted_run(root: Path) -> tuple[Path, dict]:
    """A run directory whose flat SAE has latent i firing on word i of the tokenizer (on no
    other token) and latent PARENT on the cat direction at a lower threshold (a superset of
    CAT's tokens: CAT's inferred parent)."""
    from saezoo.activations.model import hooked_activations
    from saezoo.activations.model_source import ModelSource

    docs = corpus(400)
    model_dir = make_model(root / "model", "llama", layers=2, docs=docs)
    data = write_jsonl(root / "corpus.jsonl", docs)
    src = ModelSource(str(model_dir), "model.layers.0", str(data), context_length=32, cache_dir=root / "cache", model_dtype="float32")
    ids, mask = src.eval_contexts(4000)
    x = hooked_activations(src.model, "model.layers.0", ids)[mask]
    tok = ids[mask]
    words = ["dog", "sat", "cat", "ran", "on", "under", "mat", "log", "red", "blue", "big", "small", "and", "then", "it", "was", "very", "quick", "slow", "the", "a"]
    d = x.shape[1]
    W_enc, b_enc = torch.zeros(d, d), torch.full((d,), -1.0)
    for i, word in enumerate(words):
        is_word = tok == src.tokenizer.convert_tokens_to_ids(word)
        w = x[is_word].mean(0) - x[~is_word].mean(0)
        proj = x @ w
        threshold = float(proj[~is_word].max()) + 1e-3  # silent on every other token
        scale = max(float(proj.max()) - threshold, 1e-3)  # the largest activation is 1
        W_enc[:, i], b_enc[i] = w / scale, -threshold / scale
        if i == CAT:
            fires = int((proj > threshold).sum())
            assert fires >= 20, "the cat direction separates too few cat tokens"
            lower = float(proj.sort(descending=True).values[2 * fires])
            W_enc[:, PARENT], b_enc[PARENT] = w / scale, -lower / scale
    W_dec = torch.nn.functional.normalize(torch.randn(d, d, generator=torch.Generator().manual_seed(0)), dim=1)
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": torch.zeros(d)}
    run = root / "planted"
    data_cfg = {"source": "model", "model": str(model_dir), "hook": "model.layers.0", "dataset": str(data),
                "context_length": 32, "model_dtype": "float32", "cache_dir": str(root / "cache")}
    sae_cfg = {"expansion_factor": WIDTH_PER_DIM}
    checkpoint.write_json(run / checkpoint.CFG_FILE, checkpoint.run_header("flat", d, {"sae": sae_cfg, "data": data_cfg, "train": {}}, {}))
    checkpoint.save_tensors(run / checkpoint.WEIGHTS_FILE, tensors)
    checkpoint.write_json(run / checkpoint.METRICS_FILE, {"explained_variance": 0.5, "l0": 3.0})
    # B: the same latents in another order, for the side-by-side view.
    perm = torch.randperm(d, generator=torch.Generator().manual_seed(1))
    permuted = root / "permuted"
    shutil.copytree(run, permuted)
    checkpoint.save_tensors(permuted / checkpoint.WEIGHTS_FILE, {"W_enc": W_enc[:, perm], "b_enc": b_enc[perm], "W_dec": W_dec[perm], "b_dec": torch.zeros(d)})
    return run, {"perm": perm.tolist(), "permuted": permuted}


def read_data(path: Path):
    text = path.read_text()
    return json.loads(text[text.index(",") + 1 : text.rindex(");")])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browse")
    run, extra = planted_run(root)
    out = root / "site"
    proc = run_cli("browse", str(run), str(extra["permuted"]), "--tokens", "3000", "--out", str(out), "-q")
    assert proc.returncode == 0, proc.stderr
    return {"out": out, "run": run, **extra}


@pytest.mark.slow
def test_planted_latent_tops_its_contexts_and_the_tree(site):
    index = read_data(site["out"] / "data" / "index.js")
    a, b = index["sides"]
    shard = read_data(site["out"] / "data" / "a-0.js")
    cat = shard["latents"][str(CAT)]
    strings = shard["strings"]
    assert len(cat["top"]) == 20
    for ctx, toks, vals, focus in cat["top"]:
        assert strings[toks[focus]] == "cat" and vals[focus] > 0
        assert all(strings[t] == "cat" for t, v in zip(toks, vals) if v > 0)
    tops = [vals[focus] for _, _, vals, focus in cat["top"]]
    assert tops == sorted(tops, reverse=True) and tops[0] == pytest.approx(a["max"][CAT], rel=0.01)
    # Density from the same counts: CAT fires only on cat tokens, PARENT on twice as many.
    assert a["density"][PARENT] == pytest.approx(2 * a["density"][CAT], rel=0.05)
    assert a["token"][CAT] == "cat"
    assert a["tree"]["kind"] == "inferred" and a["tree"]["parents"][CAT] == PARENT
    # Side by side: B is A permuted, so each latent's best match is its own copy (cosine 1).
    perm = site["perm"]
    assert a["match"]["latent"] == [perm.index(j) for j in range(len(perm))]
    assert all(c == pytest.approx(1.0, abs=1e-3) for c in a["match"]["cosine"])
    assert b["token"][perm.index(CAT)] == "cat"
    assert a["metrics"] == {"explained_variance": 0.5, "l0": 3.0}


def chromium() -> str:
    path = os.environ.get("SAEZOO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("no chromium on this machine: run scripts/setup.sh (apt-get install chromium)")
    return path


@pytest.mark.slow
def test_in_headless_chromium(site, tmp_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run scripts/setup.sh (the dev extra)")
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto((site["out"] / "index.html").as_uri())
            page.wait_for_selector("body[data-ready=index]")
            assert page.locator("tbody tr").count() == 32
            # Search by the token a latent fires on, then open it from the index by keyboard.
            page.fill("#search", "cat")
            rows = page.locator("tbody tr")
            assert sorted(int(rows.nth(i).get_attribute("data-latent")) for i in range(rows.count())) == [CAT, PARENT]
            page.focus(f"tbody tr[data-latent='{CAT}']")
            page.keyboard.press("Enter")
            page.wait_for_selector("body[data-ready=latent]")
            panel = page.locator("section.panel[data-side=a]")
            first = panel.locator(".contexts.top .context").first
            assert first.locator(".tok.focus").inner_text() == "cat"
            assert "rgba(255, 140, 0" in first.locator(".tok.focus").get_attribute("style")
            assert panel.locator(".legend").count() == 1
            assert panel.locator(".promoted li").count() == 10 and panel.locator(".suppressed li").count() == 10
            assert panel.locator(".contexts.samples .context").count() >= 1
            # B's copy of the latent beside it.
            b_panel = page.locator("section.panel[data-side=b]")
            assert b_panel.locator(".contexts.top .context .tok.focus").first.inner_text() == "cat"
            page.screenshot(path=str(tmp_path / "latent.png"), full_page=True)
            page.keyboard.press("ArrowRight")
            page.wait_for_function(f"location.hash === '#latent/a/{CAT + 1}' && document.body.dataset.ready === 'latent'")
            # The tree: expand the cat direction's parent and read its child's contexts inline.
            page.goto((site["out"] / "index.html").as_uri() + "#tree")
            page.wait_for_selector("body[data-ready=tree]")
            node = page.locator(f"li[data-latent='{PARENT}']").first
            if not node.is_visible():  # PARENT has a parent of its own: open it first
                page.locator(f"li:has(li[data-latent='{PARENT}']) > .node button.toggle").first.click()
            node.locator(":scope > .node button.toggle").click()
            child = page.locator(f"li[data-latent='{CAT}']").first
            child.locator(".contexts.inline .tok.focus").first.wait_for()
            assert child.locator(".contexts.inline .tok.focus").first.inner_text() == "cat"
            page.screenshot(path=str(tmp_path / "tree.png"), full_page=True)
            page.goto((site["out"] / "index.html").as_uri() + "#run")
            page.wait_for_selector("body[data-ready=run]")
            assert "explained_variance" in page.locator("table.metrics").first.inner_text()
        finally:
            browser.close()
    assert not errors, errors
    assert (tmp_path / "latent.png").stat().st_size > 10_000


@pytest.mark.slow
def test_serve_answers_on_localhost_and_stops_on_ctrl_c(site, tmp_path):
    out = tmp_path / "served"
    proc = subprocess.Popen(
        [sys.executable, "-m", "saezoo.cli", "browse", str(site["run"]), "--tokens", "300", "--out", str(out),
         "--serve", "--port", "0", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C reaches a process in the foreground; a suite started in the background (`pytest &`)
        # hands its children SIGINT ignored, and Python then never turns it into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = []
        for line in proc.stdout:  # the summary line, then the address
            lines.append(line)
            if line.startswith("serving on "):
                break
        else:
            pytest.fail(f"no address printed: {lines} {proc.stderr.read()}")
        url = line.split()[2]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "index.html", timeout=30) as page:
            assert page.read() == (out / "index.html").read_bytes()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(url + "../../etc/passwd", timeout=30)  # nothing outside the site
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()


@pytest.mark.slow
def test_a_site_is_replaced_only_when_it_holds_nothing_else(site, tmp_path):
    """A rebuild deletes the old site, so --out may name one only while it holds nothing but a
    build's files: a file a user put into it stops the command, and is kept."""
    from saezoo.browse.site import prepare_out
    from saezoo.errors import UsageError

    old = tmp_path / "old"
    shutil.copytree(site["out"], old)
    prepare_out(old)  # a site as built: replaceable
    for planted in (old / "thesis.tex", old / "data" / "notes.js", old / "plots" / "figure.pdf"):
        planted.parent.mkdir(exist_ok=True)  # the planted run has no plots
        planted.write_text("mine")
        with pytest.raises(UsageError, match=f"{planted.name} is no file of it"):
            prepare_out(old)
        planted.unlink()
    (old / "thesis.tex").write_text("mine")
    proc = run_cli("browse", str(site["run"]), "--tokens", "300", "--out", str(old), "-q")
    assert proc.returncode == 2 and "thesis.tex is no file of it" in proc.stderr, proc.stderr
    assert (old / "thesis.tex").read_text() == "mine"
