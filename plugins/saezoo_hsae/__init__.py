"""The hierarchical SAE of the seed paper (``paper`` preset) and its stable default."""

from saezoo import hookimpl
from saezoo_hsae.sae import HSAE


@hookimpl
def register_architectures(register):
    register("hsae", HSAE)
