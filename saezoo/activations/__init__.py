"""Activation sources: synthetic features with ground truth, and language models."""

from saezoo.activations.source import ActivationSource, GroundTruth, ModelActivationSource
from saezoo.activations.synthetic import SyntheticConfig, SyntheticSource

__all__ = ["ActivationSource", "GroundTruth", "ModelActivationSource", "SyntheticConfig", "SyntheticSource"]

# Language-model activations (transformers and datasets are imported only when used).
from saezoo.activations.cache import clear_cache, list_cache  # noqa: E402
from saezoo.activations.model import load_model  # noqa: E402
from saezoo.activations.model_source import ModelSource  # noqa: E402

__all__ += ["ModelSource", "clear_cache", "list_cache", "load_model"]
