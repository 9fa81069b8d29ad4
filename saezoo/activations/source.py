"""What the trainer, evaluator and ``compare`` need from a stream of activations."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from torch import Tensor


@dataclass
class GroundTruth:
    """The true features of a synthetic source, for recovery metrics.

    ``directions[f]`` is feature f's unit direction; ``parent[f]`` its parent feature
    (-1 for none); ``depth[f]`` its depth in the tree of features (0 for a root or a feature
    outside the tree, d for a feature with d ancestors); ``kind[f]`` is "parent" (a root of
    the tree), "child" (a node below a root, at any depth) or "independent".
    """

    directions: Tensor
    parent: Tensor
    kind: list[str]
    depth: Tensor


class ActivationSource(Protocol):
    """A deterministic stream of activation vectors (float32, CPU, ``[batch, d_in]``).

    ``batches(batch_size, start)`` yields the training stream from batch number
    ``start`` on, the same sequence for the same seed; a resumed run passes the number
    of batches it already used. ``eval_activations(n_tokens)`` returns held-out
    activations disjoint from the training stream. ``describe()`` is the JSON-able key
    of the stream (stored in ``cfg.json`` and in cache manifests).

    Where ``ground_truth`` is not None the source also has ``eval_features``. A source read
    from a language model is a :class:`ModelActivationSource`; callers tell one by its
    ``eval_contexts`` (checking it with ``isinstance`` would load the model).
    """

    d_in: int
    ground_truth: GroundTruth | None

    def describe(self) -> dict[str, Any]: ...

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Tensor]: ...

    def eval_activations(self, n_tokens: int) -> Tensor: ...

    def eval_features(self, n_tokens: int) -> Tensor:
        """The true feature coefficients of ``eval_activations(n_tokens)``, ``[n, n_features]``
        (sources with ``ground_truth`` only)."""
        ...


class ModelActivationSource(ActivationSource, Protocol):
    """What spliced CE/KL, absorption and ``browse`` need besides the stream: the model and
    its tokenizer (loaded on first access), the hook read and the evaluation contexts."""

    hook: str
    n_tokens: int
    """Distinct training activations the stream holds (it repeats them past that; training
    notes the epochs)."""
    cache_dir: Any
    harvest_batch_size: int

    @property
    def model(self) -> Any: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def outlier_threshold(self) -> float | None:
        """Norm above which an activation is an outlier, left out of training and evaluation."""
        ...

    def eval_contexts(self, n_tokens: int) -> tuple[Tensor, Tensor]:
        """``(input_ids, mask)`` of the held-out contexts, ``mask`` marking the evaluated tokens."""
        ...

    def baseline_key(self) -> dict[str, Any] | None:
        """The key of the model's clean runs on these contexts (cached between evaluations)."""
        ...
