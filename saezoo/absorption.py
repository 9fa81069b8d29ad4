"""First-letter absorption on a language model (Chanin et al. 2024, "A is for Absorption"),
measured the way SAEBench's absorption eval runs it, offline from the model's own vocabulary.

The task (independent of any SAE, built once per model and hook: :func:`build_task`):

* Words: the vocabulary tokens whose text in running text is a leading space followed by ASCII
  letters only (`` cat``, `` House``), labelled with their first letter; a seeded sample of at
  most ``max_words`` of them, split 80/20 into train and test words.
* Activations: each word is read at the hook in SAEBench's in-context prompt, the sink token and
  ten answered examples (train words) ``"{word} has the first letter: {L}"`` on their own lines,
  then the word. The model is causal, so SAEBench's unanswered suffix after the word (``" has
  the first letter:"``) cannot change the activation at the word, and is left out. The examples
  are the same for every word, so their keys and values are computed once and each word costs
  one position. Words whose activation norm is above the source's outlier threshold are dropped,
  as in training.
* Probe: one-vs-rest logistic regression per letter on the train words' activations, classes
  balanced. A letter is measured when its probe's F1 on the test words is at least
  ``MIN_PROBE_F1`` (SAEBench's filter: where the model itself does not represent the letter
  linearly there is nothing for an SAE to absorb).

Per SAE (:func:`absorption`):

* Main latents of letter L (SAEBench's k-sparse probing): an L1-penalised one-vs-rest logistic
  regression on the train words' codes ranks the latents per letter; for k = 1, 2, ... MAX_K a
  logistic regression on the top k latents is fitted and scored (F1 on test words); k grows
  while F1 improves by more than ``F1_JUMP`` (a larger jump is feature splitting: the new
  latent is one more main latent). The main latents are the top k at the last accepted k.
* On the test words of letter L that the probe gets right, with p the probe's unit direction,
  x0 = decode(0) the SAE's output for silent codes, and latent j's contribution along p
  s_j = c_j (d_j · p) (d_j its decoder row, raw units):
  - *full absorption* (the headline rate): every main latent is silent, the latent with the
    largest contribution has cos(d_j, p) ≥ ``ABSORBER_COSINE`` and carries at least
    ``PROJECTION_SHARE`` of (x − x0) · p, which is positive;
  - *absorption fraction*: the share of (x − x0) · p carried by up to ``MAX_ABSORBERS`` other
    latents aligned with p (cosine ≥ ``FRACTION_COSINE``) rather than by the main latents
    (0 when they carry less than ``PROJECTION_SHARE`` of it or the main latents carry all).
  Each is averaged over the letter's tokens, then over measured letters.

Differences from SAEBench, on purpose: the projection is of x − decode(0) (SAEBench projects
the raw x; the latents can only account for the part beyond the decoder bias), contributions use
the decoder row as it is (SAEBench multiplies the activation by the cosine, which is the same
for unit-norm rows; a saved saezoo SAE has its input scale folded into the rows), one shared
set of in-context examples (SAEBench samples ten per word), and a seeded split.

A small model represents first letters weakly (SAEBench recommends models of 2B parameters and
more); on SmolLM2-135M the number is exploratory (docs/metrics.md).
"""

from __future__ import annotations

import copy
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saezoo.activations.model import hooked_activations
from saezoo.activations.text import SpecialTokens
from saezoo.errors import UsageError
from saezoo.sae import SAE

LETTERS = "abcdefghijklmnopqrstuvwxyz"
# SAEBench's prompt, answered for the in-context examples.
TEMPLATE = "{word} has the first letter: {letter}"
ICL_EXAMPLES = 10
TEST_SHARE = 0.2
# SAEBench's thresholds (absorption eval config and its calculator).
MIN_PROBE_F1 = 0.6
MAX_K = 10
F1_JUMP = 0.03
ABSORBER_COSINE = 0.025
FRACTION_COSINE = 0.1
PROJECTION_SHARE = 0.4
MAX_ABSORBERS = 3
L1_PENALTY = 0.01
# A code at or below this is silent.
SILENT = 1e-8
PREFIX = "absorption_first_letter"
TURN_OFF = "turn the metric off with train.absorption_words=0 (saezoo eval: --absorption-words 0)"


@dataclass
class FirstLetterTask:
    """The SAE-independent part: words, their activations, the split and the probe."""

    token_ids: Tensor  # [n] int64
    letters: Tensor  # [n] int64, index into LETTERS
    acts: Tensor  # [n, d] float32, raw activations at the hook
    train: Tensor  # [n] bool; the others are test words
    probe_weight: Tensor  # [26, d]: letter L's probe direction is row L (raw activation space)
    probe_bias: Tensor  # [26]
    excluded_outliers: int

    @property
    def probe_correct(self) -> Tensor:
        """``[n]``: the probe of the word's own letter fires (logit > 0)."""
        logits = self.acts @ self.probe_weight.T + self.probe_bias
        return logits.gather(1, self.letters.unsqueeze(1)).squeeze(1) > 0

    def probe_f1(self) -> Tensor:
        """``[26]``: each letter's probe F1 on the test words (0 for a letter without any)."""
        test = ~self.train
        logits = self.acts[test] @ self.probe_weight.T + self.probe_bias
        return _f1(logits > 0, _one_hot(self.letters[test]))


# --- the words ---------------------------------------------------------------------------------


def vocabulary_words(tokenizer) -> tuple[Tensor, Tensor]:
    """``(token_ids, letters)`` of the vocabulary tokens that read as a word of ASCII letters
    starting with a space (the tokenizer's own leading-space marker: ``Ġ``, ``▁``, ...).

    A token's text is taken in running text: decoded after a reference token, minus the
    reference's own text, so tokenizers that drop a leading space at the start of a decode
    (SentencePiece) still show it.
    """
    vocab = tokenizer.get_vocab()
    specials = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = sorted(i for i in set(vocab.values()) if i not in specials)
    reference = tokenizer("a", add_special_tokens=False)["input_ids"][:1]
    if not ids or not reference:
        raise UsageError("first-letter absorption: the tokenizer has no vocabulary to read words from")
    head = tokenizer.decode(reference)
    texts = tokenizer.batch_decode([reference + [i] for i in ids])
    words, letters = [], []
    for i, text in zip(ids, texts):
        if not text.startswith(head):
            continue
        word = text[len(head):]
        body = word[1:]
        if word[:1] == " " and body.isascii() and body.isalpha():
            words.append(i)
            letters.append(LETTERS.index(body[0].lower()))
    if len(words) < 2:
        raise UsageError(
            f"first-letter absorption: the tokenizer has {len(words) or 'no'} word "
            f"token{'' if len(words) == 1 else 's'} "
            f"(a leading space, then ASCII letters), too few for a train and a test split; {TURN_OFF}"
        )
    return torch.tensor(words, dtype=torch.long), torch.tensor(letters, dtype=torch.long)


def icl_prefix(tokenizer, words: list[int], letters: list[int]) -> list[int]:
    """The prompt before a word: the sink token, then one answered example per line."""
    lines = [TEMPLATE.format(word=tokenizer.decode([w]), letter=LETTERS[c].upper()) for w, c in zip(words, letters)]
    sink = SpecialTokens.of(tokenizer).sink
    body = tokenizer("\n".join(lines) + "\n", add_special_tokens=False)["input_ids"]
    return ([sink] if sink is not None else []) + body


# --- activations -------------------------------------------------------------------------------


@torch.no_grad()
def word_activations(model: nn.Module, hook: str, prefix: list[int], word_ids: Tensor, batch_size: int = 256) -> Tensor:
    """``[n, d]`` float32: the hooked activation at each word, placed right after ``prefix``.

    The prefix's keys and values are computed once and shared by every word; that speed-up is
    checked against the plain pass (the whole prompt per word) on the first words, and the plain
    pass is used when the model does not take a cache or disagrees with it.
    """
    plain = lambda ids: _plain(model, hook, prefix, ids)  # noqa: E731
    cached = _cached_runner(model, hook, prefix)
    if cached is not None:
        head = word_ids[:4]
        try:
            agree = _close(cached(head), plain(head))
        except (RuntimeError, TypeError, ValueError, AttributeError, IndexError):
            agree = False
        if not agree:
            warnings.warn(
                f"{type(model).__name__}: the cached prompt disagrees with the plain pass; running each prompt whole "
                "(slower)",
                stacklevel=2,
            )
            cached = None
    run = cached or plain
    return torch.cat([run(ids) for ids in word_ids.split(batch_size)])


def _plain(model: nn.Module, hook: str, prefix: list[int], word_ids: Tensor) -> Tensor:
    ids = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(len(word_ids), -1), word_ids.unsqueeze(1)], dim=1)
    return hooked_activations(model, hook, ids)[:, -1]


def _cached_runner(model: nn.Module, hook: str, prefix: list[int]) -> Callable[[Tensor], Tensor] | None:
    """A function from word ids to their activations that reuses the prefix's cache, or None
    when this transformers has no ``DynamicCache``."""
    try:
        from transformers import DynamicCache
    except ImportError:
        return None
    # transformers 5 renames the argument (``past_key_values`` is deprecated there).
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache()
    hooked_activations(model, hook, torch.tensor([prefix]), **{name: cache, "use_cache": True})

    def run(word_ids: Tensor) -> Tensor:
        batch = copy.deepcopy(cache)
        batch.batch_repeat_interleave(len(word_ids))
        return hooked_activations(model, hook, word_ids.unsqueeze(1), **{name: batch, "use_cache": True})[:, -1]

    return run


def _close(a: Tensor, b: Tensor) -> bool:
    # bf16 models differ by about 1 % between the two orders of summation.
    return bool(((a - b).norm(dim=-1) <= 0.05 * b.norm(dim=-1) + 1e-6).all())


# --- the task ----------------------------------------------------------------------------------


@torch.no_grad()
def build_task(
    model: nn.Module,
    tokenizer,
    hook: str,
    max_words: int,
    max_norm: float | None = None,
    seed: int = 0,
) -> FirstLetterTask:
    """Words, activations, split and probe for one model and hook (see the module docstring)."""
    if max_words < 2:
        raise UsageError(f"first-letter absorption needs at least 2 words, got {max_words}")
    token_ids, letters = vocabulary_words(tokenizer)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(token_ids), generator=gen)[:max_words]
    token_ids, letters = token_ids[order], letters[order]
    train = torch.arange(len(token_ids)) >= round(TEST_SHARE * len(token_ids))
    examples = train.nonzero().flatten()[:ICL_EXAMPLES]
    prefix = icl_prefix(tokenizer, token_ids[examples].tolist(), letters[examples].tolist())
    acts = word_activations(model, hook, prefix, token_ids)
    keep = acts.norm(dim=-1) <= max_norm if max_norm is not None else torch.ones(len(acts), dtype=torch.bool)
    token_ids, letters, acts, train = token_ids[keep], letters[keep], acts[keep], train[keep]
    if not train.any() or train.all():
        raise UsageError(
            f"first-letter absorption: {len(acts)} word tokens are too few for a train and a test split; {TURN_OFF}"
        )
    # Scaling the inputs by one number conditions the fit and leaves the direction unchanged.
    scale = float(acts[train].norm(dim=-1).mean().clamp_min(1e-12))
    weight, bias = _fit_logistic(
        lambda w, b: (acts[train] / scale) @ w.T + b, (len(LETTERS), acts.shape[1]), _one_hot(letters[train])
    )
    return FirstLetterTask(token_ids, letters, acts, train, weight / scale, bias, int((~keep).sum()))


# --- one SAE -----------------------------------------------------------------------------------


@torch.no_grad()
def absorption(
    sae: SAE, task: FirstLetterTask, device: torch.device | str = "cpu", batch_size: int = 1024
) -> dict[str, float]:
    """The SAE's first-letter absorption on ``task``: ``absorption_first_letter/*`` metrics."""
    sae = sae.to(device).eval()
    codes = _sparse_codes(sae, task.acts, device, batch_size)  # [n, width] sparse, on the CPU
    train, test = task.train, ~task.train
    y = _one_hot(task.letters)
    f1_probe = task.probe_f1()
    measured = [
        L for L in range(len(LETTERS)) if f1_probe[L] >= MIN_PROBE_F1 and y[train, L].any() and (~y[train, L]).any()
    ]
    main = _main_latents(codes, y, train, measured)
    decoder = sae.decoder_directions().detach().float().cpu()  # [width, d]
    x0 = sae.decode(torch.zeros(1, sae.width, device=device)).float().cpu()[0]
    direction = torch.nn.functional.normalize(task.probe_weight, dim=-1)  # [26, d]
    along = decoder @ direction.T  # [width, 26]: d_j · p_L
    cosine = along / decoder.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    correct = task.probe_correct & test
    out: dict[str, float] = {}
    full_rates, fractions, counts, f1s, sizes = [], [], [], [], []
    for L in measured:
        rows = (correct & (task.letters == L)).nonzero().flatten()
        if not len(rows):
            continue
        c = codes.index_select(0, rows).to_dense()  # [t, width]
        contribution = c * along[:, L]  # [t, width]: each latent's share of the projection
        projection = (task.acts[rows] - x0) @ direction[L]  # [t]
        full, fraction = _absorbed(c, contribution, projection, main[L], cosine[:, L])
        full_rates.append(float(full.double().mean()))
        fractions.append(float(fraction.double().mean()))
        counts.append(len(rows))
        f1s.append(float(f1_probe[L]))
        sizes.append(len(main[L]))
        out[f"{PREFIX}/letter/{LETTERS[L]}"] = full_rates[-1]
    if full_rates:
        out[f"{PREFIX}/mean"] = sum(full_rates) / len(full_rates)
        out[f"{PREFIX}/fraction"] = sum(fractions) / len(fractions)
        out[f"{PREFIX}/probe_f1"] = sum(f1s) / len(f1s)
        out[f"{PREFIX}/main_latents"] = sum(sizes) / len(sizes)
    out[f"{PREFIX}/letters"] = float(len(full_rates))
    out[f"{PREFIX}/tokens"] = float(sum(counts))
    out[f"{PREFIX}/words"] = float(len(task.letters))
    return out


def _absorbed(
    codes: Tensor, contribution: Tensor, projection: Tensor, main: list[int], cosine: Tensor
) -> tuple[Tensor, Tensor]:
    """Per token: full absorption (bool) and absorption fraction, for one letter's tokens."""
    main_idx = torch.tensor(main, dtype=torch.long)
    main_silent = (codes[:, main_idx] <= SILENT).all(dim=1)
    top = contribution.max(dim=1)
    full = (
        main_silent
        & (projection > 0)
        & (cosine[top.indices] >= ABSORBER_COSINE)
        & (top.values >= PROJECTION_SHARE * projection)
    )
    main_part = contribution[:, main_idx].sum(dim=1)
    others = contribution.clone()
    others[:, main_idx] = 0
    others[:, cosine < FRACTION_COSINE] = 0
    absorbers = others.clamp_min(0).topk(min(MAX_ABSORBERS, others.shape[1]), dim=1).values.sum(dim=1)
    unaccounted = projection - main_part
    taken = torch.minimum(absorbers, unaccounted)
    fraction = (taken / (taken + main_part).clamp_min(1e-12)).clamp(0, 1)
    fraction = torch.where(main_part <= 0, torch.ones_like(fraction), fraction)
    none = (projection <= 0) | (main_part >= projection) | (absorbers < PROJECTION_SHARE * projection)
    fraction = torch.where(none, torch.zeros_like(fraction), fraction)
    return full, fraction


def _main_latents(codes: Tensor, y: Tensor, train: Tensor, letters: list[int]) -> dict[int, list[int]]:
    """Each letter's main latents by k-sparse probing (see the module docstring)."""
    if not letters:
        return {}
    width = codes.shape[1]
    rows = train.nonzero().flatten()
    x_train = codes.index_select(0, rows).coalesce()
    scale = float(x_train.values().abs().mean()) if x_train.values().numel() else 1.0
    x_train = x_train * (1.0 / max(scale, 1e-12))
    ranking = _fit_l1_logistic(x_train, y[train], width)  # [26, width]
    top = ranking.topk(min(MAX_K, width), dim=1).indices  # [26, K]
    columns = top[letters].flatten().unique()
    dense = codes.index_select(1, columns).to_dense() / scale  # [n, m]: only the candidate latents
    where = {int(c): i for i, c in enumerate(columns)}
    out: dict[int, list[int]] = {}
    best = {L: -1.0 for L in letters}
    done: set[int] = set()
    for k in range(1, top.shape[1] + 1):
        active = [L for L in letters if L not in done]
        if not active:
            break
        picked = torch.tensor([[where[int(j)] for j in top[L, :k]] for L in active])  # [a, k]
        features = dense[:, picked]  # [n, a, k]
        labels = y[:, active]
        weight, bias = _fit_logistic(lambda w, b: (features[train] * w).sum(-1) + b, (len(active), k), labels[train])
        f1 = _f1((features[~train] * weight).sum(-1) + bias > 0, labels[~train])
        for i, L in enumerate(active):
            if float(f1[i]) > best[L] + F1_JUMP:
                best[L] = float(f1[i])
                out[L] = top[L, :k].tolist()
            else:
                done.add(L)
    return out


def _sparse_codes(sae: SAE, acts: Tensor, device: torch.device | str, batch_size: int) -> Tensor:
    chunks = [sae.encode(x.to(device)).float().cpu().to_sparse() for x in acts.split(batch_size)]
    return torch.cat(chunks).coalesce()


# --- logistic regression -----------------------------------------------------------------------


def _fit_logistic(
    logits: Callable[[Tensor, Tensor], Tensor], shape: tuple[int, int], y: Tensor, l2: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """One-vs-rest logistic regression, positives and negatives weighted equally per class
    (``pos_weight`` = negatives / positives), a small L2 penalty; L-BFGS on the full batch
    (deterministic). ``logits(weight [C, f], bias [C])`` gives ``[n, C]``."""
    weight = torch.zeros(shape, requires_grad=True)
    bias = torch.zeros(shape[0], requires_grad=True)
    pos_weight = _pos_weight(y)
    target = y.float()
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=100, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(logits(weight, bias), target, pos_weight=pos_weight)
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


def _fit_l1_logistic(x: Tensor, y: Tensor, width: int, steps: int = 100, lr: float = 0.01) -> Tensor:
    """The ranking probe of k-sparse probing: one-vs-rest logistic regression on sparse codes
    ``x`` ``[n, width]`` with an L1 penalty on the weights (SAEBench's), Adam on the full batch
    with an exponentially decaying rate; returns the weights ``[C, width]``."""
    weight = torch.zeros(width, y.shape[1], requires_grad=True)
    bias = torch.zeros(y.shape[1], requires_grad=True)
    pos_weight = _pos_weight(y)
    target = y.float()
    opt = torch.optim.Adam([weight, bias], lr=lr)
    decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.01 ** (1 / steps))
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            logits = torch.sparse.mm(x, weight) + bias
            loss = nn.functional.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
            loss = loss + L1_PENALTY * weight.abs().sum(0).mean()
            loss.backward()
            opt.step()
            decay.step()
    return weight.detach().T


def _pos_weight(y: Tensor) -> Tensor:
    positives = y.sum(0).float()
    return ((len(y) - positives) / positives.clamp_min(1)).clamp_min(1e-3)


def _one_hot(letters: Tensor) -> Tensor:
    return nn.functional.one_hot(letters, len(LETTERS)).bool()


def _f1(predicted: Tensor, truth: Tensor) -> Tensor:
    """Per column F1 of boolean predictions ``[n, C]`` against the truth."""
    tp = (predicted & truth).sum(0).double()
    fp = (predicted & ~truth).sum(0).double()
    fn = (~predicted & truth).sum(0).double()
    return 2 * tp / (2 * tp + fp + fn).clamp_min(1)


# --- several SAEs on one model -----------------------------------------------------------------


def first_letter_absorption(
    saes: list[SAE],
    model: nn.Module,
    tokenizer,
    hook: str,
    max_words: int,
    max_norm: float | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> list[dict[str, float]]:
    """Each SAE's absorption on one task (words, activations and probe shared by all)."""
    task = build_task(model, tokenizer, hook, max_words, max_norm=max_norm, seed=seed)
    return [absorption(sae, task, device) for sae in saes]
