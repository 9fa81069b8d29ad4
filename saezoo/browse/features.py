"""What a latent's weights say without any data: the output tokens it promotes and suppresses
(its decoder direction through the model's final norm and unembedding) and its nearest
latents by decoder cosine. Every product is taken in row blocks, so nothing is
``[width, vocabulary]`` or ``[width, width]`` at once."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from saezoo.activations.model import find_blocks

# Rows of the dictionary per block of a product (a block of [BLOCK, 65536] floats is 256 MB).
BLOCK = 1024


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm between the last block and the unembedding: the last normalisation module
    registered outside the blocks (Llama's ``model.norm``, GPT-2's ``transformer.ln_f``)."""
    blocks, _ = find_blocks(model)
    norms = [
        m
        for name, m in model.named_modules()
        if "norm" in type(m).__name__.lower() and not name.startswith(blocks + ".")
    ]
    return norms[-1] if norms else None


@torch.no_grad()
def output_tokens(directions: Tensor, model: nn.Module, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(promoted ids, their logits, suppressed ids, their logits)``, each ``[width, n]``: the
    logit change each decoder direction makes after the final norm. The norm's own offset
    (``norm(0)``: a LayerNorm's bias) is the same for every latent and is taken out. The
    product is in the model's dtype, as the model itself computes its logits (bf16 makes the
    [width, vocabulary] product 3x faster on a CPU with native bf16)."""
    unembed = model.get_output_embeddings().weight.detach()
    norm = final_norm(model)
    norm = copy.deepcopy(norm).float() if norm is not None else nn.Identity()
    n = min(n, unembed.shape[0])
    offset = norm(torch.zeros(1, directions.shape[1]))
    out = [], [], [], []
    for block in directions.float().split(BLOCK):
        logits = ((norm(block) - offset).to(unembed.dtype) @ unembed.T).float()
        top, bottom = logits.topk(n, dim=1), logits.topk(n, dim=1, largest=False)
        for lst, t in zip(out, (top.indices, top.values, bottom.indices, bottom.values)):
            lst.append(t)
    return tuple(torch.cat(lst) for lst in out)


@torch.no_grad()
def nearest(a: Tensor, b: Tensor, n: int, exclude_self: bool) -> tuple[Tensor, Tensor]:
    """For each row of ``a``, the ``n`` rows of ``b`` with the largest cosine: ``(indices,
    cosines)`` ``[len(a), n]``. ``exclude_self``: a and b are one dictionary, a row is not
    its own neighbour."""
    a = nn.functional.normalize(a.detach().float(), dim=1)
    b = nn.functional.normalize(b.detach().float(), dim=1)
    n = min(n, len(b) - int(exclude_self))
    indices, cosines = [], []
    for start in range(0, len(a), BLOCK):
        sims = a[start : start + BLOCK] @ b.T
        if exclude_self:
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = -2.0
        top = sims.topk(n, dim=1)
        indices.append(top.indices)
        cosines.append(top.values)
    return torch.cat(indices), torch.cat(cosines)
