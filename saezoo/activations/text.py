"""Text for activation harvesting: corpora by name, local file or hub id, packed into contexts.

A ``--dataset`` is, in this order: a name registered through the ``register_datasets`` hook;
a local file (``.txt``, ``.json``, ``.jsonl``, ``.csv``, ``.parquet``) or a directory of such
files; or a Hugging Face hub id. Files and hub datasets are read through ``datasets`` with
``streaming=True``, so a corpus is never held in memory. A ``.txt`` file yields one document per
paragraph (blank-line separated), which is the unit the held-out split works on.

Documents are packed into contexts of a fixed length. Every context starts with a sink token
(BOS; EOS when the tokenizer has no BOS; none when it has neither) and documents are separated
by EOS. The mask marks the positions that hold document text: the first position (the
attention sink, whose activations are orders of magnitude larger than the rest), separators and
padding are excluded from training and from metrics.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from saezoo.errors import UsageError
from saezoo.plugins import get_plugins

# One document in EVAL_EVERY is held out for evaluation, chosen by a hash of its text: the split
# does not depend on the order a stream delivers documents in, and duplicates land on one side.
# One in ten: the embedded austen corpus then holds out about 100k tokens (python-docs 48k).
EVAL_EVERY = 10

SPLITS = ("train", "eval")

_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

# Documents handed to the tokenizer at once: fast tokenizers batch in Rust, a stream stays a stream.
_TOKENIZE_CHUNK = 64


def iter_documents(dataset: str, text_column: str = "text") -> Iterator[str]:
    """The documents of ``dataset`` in a fixed order (see the module docstring for the lookup)."""
    plugins = get_plugins()
    if dataset in plugins.datasets:
        yield from plugins.datasets.get(dataset)()
        return
    rows = _open_with_datasets(dataset, plugins.datasets.names())
    first = True
    for row in _read_rows(rows, dataset):
        if first and text_column not in row:
            raise UsageError(
                f"dataset {dataset!r} has no column {text_column!r} (columns: {', '.join(row)}); "
                f"choose one with --text-column"
            )
        first = False
        text = row[text_column]
        if isinstance(text, str):
            yield text


def _read_rows(rows: Iterable[dict], dataset: str) -> Iterator[dict]:
    """``rows``, with a failure to parse them (random bytes, a malformed line: datasets and
    pyarrow raise many types, read lazily as the stream goes) as one clear error."""
    iterator = iter(rows)
    while True:
        try:
            row = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise UsageError(
                f"dataset {dataset!r}: cannot parse it ({type(exc).__name__}: {detail}); is it text of the format its "
                "extension says?"
            ) from None
        yield row


def _open_with_datasets(dataset: str, registered: list[str]) -> Iterable[dict]:
    from datasets import load_dataset
    from datasets.utils import logging as ds_logging

    # Its loaders log a parse failure before raising it; saezoo reports it in one line itself.
    ds_logging.set_verbosity(ds_logging.CRITICAL)

    path = Path(dataset).expanduser()
    if path.exists():
        builder, files = _local_files(path)
        options = {"sample_by": "paragraph"} if builder == "text" else {}
        return load_dataset(builder, data_files=files, split="train", streaming=True, **options)
    try:
        return load_dataset(dataset, split="train", streaming=True)
    except Exception as exc:  # datasets raises many types for "not found"; all mean bad input here
        names = ", ".join(registered) or "none"
        raise UsageError(
            f"cannot load dataset {dataset!r}: it is not a registered dataset ({names}), not a local "
            f"file or directory, and `datasets` could not load it as a hub id: {type(exc).__name__}: {exc}"
        ) from exc


def _local_files(path: Path) -> tuple[str, list[str]]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    builders = {_BUILDERS[p.suffix.lower()] for p in files if p.suffix.lower() in _BUILDERS}
    supported = ", ".join(_BUILDERS)
    if not builders:
        raise UsageError(f"dataset {path}: no file with a supported extension ({supported})")
    if len(builders) > 1:
        raise UsageError(f"dataset {path}: mixes file types ({', '.join(sorted(builders))}); use one of {supported}")
    (builder,) = builders
    return builder, [str(p) for p in files if _BUILDERS.get(p.suffix.lower()) == builder]


def is_eval_document(text: str) -> bool:
    """Whether a document belongs to the held-out evaluation split."""
    return zlib.crc32(text.encode("utf-8")) % EVAL_EVERY == 0


def split_documents(documents: Iterable[str], split: str) -> Iterator[str]:
    """The non-empty documents of one split (``"train"`` or ``"eval"``); the two never overlap."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    want_eval = split == "eval"
    for text in documents:
        if text.strip() and is_eval_document(text) == want_eval:
            yield text


@dataclass(frozen=True)
class SpecialTokens:
    """The token ids packing uses; ``sink`` is ``None`` when the tokenizer has neither BOS nor EOS."""

    sink: int | None
    separator: int | None
    pad: int

    @classmethod
    def of(cls, tokenizer) -> SpecialTokens:
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        sink = bos if bos is not None else eos
        separator = eos if eos is not None else bos
        pad = tokenizer.pad_token_id
        # Padding is masked and sits after the text in a causal model, so its id does not matter.
        return cls(sink=sink, separator=separator, pad=pad if pad is not None else (sink or 0))


def pack_contexts(documents: Iterable[str], tokenizer, context_length: int) -> Iterator[tuple[list[int], list[bool]]]:
    """Pack documents into ``(input_ids, mask)`` pairs of ``context_length`` tokens.

    ``mask`` is True where the position holds document text. The last context is padded; all
    others are full. Special-token strings inside the text are tokenised as plain text.
    """
    if context_length < 2:
        raise UsageError(f"context_length must be at least 2, not {context_length}")
    special = SpecialTokens.of(tokenizer)
    prefix = [special.sink] if special.sink is not None else []
    body = context_length - len(prefix)
    ids: list[int] = []
    text: list[bool] = []

    def tokenized() -> Iterator[list[int]]:
        chunk: list[str] = []
        for doc in documents:
            chunk.append(doc)
            if len(chunk) == _TOKENIZE_CHUNK:
                yield from _tokenize(tokenizer, chunk)
                chunk = []
        if chunk:
            yield from _tokenize(tokenizer, chunk)

    for doc_ids in tokenized():
        if ids and special.separator is not None:
            ids.append(special.separator)
            text.append(False)
        ids.extend(doc_ids)
        text.extend([True] * len(doc_ids))
        while len(ids) >= body:
            yield _context(prefix, ids[:body], text[:body])
            del ids[:body], text[:body]
    if any(text):
        padding = body - len(ids)
        yield _context(prefix, ids + [special.pad] * padding, text + [False] * padding)


def _tokenize(tokenizer, docs: list[str]) -> list[list[int]]:
    # Corpora hold documents longer than the model's context: silence the length warning.
    return tokenizer(docs, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]


def _context(prefix: list[int], ids: list[int], text: list[bool]) -> tuple[list[int], list[bool]]:
    mask = [False] * len(prefix) + text
    # Without a sink token the first text token becomes the attention sink: exclude it too.
    mask[0] = False
    return prefix + ids, mask


def batch_contexts(
    contexts: Iterable[tuple[list[int], list[bool]]], batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """Group contexts into ``(input_ids [B, T], mask [B, T])`` tensors; the last group may be smaller."""
    group: list[tuple[list[int], list[bool]]] = []
    for context in contexts:
        group.append(context)
        if len(group) == batch_size:
            yield _stack(group)
            group = []
    if group:
        yield _stack(group)


def _stack(group: list[tuple[list[int], list[bool]]]) -> tuple[Tensor, Tensor]:
    ids = torch.tensor([ids for ids, _ in group], dtype=torch.long)
    mask = torch.tensor([mask for _, mask in group], dtype=torch.bool)
    return ids, mask
