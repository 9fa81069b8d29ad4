"""The Gated SAE's encoder, both paths, as one autograd node.

Autograd on the formulas of ``sae.py`` runs about twenty elementwise passes over
``[batch, width]`` per step (the exponential scale, the two ReLUs, the Heaviside gate,
their products and each one's backward), and on a CPU each pass costs as much memory
traffic as a fifth of a matmul. This node writes the two outputs in a few in-place
passes and its backward needs seven, with every bias gradient a column sum of a tensor
it builds anyway:

    g_mag  = g_codes where codes > 0                  (magnitude ReLU and gate at once)
    g_proj = g_gate where ReLU(pi_gate) > 0 + exp(r_mag) * g_mag
    b_mag: sum g_mag;  r_mag: sum g_mag * (codes - b_mag);  b_gate: sum of the first term
    b_dec through the encoder: -(sum g_proj) @ W_enc^T, from the two sums above

``tests/test_zoo.py`` checks every gradient against autograd on the plain formulas.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gated_encode(
    x: Tensor, W_enc: Tensor, b_dec: Tensor, b_gate: Tensor, r_mag: Tensor, b_mag: Tensor
) -> tuple[Tensor, Tensor]:
    """``(codes, ReLU(pi_gate))`` of a Gated SAE for inputs ``[..., d_in]``, where with
    proj = (x − b_dec) @ W_enc, pi_gate = proj + b_gate and
    codes = H(pi_gate) * ReLU(exp(r_mag) * proj + b_mag)."""
    lead = x.shape[:-1]
    codes, gate = _GatedEncode.apply(x.reshape(-1, x.shape[-1]), W_enc, b_dec, b_gate, r_mag, b_mag)
    return codes.view(*lead, -1), gate.view(*lead, -1)


class _GatedEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_dec: Tensor, b_gate: Tensor, r_mag: Tensor, b_mag: Tensor):
        centred = x - b_dec
        projected = centred @ W_enc  # bf16 under autocast
        scale = r_mag.exp()
        gate = torch.add(projected, b_gate).clamp_min_(0)
        magnitude = torch.addcmul(b_mag, projected, scale).clamp_min_(0)
        # "magnitude where gate > 0, else 0" in one pass: the ReLU backward's kernel does
        # exactly that (masked_fill with a computed mask takes two, and four times as long).
        codes = torch.ops.aten.threshold_backward(magnitude, gate, 0)
        ctx.save_for_backward(centred, W_enc, codes, gate, scale, b_mag)
        ctx.matmul_dtype = projected.dtype
        return codes, gate

    @staticmethod
    def backward(ctx, g_codes: Tensor, g_gate: Tensor):
        centred, W_enc, codes, gate, scale, b_mag = ctx.saved_tensors
        g_mag = torch.ops.aten.threshold_backward(g_codes, codes, 0)
        g_b_mag = g_mag.sum(0)
        g_r_mag = (g_mag * codes).sum(0) - b_mag * g_b_mag  # d codes / d r_mag = codes - b_mag where open
        g_proj = torch.ops.aten.threshold_backward(g_gate, gate, 0)
        g_b_gate = g_proj.sum(0)
        g_proj.addcmul_(g_mag, scale)
        g_proj_sum = g_b_gate + scale * g_b_mag  # = g_proj.sum(0), without the pass
        # The backward matmuls in the forward's matmul dtype, as autocast would run them.
        mm = ctx.matmul_dtype
        W_t = W_enc.to(mm).T
        g_proj = g_proj.to(mm)
        g_W_enc = (centred.to(mm).T @ g_proj).to(W_enc.dtype) if ctx.needs_input_grad[1] else None
        g_b_dec = -(g_proj_sum.to(mm) @ W_t).to(centred.dtype) if ctx.needs_input_grad[2] else None
        g_x = (g_proj @ W_t).to(centred.dtype) if ctx.needs_input_grad[0] else None
        return g_x, g_W_enc, g_b_dec, g_b_gate, g_r_mag, g_b_mag
