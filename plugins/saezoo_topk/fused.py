"""A TopK-family encoder, selection and decoder as one autograd node with a sparse backward.

Autograd on the plain formulas builds two dense ``[batch, width]`` gradients, of the codes
and of the pre-activations, and then multiplies the second by the batch's inputs for
W_enc's gradient: a product as large as the encoder itself, although only batch x k
entries of either gradient are non-zero. This node's backward touches those entries alone:

* the gradient of a token's selected values is g_x̂ · W_dec[j] for each selected j:
  a matrix product sampled at the selected entries (``torch.sparse.sampled_addmm``);
* W_dec's and W_enc's gradients are a sparse ``[width, batch]`` matrix (the selected
  entries, grouped by latent) times g_x̂ and times the input;
* b_enc's gradient is a scatter-add of the same entries.

A step then costs the dense encoder forward plus O(batch x k x d_in), the floor of a TopK
SAE. The encoder is a function the caller passes: most compute every pre-activation and
select from them (:func:`dense_encoder`: each token's k largest for TopK, the batch's
batch x k largest for BatchTopK); the tree-gated HSAE computes only those of tier 1 and of
the children of firing parents. The node only needs the selected entries in CSR order.
The forward is the plain computation (the encoder, then ``embedding_bag``), so the
values equal the unfused path's; ``tests/test_zoo.py`` checks the gradients against
autograd on the dense formulas, for both selections.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


Selection = Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
"""pre-activations ``[batch, width]`` -> ``(latent, value, offsets)``: the selected entries,
token t owning ``offsets[t]`` up to ``offsets[t + 1]`` (or the end), each token's in
increasing latent order, values ReLU'd."""

Encoder = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
"""``(x, W_enc, b_enc)`` -> the selected entries (as a :data:`Selection` returns them) of the
pre-activations ``x @ W_enc + b_enc``, computing as many of those as it needs."""


def dense_encoder(select: Selection) -> Encoder:
    """Every pre-activation, then ``select``."""
    return lambda x, W_enc, b_enc: select(torch.addmm(b_enc, x, W_enc))


def sparse_autoencode(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, encode: Encoder
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x̂ without b_dec ``[B, d]``, latent, value, offsets) for the entries of
    pre = x @ W_enc + b_enc that ``encode`` keeps.

    Gradients flow to ``x``, ``W_enc``, ``b_enc`` and ``W_dec`` through x̂ only: the
    selected entries are outputs for bookkeeping (dense codes, firing counts), not for
    losses."""
    return _SparseAutoencode.apply(x, W_enc, b_enc, W_dec, encode)


def token_topk(k: int) -> Selection:
    """TopK's selection: each token's k largest pre-activations."""

    def select(pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        values, latents = pre.topk(k, dim=-1, sorted=False)
        latents, order = latents.sort(dim=-1)
        values = values.gather(-1, order).clamp_(min=0)
        return latents.flatten(), values.flatten(), torch.arange(0, pre.shape[0] * k, k, device=pre.device)

    return select


class _SparseAutoencode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, encode: Encoder):
        latents, values, offsets = encode(x, W_enc, b_enc)
        values = values.to(W_dec.dtype)  # bf16 under autocast
        x_hat = F.embedding_bag(latents, W_dec, offsets, mode="sum", per_sample_weights=values)
        ctx.save_for_backward(x, W_enc, W_dec, values, latents, offsets)
        ctx.mark_non_differentiable(latents, values, offsets)
        return x_hat, latents, values, offsets

    @staticmethod
    def backward(ctx, grad_x_hat: Tensor, _grad_latents, _grad_values, _grad_offsets):
        x, W_enc, W_dec, values, latents, offsets = ctx.saved_tensors
        batch, width = x.shape[0], W_dec.shape[0]
        g = grad_x_hat.to(W_dec.dtype).contiguous()
        # The selected entries as a [batch, width] CSR pattern, token by token.
        rows = torch.cat([offsets, offsets.new_full((1,), latents.numel())])
        pattern = csr(rows, latents, torch.zeros_like(values), (batch, width))
        grad_values = torch.sparse.sampled_addmm(pattern, g, W_dec.T).values()
        grad_pre = grad_values * (values > 0)  # the ReLU
        # The same entries grouped by latent: a [width, batch] matrix to multiply by g and x.
        by_latent = latents.argsort(stable=True)
        tokens = torch.repeat_interleave(torch.arange(batch, device=x.device), rows.diff())
        counts = torch.bincount(latents, minlength=width)
        crow = torch.zeros(width + 1, dtype=torch.long, device=x.device)
        torch.cumsum(counts, 0, out=crow[1:])

        def by_latent_times(entries: Tensor, dense: Tensor) -> Tensor:
            matrix = csr(crow, tokens[by_latent], entries[by_latent], (width, batch))
            return matrix @ dense

        grad_W_dec = by_latent_times(values, g)
        grad_W_enc = grad_b_enc = grad_x = None
        if ctx.needs_input_grad[1]:
            grad_W_enc = by_latent_times(grad_pre, x.to(grad_pre.dtype)).T.contiguous()
        if ctx.needs_input_grad[2]:
            grad_b_enc = counts.new_zeros(width, dtype=grad_pre.dtype).index_add_(0, latents, grad_pre)
        if ctx.needs_input_grad[0]:  # not in training (x is data); kept exact for completeness
            dense = grad_pre.new_zeros(batch, width).index_put_((tokens, latents), grad_pre)
            grad_x = dense @ W_enc.T.to(dense.dtype)
        return grad_x, grad_W_enc, grad_b_enc, grad_W_dec, None


def csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    # Built from indices its callers sorted themselves; checking them would cost a pass each.
    # torch calls CSR support "beta"; what is used here (construction, sampled_addmm,
    # CSR @ dense) is tested against dense autograd, so the notice is not shown to users.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)
