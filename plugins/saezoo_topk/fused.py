"""TopK's encoder, selection and decoder as one autograd node with a sparse backward.

Autograd on the plain formulas builds two dense ``[batch, width]`` gradients, of the codes
and of the pre-activations, and then multiplies the second by the batch's inputs for
W_enc's gradient: a product as large as the encoder itself, although only batch x k
entries of either gradient are non-zero. This node's backward touches those entries alone:

* the gradient of the k selected values of a token is g_x̂ · W_dec[j] for each selected j:
  a matrix product sampled at the selected entries (``torch.sparse.sampled_addmm``);
* W_dec's and W_enc's gradients are a sparse ``[width, batch]`` matrix (the selected
  entries, grouped by latent) times g_x̂ and times the input;
* b_enc's gradient is a scatter-add of the same entries.

A step then costs the dense encoder forward plus O(batch x k x d_in), the floor of a TopK
SAE. The forward is the same computation as before (``pre.topk`` then ``embedding_bag``),
so the values are unchanged; ``tests/test_zoo.py`` checks the gradients against autograd
on the dense formulas.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor


def topk_autoencode(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(x̂ without b_dec ``[B, d]``, values ``[B, k]``, latents ``[B, k]``) for
    pre = x @ W_enc + b_enc, keeping each token's k largest pre-activations (ReLU'd).

    Gradients flow to ``x``, ``W_enc``, ``b_enc`` and ``W_dec`` through x̂ only: values and
    latents are outputs for bookkeeping (dense codes, firing counts), not for losses."""
    return _TopKAutoencode.apply(x, W_enc, b_enc, W_dec, k)


class _TopKAutoencode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, k: int):
        pre = torch.addmm(b_enc, x, W_enc)
        values, latents = pre.topk(k, dim=-1, sorted=False)
        # Latents in increasing order within each token: the CSR layout the backward uses.
        latents, order = latents.sort(dim=-1)
        values = values.gather(-1, order).to(W_dec.dtype).clamp_(min=0)  # bf16 under autocast
        x_hat = F.embedding_bag(latents, W_dec, mode="sum", per_sample_weights=values)
        ctx.save_for_backward(x, W_enc, W_dec, values, latents)
        ctx.mark_non_differentiable(values, latents)
        return x_hat, values, latents

    @staticmethod
    def backward(ctx, grad_x_hat: Tensor, _grad_values, _grad_latents):
        x, W_enc, W_dec, values, latents = ctx.saved_tensors
        batch, k = values.shape
        width = W_dec.shape[0]
        g = grad_x_hat.to(W_dec.dtype).contiguous()
        # The selected entries as a [batch, width] CSR pattern, token by token.
        rows = torch.arange(0, batch * k + 1, k, device=x.device)
        pattern = _csr(rows, latents.flatten(), torch.zeros_like(values.flatten()), (batch, width))
        grad_values = torch.sparse.sampled_addmm(pattern, g, W_dec.T).values().view(batch, k)
        grad_pre = grad_values * (values > 0)  # the ReLU
        # The same entries grouped by latent: a [width, batch] matrix to multiply by g and x.
        flat_latents = latents.flatten()
        by_latent = flat_latents.argsort(stable=True)
        tokens = by_latent.div(k, rounding_mode="floor")
        counts = torch.bincount(flat_latents, minlength=width)
        crow = torch.zeros(width + 1, dtype=torch.long, device=x.device)
        torch.cumsum(counts, 0, out=crow[1:])

        def by_latent_times(entries: Tensor, dense: Tensor) -> Tensor:
            matrix = _csr(crow, tokens, entries.flatten()[by_latent], (width, batch))
            return matrix @ dense

        grad_W_dec = by_latent_times(values, g)
        grad_W_enc = grad_b_enc = grad_x = None
        if ctx.needs_input_grad[1]:
            grad_W_enc = by_latent_times(grad_pre, x.to(grad_pre.dtype)).T.contiguous()
        if ctx.needs_input_grad[2]:
            grad_b_enc = counts.new_zeros(width, dtype=grad_pre.dtype).index_add_(0, flat_latents, grad_pre.flatten())
        if ctx.needs_input_grad[0]:  # not in training (x is data); kept exact for completeness
            dense = grad_pre.new_zeros(batch, width).scatter_(1, latents, grad_pre)
            grad_x = dense @ W_enc.T.to(dense.dtype)
        return grad_x, grad_W_enc, grad_b_enc, grad_W_dec, None


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    # Built from indices this module sorted itself; checking them would cost a pass each.
    # torch calls CSR support "beta"; what is used here (construction, sampled_addmm,
    # CSR @ dense) is tested against dense autograd, so the notice is not shown to users.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)
