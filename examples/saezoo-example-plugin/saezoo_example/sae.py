"""A ReLU SAE with tied weights: the encoder is the decoder's transpose.

    codes = ReLU((x * s - b_dec) @ W.T + b_enc)        x_hat = (codes @ W + b_dec) / s

One matrix ``W`` ([width, d_in], unit-norm rows) serves as both dictionary and encoder,
so the SAE has half the parameters of the flat baseline, and a latent fires by how much
of its own decoder direction the input holds. With unit-norm rows the L1 penalty cannot
be dodged by shrinking codes and growing the decoder, so a plain L1 on the codes works.

``s`` is the input scale, a buffer that is 1 during training. saezoo trains on
normalised activations and folds the normalisation into the saved weights
(``fold_input_scale``); tied weights cannot absorb a scale on the encoder side only, so
this SAE keeps it apart and applies it on the way in and out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saezoo import SAE, SAEOutput
from saezoo.sae import SAELensForm, remove_parallel_grad_, unit_norm_rows_


@dataclass
class TiedConfig:
    expansion_factor: int = 4
    """Latents per input dimension (width = expansion_factor * d_in)."""
    l1_coefficient: float = 0.3
    """Weight of the L1 penalty on the codes, per token (inputs have E||x||^2 = d_in)."""
    init_encoder_bias: float = -1.0
    """Initial b_enc; a random unit direction projects normalised inputs to about N(0, 1), so -1
    starts each latent firing on a small share of tokens instead of half of them."""


class TiedSAE(SAE):
    """ReLU SAE whose encoder is its decoder's transpose (half the parameters)."""

    Config = TiedConfig
    # Curriculum knobs applied in forward(); `sparsity_scale` multiplies the L1 penalty.
    knobs = frozenset({"sparsity_scale"})

    def __init__(self, d_in: int, cfg: TiedConfig):
        super().__init__(d_in, cfg)
        self.validate()
        width = cfg.expansion_factor * d_in
        W = torch.randn(width, d_in)
        unit_norm_rows_(W)
        self.W = nn.Parameter(W)
        self.b_enc = nn.Parameter(torch.full((width,), float(cfg.init_encoder_bias)))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("input_scale", torch.ones(()))

    def validate(self) -> None:
        if self.cfg.expansion_factor < 1:
            raise ValueError(f"expansion_factor must be >= 1, got {self.cfg.expansion_factor}")
        if self.cfg.l1_coefficient < 0:
            raise ValueError(f"l1_coefficient must be >= 0, got {self.cfg.l1_coefficient}")

    # --- the contract -------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        return torch.relu((x * self.input_scale - self.b_dec) @ self.W.t() + self.b_enc)

    def decode(self, codes: Tensor) -> Tensor:
        return (codes @ self.W + self.b_dec) / self.input_scale

    def forward(self, x: Tensor, knobs: dict[str, float] | None = None, dead_mask: Tensor | None = None) -> SAEOutput:
        codes = self.encode(x)
        x_hat = self.decode(codes)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        scale = (knobs or {}).get("sparsity_scale", 1.0)
        l1 = scale * self.cfg.l1_coefficient * codes.sum(-1).mean()
        return SAEOutput(x_hat, codes, {"mse": mse, "l1": l1})

    def decoder_directions(self) -> Tensor:
        return self.W / self.input_scale

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        self.input_scale.mul_(scale)

    # --- SAELens export (saezoo export --format saelens) ---------------------------------------
    def to_saelens(self) -> SAELensForm:
        """SAELens's ReLU SAE ("standard") computes ReLU((x - b_dec') @ W_enc + b_enc) @ W_dec +
        b_dec'; untying the weights and moving the scale into them gives exactly this SAE:
        W_enc = s W.T, W_dec = W / s, b_dec' = b_dec / s. saezoo reads the files back with the
        reader of "standard" (flat) and refuses the export if encode/decode differ."""
        s = self.input_scale
        tensors = {"W_enc": self.W.t() * s, "W_dec": self.W / s, "b_enc": self.b_enc, "b_dec": self.b_dec / s}
        return SAELensForm("standard", tensors)

    # --- optional hooks into the training loop -----------------------------------------------
    @torch.no_grad()
    def init_from_data(self, sample: Tensor) -> None:
        self.b_dec.copy_(sample.mean(0) * self.input_scale)

    def after_backward(self) -> None:
        # With unit-norm rows, the gradient along each row only changes its norm.
        remove_parallel_grad_(self.W)

    @torch.no_grad()
    def after_step(self) -> None:
        unit_norm_rows_(self.W)
