"""First-letter absorption (saezoo/absorption.py) on real tiny transformers models.

The known-rate case: a random-init Llama read at its embedding output, whose word embeddings are
set by hand (a direction per first letter), and a hand-built flat SAE: one main latent per
letter, and a latent that fires on a planted subset of the words. On the planted "a" words the
main latent of "a" is silenced and the other latent carries the letter's direction, so the
absorption rate of "a" is the planted share of its test words, and 0 for every other letter.
"""

from __future__ import annotations

import random

import pytest
import torch
from activations_helpers import gpt2_dir, llama_dir  # noqa: F401  (fixtures)
from saezoo_flat.sae import FlatConfig, FlatSAE
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from saezoo.absorption import (
    LETTERS,
    PREFIX,
    absorption,
    build_task,
    first_letter_absorption,
    icl_prefix,
    vocabulary_words,
    word_activations,
)
from saezoo.activations.model import hooked_activations, load_model
from saezoo.errors import UsageError

D = 32
MARK = D - 1  # the dimension that marks a planted word
WORDS_PER_LETTER = 24


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``words`` plus special tokens and a few non-words."""
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", "<bos>", "42", "x-ray", ":", "\n", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


def letter_words(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    for letter in LETTERS:
        while sum(w[0] == letter for w in words) < WORDS_PER_LETTER:
            words.add(letter + "".join(rng.choice(LETTERS) for _ in range(4)))
    return sorted(words)


def planted_model(tokenizer, planted: set[int]) -> LlamaForCausalLM:
    """Embedding of a word = 4 · e_(its letter) + noise; planted words also get 3 · e_MARK."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=D, intermediate_size=2 * D, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    ids, letters = vocabulary_words(tokenizer)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        for i, letter in zip(ids.tolist(), letters.tolist()):
            emb[i] = 0.05 * torch.randn(D)
            emb[i, letter] += 4.0
            emb[i, MARK] = 3.0 if i in planted else 0.0
    return model


def planted_sae(absorber_decoder: torch.Tensor) -> FlatSAE:
    """Latent L < 26 reads and writes e_L (the main latent of letter L); the main latent of "a"
    is inhibited by the mark. Latent 26 fires on the mark with its decoder ``absorber_decoder``;
    the rest never fire."""
    sae = FlatSAE(D, FlatConfig(expansion_factor=1))
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.b_enc.fill_(-1.0)
        sae.b_dec.zero_()
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(D, D), dim=-1))
        for L in range(26):
            sae.W_enc[L, L] = 1.0
            sae.W_dec[L] = torch.nn.functional.one_hot(torch.tensor(L), D).float()
        sae.W_enc[MARK, 0] = -10.0
        sae.W_enc[MARK, 26] = 5.0 / 3.0
        sae.W_dec[26] = absorber_decoder
    return sae.eval()


@pytest.fixture(scope="module")
def planted():
    words = letter_words()
    tokenizer = word_tokenizer(words)
    ids = {w: tokenizer.convert_tokens_to_ids(w) for w in words}
    rng = random.Random(1)
    # 40 % of the "a" words, and 20 % of every other letter's words (so the absorbing latent is
    # no probe for "a" by itself: k-sparse probing must not take it as a main latent).
    marked = {ids[w] for w in words if rng.random() < (0.4 if w[0] == "a" else 0.2)}
    model = planted_model(tokenizer, marked)
    task = build_task(model, tokenizer, "model.embed_tokens", max_words=10_000, seed=0)
    return tokenizer, model, task, marked


def test_vocabulary_words_are_leading_space_alphabetic_tokens():
    tokenizer = word_tokenizer(["apple", "Banana", "zeta"])
    ids, letters = vocabulary_words(tokenizer)
    assert sorted(tokenizer.convert_ids_to_tokens(ids.tolist())) == ["Banana", "apple", "zeta"]
    assert sorted(LETTERS[i] for i in letters.tolist()) == ["a", "b", "z"]


def test_byte_level_tokenizer_keeps_only_words_after_a_space():
    """A real BPE tokenizer (GPT-2's byte-level scheme): " cat" is a word, "cat" (no space) is not."""
    from tokenizers import decoders, models as tmodels, pre_tokenizers as tpre

    vocab = {"<bos>": 0, "a": 1, "Ġcat": 2, "cat": 3, "Ġ4": 4, "Ġdog": 5, "Ġé": 6}
    tok = Tokenizer(tmodels.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = tpre.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>")
    ids, letters = vocabulary_words(fast)
    assert sorted(ids.tolist()) == [2, 5] and sorted(LETTERS[i] for i in letters.tolist()) == ["c", "d"]


def test_no_word_tokens_is_a_clear_error():
    vocab = {"<unk>": 0, "1": 1, "22": 2, "+": 3}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    with pytest.raises(UsageError, match="has no word tokens"):
        vocabulary_words(fast)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_cached_prompt_equals_the_whole_prompt(name, llama_dir, gpt2_dir):  # noqa: F811
    """Each word's activation after the shared prompt (its cache reused) is the activation of the
    whole prompt run on its own, at a block inside the model."""
    model, tokenizer = load_model(str(llama_dir if name == "llama" else gpt2_dir))
    hook = "model.layers.2" if name == "llama" else "transformer.h.2"
    ids, letters = vocabulary_words(tokenizer)
    prefix = icl_prefix(tokenizer, ids[:3].tolist(), letters[:3].tolist())
    got = word_activations(model, hook, prefix, ids, batch_size=7)
    whole = hooked_activations(model, hook, torch.tensor([prefix + [i] for i in ids.tolist()]))[:, -1]
    torch.testing.assert_close(got, whole, rtol=1e-4, atol=1e-5)


def test_planted_absorption_rate(planted):
    tokenizer, _, task, marked = planted
    absorber = torch.nn.functional.normalize(torch.nn.functional.one_hot(torch.tensor(0), D).float() + 0.6 * torch.nn.functional.one_hot(torch.tensor(MARK), D).float(), dim=0)
    metrics = absorption(planted_sae(absorber), task)
    assert metrics[f"{PREFIX}/letters"] == 26  # every letter's probe is good (F1 >= 0.6)
    # The reference: the planted share among the test "a" words that the probe gets right.
    test_a = [(int(i), bool(ok)) for i, L, tr, ok in zip(task.token_ids, task.letters, task.train, task.probe_correct) if L == 0 and not tr]
    counted = [i for i, ok in test_a if ok]
    assert len(counted) >= 3 and len(counted) >= len(test_a) - 1
    expected = sum(i in marked for i in counted) / len(counted)
    assert 0 < expected < 1
    assert metrics[f"{PREFIX}/letter/a"] == pytest.approx(expected)
    assert all(metrics[f"{PREFIX}/letter/{L}"] == 0 for L in LETTERS[1:])
    assert metrics[f"{PREFIX}/mean"] == pytest.approx(expected / 26)
    # Here the absorbing latent carries all of the letter's projection: the fraction agrees.
    assert metrics[f"{PREFIX}/fraction"] == pytest.approx(expected / 26)
    assert metrics[f"{PREFIX}/main_latents"] == 1
    assert metrics[f"{PREFIX}/words"] == 26 * WORDS_PER_LETTER


def test_a_silent_main_latent_without_an_aligned_absorber_is_not_absorption(planted):
    """Same silencing, but the latent that fires there writes only the mark: nothing absorbs "a"."""
    _, _, task, _ = planted
    metrics = absorption(planted_sae(torch.nn.functional.one_hot(torch.tensor(MARK), D).float()), task)
    assert metrics[f"{PREFIX}/mean"] == 0 and metrics[f"{PREFIX}/letter/a"] == 0


def test_several_saes_share_one_task_and_outliers_are_dropped(planted):
    tokenizer, model, task, marked = planted
    absorber = torch.nn.functional.one_hot(torch.tensor(0), D).float()
    threshold = float(task.acts.norm(dim=-1).kthvalue(len(task.acts) - 5).values)
    results = first_letter_absorption([planted_sae(absorber)] * 2, model, tokenizer, "model.embed_tokens", 10_000, max_norm=threshold)
    assert results[0] == results[1]
    assert results[0][f"{PREFIX}/words"] == len(task.acts) - 5


def test_too_few_words_is_a_clear_error(planted):
    tokenizer, model, _, _ = planted
    with pytest.raises(UsageError, match="at least 2 words"):
        build_task(model, tokenizer, "model.embed_tokens", max_words=1)
