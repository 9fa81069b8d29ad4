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

import torch
from torch import Tensor, nn

from saezoo import SAEOutput
from saezoo.sae import UnitNormDictionarySAE, pre_activations


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


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _sum_to(grad: Tensor, like: Tensor) -> Tensor:
    return grad.reshape(-1, like.shape[-1]).sum(0)


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - theta); d/dpre = H(pre - theta), d/dtheta = -(theta / eps) K((pre - theta) / eps)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(threshold / eps) * _rectangle((pre - threshold) / eps) * grad
        return grad * (pre > threshold), _sum_to(grad_threshold, threshold), None


class _Step(torch.autograd.Function):
    """H(pre - theta); pre gets no gradient (the paper's choice), d/dtheta = -(1 / eps) K((pre - theta) / eps)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = -(1 / eps) * _rectangle((pre - threshold) / eps) * grad
        return None, _sum_to(grad_threshold, threshold), None


class JumpReLUSAE(UnitNormDictionarySAE):
    """Per-latent learned thresholds and a direct L0 penalty; unit-norm decoder rows."""

    Config = JumpReLUConfig
    knobs = frozenset({"sparsity_scale"})
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
        threshold = self.log_threshold.exp()
        codes = _JumpReLU.apply(pre, threshold, self.bandwidth)
        x_hat = self.decode(codes)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        l0 = _Step.apply(pre, threshold, self.bandwidth).sum(-1).mean()
        scale = (knobs or {}).get("sparsity_scale", 1.0)
        return SAEOutput(x_hat, codes, {"mse": mse, "l0": scale * self.cfg.l0_coefficient * self.d_in * l0})

    def diagnostics(self) -> dict[str, float]:
        return {"threshold_median": self.log_threshold.exp().median().item()}
