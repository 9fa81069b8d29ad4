"""Spliced CE/KL against a hand-written reference on a tiny real transformers model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saezoo import SAE, SAEOutput
from saezoo.downstream import spliced_metrics


class FnSAE(SAE):
    """An 'SAE' whose reconstruction is any function of x (for analytic cases)."""

    Config = dict

    def __init__(self, d_in, fn):
        super().__init__(d_in, {})
        self.fn = fn

    def encode(self, x):
        return x

    def decode(self, codes):
        return self.fn(codes)

    def forward(self, x, knobs=None, dead_mask=None):
        return SAEOutput(self.fn(x), x, {})

    def decoder_directions(self):
        return torch.eye(self.d_in)


BLOCKS = {"gpt2": "transformer.h", "llama": "model.layers"}


@pytest.fixture(scope="module", params=sorted(BLOCKS))
def tiny_model(request, tmp_path_factory):
    """A tiny random-init GPT-2 or Llama (learned positions / rotary tables), saved and loaded back."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    if request.param == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=50, n_positions=32, bos_token_id=0, eos_token_id=0))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))
    model.save_pretrained(path)
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    loaded.hook_name = f"{BLOCKS[request.param]}.1"
    return loaded


@pytest.fixture(scope="module")
def contexts():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (6, 12), generator=gen)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False  # BOS
    mask[1, 9:] = False  # padding
    return ids, mask


class Replace(nn.Module):
    """Reference: wrap the block itself instead of using a hook."""

    def __init__(self, block, fn, mask):
        super().__init__()
        self.block, self.fn, self.mask = block, fn, mask

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        act = out[0] if isinstance(out, tuple) else out
        new = act.clone()
        new[self.mask] = self.fn(act[self.mask])
        return (new, *out[1:]) if isinstance(out, tuple) else new


def reference(model, ids, mask, fn):
    blocks = model.get_submodule(model.hook_name.rsplit(".", 1)[0])
    with torch.no_grad():
        clean = model(ids).logits
        original = blocks[1]
        blocks[1] = Replace(original, fn, mask)
        try:
            spliced = model(ids).logits
        finally:
            blocks[1] = original
    counted = mask[:, :-1] & mask[:, 1:]
    targets = ids[:, 1:][counted]
    ce_clean = F.cross_entropy(clean[:, :-1][counted], targets)
    ce = F.cross_entropy(spliced[:, :-1][counted], targets)
    kl = F.kl_div(F.log_softmax(spliced[:, :-1][counted], -1), F.log_softmax(clean[:, :-1][counted], -1), log_target=True, reduction="batchmean")
    return float(ce_clean), float(ce), float(kl)


def test_matches_reference(tiny_model, contexts):
    ids, mask = contexts
    fn = lambda x: 0.7 * x  # noqa: E731
    m = spliced_metrics(tiny_model, tiny_model.hook_name, FnSAE(32, fn), ids, mask, batch_size=4)
    ce_clean, ce_sae, kl_sae = reference(tiny_model, ids, mask, fn)
    _, ce_zero, kl_zero = reference(tiny_model, ids, mask, torch.zeros_like)
    assert m["ce_clean"] == pytest.approx(ce_clean, rel=1e-5)
    assert m["ce_sae"] == pytest.approx(ce_sae, rel=1e-5)
    assert m["ce_zero"] == pytest.approx(ce_zero, rel=1e-5)
    assert m["kl_sae"] == pytest.approx(kl_sae, rel=1e-4, abs=1e-7)
    assert m["kl_zero"] == pytest.approx(kl_zero, rel=1e-4)
    assert m["ce_recovered"] == pytest.approx((ce_zero - ce_sae) / (ce_zero - ce_clean), rel=1e-4)
    assert m["norm_ratio"] == pytest.approx(0.7, rel=1e-5)
    assert m["cosine"] == pytest.approx(1.0, rel=1e-5)


def test_perfect_reconstruction(tiny_model, contexts):
    m = spliced_metrics(tiny_model, tiny_model.hook_name, FnSAE(32, lambda x: x), *contexts)
    assert m["ce_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert m["kl_sae"] == pytest.approx(0.0, abs=1e-6)
    assert m["delta_ce"] == pytest.approx(0.0, abs=1e-5)
    assert m["cosine"] == pytest.approx(1.0, abs=1e-5)


def test_returning_zeros_is_zero_ablation(tiny_model, contexts):
    """Bit for bit: the SAE's rows and the ablated rows hold the same logits, and the metric
    must reduce them the same way wherever they sit in the batch (a matrix-vector product
    over the rows did not, on an AMD EPYC: ce_recovered 2.8e-5)."""
    m = spliced_metrics(tiny_model, tiny_model.hook_name, FnSAE(32, torch.zeros_like), *contexts)
    assert m["ce_sae"] == m["ce_zero"] and m["kl_sae"] == m["kl_zero"]
    assert m["ce_recovered"] == 0.0


def test_special_positions_are_untouched(tiny_model, contexts):
    ids, mask = contexts
    none = torch.zeros_like(mask)
    m = spliced_metrics(tiny_model, tiny_model.hook_name, FnSAE(32, torch.zeros_like), ids, none)
    assert m["downstream_positions"] == 0


def test_one_forward_pass_serves_all_three_runs(tiny_model, contexts):
    """The layers below the hook run once per batch: the batch triples at the hook."""
    calls = []
    handle = tiny_model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        spliced_metrics(tiny_model, tiny_model.hook_name, FnSAE(32, lambda x: 0.5 * x), *contexts, batch_size=3)
    finally:
        handle.remove()
    assert len(calls) == 2  # 6 contexts in batches of 3


def test_cached_baseline_skips_the_ablated_run(tiny_model, contexts, tmp_path):
    """The zero-ablated run does not depend on the SAE: the second evaluation on the same
    contexts reads its sums and runs only the clean and SAE rows above the hook."""
    rows = []
    block = tiny_model.get_submodule(tiny_model.hook_name.rsplit(".", 1)[0] + ".2")
    handle = block.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    key = {"model": "tiny"}
    try:
        first = spliced_metrics(tiny_model, tiny_model.hook_name, FnSAE(32, lambda x: 0.5 * x), *contexts,
                                baseline_key=key, cache_dir=tmp_path)
        first_rows, rows[:] = list(rows), []
        second = spliced_metrics(tiny_model, tiny_model.hook_name, FnSAE(32, lambda x: 0.9 * x), *contexts,
                                 baseline_key=key, cache_dir=tmp_path)
        uncached = spliced_metrics(tiny_model, tiny_model.hook_name, FnSAE(32, lambda x: 0.9 * x), *contexts)
    finally:
        handle.remove()
    assert first_rows == [18]  # 6 contexts x 3 runs, in one batch
    assert rows[:1] == [12]  # then clean + SAE only
    assert len(list((tmp_path / "downstream").glob("*.json"))) == 1
    assert second["ce_zero"] == first["ce_zero"] and second["kl_zero"] == first["kl_zero"]
    for name in ("ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero", "ce_recovered"):
        assert second[name] == pytest.approx(uncached[name], rel=1e-4, abs=1e-6), name  # batch shapes differ


def test_a_damaged_cached_baseline_is_never_used(tiny_model, contexts, tmp_path):
    """Garbage in the baseline file: recomputed. Sums that do not fit the contexts: refused
    in one line, and the file removed so that the next evaluation recomputes it."""
    import json

    from saezoo.errors import UsageError

    key, sae = {"model": "tiny"}, FnSAE(32, lambda x: 0.5 * x)
    first = spliced_metrics(tiny_model, tiny_model.hook_name, sae, *contexts, baseline_key=key, cache_dir=tmp_path)
    [file] = (tmp_path / "downstream").glob("*.json")
    stored = json.loads(file.read_text())
    file.write_text("[1, 2]")
    again = spliced_metrics(tiny_model, tiny_model.hook_name, sae, *contexts, baseline_key=key, cache_dir=tmp_path)
    assert again == first and json.loads(file.read_text()) == stored
    stored["sums"]["positions"] += 1
    file.write_text(json.dumps(stored))
    with pytest.raises(UsageError, match="damaged cached baseline"):
        spliced_metrics(tiny_model, tiny_model.hook_name, sae, *contexts, baseline_key=key, cache_dir=tmp_path)
    assert not file.exists()


def test_several_saes_share_the_clean_and_ablated_runs(tiny_model, contexts):
    """Two SAEs in one call: 6 contexts x (clean + 2 SAEs + zero) rows above the hook, and
    each SAE's metrics equal those of evaluating it alone."""
    from saezoo.downstream import spliced_metrics_many

    rows = []
    block = tiny_model.get_submodule(tiny_model.hook_name.rsplit(".", 1)[0] + ".2")
    handle = block.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    fns = (lambda x: 0.5 * x, lambda x: x.flip(-1))
    try:
        together = spliced_metrics_many(tiny_model, tiny_model.hook_name, [FnSAE(32, f) for f in fns], *contexts)
    finally:
        handle.remove()
    assert rows == [24]
    for fn, metrics in zip(fns, together):
        alone = spliced_metrics(tiny_model, tiny_model.hook_name, FnSAE(32, fn), *contexts)
        assert metrics.keys() == alone.keys()
        for name, value in alone.items():
            assert metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-4), name  # batch shapes differ
    assert together[0]["cosine"] == pytest.approx(1.0, abs=1e-5) and together[1]["cosine"] < 0.9
