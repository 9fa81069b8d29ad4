"""A third-party plugin as an outside author would write it: nothing of it is in saezoo.

* ``plain-relu``: a ReLU SAE named and built its own way; it exports to SAELens with the
  contract's default mapping (its tensors are SAELens's "standard" ones).
* ``keep-n``: keeps the ``keep`` largest pre-activations per token; its L0 is ``keep``, a
  field the core has never heard of, so it declares its L0 control.
* ``shifted``: the four tensors of a ReLU SAE, but it encodes ``x`` rather than ``x - b_dec``;
  the default mapping does not hold, and export must refuse it.

Tests register it in process (``plugins.register_plugin``) or install it as an entry point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from saezoo import SAE, SAEOutput, hookimpl


@dataclass
class PlainConfig:
    expansion_factor: int = 4
    """Latents per input dimension."""
    l1: float = 1.0
    """Weight of the L1 penalty on the codes."""


class PlainReLU(SAE):
    """codes = ReLU((x - b_dec) W_enc + b_enc), x_hat = codes W_dec + b_dec."""

    Config = PlainConfig
    knobs = frozenset({"sparsity_scale"})

    def __init__(self, d_in, cfg):
        super().__init__(d_in, cfg)
        width = cfg.expansion_factor * d_in
        self.W_enc = nn.Parameter(torch.randn(d_in, width) / d_in**0.5)
        self.W_dec = nn.Parameter(self.W_enc.detach().t().clone())
        self.b_enc = nn.Parameter(torch.zeros(width))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def encode(self, x):
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, codes):
        return codes @ self.W_dec + self.b_dec

    def forward(self, x, knobs=None, dead_mask=None):
        codes = self.encode(x)
        x_hat = self.decode(codes)
        scale = (knobs or {}).get("sparsity_scale", 1.0)
        losses = {"mse": (x_hat - x).pow(2).sum(-1).mean(), "l1": scale * self.cfg.l1 * codes.sum(-1).mean()}
        return SAEOutput(x_hat, codes, losses)

    def decoder_directions(self):
        return self.W_dec

    @torch.no_grad()
    def fold_input_scale(self, scale):
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)


@dataclass
class KeepConfig:
    expansion_factor: int = 4
    """Latents per input dimension."""
    keep: int = 3
    """Latents kept per token (the L0)."""


class KeepN(PlainReLU):
    """The ``keep`` largest ReLU pre-activations of each token."""

    Config = KeepConfig
    knobs = frozenset()

    def encode(self, x):
        codes = super().encode(x)
        top = codes.topk(self.cfg.keep, dim=-1)
        return torch.zeros_like(codes).scatter(-1, top.indices, top.values)

    def forward(self, x, knobs=None, dead_mask=None):
        x_hat = self.decode(codes := self.encode(x))
        return SAEOutput(x_hat, codes, {"mse": (x_hat - x).pow(2).sum(-1).mean()})

    @classmethod
    def l0_control(cls, cfg, target):
        return None, [f"sae.keep={round(target)}"]  # None: whatever curriculum was chosen

    def to_saelens(self):
        return None  # SAELens's topk names its count k and would need this one's field: not mapped


class Shifted(PlainReLU):
    """Encodes ``x`` itself: SAELens's "standard" would subtract b_dec first."""

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)


@hookimpl
def register_architectures(register):
    register("plain-relu", PlainReLU)
    register("keep-n", KeepN)
    register("shifted", Shifted)
