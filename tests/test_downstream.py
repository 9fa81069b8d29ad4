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


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=50, n_positions=32, bos_token_id=0, eos_token_id=0)).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path).eval()


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
    with torch.no_grad():
        clean = model(ids).logits
        original = model.transformer.h[1]
        model.transformer.h[1] = Replace(original, fn, mask)
        try:
            spliced = model(ids).logits
        finally:
            model.transformer.h[1] = original
    counted = mask[:, :-1] & mask[:, 1:]
    targets = ids[:, 1:][counted]
    ce_clean = F.cross_entropy(clean[:, :-1][counted], targets)
    ce = F.cross_entropy(spliced[:, :-1][counted], targets)
    kl = F.kl_div(F.log_softmax(spliced[:, :-1][counted], -1), F.log_softmax(clean[:, :-1][counted], -1), log_target=True, reduction="batchmean")
    return float(ce_clean), float(ce), float(kl)


def test_matches_reference(tiny_model, contexts):
    ids, mask = contexts
    fn = lambda x: 0.7 * x  # noqa: E731
    m = spliced_metrics(tiny_model, "transformer.h.1", FnSAE(32, fn), ids, mask, batch_size=4)
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
    m = spliced_metrics(tiny_model, "transformer.h.1", FnSAE(32, lambda x: x), *contexts)
    assert m["ce_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert m["kl_sae"] == pytest.approx(0.0, abs=1e-6)
    assert m["delta_ce"] == pytest.approx(0.0, abs=1e-5)
    assert m["cosine"] == pytest.approx(1.0, abs=1e-5)


def test_returning_zeros_is_zero_ablation(tiny_model, contexts):
    m = spliced_metrics(tiny_model, "transformer.h.1", FnSAE(32, torch.zeros_like), *contexts)
    assert m["ce_sae"] == pytest.approx(m["ce_zero"], rel=1e-6)
    assert m["ce_recovered"] == pytest.approx(0.0, abs=1e-5)


def test_special_positions_are_untouched(tiny_model, contexts):
    ids, mask = contexts
    none = torch.zeros_like(mask)
    m = spliced_metrics(tiny_model, "transformer.h.1", FnSAE(32, torch.zeros_like), ids, none)
    assert m["downstream_positions"] == 0
