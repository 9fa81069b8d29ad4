"""Activations of a language model at a hook point, over a text corpus.

:class:`ModelSource` implements :class:`saezoo.activations.ActivationSource`. With the cache on
(the default) the first use harvests ``n_tokens`` activations of the training split into the
disk cache, and every later run with the same settings reads them back without loading the
model. The training stream is the cache read through a bounded shuffle buffer; evaluation
activations come from held-out documents (see :mod:`saezoo.activations.text`) and are cached
the same way.

For spliced evaluation the source also hands out the model and tokenizer (loaded on first
access only), the resolved hook name and the evaluation contexts with their text mask.
"""

from __future__ import annotations

import hashlib
import itertools
import warnings
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saezoo.activations import text
from saezoo.activations.buffer import cached_blocks, shuffled_batches, streamed_blocks
from saezoo.activations.cache import FORMAT_VERSION, CacheEntry, CacheWriter, lookup
from saezoo.activations.harvest import MEDIAN_SAMPLE_TOKENS, Harvester
from saezoo.activations.model import load_model, resolve_hook, resolve_model_dtype
from saezoo.errors import UsageError

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_DATASET = "python-docs"


class ModelSource:
    """A deterministic, resumable stream of one model's activations at one hook point.

    Args:
        model: registered model name, hub id or local directory.
        hook: module name to read (``model.layers.6``); ``None`` for the middle block.
        dataset: registered corpus name, local file/directory or hub id.
        text_column: the column holding text, for files and hub datasets.
        context_length: tokens per context, the sink token included.
        n_tokens: training activations to harvest; the stream repeats them, reshuffled, per epoch.
        seed: seed of the shuffle (not of the harvest: every seed shares one cache entry).
        cache: harvest into the disk cache and read from it; ``False`` reruns the model every epoch.
        cache_dir: saezoo's cache directory (default ``$SAEZOO_CACHE``, else ``~/.cache/saezoo``);
            activations go to its ``activations/`` folder.
        max_norm_multiple: exclude tokens whose norm exceeds this multiple of the median token
            norm; ``None`` or 0 keeps them all.
        device: where the model runs; activations are always returned on the CPU.
        model_dtype: ``float32``, ``bfloat16``, or ``auto`` (bfloat16 on CUDA and on CPUs with
            native bf16 matmuls, else float32); activations are always returned as float32.
        harvest_batch_size: contexts per forward pass.
        shard_tokens: activations per cache shard.
        buffer_tokens: size of the shuffle buffer, in activations (at least one shard).
    """

    ground_truth = None

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        hook: str | None = None,
        dataset: str = DEFAULT_DATASET,
        text_column: str = "text",
        context_length: int = 128,
        n_tokens: int = 100_000,
        seed: int = 0,
        cache: bool = True,
        cache_dir: str | Path | None = None,
        max_norm_multiple: float | None = 10.0,
        device: str = "cpu",
        model_dtype: str = "auto",
        harvest_batch_size: int = 16,
        shard_tokens: int = 65536,
        buffer_tokens: int = 131072,
    ):
        if context_length < 2:  # the sink token and at least one token of text
            raise UsageError(f"context_length must be at least 2, not {context_length}")
        for name, value in [
            ("n_tokens", n_tokens),
            ("harvest_batch_size", harvest_batch_size),
            ("shard_tokens", shard_tokens),
            ("buffer_tokens", buffer_tokens),
        ]:
            if value <= 0:
                raise UsageError(f"{name} must be positive, not {value}")
        if max_norm_multiple is not None and max_norm_multiple < 0:
            raise UsageError(f"max_norm_multiple must be positive (or 0 to keep every token), not {max_norm_multiple}")
        self.model_name = model
        self.requested_hook = hook
        self.dataset = dataset
        self.text_column = text_column
        self.context_length = context_length
        self.n_tokens = n_tokens
        self.seed = seed
        self.cache = cache
        self.cache_dir = cache_dir
        self.max_norm_multiple = max_norm_multiple or None
        self.device = device
        self.model_dtype = resolve_model_dtype(model_dtype, device)
        self.harvest_batch_size = harvest_batch_size
        self.shard_tokens = shard_tokens
        self.buffer_tokens = buffer_tokens
        self.eval_excluded_outliers = 0
        self._model: nn.Module | None = None
        self._tokenizer: Any = None
        self._train: CacheEntry | None = None
        self._info: dict[str, Any] | None = None
        self._stream_harvester: Harvester | None = None

    @classmethod
    def from_config(cls, data: Any, tokens: int, seed: int, device: str = "cpu") -> ModelSource:
        """The source a run's ``[data]`` section (:class:`saezoo.config.DataConfig`) describes,
        for a run that reads ``tokens`` training activations (at most ``data.harvest_tokens``
        of them distinct)."""
        if data.harvest_tokens is not None and data.harvest_tokens <= 0:
            raise UsageError(f"data.harvest_tokens must be positive or none, got {data.harvest_tokens}")
        distinct = tokens if data.harvest_tokens is None else min(tokens, data.harvest_tokens)
        return cls(
            model=data.model,
            hook=data.hook,
            dataset=data.dataset,
            text_column=data.text_column,
            context_length=data.context_length,
            n_tokens=max(distinct, 1),
            seed=seed,
            cache=data.cache,
            cache_dir=data.cache_dir,
            max_norm_multiple=data.max_norm_multiple,
            device=device,
            model_dtype=data.model_dtype,
        )

    # -- the model, loaded only when something needs it -------------------------------------

    @property
    def model(self) -> nn.Module:
        """The language model (loaded on first access; a cache hit never needs it)."""
        if self._model is None:
            model, self._tokenizer = load_model(self.model_name, self.device, self.model_dtype)
            config = getattr(model, "config", None)
            positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
            if isinstance(positions, int) and self.context_length > positions:
                raise UsageError(f"context_length {self.context_length} is longer than model {self.model_name!r} "
                    f"reads ({positions} positions)")
            self._model = model
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (loads the model on first access)."""
        if self._tokenizer is None:
            self.model  # loads both  # noqa: B018
        return self._tokenizer

    @property
    def hook(self) -> str:
        """The resolved hook module name (``model.layers.15`` for the default)."""
        if self._info is not None:
            return self._info["hook"]
        if self.cache and (entry := lookup(self._key("train", self.n_tokens), self.cache_dir)):
            return entry.manifest["hook"]
        return resolve_hook(self.model, self.requested_hook)

    @property
    def _dtype_name(self) -> str:
        return str(self.model_dtype).removeprefix("torch.")

    # -- what the harvest found ----------------------------------------------------------------

    @property
    def d_in(self) -> int:
        return self._prepare()["d_in"]

    @property
    def outlier_threshold(self) -> float | None:
        """Token norms above this are excluded (``None``: outlier exclusion is off)."""
        return self._prepare()["outlier_threshold"]

    @property
    def median_norm(self) -> float | None:
        return self._prepare()["median_norm"]

    @property
    def excluded_outliers(self) -> int:
        """Training tokens excluded as outliers (without the cache: so far in this epoch)."""
        info = self._prepare()
        if self._stream_harvester is not None:
            return self._stream_harvester.stats.excluded_outliers
        return info["excluded_outliers"]

    @property
    def info(self) -> dict[str, Any]:
        """The training harvest's record: hook, d_in, tokens, outliers, threshold, speed."""
        return dict(self._prepare())

    def describe(self) -> dict[str, Any]:
        return {
            "source": "model",
            "model": self.model_name,
            "hook": self.hook,
            "dataset": self.dataset,
            "text_column": self.text_column,
            "context_length": self.context_length,
            "n_tokens": self.n_tokens,
            "seed": self.seed,
            "max_norm_multiple": self.max_norm_multiple,
            "model_dtype": self._dtype_name,
        }

    # -- the streams ---------------------------------------------------------------------------

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Tensor]:
        """Endless shuffled training batches ``[batch_size, d_in]`` from batch number ``start`` on.

        Without the cache a resumed stream recomputes the skipped activations.
        """
        self._prepare()
        if self._train is not None:
            blocks = cached_blocks(self._train, self.seed, self.buffer_tokens)
        else:
            blocks = streamed_blocks(self._stream_epoch, self.buffer_tokens)
        return shuffled_batches(blocks, batch_size, self.seed, start)

    def eval_activations(self, n_tokens: int) -> Tensor:
        """``[n, d_in]`` activations of held-out documents, outliers excluded (in corpus order)."""
        threshold = self.outlier_threshold
        key = self._key("eval", n_tokens)
        if self.cache:
            entry = lookup(key, self.cache_dir) or self._harvest_to_cache("eval", n_tokens, threshold)
            self.eval_excluded_outliers = entry.manifest["excluded_outliers"]
            return entry.read()
        harvester = self._harvester(threshold)
        chunks = list(harvester.run(self._context_batches("eval"), n_tokens, "harvest eval"))
        if not chunks:
            raise UsageError(f"dataset {self.dataset!r} gave no text tokens for the eval split")
        self.eval_excluded_outliers = harvester.stats.excluded_outliers
        return torch.cat(chunks)

    def eval_contexts(self, n_tokens: int) -> tuple[Tensor, Tensor]:
        """The first held-out contexts holding ``n_tokens`` text tokens: ``(input_ids, mask)``, ``[N, T]``.

        ``mask`` is True on text tokens (not on the sink token, separators or padding). These are
        the contexts :meth:`eval_activations` reads, for spliced evaluation.
        """
        contexts, total = [], 0
        for ids, mask in text.pack_contexts(self._documents("eval"), self.tokenizer, self.context_length):
            contexts.append((ids, mask))
            total += sum(mask)
            if total >= n_tokens:
                break
        if not contexts:
            raise UsageError(f"dataset {self.dataset!r} has no held-out documents")
        ids, mask = next(text.batch_contexts(contexts, len(contexts)))
        return ids, mask

    def baseline_key(self) -> dict[str, Any] | None:
        """Identifies model, hook and data for cached SAE-independent downstream sums
        (``saezoo.downstream``); ``None`` when the cache is off."""
        return self._key("downstream", 0) if self.cache else None

    # -- harvesting ------------------------------------------------------------------------------

    def _prepare(self) -> dict[str, Any]:
        """The training harvest's record, harvesting (or probing, without the cache) on first use."""
        if self._info is None:
            if self.cache:
                key = self._key("train", self.n_tokens)
                self._train = lookup(key, self.cache_dir) or self._harvest_to_cache("train", self.n_tokens, None)
                self._info = self._train.manifest
            else:
                self._info = self._probe()
        return self._info

    def _harvest_to_cache(self, split: str, n_tokens: int, threshold: float | None) -> CacheEntry:
        batches = self._context_batches(split)
        harvester = self._harvester(threshold)
        writer = CacheWriter(self._key(split, n_tokens), self.cache_dir, self.shard_tokens)
        try:
            d_in = None
            for acts in harvester.run(batches, n_tokens, f"harvest {split}"):
                writer.add(acts)
                d_in = acts.shape[1]
            if d_in is None:
                raise UsageError(f"dataset {self.dataset!r} gave no text tokens for the {split} split")
            stats = harvester.stats
            entry = writer.publish(
                {
                    "hook": harvester.hook,
                    "d_in": d_in,
                    "median_norm": harvester.median_norm,
                    "outlier_threshold": harvester.threshold,
                    "excluded_outliers": stats.excluded_outliers,
                    "positions": stats.positions,
                    "exhausted": stats.exhausted,
                    "seconds": stats.seconds,
                }
            )
        except BaseException:
            writer.abort()
            raise
        if stats.exhausted:
            warnings.warn(
                f"dataset {self.dataset!r} ran out after {stats.tokens} {split} tokens (asked for {n_tokens})",
                stacklevel=3,
            )
        return entry

    def _probe(self) -> dict[str, Any]:
        """Without the cache: hook, d_in and outlier threshold from the first training batches."""
        harvester = self._harvester(None)
        with closing(harvester.run(self._context_batches("train"), 1, "probe")) as chunks:
            first = next(chunks, None)
        if first is None:
            raise UsageError(f"dataset {self.dataset!r} gave no text tokens for the train split")
        return {
            "hook": harvester.hook,
            "d_in": first.shape[1],
            "median_norm": harvester.median_norm,
            "outlier_threshold": harvester.threshold,
            "excluded_outliers": 0,
        }

    def _stream_epoch(self) -> Iterator[Tensor]:
        self._stream_harvester = self._harvester(self._info["outlier_threshold"])
        return self._stream_harvester.run(self._context_batches("train"), self.n_tokens, "harvest train")

    def _harvester(self, threshold: float | None) -> Harvester:
        return Harvester(self.model, resolve_hook(self.model, self.requested_hook), self.max_norm_multiple, threshold)

    def _documents(self, split: str) -> Iterator[str]:
        return text.split_documents(text.iter_documents(self.dataset, self.text_column), split)

    def _context_batches(self, split: str) -> Iterator[tuple[Tensor, Tensor]]:
        """Context batches of a split; the corpus is opened before the model is loaded, so a bad
        dataset fails fast."""
        documents = self._documents(split)
        first = next(documents, None)
        if first is None:
            raise UsageError(f"dataset {self.dataset!r} has no documents in its {split} split")
        contexts = text.pack_contexts(itertools.chain([first], documents), self.tokenizer, self.context_length)
        return text.batch_contexts(contexts, self.harvest_batch_size)

    def _key(self, split: str, n_tokens: int) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "model": self.model_name,
            "model_files": _fingerprint(self.model_name),
            "model_dtype": self._dtype_name,
            "hook": self.requested_hook or "default",
            "dataset": self.dataset,
            "dataset_files": _fingerprint(self.dataset),
            "text_column": self.text_column,
            "context_length": self.context_length,
            "split": split,
            "n_tokens": n_tokens,
            "max_norm_multiple": self.max_norm_multiple,
            "median_sample_tokens": MEDIAN_SAMPLE_TOKENS,
            "eval_every": text.EVAL_EVERY,
            "shard_tokens": self.shard_tokens,
        }


def _fingerprint(name: str) -> str | None:
    """For a local file or directory: a hash of its files' names, sizes and times (else ``None``).

    It makes the cache key change when local weights or text files change.
    """
    path = Path(name).expanduser()
    if not path.exists():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for p in files:
        stat = p.stat()
        digest.update(
            f"{p.relative_to(path) if path.is_dir() else p.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()[:16]
