"""The architecture contract every SAE variant implements.

The trainer, evaluator, ``compare`` and export treat every variant alike through this
surface; nothing architecture-specific lives in the core.

A variant is an ``nn.Module`` subclass of :class:`SAE` with:

* ``Config``: a dataclass whose defaults train well; field docstrings are the help.
* ``encode(x) -> codes`` (``[..., width]``, non-negative, 0 = silent) and
  ``decode(codes) -> x_hat``.
* ``forward(x, knobs, dead_mask) -> SAEOutput``: ``losses`` holds every term; the
  trainer minimises their sum and logs each by name.
* ``latent_groups()``: how the codes split into tiers (a flat SAE has one group).
* ``latent_parents()``: the structural tree, where the architecture has one (the hierarchy
  contract; :mod:`saezoo.hierarchy` infers a tree from co-firing for every SAE alike and
  reports the structural one beside it).

Inputs seen in training are normalised (E‖x‖² = d_in); :meth:`SAE.fold_input_scale`
folds that scale into the weights when the run is saved, so saved SAEs take raw
activations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn


class SAEOutput(NamedTuple):
    x_hat: Tensor
    codes: Tensor
    losses: dict[str, Tensor]


# Knobs the trainer itself applies; an SAE declares the others it accepts in ``knobs``.
TRAINER_KNOBS: frozenset[str] = frozenset({"lr_scale"})


class SAE(nn.Module):
    """Base class of every architecture. See the module docstring for the contract."""

    Config: ClassVar[type]
    #: Named configurations, each a dict of sections ``sae``/``train``/``data`` overrides.
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    #: Curriculum knobs this architecture applies in ``forward`` (besides TRAINER_KNOBS).
    knobs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, d_in: int, cfg: Any):
        super().__init__()
        if d_in <= 0:
            raise ValueError(f"d_in must be positive, got {d_in}")
        self.d_in = d_in
        self.cfg = cfg

    # --- the contract -------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, knobs: dict[str, float] | None = None, dead_mask: Tensor | None = None) -> SAEOutput:
        raise NotImplementedError

    def decoder_directions(self) -> Tensor:
        """The dictionary, ``[width, d_in]``: row j is latent j's decoder direction."""
        raise NotImplementedError

    def fold_input_scale(self, scale: float) -> None:
        """Change the weights so that the SAE applied to raw ``x`` gives what it gave on
        ``x * scale``, divided by ``scale``; codes are unchanged."""
        raise NotImplementedError

    # --- optional, with defaults that suit most variants -----------------------------
    def latent_groups(self) -> list[tuple[str, int]]:
        """Contiguous groups of the codes, as ``(name, size)``; they sum to ``width``."""
        return [("all", self.width)]

    def latent_parents(self) -> Tensor | None:
        """The structural tree: ``[width]`` int64 holding, for each latent, the index (into
        the codes) of its parent latent, or -1 for a latent without one. None (the default)
        when the architecture has no structural parents; its tree is then only inferred."""
        return None

    @property
    def width(self) -> int:
        return int(self.decoder_directions().shape[0])

    @torch.no_grad()
    def init_from_data(self, sample: Tensor) -> None:
        """Data-dependent initialisation from a sample of (normalised) activations."""

    @torch.no_grad()
    def after_step(self) -> None:
        """Constraints applied after each optimiser step (e.g. unit-norm decoder rows)."""

    def after_backward(self) -> None:
        """Gradient surgery between backward and the optimiser step."""

    @torch.no_grad()
    def reorganise(self, step: int, steps: int) -> None:
        """Changes to which latent sits where, made between steps (e.g. the tree-gated HSAE
        moves a latent under the latent it only fires with). ``step`` steps of ``steps`` are
        done; the trainer calls it after :meth:`after_step` and before any checkpoint of that
        step. Weights only: the optimiser's moments and the trainer's dead counters stay with
        the position, not the latent."""

    def gradient_groups(self) -> dict[str, tuple[list[nn.Parameter], float | None]]:
        """Parameters clipped together: name -> (params, max norm or None for the
        trainer's ``grad_clip``). One group by default."""
        return {"all": ([p for p in self.parameters() if p.requires_grad], None)}

    def diagnostics(self) -> dict[str, float]:
        """Extra scalars worth logging (importance weights, thresholds, ...)."""
        return {}

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for an impossible config."""

    @classmethod
    def l0_control(cls, cfg: Any) -> str | None:
        """What brings ``cfg``'s L0 to a target (``compare --target-l0``): ``"k"`` when the
        config's ``k`` is the L0, ``"sparsity_scale"`` when a penalty is scaled by that knob
        (the target-l0 curriculum steers it), None when neither. The default answers from the
        knobs and the config's fields; an architecture whose settings switch between the two
        says which per config."""
        if "sparsity_scale" in cls.knobs:
            return "sparsity_scale"
        if "k" in {f.name for f in dataclasses.fields(cfg)}:
            return "k"
        return None

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)


def group_slices(sae: SAE) -> list[tuple[str, slice]]:
    """``latent_groups`` as slices into the codes."""
    out, start = [], 0
    for name, size in sae.latent_groups():
        out.append((name, slice(start, start + size)))
        start += size
    return out


def encoder_inputs(x: Tensor, W_enc: Tensor, b_enc: Tensor | None, b_dec: Tensor) -> tuple[Tensor, Tensor]:
    """``(x − b_dec, b_enc)``, whose ``centred @ W_enc + bias`` is the usual pre-activation,
    with b_dec's gradient moved from the first to the second.

    b_dec's gradient through the encoder is then (sum over tokens of grad_pre) @ W_enc.T, a
    vector product; autograd on (x − b_dec) @ W_enc multiplies every token's grad_pre by
    W_enc.T, a product as costly as the encoder (one matmul in six of a dense step).
    ``zero_with_grad`` is exactly zero, so the values are unchanged. ``b_enc=None``: no bias.
    """
    zero_with_grad = b_dec - b_dec.detach()
    shift = zero_with_grad @ W_enc
    return x - b_dec.detach(), (-shift if b_enc is None else b_enc - shift)


def pre_activations(x: Tensor, W_enc: Tensor, b_enc: Tensor | None, b_dec: Tensor) -> Tensor:
    """(x − b_dec) @ W_enc + b_enc with the cheap b_dec gradient of :func:`encoder_inputs`."""
    centred, bias = encoder_inputs(x, W_enc, b_enc, b_dec)
    return torch.addmm(bias, centred, W_enc) if centred.dim() == 2 else centred @ W_enc + bias


def unit_norm_rows_(weight: Tensor, eps: float = 1e-8) -> None:
    """Rescale each row of ``weight`` to unit L2 norm, in place."""
    weight.div_(weight.norm(dim=-1, keepdim=True).clamp_min(eps))


def remove_parallel_grad_(weight: nn.Parameter) -> None:
    """Drop the part of each row's gradient parallel to the row itself: with unit-norm
    rows that component only changes the norm, which ``after_step`` undoes anyway
    (Gao et al. 2024), and leaving it in disturbs Adam's moment estimates."""
    if weight.grad is None:
        return
    w = weight.data
    unit = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    weight.grad.sub_((weight.grad * unit).sum(-1, keepdim=True) * unit)


class UnitNormDictionarySAE(SAE):
    """The common parameterisation of the field: encode ``x − b_dec`` with ``W_enc``
    ``[d_in, width]``, decode with unit-norm rows of ``W_dec`` ``[width, d_in]`` plus
    ``b_dec``, width = ``cfg.expansion_factor * d_in``. This class creates those three
    parameters and supplies the rest of the contract; subclasses add their own (biases,
    thresholds) and write encode/decode/forward."""

    def __init__(self, d_in: int, cfg: Any):
        super().__init__(d_in, cfg)
        self.validate()
        W_dec = torch.randn(self.dictionary_width(), d_in)
        unit_norm_rows_(W_dec)
        self.W_dec = nn.Parameter(W_dec)
        # Gao et al.: an encoder that starts as the decoder's transpose alone removes most
        # dead latents at initialisation.
        self.W_enc = nn.Parameter(W_dec.t().clone())
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def dictionary_width(self) -> int:
        """Latents: ``expansion_factor * d_in`` (a subclass with another rule says its own);
        ``ValueError`` for a config that gives no valid width."""
        if self.cfg.expansion_factor < 1:
            raise ValueError(f"expansion_factor must be >= 1, got {self.cfg.expansion_factor}")
        return self.cfg.expansion_factor * self.d_in

    def validate(self) -> None:
        self.dictionary_width()

    def decoder_directions(self) -> Tensor:
        return self.W_dec

    @torch.no_grad()
    def init_from_data(self, sample: Tensor) -> None:
        # The geometric median is the textbook choice; the mean is close for activations
        # and costs one pass.
        self.b_dec.copy_(sample.mean(0))

    def after_backward(self) -> None:
        remove_parallel_grad_(self.W_dec)

    @torch.no_grad()
    def after_step(self) -> None:
        unit_norm_rows_(self.W_dec)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        # Pre-activations are unchanged (so are selections and thresholds on them).
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)
