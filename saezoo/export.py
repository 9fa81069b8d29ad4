"""Interop with SAELens: write a saezoo run in SAELens's on-disk format, and read that
format back so that published SAEs can be evaluated next to ours.

The format followed is SAELens 6.x as ``SAE.save_model`` writes it in **sae-lens 6.54.12**
(read from its source, ``sae_lens/saes/*.py``, and checked with its own loader
``SAE.load_from_disk``; see docs/interop.md). A SAELens directory holds two files::

    cfg.json                 {"architecture", "d_in", "d_sae", "dtype", "device",
                              "apply_b_dec_to_input", "normalize_activations",
                              "reshape_activations", "metadata": {...}}
                             topk adds "k" and "rescale_acts_by_decoder_norm"
    sae_weights.safetensors  W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_dec [d_in], and
                               standard, topk: b_enc [d_sae]
                               jumprelu:       b_enc [d_sae], threshold [d_sae]
                               gated:          b_gate, r_mag, b_mag [d_sae] (no b_enc)

With ``sae_in = x - b_dec`` (when ``apply_b_dec_to_input``, else ``x``) SAELens computes
``pre = sae_in @ W_enc + b_enc`` and codes ``ReLU(pre)`` (standard), the k largest of
``ReLU(pre)`` (topk), ``ReLU(pre) * (pre > threshold)`` (jumprelu), or for gated
``(sae_in @ W_enc + b_gate > 0) * ReLU(sae_in @ (W_enc * exp(r_mag)) + b_mag)``; every
architecture decodes ``codes @ W_dec + b_dec``. These are saezoo's formulas too, so the
mapping is exact:

    saezoo      SAELens    notes
    flat        standard
    topk        topk       rescale_acts_by_decoder_norm false
    batchtopk   jumprelu   the global threshold repeated per latent (as SAELens saves its BatchTopK)
    matryoshka  jumprelu   likewise (as SAELens saves its matryoshka_batchtopk); the prefix
                           sizes go into the metadata
    jumprelu    jumprelu   threshold = exp(log_threshold)
    gated       gated      b_gate, r_mag, b_mag as they are

Any other architecture (hsae, third-party ones) has no SAELens counterpart and is refused.
Reading goes the other way (standard -> flat, topk -> topk, jumprelu -> jumprelu, gated ->
gated), folding ``apply_b_dec_to_input = false`` and ``rescale_acts_by_decoder_norm = true``
into the weights. The mapping is keyed by the registered architecture name; every export
is checked by reading the files back and comparing encode/decode with the run's SAE.

saezoo's saved weights already take raw activations (the normalisation is folded in), so
exports say ``normalize_activations: "none"``. The metadata carries SAELens's usual keys
(``model_name``, ``hook_name`` as a TransformerLens name where it can be derived,
``hf_hook_name`` = saezoo's module name, ``dataset_path``, ``context_size``, ...) plus a
``saezoo`` object with the run's architecture, settings and data source, which lets
``saezoo eval`` evaluate an export on the run's own data without options.

Weights are read and written through safetensors only; nothing is unpickled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import saezoo
from saezoo import checkpoint
from saezoo.errors import UsageError, unknown_name
from saezoo.sae import SAE

FORMATS: tuple[str, ...] = ("saelens",)
#: The SAELens release whose on-disk format this module writes (and records as the
#: directory's ``metadata.sae_lens_version``, which SAELens's loader reads as "6.x format").
SAELENS_FORMAT_VERSION = "6.54.12"
SAELENS_CFG_FILE = "cfg.json"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"

# Tensor names and shapes of each SAELens architecture ("in" = d_in, "sae" = d_sae).
SAELENS_TENSORS: dict[str, dict[str, tuple[str, ...]]] = {
    "standard": {"W_enc": ("in", "sae"), "W_dec": ("sae", "in"), "b_enc": ("sae",), "b_dec": ("in",)},
    "topk": {"W_enc": ("in", "sae"), "W_dec": ("sae", "in"), "b_enc": ("sae",), "b_dec": ("in",)},
    "jumprelu": {
        "W_enc": ("in", "sae"),
        "W_dec": ("sae", "in"),
        "b_enc": ("sae",),
        "b_dec": ("in",),
        "threshold": ("sae",),
    },
    "gated": {
        "W_enc": ("in", "sae"),
        "W_dec": ("sae", "in"),
        "b_gate": ("sae",),
        "r_mag": ("sae",),
        "b_mag": ("sae",),
        "b_dec": ("in",),
    },
}

# saezoo architecture read back from each SAELens architecture.
IMPORTS: dict[str, str] = {"standard": "flat", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}


# --- export ------------------------------------------------------------------------------------

Exported = tuple[str, dict[str, Tensor], dict[str, Any]]  # SAELens architecture, tensors, extra cfg keys


def _common(s: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"W_enc": s["W_enc"], "W_dec": s["W_dec"], "b_enc": s["b_enc"], "b_dec": s["b_dec"]}


def _flat(s: dict[str, Tensor], cfg: dict[str, Any]) -> Exported:
    return "standard", _common(s), {}


def _topk(s: dict[str, Tensor], cfg: dict[str, Any]) -> Exported:
    return "topk", _common(s), {"k": int(cfg["k"]), "rescale_acts_by_decoder_norm": False}


def _batchtopk(s: dict[str, Tensor], cfg: dict[str, Any]) -> Exported:
    if int(s["threshold_updates"]) == 0:
        raise UsageError(
            "this run has no inference threshold yet (it is estimated during training); train it for at least one step"
        )
    threshold = s["threshold"].reshape(()).expand(s["W_dec"].shape[0]).clone()
    return "jumprelu", {**_common(s), "threshold": threshold}, {}


def _jumprelu(s: dict[str, Tensor], cfg: dict[str, Any]) -> Exported:
    return "jumprelu", {**_common(s), "threshold": s["log_threshold"].exp()}, {}


def _gated(s: dict[str, Tensor], cfg: dict[str, Any]) -> Exported:
    names = ("W_dec", "b_gate", "r_mag", "b_mag", "b_dec")
    return "gated", {n: s[n] for n in ("W_enc", *names)}, {}


EXPORTERS: dict[str, Callable[[dict[str, Tensor], dict[str, Any]], Exported]] = {
    "flat": _flat,
    "topk": _topk,
    "batchtopk": _batchtopk,
    "matryoshka": _batchtopk,
    "jumprelu": _jumprelu,
    "gated": _gated,
}
_SAELENS_NAME = {"flat": "standard", "topk": "topk", "batchtopk": "jumprelu", "matryoshka": "jumprelu", "jumprelu": "jumprelu", "gated": "gated"}


def exportable() -> str:
    """``flat->standard, topk->topk, ...``: what ``--format saelens`` accepts."""
    return ", ".join(f"{a}->{_SAELENS_NAME[a]}" for a in sorted(EXPORTERS))


# TransformerLens names the output of block N ``blocks.N.hook_resid_post``.
_BLOCK_OUTPUT = re.compile(r"^(?:model\.layers|transformer\.h|gpt_neox\.layers|model\.decoder\.layers|layers)\.(\d+)$")


def transformer_lens_hook(hook: str | None) -> str | None:
    """The TransformerLens name of a block-output module (``model.layers.6`` ->
    ``blocks.6.hook_resid_post``), or None when there is no obvious one."""
    match = _BLOCK_OUTPUT.match(hook or "")
    return f"blocks.{match.group(1)}.hook_resid_post" if match else None


def to_saelens(sae: SAE, header: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """SAELens's ``cfg.json`` contents and tensors for a loaded saezoo run."""
    architecture = header["architecture"]
    exporter = EXPORTERS.get(architecture)
    if exporter is None:
        raise UsageError(
            f"architecture {architecture!r} has no SAELens counterpart, so --format saelens cannot export it "
            f"(exportable: {exportable()}; formats: {', '.join(FORMATS)})"
        )
    state = {k: v.detach().to("cpu", torch.float32) for k, v in sae.state_dict().items()}
    try:
        sl_arch, tensors, extra = exporter(state, header.get("sae", {}))
    except KeyError as exc:
        raise UsageError(
            f"architecture {architecture!r} (plugin class {type(sae).__name__}) lacks tensor {exc.args[0]!r} "
            f"that the SAELens export of {architecture!r} expects"
        ) from None
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    d_sae, d_in = tensors["W_dec"].shape
    cfg = {
        "architecture": sl_arch,
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # saezoo folds its scale into the weights
        "reshape_activations": "none",
        **extra,
        "metadata": _metadata(sae, header),
    }
    return cfg, tensors


def _metadata(sae: SAE, header: dict[str, Any]) -> dict[str, Any]:
    data = header.get("data", {})
    source = header.get("source", {})
    train = header.get("train", {})
    meta: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,  # the format written, not a SAELens install
        "sae_lens_training_version": None,  # not trained by SAELens
    }
    if data.get("source", "model") == "model":
        hook = source.get("hook") or data.get("hook")
        meta.update(
            model_name=data.get("model"),
            hook_name=transformer_lens_hook(hook),
            hf_hook_name=hook,
            hook_head_index=None,
            dataset_path=data.get("dataset"),
            context_size=data.get("context_length"),
            prepend_bos=True,  # saezoo prepends BOS and excludes it
            exclude_special_tokens=True,
        )
    if header["architecture"] in ("batchtopk", "matryoshka"):
        meta["training_architecture"] = {"batchtopk": "batchtopk", "matryoshka": "matryoshka_batchtopk"}[header["architecture"]]
    meta["saezoo"] = {
        "version": saezoo.__version__,
        "architecture": header["architecture"],
        "preset": header.get("preset"),
        "sae": header.get("sae", {}),
        "latent_groups": [[name, size] for name, size in sae.latent_groups()],
        "data": data,
        "source": source,
        "train": {k: train[k] for k in ("steps", "batch_size", "seed", "eval_tokens", "downstream_tokens") if k in train},
    }
    return meta


def export_run(run_dir: Path | str, out: Path | str, fmt: str = "saelens") -> dict[str, Any]:
    """Write the run in ``run_dir`` to ``out`` in format ``fmt``; returns a summary. The files
    are read back and checked against the run's SAE before anything is reported."""
    if fmt not in FORMATS:
        raise unknown_name("export format", fmt, FORMATS)
    run_dir, out = Path(run_dir), Path(out)
    if is_saelens_dir(run_dir):
        raise UsageError(f"{run_dir} is already a SAELens directory; export takes a saezoo run directory")
    sae, header = checkpoint.load_sae(run_dir)
    cfg, tensors = to_saelens(sae, header)
    reloaded, _ = from_saelens(cfg, tensors, out)
    check_same(sae, reloaded, f"export of {run_dir}")
    for name in (SAELENS_CFG_FILE, SAELENS_WEIGHTS_FILE):
        if (out / name).exists():
            raise UsageError(f"{out} already holds {name}; choose another output directory")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create the directory ({exc.strerror})") from None
    checkpoint.save_tensors(out / SAELENS_WEIGHTS_FILE, tensors, {"format": "pt", "written_by": f"saezoo {saezoo.__version__}"})
    checkpoint.write_json(out / SAELENS_CFG_FILE, cfg)
    return {"format": fmt, "architecture": header["architecture"], "saelens_architecture": cfg["architecture"],
            "d_in": cfg["d_in"], "d_sae": cfg["d_sae"], "out": str(out)}


@torch.no_grad()
def check_same(original: SAE, copy: SAE, what: str, tokens: int = 128) -> None:
    """Encode/decode of ``copy`` must match ``original`` on inputs shaped like activations
    (sparse sums of decoder rows plus noise, around ``b_dec``)."""
    original, copy = original.eval(), copy.eval()
    W = original.decoder_directions().detach().float().cpu()
    width, d_in = W.shape
    gen = torch.Generator().manual_seed(0)
    weights = torch.rand(tokens, width, generator=gen) * (torch.rand(tokens, width, generator=gen) < 8 / width)
    signal = weights @ W
    scale = float(signal.norm(dim=-1).mean()) or 1.0
    x = signal + torch.randn(tokens, d_in, generator=gen) * scale / math.sqrt(d_in)
    b_dec = dict(original.named_parameters()).get("b_dec")
    if b_dec is not None:
        x = x + b_dec.detach().float().cpu()
    for name, a, b in (("codes", original.encode(x), copy.encode(x)), ("reconstruction", original.decode(original.encode(x)), copy.decode(copy.encode(x)))):
        err = float((a - b).norm() / a.norm().clamp_min(1e-12))
        if not math.isfinite(err) or err > 1e-4:
            raise UsageError(
                f"{what}: the written {name} differ from the run's (relative error {err:.2e}); "
                f"is {type(original).__name__} the built-in architecture of that name?"
            )


# --- import ------------------------------------------------------------------------------------


def is_saelens_dir(path: Path | str) -> bool:
    """A directory SAELens wrote (or one in its format): it holds ``sae_weights.safetensors``."""
    return (Path(path) / SAELENS_WEIGHTS_FILE).is_file()


def _normalise_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill in what configs written before SAELens 6.0 left implicit (as SAELens's own
    ``handle_pre_6_0_config`` does): architecture, topk's k, top-level metadata."""
    cfg = dict(cfg)
    meta = dict(cfg.get("metadata") or {})
    for key in ("model_name", "hook_name", "hf_hook_name", "dataset_path", "context_size", "sae_lens_version"):
        if key not in meta and key in cfg:
            meta[key] = cfg[key]
    if "hook_name" not in meta and "hook_point" in cfg:
        meta["hook_name"] = cfg["hook_point"]
    cfg["metadata"] = meta
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if "architecture" not in cfg:
        cfg["architecture"] = "topk" if (cfg.get("activation_fn") or cfg.get("activation_fn_str")) == "topk" else "standard"
    if cfg["architecture"] == "topk" and "k" not in cfg and "k" in kwargs:
        cfg["k"] = kwargs["k"]
    norm = cfg.get("normalize_activations", "none")
    cfg["normalize_activations"] = {None: "none", False: "none", True: "expected_average_only_in"}.get(norm, norm)
    return cfg


def import_saelens(path: Path | str) -> tuple[SAE, dict[str, Any]]:
    """A SAELens directory as the matching saezoo SAE (on the CPU, in eval mode), and
    ``info``: the SAELens architecture, sizes, metadata and the saezoo architecture."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"{path}: no such directory")
    raw = checkpoint.read_json(path / SAELENS_CFG_FILE, "SAELens config (cfg.json)")
    if not isinstance(raw, dict):
        raise UsageError(f"{path / SAELENS_CFG_FILE}: expected a JSON object")
    tensors, _ = checkpoint.load_tensors(path / SAELENS_WEIGHTS_FILE, checksum="optional")  # SAELens writes none
    return from_saelens(_normalise_cfg(raw), tensors, path)


def from_saelens(cfg: dict[str, Any], tensors: dict[str, Tensor], where: Path | str) -> tuple[SAE, dict[str, Any]]:
    """The saezoo SAE for SAELens ``cfg`` and ``tensors`` (see :func:`import_saelens`)."""
    arch = cfg.get("architecture")
    if arch not in IMPORTS:
        raise UsageError(
            f"{where}: SAELens architecture {arch!r} has no saezoo counterpart "
            f"(readable: {', '.join(f'{a}->{IMPORTS[a]}' for a in sorted(IMPORTS))})"
        )
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    if not (isinstance(d_in, int) and isinstance(d_sae, int) and d_in > 0 and d_sae > 0):
        raise UsageError(f"{where}: cfg.json needs positive integers d_in and d_sae, got {d_in!r} and {d_sae!r}")
    if cfg.get("normalize_activations", "none") != "none":
        raise UsageError(
            f"{where}: normalize_activations={cfg['normalize_activations']!r} is not supported: saezoo SAEs take raw "
            f"activations; fold the normalisation into the weights first (SAELens: fold_activation_norm_scaling_factor)"
        )
    if cfg.get("reshape_activations", "none") != "none":
        raise UsageError(f"{where}: reshape_activations={cfg['reshape_activations']!r} (attention-head SAEs) is not supported")
    tensors = dict(tensors)
    scaling = tensors.pop("scaling_factor", None)  # SAELens < 6 stored an all-ones one
    if scaling is not None and not torch.allclose(scaling.float(), torch.ones_like(scaling, dtype=torch.float32)):
        raise UsageError(f"{where}: a finetuning scaling_factor other than 1 is not supported")
    expected = SAELENS_TENSORS[arch]
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise UsageError(
            f"{where}: tensors do not match SAELens architecture {arch!r} "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(unexpected) or 'none'})"
        )
    sizes = {"in": d_in, "sae": d_sae}
    for name, dims in expected.items():
        shape = tuple(sizes[d] for d in dims)
        if tuple(tensors[name].shape) != shape:
            raise UsageError(f"{where}: tensor {name} has shape {tuple(tensors[name].shape)}, cfg.json implies {shape}")
    t = {k: v.detach().to("cpu", torch.float32) for k, v in tensors.items()}
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", True))
    # saezoo always encodes x - b_dec; without apply_b_dec_to_input, b_dec @ W_enc moves into the biases.
    shift = None if apply_b_dec else t["b_dec"] @ t["W_enc"]
    sae_cfg: dict[str, Any] = {"expansion_factor": max(1, math.ceil(d_sae / d_in))}
    if arch == "gated":
        params = {
            "W_enc": t["W_enc"],
            "b_gate": t["b_gate"] if shift is None else t["b_gate"] + shift,
            "r_mag": t["r_mag"],
            "b_mag": t["b_mag"] if shift is None else t["b_mag"] + shift * t["r_mag"].exp(),
            "W_dec": t["W_dec"],
            "b_dec": t["b_dec"],
        }
    else:
        params = {k: t[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}
        if shift is not None:
            params["b_enc"] = params["b_enc"] + shift
        if arch == "topk":
            k = cfg.get("k")
            if not isinstance(k, int) or not 1 <= k <= d_sae:
                raise UsageError(f"{where}: topk needs an integer k between 1 and d_sae ({d_sae}), got {k!r}")
            sae_cfg["k"] = k
            if cfg.get("rescale_acts_by_decoder_norm", False):
                # codes = TopK(pre * |W_dec|) decoded as codes / |W_dec| @ W_dec: fold the norms.
                norm = params["W_dec"].norm(dim=-1)
                params["W_enc"], params["b_enc"] = params["W_enc"] * norm, params["b_enc"] * norm
                params["W_dec"] = params["W_dec"] / norm[:, None]
        if arch == "jumprelu":
            # ReLU(pre) * (pre > t) equals pre * (pre > max(t, 0)); log(0) = -inf gives a plain ReLU.
            params["log_threshold"] = t["threshold"].clamp_min(0).log()
    name = IMPORTS[arch]
    with torch.device("meta"):  # only the shapes; the real tensors are assigned below
        sae = checkpoint.build_sae(name, d_in, sae_cfg)
    own = dict(sae.named_parameters())
    if set(own) != set(params) or dict(sae.named_buffers()):
        raise UsageError(
            f"{where}: the registered architecture {name!r} ({type(sae).__name__}) does not have the parameters "
            f"of saezoo's built-in {name!r}; cannot read SAELens {arch!r} into it"
        )
    for pname, value in params.items():
        setattr(sae, pname, nn.Parameter(value.contiguous()))
    meta = cfg.get("metadata") or {}
    info = {
        "format": "saelens",
        "saelens_architecture": arch,
        "architecture": name,
        "sae": sae_cfg,
        "d_in": d_in,
        "d_sae": d_sae,
        "sae_lens_version": meta.get("sae_lens_version"),
        "model_name": meta.get("model_name"),
        "hook_name": meta.get("hook_name"),
        "hf_hook_name": meta.get("hf_hook_name"),
        "dataset_path": meta.get("dataset_path"),
        "context_size": meta.get("context_size"),
        "saezoo": meta.get("saezoo") if isinstance(meta.get("saezoo"), dict) else None,
    }
    return sae.eval(), info


def eval_header(info: dict[str, Any], options: dict[str, Any], where: Path | str) -> dict[str, Any]:
    """A run header (what ``cfg.json`` of a saezoo run holds) to evaluate an imported SAELens
    SAE: the data source from the command line ``options`` (source, model, hook, dataset,
    context_length), over what a saezoo export recorded. Without that record, a model source
    needs ``--model``, ``--hook`` and ``--dataset``: SAELens names hooks in TransformerLens's
    terms (``blocks.6.hook_resid_post``), saezoo reads a module (``model.layers.6``)."""
    recorded = info.get("saezoo") or {}
    data = dict(recorded.get("data") or {})
    train = dict(recorded.get("train") or {})
    given = {k: v for k, v in options.items() if v is not None}
    if given.get("source", data.get("source")) != data.get("source"):
        data = {}  # another kind of source: the recorded settings do not apply
    known = bool(data)  # a saezoo export's own source: hook None means its default block
    data.update(given)
    data.setdefault("source", "model")
    if data["source"] == "model":
        if data.get("hook") is None and not known and info.get("hf_hook_name"):
            data["hook"] = info["hf_hook_name"]
        missing = [f"--{k}" for k in ("model", "dataset") if not data.get(k)]
        missing += [] if known or data.get("hook") else ["--hook"]
        if missing:
            hint = f" (its SAELens hook is {info['hook_name']!r}, a TransformerLens name)" if info.get("hook_name") else ""
            raise UsageError(
                f"{where} is a SAELens directory: give {', '.join(missing)}{hint}, e.g. --model gpt2 "
                f"--hook transformer.h.8 --dataset TEXTS, or --source synthetic"
            )
    elif data["source"] == "synthetic":
        synthetic = dict(data.get("synthetic") or {})
        synthetic.setdefault("d_in", info["d_in"])
        data["synthetic"] = synthetic
    if not recorded or given:
        # No training harvest to reuse: estimate the outlier threshold on a small one.
        train = {k: v for k, v in train.items() if k not in ("steps",)}
        batch = int(train.get("batch_size", 4096))
        train["steps"] = max(1, math.ceil(int(train.get("eval_tokens", 16384)) / batch))
    return {"architecture": info["architecture"], "sae": info["sae"], "data": data, "train": train}
