"""Build the activation source a run asks for."""

from __future__ import annotations

from saezoo.activations.source import ActivationSource
from saezoo.activations.synthetic import SyntheticSource
from saezoo.config import DataConfig
from saezoo.errors import UsageError


def build_source(data: DataConfig, tokens: int, seed: int, device: str = "cpu") -> ActivationSource:
    """The source of ``data``; ``tokens`` is how many training tokens the run will read;
    ``device`` is where a language model runs."""
    if data.source == "synthetic":
        try:
            return SyntheticSource(data.synthetic)
        except ValueError as exc:
            raise UsageError(f"data.synthetic: {exc}") from None
    from saezoo.activations.model_source import ModelSource  # transformers is slow to import

    return ModelSource.from_config(data, tokens=tokens, seed=seed, device=device)
