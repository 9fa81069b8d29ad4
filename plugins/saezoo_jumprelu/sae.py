"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction
Fidelity with JumpReLU Sparse Autoencoders").

codes = pre * H(pre - theta) with pre = W_enc (x - b_dec) + b_enc and a learned threshold
theta_j = exp(log_threshold_j) per latent; loss = ||x - x_hat||^2 + lambda * L0. The step
function has no useful gradient, so both the JumpReLU and the L0 penalty use the paper's
straight-through estimators: a rectangle kernel of width ``bandwidth`` around the
threshold gives theta a pseudo-derivative. Penalising L0 itself, not L1, avoids shrinkage.

The paper normalises inputs to E||x||^2 = 1; saezoo's have E||x||^2 = d_in. The
coefficients below are in the paper's units and converted: lambda by d_in (the squared
error is d_in times larger), the bandwidth and the initial threshold by sqrt(d_in)
(pre-activations are sqrt(d_in) times larger).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saezoo import SAEOutput
from saezoo.sae import RELU_SAELENS_TENSORS, SAELensForm, UnitNormDictionarySAE, pre_activations


@dataclass
class JumpReLUConfig:
    expansion_factor: int = 8
    """Latents per input dimension (width = expansion_factor * d_in)."""
    l0_coefficient: float = 1e-3
    """lambda, the weight of the L0 penalty, in the paper's units (inputs with E||x||^2 = 1)."""
    bandwidth: float = 0.001
    """Width of the rectangle kernel of the straight-through estimators, in the paper's units."""
    init_threshold: float = 0.1
    """Initial threshold of every latent, in the paper's units (the paper: 0.001, see the README)."""


class _JumpReLUWithL0(torch.autograd.Function):
    """codes = pre * H(pre - theta) and each token's L0 = sum_j H(pre_j - theta_j), in one node.

    Straight-through estimators (the paper's): d codes / d pre = H(pre - theta); pre gets no
    gradient from the L0; with K the rectangle of width eps around the threshold,
    d codes / d theta = -(theta / eps) K and d L0 / d theta = -(1 / eps) K. One node finds
    the window where K is non-zero once for both, and sums the threshold's gradient over
    that window's entries alone (few: pre-activations within eps / 2 of the threshold),
    where two separate estimators made about ten passes over ``[batch, width]`` each.
    """

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> tuple[Tensor, Tensor]:
        fires = pre > threshold
        codes = torch.where(fires, pre, pre.new_zeros(()))
        ctx.save_for_backward(pre, threshold, codes)
        ctx.bandwidth = bandwidth
        # The counts in the threshold's dtype: exact, where bf16 (autocast) rounds above 256.
        # Summed as bytes into int32: half the time of a sum that first casts the whole mask to float.
        return codes, fires.view(torch.uint8).sum(-1, dtype=torch.int32).to(threshold.dtype)

    @staticmethod
    def backward(ctx, grad_codes: Tensor | None, grad_l0: Tensor | None) -> tuple[Tensor | None, Tensor, None]:
        pre, threshold, codes = ctx.saved_tensors
        eps = ctx.bandwidth
        # Where K = 1: two comparisons write one-byte masks, where |pre - threshold| < eps / 2
        # writes two float tensors first.
        window = (pre > threshold - eps / 2).logical_xor_(pre >= threshold + eps / 2)
        token, latent = window.nonzero(as_tuple=True)
        per_entry = threshold.new_zeros(len(token))
        if grad_codes is not None:
            per_entry += grad_codes[token, latent] * threshold[latent]
        if grad_l0 is not None:
            per_entry += grad_l0[token].to(threshold.dtype)
        grad_threshold = torch.zeros_like(threshold).index_add_(0, latent, per_entry, alpha=-1 / eps)
        # H(pre - theta) = [codes > 0], thresholds being positive: the ReLU backward's kernel.
        grad_pre = torch.ops.aten.threshold_backward(grad_codes, codes, 0) if grad_codes is not None else None
        return grad_pre, grad_threshold, None


class JumpReLUSAE(UnitNormDictionarySAE):
    """Per-latent learned thresholds and a direct L0 penalty; unit-norm decoder rows."""

    Config = JumpReLUConfig
    knobs = frozenset({"sparsity_scale"})
    # SAELens's JumpReLU codes ReLU(pre) * (pre > threshold), this one's with threshold = exp(log_threshold).
    saelens_reads = {"jumprelu": {**RELU_SAELENS_TENSORS, "threshold": ("sae",)}}
    presets = {
        # The paper's recipe: its tiny initial threshold only reaches a sparse solution over
        # hundreds of thousands of steps at this learning rate.
        "paper": {"sae": {"init_threshold": 0.001}, "train": {"lr": 7e-5, "betas": (0.0, 0.999)}},
    }

    def __init__(self, d_in: int, cfg: JumpReLUConfig):
        super().__init__(d_in, cfg)
        width = self.width
        self.b_enc = nn.Parameter(torch.zeros(width))
        # A log parameterisation keeps thresholds positive and lets Adam move them in
        # proportion to their size.
        self.log_threshold = nn.Parameter(torch.full((width,), math.log(cfg.init_threshold * math.sqrt(d_in))))
        self.bandwidth = cfg.bandwidth * math.sqrt(d_in)

    def validate(self) -> None:
        super().validate()
        cfg = self.cfg
        if cfg.l0_coefficient < 0:
            raise ValueError(f"l0_coefficient must be >= 0, got {cfg.l0_coefficient}")
        for name in ("bandwidth", "init_threshold"):
            if getattr(cfg, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)}")

    def pre_activations(self, x: Tensor) -> Tensor:
        return pre_activations(x, self.W_enc, self.b_enc, self.b_dec)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        return pre * (pre > self.log_threshold.exp())

    def decode(self, codes: Tensor) -> Tensor:
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: Tensor, knobs: dict[str, float] | None = None, dead_mask: Tensor | None = None) -> SAEOutput:
        pre = self.pre_activations(x)
        codes, l0_per_token = _JumpReLUWithL0.apply(pre, self.log_threshold.exp(), self.bandwidth)
        x_hat = self.decode(codes)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        l0 = l0_per_token.mean()
        scale = (knobs or {}).get("sparsity_scale", 1.0)
        return SAEOutput(x_hat, codes, {"mse": mse, "l0": scale * self.cfg.l0_coefficient * self.d_in * l0})

    def diagnostics(self) -> dict[str, float]:
        return {"threshold_median": self.log_threshold.exp().median().item()}

    def to_saelens(self) -> SAELensForm:
        tensors = {name: getattr(self, name) for name in RELU_SAELENS_TENSORS}
        return SAELensForm("jumprelu", {**tensors, "threshold": self.log_threshold.exp()})

    @classmethod
    def from_saelens(
        cls, architecture: str, cfg: dict[str, Any], tensors: dict[str, Tensor]
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        fields, params = super().from_saelens(architecture, cfg, tensors)
        # ReLU(pre) * (pre > t) equals pre * (pre > max(t, 0)); log(0) = -inf gives a plain ReLU.
        params["log_threshold"] = tensors["threshold"].clamp_min(0).log()
        return fields, params
