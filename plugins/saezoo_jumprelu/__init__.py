"""JumpReLU SAEs: learned per-latent thresholds and a straight-through L0 penalty."""

from saezoo import hookimpl
from saezoo_jumprelu.sae import JumpReLUSAE


@hookimpl
def register_architectures(register):
    register("jumprelu", JumpReLUSAE)
