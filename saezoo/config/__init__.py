"""Run configuration: one dataclass per section of a run.

A run has four sections, each a dataclass: ``train`` (:class:`TrainConfig`), ``data``
(:class:`DataConfig`), ``sae`` (the architecture's ``Config``) and ``curriculum`` (the
curriculum's ``Config``; a run following several curricula has one per curriculum, in
``curriculum.NAME``). A key is ``section.field`` (``train.lr``,
``data.synthetic.d_in``); a bare ``field`` means ``sae.field``. Values are checked
against the field's type before anything runs.

Precedence, lowest first: dataclass defaults, the architecture preset, the TOML file
(``--config``), the command-line options, then ``--set``.

The modules beside this one: :mod:`~saezoo.config.fields` reads the docstrings under the
fields (the CLI help), :mod:`~saezoo.config.coerce` converts values to the fields' types,
:mod:`~saezoo.config.layers` reads the TOML file and ``--set`` and merges them, and
:mod:`~saezoo.config.resolve` builds a :class:`RunConfig` with the plugins' sections.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from saezoo.activations.synthetic import SyntheticConfig
from saezoo.curriculum import SEPARATOR


# Fewest held-out tokens an evaluation may use: explained variance needs a variance (one token
# gave -7.8e30).
MIN_EVAL_TOKENS = 2


@dataclass
class TrainConfig:
    steps: int = 400
    """Optimiser steps (``--tokens`` sets this to tokens // batch_size). The defaults of
    steps, batch size and data.harvest_tokens suit the embedded demo on a 2-core CPU
    (minutes); real runs set --tokens."""
    batch_size: int = 1024
    """Tokens per step."""
    lr: float = 1e-3
    """Peak learning rate."""
    optimizer: Literal["adam", "adamw"] = "adam"
    """Adam, or AdamW with decoupled weight decay."""
    weight_decay: float = 0.0
    """Weight decay (AdamW only)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam's beta1 and beta2."""
    warmup_steps: int = 50
    """Steps of learning-rate warmup from 0 to lr."""
    warmup_shape: Literal["linear", "cubic"] = "linear"
    """Shape of the warmup ramp (the seed paper used cubic)."""
    decay: Literal["none", "linear", "cosine"] = "linear"
    """Learning-rate decay to 0 over the last ``decay_fraction`` of steps."""
    decay_fraction: float = 0.2
    """Share of the run, at its end, over which the learning rate decays."""
    grad_clip: float | None = 1.0
    """Max gradient norm per gradient group (None: no clipping)."""
    normalize: bool = True
    """Scale activations so that E||x||^2 = d_in (folded into the saved weights)."""
    max_nonfinite_steps: int = 20
    """Consecutive non-finite steps (skipped) after which the run stops."""
    dead_after_tokens: int = 1_000_000
    """A latent silent for this many training tokens counts as dead."""
    seed: int = 0
    """Seed of the SAE's initialisation and of the data order."""
    init_seed: int | None = None
    """Seed of the SAE's initialisation alone (None: train.seed); `compare --seeds` gives
    each trainee its own on one stream of data."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (CUDA when present)."""
    autocast: Literal["none", "bf16"] = "none"
    """bf16 autocast of the SAE's forward pass (CUDA)."""
    compile: bool = False
    """torch.compile the SAE's forward pass; the first step pays for the compilation.
    Measured on an H200: flat, gated and hsae 10-53 % faster, jumprelu slower at 4096
    latents and faster at 65536, the TopK family 10-38 % slower; no gain on CPUs. Gated
    compiled on CUDA trained differently from eager (cause unknown): see
    benchmarks/README.md."""
    log_every: int = 10
    """Steps between TensorBoard scalars and progress updates."""
    eval_every: int = 100
    """Steps between held-out evaluations (0: only at the end)."""
    eval_tokens: int = 8192
    """Held-out tokens for the evaluations (periodic and final)."""
    downstream_tokens: int = 2048
    """Held-out tokens for the spliced CE/KL of the final evaluation (model sources; 0: skip)."""
    absorption_words: int = 4096
    """Vocabulary words for the first-letter absorption of the final evaluation (model
    sources; 0: skip); see docs/metrics.md."""
    checkpoint_every: int = 100
    """Steps between checkpoints (0: only at the end)."""


@dataclass
class DataConfig:
    source: Literal["model", "synthetic"] = "model"
    """Where activations come from: a language model, or synthetic features."""
    model: str = "smollm2-135m"
    """A registered model name, a hub id, or a local path."""
    hook: str | None = None
    """Module name to read activations from (default: the middle block)."""
    dataset: str = "python-docs"
    """A registered corpus, a hub id, or local text files."""
    text_column: str = "text"
    """Column holding the text, for datasets loaded through ``datasets``."""
    context_length: int = 128
    """Tokens per context; BOS is prepended and excluded."""
    max_norm_multiple: float = 10.0
    """Tokens with norm above this multiple of the median are excluded as outliers."""
    model_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """The language model's dtype: auto is bfloat16 on CUDA and on CPUs with native bf16
    matmuls (AMX, AVX512-BF16), else float32. The SAE always trains in float32."""
    harvest_tokens: int | None = 65536
    """Distinct activations harvested from the model; a run that reads more cycles through
    them, reshuffled each epoch (a notice says so). The default suits the embedded demo on
    a CPU (a few minutes); set it to the run's token count, or none for "as many as training
    reads", for real training."""
    cache: bool = True
    """Harvest activations to a disk cache and reuse it."""
    cache_dir: str | None = None
    """Cache directory (default: $SAEZOO_CACHE or ~/.cache/saezoo)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Settings of the synthetic source."""


SECTIONS = ("train", "data", "sae", "curriculum")


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    architecture: str
    preset: str | None
    train: TrainConfig
    data: DataConfig
    sae: Any
    curricula: dict[str, Any]
    """The curricula the run follows, in order: name -> its ``Config``."""

    @property
    def curriculum_name(self) -> str:
        """``tier-unlock``, or ``tier-unlock+target-l0`` for a run following both."""
        return SEPARATOR.join(self.curricula)

    def to_dict(self) -> dict[str, Any]:
        """cfg.json's form. A single curriculum's settings are the ``curriculum`` table itself
        (as before curricula composed, so older cfg.json files read alike); several
        curricula's are keyed by name in it."""
        settings = {name: dataclasses.asdict(cfg) for name, cfg in self.curricula.items()}
        return {
            "architecture": self.architecture,
            "preset": self.preset,
            "curriculum_name": self.curriculum_name,
            **{s: dataclasses.asdict(getattr(self, s)) for s in ("train", "data", "sae")},
            "curriculum": next(iter(settings.values())) if len(settings) == 1 else settings,
        }
