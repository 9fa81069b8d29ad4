"""TopK (Gao et al. 2024) and BatchTopK (Bussmann et al. 2024) SAEs, and the code they
share with Matryoshka SAEs (``saezoo_matryoshka`` builds on :class:`BatchTopKSAE`).

codes = select(ReLU(W_enc (x - b_dec) + b_enc)), x_hat = W_dec codes + b_dec, where
``select`` keeps the k largest pre-activations of each token (TopK) or the batch x k
largest of the whole batch (BatchTopK). The sparsity is fixed by construction, so the
loss is the reconstruction error plus AuxK, which revives dead latents by asking them to
explain what the live ones leave over.

Decoding is sparse: only the selected decoder rows are gathered (``embedding_bag`` with
per-sample weights). In training, the encoder, the selection and the decoder are one
autograd node whose backward never builds a dense ``[batch, width]`` gradient
(``fused.py``); Matryoshka, which decodes every prefix, uses the parts separately.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saezoo import SAEOutput
from saezoo.errors import UsageError
from saezoo.sae import RELU_SAELENS_TENSORS, SAELensForm, UnitNormDictionarySAE, encoder_inputs, pre_activations
from saezoo_topk.fused import Encoder, Selection, dense_encoder, sparse_autoencode, token_topk


@dataclass
class TopKConfig:
    expansion_factor: int = 8
    """Latents per input dimension (width = expansion_factor * d_in)."""
    k: int = 32
    """Active latents per token (the L0); a k-anneal curriculum may vary it per step."""
    aux_k: int | None = None
    """Dead latents AuxK lets reconstruct the residual, per token (None: d_in // 2, as Gao et al.)."""
    aux_coefficient: float = 1 / 32
    """Weight of the AuxK loss (Gao et al. 2024)."""
    sparse_decode: bool = True
    """Decode by gathering the k selected decoder rows instead of a dense matmul over all
    latents (in training: the fused node of ``fused.py``, whose backward is sparse too)."""


class ActiveLatents(NamedTuple):
    """The selected codes of a batch in ``embedding_bag``'s layout: token t owns the
    entries ``offsets[t]`` up to ``offsets[t + 1]`` of ``latent`` and ``value``."""

    latent: Tensor
    value: Tensor
    offsets: Tensor


def check_k(k: int, width: int, what: str = "k") -> None:
    if not 1 <= k <= width:
        raise ValueError(f"{what} must be between 1 and the width ({width} latents), got {k}")


def sparse_decode(active: ActiveLatents, W_dec: Tensor) -> Tensor:
    """sum_j value_j W_dec[latent_j] per token, without b_dec.

    ``embedding_bag`` touches only the selected rows: its backward computes the value
    gradients as dot products and accumulates W_dec's gradient row by row, so a step costs
    O(batch x k x d_in) instead of O(batch x width x d_in). Unselected rows of W_dec get
    an exact zero gradient."""
    return F.embedding_bag(
        active.latent, W_dec, active.offsets, mode="sum", per_sample_weights=active.value.to(W_dec.dtype)
    )


def squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """||x - x_hat||^2 summed over dimensions, averaged over tokens."""
    return (x - x_hat).pow(2).sum(-1).mean()


class TopKFamilySAE(UnitNormDictionarySAE):
    """What TopK, BatchTopK and Matryoshka share: parameters, a unit-norm decoder, sparse
    decoding and AuxK. Subclasses define :meth:`selection`."""

    knobs = frozenset({"k"})

    def __init__(self, d_in: int, cfg: TopKConfig):
        super().__init__(d_in, cfg)
        self.b_enc = nn.Parameter(torch.zeros(self.width))

    def validate(self) -> None:
        super().validate()
        cfg = self.cfg
        width = self.dictionary_width()
        check_k(cfg.k, width)
        if cfg.aux_k is not None:
            check_k(cfg.aux_k, width, "aux_k")
        if cfg.aux_coefficient < 0:
            raise ValueError(f"aux_coefficient must be >= 0, got {cfg.aux_coefficient}")

    # --- selection -------------------------------------------------------------------
    def selection(self, k: int) -> Selection:
        """The function from pre-activations to the kept entries (see ``fused.Selection``)."""
        raise NotImplementedError

    def encoder(self, k: int) -> Encoder:
        """The fused node's encoder (see ``fused.Encoder``): every pre-activation, then the
        selection."""
        return dense_encoder(self.selection(k))

    def select(self, pre: Tensor, k: int) -> tuple[Tensor, ActiveLatents]:
        """Dense codes ``[batch, width]`` and the same codes as :class:`ActiveLatents`."""
        active = ActiveLatents(*self.selection(k)(pre))
        return dense_codes(active, pre.shape[0], self.width), active

    def pre_activations(self, x: Tensor) -> Tensor:
        return pre_activations(x, self.W_enc, self.b_enc, self.b_dec)

    def k_for(self, knobs: dict[str, float] | None) -> int:
        k = int(round((knobs or {}).get("k", self.cfg.k)))
        check_k(k, self.width, "k (knob)")
        return k

    # --- the contract ------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        centred, bias = encoder_inputs(x, self.W_enc, self.b_enc, self.b_dec)
        active = ActiveLatents(*self.encoder(self.cfg.k)(centred, self.W_enc, bias))
        return dense_codes(active, x.shape[0], self.width)

    def decode(self, codes: Tensor) -> Tensor:
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: Tensor, knobs: dict[str, float] | None = None, dead_mask: Tensor | None = None) -> SAEOutput:
        x_hat, codes, pre_of = self.reconstruct(x, self.k_for(knobs))
        losses = {"mse": squared_error(x, x_hat), "auxk": self.auxk_loss(x - x_hat, pre_of, dead_mask)}
        return SAEOutput(x_hat, codes, losses)

    def reconstruct(self, x: Tensor, k: int) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
        """x_hat, the dense codes, and ``pre_of(latents)``: those latents' pre-activations
        ``[batch, len(latents)]`` (what AuxK reads of the dead ones)."""
        if self.cfg.sparse_decode:
            # The fused node never exposes the dense pre-activations; AuxK recomputes those
            # of the dead latents only.
            centred, bias = encoder_inputs(x, self.W_enc, self.b_enc, self.b_dec)
            x_hat, *active = sparse_autoencode(centred, self.W_enc, bias, self.W_dec, self.encoder(k))
            codes = dense_codes(ActiveLatents(*active), x.shape[0], self.width)
            pre_of = lambda dead: pre_activations(x, self.W_enc[:, dead], self.b_enc[dead], self.b_dec)  # noqa: E731
            return x_hat + self.b_dec, codes, pre_of
        pre = self.pre_activations(x)
        codes, active = self.select(pre, k)
        return self.decode(codes), codes, lambda latents: pre[:, latents]

    def auxk_loss(self, residual: Tensor, pre_of: Callable[[Tensor], Tensor], dead_mask: Tensor | None) -> Tensor:
        """Gao et al.'s AuxK: the top ``aux_k`` dead latents of each token reconstruct the
        residual the live latents left. It is zero when no latent is dead. ``pre_of(dead)``
        gives the pre-activations of the latents ``dead``."""
        dead = dead_mask.nonzero().squeeze(-1) if dead_mask is not None else None
        if dead is None or dead.numel() == 0 or self.cfg.aux_coefficient == 0:
            return residual.new_zeros(())
        k_aux = min(self.cfg.aux_k or max(1, self.d_in // 2), dead.numel())
        values, which = F.relu(pre_of(dead)).topk(k_aux, dim=-1)
        batch = residual.shape[0]
        starts = torch.arange(batch, device=residual.device) * k_aux
        active = ActiveLatents(dead[which].flatten(), values.flatten(), starts)
        # The residual is a target: AuxK trains the dead latents, not the live ones.
        return self.cfg.aux_coefficient * squared_error(residual.detach(), sparse_decode(active, self.W_dec))


class TopKSAE(TopKFamilySAE):
    """The k largest pre-activations of each token (Gao et al. 2024)."""

    Config = TopKConfig
    saelens_reads = {"topk": RELU_SAELENS_TENSORS}

    def selection(self, k: int) -> Selection:
        return token_topk(k)

    def to_saelens(self) -> SAELensForm:
        tensors = {name: getattr(self, name) for name in RELU_SAELENS_TENSORS}
        return SAELensForm("topk", tensors, {"k": int(self.cfg.k), "rescale_acts_by_decoder_norm": False})

    @classmethod
    def from_saelens(
        cls, architecture: str, cfg: dict[str, Any], tensors: dict[str, Tensor]
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        fields, params = super().from_saelens(architecture, cfg, tensors)
        k, d_sae = cfg.get("k"), params["W_dec"].shape[0]
        if not isinstance(k, int) or not 1 <= k <= d_sae:
            raise UsageError(f"topk needs an integer k between 1 and d_sae ({d_sae}), got {k!r}")
        if cfg.get("rescale_acts_by_decoder_norm", False):
            # codes = TopK(pre * |W_dec|) decoded as codes / |W_dec| @ W_dec: fold the norms.
            norm = params["W_dec"].norm(dim=-1)
            params["W_enc"], params["b_enc"] = params["W_enc"] * norm, params["b_enc"] * norm
            params["W_dec"] = params["W_dec"] / norm[:, None]
        return {**fields, "k": k}, params


# The decay of a running eval threshold (BatchTopK's, the tree HSAE's per tier): a memory of
# about 1 / (1 - beta) = 10 steps. The smallest of batch x k selected values hardly varies
# between batches, so a short memory costs little noise; the selected values fall all through
# training, so a long one (0.99 and 0.999 are common) lags above them and held-out L0 falls
# short of k (SmolLM2, the main job's 400 steps, k 40: BatchTopK 35.9, the tree 34.5 with 0.99;
# README of saezoo_topk).
THRESHOLD_BETA = 0.9


def check_threshold_beta(beta: float) -> None:
    if not 0 <= beta < 1:
        raise ValueError(f"threshold_beta must be in [0, 1), got {beta}")


@torch.no_grad()
def update_running_threshold(threshold: Tensor, smallest: Tensor, updates: Tensor, beta: float) -> None:
    """Move ``threshold`` (in place) towards ``smallest``, the smallest value a batch kept, as
    the ``updates``-th step of a running average with decay ``beta``, bias-corrected as Adam's
    moments are so that the first batches do not weigh more than the rest. ``updates`` stays a
    tensor: reading it on the host would synchronise a GPU at every training step."""
    weight = (1 - beta) / (1 - beta ** updates.clamp_min(1).double())  # the first weight exactly 1
    threshold.lerp_(smallest.to(threshold.dtype), weight.to(threshold.dtype))


@dataclass
class BatchTopKConfig(TopKConfig):
    threshold_beta: float = THRESHOLD_BETA
    """Decay of the running average of the batch's selection threshold (``THRESHOLD_BETA``)."""


class BatchTopKSAE(TopKFamilySAE):
    """The batch x k largest activations of the whole batch (Bussmann et al. 2024), so
    a token gets as many latents as it needs, k on average.

    Training keeps a running average of the smallest activation selected in each batch;
    in eval mode that threshold replaces the batch selection (a JumpReLU with one global
    threshold), so a token's codes no longer depend on the rest of its batch.
    """

    Config = BatchTopKConfig
    #: SAELens's name of the training architecture, recorded in an export's metadata.
    saelens_training_architecture: ClassVar[str] = "batchtopk"

    def __init__(self, d_in: int, cfg: BatchTopKConfig):
        super().__init__(d_in, cfg)
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))

    def validate(self) -> None:
        super().validate()
        check_threshold_beta(self.cfg.threshold_beta)

    def to_saelens(self) -> SAELensForm:
        """SAELens's JumpReLU with the global threshold repeated per latent (as SAELens saves
        its own BatchTopK SAEs for inference)."""
        if int(self.threshold_updates) == 0:
            raise UsageError(
                "this run has no inference threshold yet (it is estimated during training); "
                "train it for at least one step"
            )
        tensors = {name: getattr(self, name) for name in RELU_SAELENS_TENSORS}
        tensors["threshold"] = self.threshold.reshape(()).expand(self.width).clone()
        return SAELensForm("jumprelu", tensors, metadata={"training_architecture": self.saelens_training_architecture})

    def selection(self, k: int) -> Selection:
        # Until a threshold has been estimated, eval mode falls back to the batch selection.
        if not self.training and self.threshold_updates > 0:
            return self._select_above_threshold
        return lambda pre: self._select_batch(pre, k)

    def _select_batch(self, pre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        batch, width = pre.shape
        values, flat = largest_entries(pre, batch * k)
        if self.training:
            self._update_threshold(values)
        flat, order = flat.sort()
        return by_token(flat // width, flat % width, values[order], batch)

    def _select_above_threshold(self, pre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        token, latent = (pre > self.threshold).nonzero(as_tuple=True)
        return by_token(token, latent, pre[token, latent], pre.shape[0])

    @torch.no_grad()
    def _update_threshold(self, selected: Tensor) -> None:
        positive = selected[selected > 0]
        if positive.numel() == 0:
            return
        self.threshold_updates += 1
        update_running_threshold(self.threshold, positive.min(), self.threshold_updates, self.cfg.threshold_beta)

    def diagnostics(self) -> dict[str, float]:
        return {"threshold": self.threshold.item()}


def largest_entries(pre: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The n largest entries of ReLU(pre) ``[batch, width]`` and their flat indices: the
    result of ``relu(pre).flatten().topk(n, sorted=False)``, without its cost.

    torch's CPU topk over a whole batch is slow (300 ms for 131k of 16.8M entries, half a
    BatchTopK step). A few tokens' pre-activations give a bound that about 2n entries pass;
    one comparison finds them and topk runs over those alone. The result is exact: when
    fewer than n entries pass (a sample unlike the rest of the batch), or the bound is not
    positive, the full topk runs instead."""
    batch, width = pre.shape
    flat = pre.flatten()
    sample = pre[:: max(1, batch // 16)]
    keep = min(sample.numel(), 2 * -(-n * sample.shape[0] // batch) + 64)
    if 4 * n < flat.numel() and keep < sample.numel():
        bound = sample.flatten().topk(keep, sorted=False).values.min()
        if bound > 0:
            candidates = (flat >= bound).nonzero().squeeze(1)
            if candidates.numel() >= n:
                values, which = flat[candidates].topk(n, sorted=False)
                return values, candidates[which]
    return F.relu(flat).topk(n, sorted=False)


def by_token(token: Tensor, latent: Tensor, value: Tensor, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(latent, value, offsets)`` (a selection's result) from entries sorted by token."""
    return latent, value, torch.searchsorted(token, torch.arange(batch, device=token.device))


def entry_tokens(active: ActiveLatents, batch: int) -> Tensor:
    """The token of each selected entry."""
    counts = torch.diff(active.offsets, append=active.offsets.new_full((1,), active.latent.numel()))
    return torch.repeat_interleave(torch.arange(batch, device=active.latent.device), counts)


def dense_codes(active: ActiveLatents, batch: int, width: int) -> Tensor:
    """The selected entries as dense codes ``[batch, width]``."""
    flat = active.value.new_zeros(batch * width)
    return flat.index_put_((entry_tokens(active, batch) * width + active.latent,), active.value).view(batch, width)
