"""Interop with SAELens: write a saezoo run in SAELens's on-disk format, and read that
format back so that published SAEs can be evaluated next to ours.

The format followed is SAELens 6.x as ``SAE.save_model`` writes it in **sae-lens 6.54.12**
(read from its source, ``sae_lens/saes/*.py``, and checked with its own loader
``SAE.load_from_disk``; see docs/interop.md). A SAELens directory holds two files::

    cfg.json                 {"architecture", "d_in", "d_sae", "dtype", "device",
                              "apply_b_dec_to_input", "normalize_activations",
                              "reshape_activations", "metadata": {...}} plus the keys of
                             the architecture (e.g. "k")
    sae_weights.safetensors  the architecture's tensors, at least W_enc [d_in, d_sae],
                             W_dec [d_sae, d_in] and b_dec [d_in]

This module knows the format only. Each architecture maps itself (the SAE contract in
:mod:`saezoo.sae`): ``SAE.to_saelens()`` gives SAELens's architecture name, tensors and
extra keys (the default: a plain ReLU SAE is SAELens's "standard"), and the classes that
list a SAELens architecture in ``saelens_reads`` read it back (``SAE.from_saelens``).
Every export is checked by reading the files back with that reader and comparing
encode/decode with the run's SAE; a mapping that does not hold is refused, never written.

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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import saezoo
from saezoo import checkpoint
from saezoo.errors import TrainingDiverged, UsageError, unknown_name
from saezoo.sae import SAE

FORMATS: tuple[str, ...] = ("saelens",)
#: The SAELens release whose on-disk format this module writes (and records as the
#: directory's ``metadata.sae_lens_version``, which SAELens's loader reads as "6.x format").
SAELENS_FORMAT_VERSION = "6.54.12"
SAELENS_CFG_FILE = "cfg.json"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"


def _readers() -> dict[str, list[str]]:
    """SAELens architecture -> the registered saezoo architectures that read it."""
    from saezoo.plugins import get_plugins

    readers: dict[str, list[str]] = {}
    for entry in get_plugins().architectures.entries.values():
        for saelens_arch in getattr(entry.obj, "saelens_reads", {}):
            readers.setdefault(saelens_arch, []).append(entry.name)
    return readers


def readable() -> str:
    """``gated->gated, standard->flat, ...``: the SAELens architectures saezoo reads."""
    return ", ".join(f"{a}->{'/'.join(names)}" for a, names in sorted(_readers().items())) or "none"


def _reader(saelens_arch: Any, where: Path | str) -> str:
    """The one registered architecture that reads SAELens ``saelens_arch``."""
    names = _readers().get(saelens_arch) if isinstance(saelens_arch, str) else None
    if not names:
        raise UsageError(
            f"{where}: SAELens architecture {saelens_arch!r} has no saezoo counterpart (readable: {readable()})"
        )
    if len(names) > 1:
        from saezoo.plugins import get_plugins

        owners = ", ".join(f"{n!r} (plugin {get_plugins().architectures.entries[n].plugin!r})" for n in names)
        raise UsageError(
            f"{where}: SAELens architecture {saelens_arch!r} is read by several architectures: {owners}; "
            f"block all but one with SAEZOO_BLOCK_PLUGINS"
        )
    return names[0]


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
    form = sae.to_saelens()
    if form is None:
        raise UsageError(
            f"architecture {architecture!r} ({type(sae).__name__}) has no SAELens counterpart, so --format saelens "
            f"cannot export it (its plugin maps it by SAE.to_saelens; readable by SAELens: {readable()}; "
            f"formats: {', '.join(FORMATS)})"
        )
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in form.tensors.items()}
    d_sae, d_in = tensors["W_dec"].shape
    cfg = {
        "architecture": form.architecture,
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # saezoo folds its scale into the weights
        "reshape_activations": "none",
        **form.cfg,
        "metadata": {**_metadata(sae, header), **form.metadata},
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
    meta["saezoo"] = {
        "version": saezoo.__version__,
        "architecture": header["architecture"],
        "preset": header.get("preset"),
        "sae": header.get("sae", {}),
        "latent_groups": [[name, size] for name, size in sae.latent_groups()],
        "data": data,
        "source": source,
        "train": {
            k: train[k] for k in ("steps", "batch_size", "seed", "eval_tokens", "downstream_tokens") if k in train
        },
    }
    return meta


def export_run(run_dir: Path | str, out: Path | str, fmt: str = "saelens") -> dict[str, Any]:
    """Write the run in ``run_dir`` to ``out`` in format ``fmt``; returns a summary. The files
    are read back and checked against the run's SAE before anything is reported."""
    from saezoo.trainer import nonfinite_result  # the trainer's own test of a run's weights

    if fmt not in FORMATS:
        raise unknown_name("export format", fmt, FORMATS)
    run_dir, out = Path(run_dir), Path(out)
    if is_saelens_dir(run_dir):
        raise UsageError(f"{run_dir} is already a SAELens directory; export takes a saezoo run directory")
    sae, header = checkpoint.load_sae(run_dir)
    why = nonfinite_result(sae, {})
    if why is not None:  # eval refuses such weights too (exit 3): a file no one can use
        raise TrainingDiverged(f"export of {run_dir}: the run's SAE has {why}; retrain it (a lower train.lr)")
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
    checkpoint.save_tensors(
        out / SAELENS_WEIGHTS_FILE, tensors, {"format": "pt", "written_by": f"saezoo {saezoo.__version__}"}
    )
    checkpoint.write_json(out / SAELENS_CFG_FILE, cfg)
    return {
        "format": fmt,
        "architecture": header["architecture"],
        "saelens_architecture": cfg["architecture"],
        "d_in": cfg["d_in"],
        "d_sae": cfg["d_sae"],
        "out": str(out),
    }


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
    for name, a, b in (
        ("codes", original.encode(x), copy.encode(x)),
        ("reconstruction", original.decode(original.encode(x)), copy.decode(copy.encode(x))),
    ):
        if not bool(torch.isfinite(a).all()):  # not the mapping's fault, and nothing worth exporting
            raise TrainingDiverged(f"{what}: the run's SAE gives non-finite {name}; retrain it (a lower train.lr)")
        err = float((a - b).norm() / a.norm().clamp_min(1e-12))
        if not math.isfinite(err) or err > 1e-4:
            raise UsageError(
                f"{what}: the written {name} differ from the run's (relative error {err:.2e}): the SAELens "
                f"mapping of {type(original).__name__} (SAE.to_saelens) does not hold"
            )


# --- import ------------------------------------------------------------------------------------


def is_saelens_dir(path: Path | str) -> bool:
    """A directory SAELens wrote (or one in its format): it holds ``sae_weights.safetensors``."""
    return (Path(path) / SAELENS_WEIGHTS_FILE).is_file()


def _normalise_cfg(cfg: dict[str, Any], where: Path) -> dict[str, Any]:
    """Fill in what configs written before SAELens 6.0 left implicit (as SAELens's own
    ``handle_pre_6_0_config`` does): architecture, the activation's settings (topk's k) as
    top-level keys, top-level metadata. Fields of the wrong JSON type are refused (``"no"``
    would read as true)."""
    kinds = {"metadata": (dict, type(None)), "activation_fn_kwargs": (dict, type(None)), "apply_b_dec_to_input": bool}
    for key, kind in kinds.items():
        if key in cfg and not isinstance(cfg[key], kind):
            wanted = "true or false" if kind is bool else "an object"
            raise UsageError(f"{where}: {key} must be {wanted}, got {cfg[key]!r:.60}")
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
        cfg["architecture"] = (
            "topk" if (cfg.get("activation_fn") or cfg.get("activation_fn_str")) == "topk" else "standard"
        )
    for key, value in kwargs.items():  # e.g. topk's k
        cfg.setdefault(key, value)
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
    return from_saelens(_normalise_cfg(raw, path / SAELENS_CFG_FILE), tensors, path)


def from_saelens(cfg: dict[str, Any], tensors: dict[str, Tensor], where: Path | str) -> tuple[SAE, dict[str, Any]]:
    """The saezoo SAE for SAELens ``cfg`` and ``tensors`` (see :func:`import_saelens`)."""
    from saezoo.plugins import get_plugins

    arch = cfg.get("architecture")
    name = _reader(arch, where)
    cls = get_plugins().architectures.get(name)
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    if not (isinstance(d_in, int) and isinstance(d_sae, int) and d_in > 0 and d_sae > 0):
        raise UsageError(f"{where}: cfg.json needs positive integers d_in and d_sae, got {d_in!r} and {d_sae!r}")
    if cfg.get("normalize_activations", "none") != "none":
        raise UsageError(
            f"{where}: normalize_activations={cfg['normalize_activations']!r} is not supported: saezoo SAEs take raw "
            f"activations; fold the normalisation into the weights first (SAELens: fold_activation_norm_scaling_factor)"
        )
    if cfg.get("reshape_activations", "none") != "none":
        raise UsageError(
            f"{where}: reshape_activations={cfg['reshape_activations']!r} (attention-head SAEs) is not supported"
        )
    tensors = dict(tensors)
    scaling = tensors.pop("scaling_factor", None)  # SAELens < 6 stored an all-ones one
    if scaling is not None and not torch.allclose(scaling.float(), torch.ones_like(scaling, dtype=torch.float32)):
        raise UsageError(f"{where}: a finetuning scaling_factor other than 1 is not supported")
    expected = cls.saelens_reads[arch]
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise UsageError(
            f"{where}: tensors do not match SAELens architecture {arch!r} "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(unexpected) or 'none'})"
        )
    sizes = {"in": d_in, "sae": d_sae}
    for tname, dims in expected.items():
        shape = tuple(sizes[d] for d in dims)
        if tuple(tensors[tname].shape) != shape:
            raise UsageError(
                f"{where}: tensor {tname} has shape {tuple(tensors[tname].shape)}, cfg.json implies {shape}"
            )
    t = {k: v.detach().to("cpu", torch.float32) for k, v in tensors.items()}
    try:
        sae_cfg, params = cls.from_saelens(arch, cfg, t)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None
    with torch.device("meta"):  # only the shapes; the real tensors are assigned below
        sae = checkpoint.build_sae(name, d_in, sae_cfg)
    own = sae.state_dict()
    if set(own) != set(params):
        raise UsageError(
            f"{where}: {name}'s SAE.from_saelens ({cls.__name__}) gives the tensors {', '.join(sorted(params))}, "
            f"its module has {', '.join(sorted(own))}"
        )
    # The SAELens SAE's tensors replace the module's (its width need not be a multiple of d_in).
    buffers = {n for n, _ in sae.named_buffers()}
    for tname, value in params.items():
        owner, _, attr = tname.rpartition(".")
        module = sae.get_submodule(owner)
        value = value.contiguous()
        setattr(module, attr, value if tname in buffers else nn.Parameter(value))
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
            hint = (
                f" (its SAELens hook is {info['hook_name']!r}, a TransformerLens name)" if info.get("hook_name") else ""
            )
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
