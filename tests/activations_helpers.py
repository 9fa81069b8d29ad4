"""Tiny real language models for the activation tests: random-init GPT-2 and Llama configs with a
word-level tokenizer trained on a generated corpus, saved with ``save_pretrained`` and loaded
back through ``from_pretrained`` like any local model. No mocks, no hub.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[1]
# Built-in plugins import as top-level packages; make them importable from a plain checkout too.
if str(REPO / "plugins") not in sys.path:
    sys.path.append(str(REPO / "plugins"))

WORDS = "the a cat dog sat ran on under mat log red blue big small and then it was very quick slow".split()
# A word whose embedding is made huge, to stand in for a massive activation.
OUTLIER_WORD = "zzz"


def corpus(n_docs: int = 400, seed: int = 0) -> list[str]:
    """Documents of 5-60 random words; a few contain ``OUTLIER_WORD``. About 13k words."""
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(5, 60))]
        if i % 7 == 3:
            words.insert(rng.randrange(len(words)), OUTLIER_WORD)
        docs.append(f"doc{i} " + " ".join(words))
    return docs


def make_tokenizer(directory: Path, docs: list[str], bos: bool = True) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on ``docs``, saved in ``directory``."""
    specials = ["<unk>", "<pad>", "<eos>"] + (["<bos>"] if bos else [])
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(docs + [OUTLIER_WORD], trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>" if bos else None,
    )
    fast.save_pretrained(directory)
    return fast


def make_model(directory: Path, arch: str = "llama", layers: int = 4, hidden: int = 32, docs: list[str] | None = None,
               outlier_scale: float = 0.0, bos: bool = True) -> Path:
    """Save a random-init ``arch`` ("gpt2" or "llama") model and its tokenizer in ``directory``.

    ``outlier_scale`` > 0 multiplies the embedding of ``OUTLIER_WORD`` by that factor.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(directory, docs or corpus(), bos=bos)
    torch.manual_seed(0)
    vocab = len(tokenizer)
    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=hidden, n_layer=layers, n_head=2,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(config)
        embedding = model.transformer.wte
    elif arch == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                             num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                             max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        model = LlamaForCausalLM(config)
        embedding = model.model.embed_tokens
    else:
        raise ValueError(arch)
    if outlier_scale:
        with torch.no_grad():
            embedding.weight[tokenizer.convert_tokens_to_ids(OUTLIER_WORD)] *= outlier_scale
    model.save_pretrained(directory)
    return directory


def write_jsonl(path: Path, docs: list[str], column: str = "text") -> Path:
    path.write_text("".join(json.dumps({column: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("gpt2"), "gpt2")


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", corpus())
