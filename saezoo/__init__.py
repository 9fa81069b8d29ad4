"""saezoo: a plugin-based zoo of sparse autoencoder variants.

The public API: what a plugin imports (hookimpl, SAE, ...), and the functions a notebook
calls (train, load, evaluate, compare, pull, reproduce; docs/python.md).
"""

from saezoo.curriculum import Curriculum
from saezoo.errors import SaezooError, UsageError
from saezoo.hookspecs import hookimpl
from saezoo.sae import SAE, SAEOutput
from saezoo.api import compare, evaluate, load, pull, reproduce, train

__version__ = "0.1.0"

__all__ = [
    "SAE",
    "Curriculum",
    "SAEOutput",
    "SaezooError",
    "UsageError",
    "__version__",
    "compare",
    "evaluate",
    "hookimpl",
    "load",
    "pull",
    "reproduce",
    "train",
]
