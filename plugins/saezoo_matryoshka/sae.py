"""Matryoshka SAE over BatchTopK (Bussmann et al. 2025, "Learning Multi-Level Features
with Matryoshka Sparse Autoencoders").

The dictionary is trained so that each of its nested prefixes (the first m latents, for
m in ``prefix_fractions`` x width) reconstructs the input on its own:
loss = sum_m ||x - codes[:m] W_dec[:m] - b_dec||^2 + AuxK. The first latents must then
carry the general features and later ones refine them, instead of a later latent absorbing
a general feature into a specific one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from saezoo import SAEOutput
from saezoo_topk.sae import ActiveLatents, BatchTopKConfig, BatchTopKSAE, entry_tokens, sparse_decode, squared_error


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    prefix_fractions: list[float] = field(default_factory=lambda: [1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0])
    """Sizes of the nested dictionaries as fractions of the width: increasing, the last 1."""


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK whose latents form nested dictionaries; each tier is what one prefix adds."""

    Config = MatryoshkaConfig
    saelens_training_architecture = "matryoshka_batchtopk"

    def validate(self) -> None:
        super().validate()
        fractions = self.cfg.prefix_fractions
        if not fractions or fractions[-1] != 1:
            raise ValueError(f"prefix_fractions must end with 1 (the whole dictionary), got {fractions}")
        sizes = self.prefix_sizes()
        if sizes[0] < 1 or any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(
                f"prefix_fractions {fractions} give prefix sizes {sizes} of "
                f"{self.cfg.expansion_factor * self.d_in} latents; they must be increasing and at least 1"
            )

    def prefix_sizes(self) -> list[int]:
        width = self.cfg.expansion_factor * self.d_in
        return [round(f * width) for f in self.cfg.prefix_fractions]

    def latent_groups(self) -> list[tuple[str, int]]:
        sizes = self.prefix_sizes()
        return [(f"tier{i + 1}", hi - lo) for i, (lo, hi) in enumerate(zip([0, *sizes], sizes))]

    def forward(self, x: Tensor, knobs: dict[str, float] | None = None, dead_mask: Tensor | None = None) -> SAEOutput:
        pre = self.pre_activations(x)
        codes, active = self.select(pre, self.k_for(knobs))
        x_hat = self.b_dec
        errors = []
        sizes = self.prefix_sizes()
        tokens = entry_tokens(active, x.shape[0])
        for lo, hi in zip([0, *sizes], sizes):
            x_hat = x_hat + self._decode_slice(codes, active, tokens, lo, hi)
            errors.append(squared_error(x, x_hat))
        losses = {
            "mse": errors[-1],
            "prefix_mse": sum(errors[:-1], x.new_zeros(())),
            "auxk": self.auxk_loss(x - x_hat, lambda dead: pre[:, dead], dead_mask),
        }
        return SAEOutput(x_hat, codes, losses)

    def _decode_slice(self, codes: Tensor, active: ActiveLatents, tokens: Tensor, lo: int, hi: int) -> Tensor:
        """What latents lo..hi-1 add to the reconstruction (``tokens``: each entry's token)."""
        if self.cfg.sparse_decode:
            # Only the slice's own entries: the prefixes together gather each selected row
            # once, where masking the values gathered every row once per prefix.
            inside = ((active.latent >= lo) & (active.latent < hi)).nonzero().squeeze(1)
            offsets = torch.searchsorted(tokens[inside], torch.arange(codes.shape[0], device=codes.device))
            return sparse_decode(ActiveLatents(active.latent[inside], active.value[inside], offsets), self.W_dec)
        return codes[:, lo:hi] @ self.W_dec[lo:hi]
