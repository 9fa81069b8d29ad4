"""saezoo: a plugin-based zoo of sparse autoencoder variants.

The public API: what a plugin imports.
"""

from saezoo.curriculum import Curriculum
from saezoo.errors import SaezooError, UsageError
from saezoo.hookspecs import hookimpl
from saezoo.sae import SAE, SAEOutput

__version__ = "0.1.0"

__all__ = ["SAE", "Curriculum", "SAEOutput", "SaezooError", "UsageError", "__version__", "hookimpl"]
