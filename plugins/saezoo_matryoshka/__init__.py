"""Matryoshka SAEs: nested dictionaries over BatchTopK."""

from saezoo import hookimpl
from saezoo_matryoshka.sae import MatryoshkaSAE


@hookimpl
def register_architectures(register):
    register("matryoshka", MatryoshkaSAE)
