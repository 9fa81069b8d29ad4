"""An example third-party saezoo plugin: the `example-tied` architecture.

saezoo finds this module through the entry point in pyproject.toml
(``[project.entry-points.saezoo] example = "saezoo_example"``) and calls the hooks
below; each receives a ``register(name, obj)`` callable and must name its parameter
exactly ``register``.
"""

from saezoo import hookimpl
from saezoo_example.sae import TiedSAE


@hookimpl
def register_architectures(register):
    register("example-tied", TiedSAE)
