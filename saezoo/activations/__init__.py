"""Activation sources: synthetic features with ground truth, and language models."""

from saezoo.activations.source import ActivationSource, GroundTruth
from saezoo.activations.synthetic import SyntheticConfig, SyntheticSource

__all__ = ["ActivationSource", "GroundTruth", "SyntheticConfig", "SyntheticSource"]
