"""Gated SAEs: separate gate and magnitude paths with shared weights."""

from saezoo import hookimpl
from saezoo_gated.sae import GatedSAE


@hookimpl
def register_architectures(register):
    register("gated", GatedSAE)
