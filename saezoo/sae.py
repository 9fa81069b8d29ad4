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
* ``l0_control(cfg, target)``: the settings that bring the L0 to a target (``compare
  --target-l0``).
* ``to_saelens()`` / ``from_saelens(...)`` with ``saelens_reads``: the variant in SAELens's
  terms, both directions (:mod:`saezoo.export` writes and checks the format). The defaults
  export and read a plain ReLU SAE.

Inputs seen in training are normalised (E‖x‖² = d_in); :meth:`SAE.fold_input_scale`
folds that scale into the weights when the run is saved, so saved SAEs take raw
activations.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn


class SAEOutput(NamedTuple):
    x_hat: Tensor
    codes: Tensor
    losses: dict[str, Tensor]


class SAELensForm(NamedTuple):
    """An SAE as SAELens holds it (what :meth:`SAE.to_saelens` returns)."""

    architecture: str
    """SAELens's name for the architecture (cfg.json's ``architecture``)."""
    tensors: dict[str, Tensor]
    """sae_weights.safetensors's tensors by SAELens's names."""
    cfg: dict[str, Any] = {}
    """Keys cfg.json holds for this architecture besides the common ones (topk's ``k``)."""
    metadata: dict[str, Any] = {}
    """Keys added to cfg.json's ``metadata`` (e.g. ``training_architecture``)."""


#: The tensors of SAELens's plain ReLU SAE ("standard") and their shapes ("in" = d_in,
#: "sae" = d_sae); other SAELens architectures add to these.
RELU_SAELENS_TENSORS: dict[str, tuple[str, ...]] = {
    "W_enc": ("in", "sae"),
    "W_dec": ("sae", "in"),
    "b_enc": ("sae",),
    "b_dec": ("in",),
}


# Knobs the trainer itself applies; an SAE declares the others it accepts in ``knobs``.
TRAINER_KNOBS: frozenset[str] = frozenset({"lr_scale"})


class SAE(nn.Module):
    """Base class of every architecture. See the module docstring for the contract."""

    Config: ClassVar[type]
    #: Named configurations, each a dict of sections ``sae``/``train``/``data`` overrides.
    presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    #: Curriculum knobs this architecture applies in ``forward`` (besides TRAINER_KNOBS). A
    #: knob named ``*_scale`` is a factor (1: the SAE's own value), which several curricula
    #: of one run may set: their values multiply (:mod:`saezoo.curriculum`).
    knobs: ClassVar[frozenset[str]] = frozenset()
    #: SAELens architectures this class reads (``saezoo eval`` and ``browse`` on a SAELens
    #: directory, and the check of every export), each with its tensors' shapes as in
    #: RELU_SAELENS_TENSORS. Empty by default: the class reads none.
    saelens_reads: ClassVar[dict[str, dict[str, tuple[str, ...]]]] = {}

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

    def begin_step(self, step: int, steps: int) -> None:
        """Called by the trainer before each training step's forward, ``step`` steps of
        ``steps`` done (a resumed run starts at its checkpoint's step): for a schedule the SAE
        keeps itself, e.g. a loss that stops part-way through training."""

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

    def training_state(self) -> dict[str, Tensor]:
        """State that training reads and that is neither a parameter nor a buffer (so not in
        ``state_dict`` or the saved SAE), e.g. statistics gathered over several steps. The
        trainer saves it with each checkpoint and gives it back to
        :meth:`load_training_state` on resume, so a resumed run goes on as one that never
        stopped. Every rank calls it at each checkpoint (under torchrun, state gathered per rank
        can be summed over ranks here); rank 0's is saved. Empty by default."""
        return {}

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`training_state` returned (on the SAE's device), on every rank."""

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
    def built_class(cls, cfg: Any) -> type[SAE]:
        """The class that building this architecture with ``cfg`` makes, known before any
        weight (or activation) exists: ``compare`` checks each variant's curriculum against
        its knobs up front. An architecture that builds a subclass per config says which."""
        return cls

    @classmethod
    def l0_control(cls, cfg: Any, target: float) -> tuple[str | None, list[str]] | None:
        """How ``compare --target-l0`` brings ``cfg``'s L0 to ``target``: ``(curriculum,
        settings)``, the curriculum to train with (None: the one given) and ``--set`` items;
        None when the architecture has no way to. The default: the ``target-l0`` curriculum
        (which scales the penalty) when the architecture applies the ``sparsity_scale`` knob,
        else ``k = target`` (constant curriculum) for a config with a field ``k``. An architecture whose
        settings switch between the two answers per config."""
        if "sparsity_scale" in cls.knobs:
            return "target-l0", [f"curriculum.target={target}"]
        if "k" in {f.name for f in dataclasses.fields(cfg)}:
            return "constant", [f"sae.k={int(round(target))}"]
        return None

    def to_saelens(self) -> SAELensForm | None:
        """This SAE in SAELens's terms, for ``saezoo export --format saelens``; None when it has
        no SAELens counterpart. The default: a module whose tensors are exactly W_enc, W_dec,
        b_enc, b_dec is SAELens's ReLU SAE ("standard"), else None. Export reads the files
        back (with the class that reads the SAELens architecture) and compares encode/decode,
        so a mapping that does not hold is refused, never written."""
        state = self.state_dict()
        if set(state) != set(RELU_SAELENS_TENSORS):
            return None
        return SAELensForm("standard", dict(state))

    @classmethod
    def from_saelens(
        cls, architecture: str, cfg: dict[str, Any], tensors: dict[str, Tensor]
    ) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """``(config fields, parameters)`` of this class for a SAELens SAE: ``architecture``
        is one of ``saelens_reads``, ``cfg`` its cfg.json, ``tensors`` float32 on the CPU
        with the declared shapes. saezoo encodes ``x - b_dec``; a SAELens SAE without
        ``apply_b_dec_to_input`` needs ``b_dec @ W_enc`` added to its encoder bias
        (:func:`b_dec_shift`). The default reads a ReLU SAE's four tensors into a config
        whose ``expansion_factor`` fits the width (:func:`saelens_expansion`)."""
        params = {name: tensors[name] for name in RELU_SAELENS_TENSORS}
        shift = b_dec_shift(cfg, tensors)
        if shift is not None:
            params["b_enc"] = params["b_enc"] + shift
        return saelens_expansion(tensors), params

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)


def b_dec_shift(saelens_cfg: dict[str, Any], tensors: dict[str, Tensor]) -> Tensor | None:
    """``b_dec @ W_enc`` for a SAELens SAE that encodes ``x`` rather than ``x - b_dec``
    (``apply_b_dec_to_input`` false): what its encoder biases gain when saezoo subtracts
    b_dec first. None when it subtracts b_dec too (nothing to fold)."""
    if bool(saelens_cfg.get("apply_b_dec_to_input", True)):
        return None
    return tensors["b_dec"] @ tensors["W_enc"]


def saelens_expansion(tensors: dict[str, Tensor]) -> dict[str, Any]:
    """``{"expansion_factor": ...}`` large enough for a SAELens SAE's width (its tensors
    replace the module's, so the width read is theirs, also when it is no multiple of d_in)."""
    d_sae, d_in = tensors["W_dec"].shape
    return {"expansion_factor": max(1, math.ceil(d_sae / d_in))}


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
