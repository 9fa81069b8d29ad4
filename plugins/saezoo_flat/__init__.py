"""The flat baseline: a ReLU SAE with an L1 penalty weighted by decoder norms."""

from saezoo import hookimpl
from saezoo_flat.sae import FlatSAE


@hookimpl
def register_architectures(register):
    register("flat", FlatSAE)
