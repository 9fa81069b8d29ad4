"""Language models: loading by name, hook points, and activations read at a hook.

A model name is looked up in the ``register_models`` hook first (the embedded default is
registered this way); any other name goes to ``transformers`` as a hub id or local directory.

A hook point is a module name from ``model.named_modules()`` (``model.layers.6``); by default
the middle transformer block, whose output is the residual stream. The forward pass stops as
soon as the hooked module has run, so the layers above it cost nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from saezoo.errors import UsageError, did_you_mean
from saezoo.plugins import get_plugins


def load_model(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, object]:
    """Load ``(model, tokenizer)`` by registered name, hub id or local path, in eval mode."""
    from transformers.utils import logging as hf_logging

    # saezoo shows its own progress; transformers' bars and notices would break the
    # one-line error contract of the CLI.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    plugins = get_plugins()
    if name in plugins.models:
        model, tokenizer = plugins.models.get(name)()
    else:
        model, tokenizer = _load_with_transformers(name, plugins.models.names())
    return model.to(device=device, dtype=dtype).eval(), tokenizer


MODEL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_model_dtype(name: str, device: str | torch.device) -> torch.dtype:
    """The dtype the language model runs in; ``auto`` is bfloat16 where the hardware has it.

    The model only produces activations and logits; the SAE always trains in float32. On a
    CPU with native bf16 matmuls (AMX or AVX512-BF16) a bf16 forward is about 4x faster than
    float32 (measured on SmolLM2-135M, see benchmarks/README.md); without them bf16 is
    emulated and slower, so ``auto`` keeps float32 there.

    ``SAEZOO_MODEL_DTYPE=float32`` (or ``bfloat16``) decides what ``auto`` means on this
    machine: the same suite or run can then be checked with the model in either dtype; a
    dtype set explicitly in the config still wins.
    """
    if name == "auto":
        name = os.environ.get("SAEZOO_MODEL_DTYPE") or "auto"
        if name != "auto" and name not in MODEL_DTYPES:
            raise UsageError(f"SAEZOO_MODEL_DTYPE must be auto, {' or '.join(MODEL_DTYPES)}; got {name!r}")
    if name != "auto":
        if name not in MODEL_DTYPES:
            raise UsageError(f"model_dtype must be auto, {' or '.join(MODEL_DTYPES)}; got {name!r}")
        return MODEL_DTYPES[name]
    if torch.device(device).type == "cuda":
        return torch.bfloat16
    if torch.device(device).type == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: stay with float32
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def _load_with_transformers(name: str, registered: list[str]) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:  # what transformers raises for a bad name or path
        hint = did_you_mean(name, registered)
        offline = (
            " (HF_HUB_OFFLINE is set: only the local hub cache was searched)"
            if os.environ.get("HF_HUB_OFFLINE")
            else ""
        )
        raise UsageError(
            f"cannot load model {name!r}: it is not a registered model ({', '.join(registered) or 'none'}{hint}), "
            f"and transformers could not load it as a local directory or hub id{offline}: {_first_line(exc)}"
        ) from exc
    return model, tokenizer


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and ModuleList of the transformer blocks: the ModuleList holding most parameters."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise UsageError(f"{type(model).__name__} has no list of transformer blocks; pass --hook explicitly")
    return max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def default_hook(model: nn.Module) -> str:
    """The middle transformer block (``model.layers.15`` of 30): its output is the residual stream."""
    name, blocks = find_blocks(model)
    return f"{name}.{len(blocks) // 2}"


def resolve_hook(model: nn.Module, hook: str | None) -> str:
    """``hook`` checked against the model's modules, or the default hook when ``None``."""
    if hook is None:
        return default_hook(model)
    names = [name for name, _ in model.named_modules() if name]
    if hook in names:
        # A probe of two 3-token contexts, before any harvest starts: the module must give
        # one vector per token (a rotary table gives one per position, shared by the batch).
        hooked_activations(model, hook, torch.zeros(2, 3, dtype=torch.long))
        return hook
    hint = did_you_mean(hook, names)
    try:
        prefix, blocks = find_blocks(model)
        candidates = ", ".join(f"{prefix}.{i}" for i in range(len(blocks)))
    except UsageError:
        candidates = ", ".join(names[:20])
    raise UsageError(
        f"no module {hook!r} in {type(model).__name__}{hint} (transformer blocks: {candidates}; "
        f"any name from model.named_modules() works)"
    )


class _StopForward(Exception):
    """Raised by the hook once the activations are captured, to skip the rest of the model."""


def hooked_activations(model: nn.Module, hook: str, input_ids: Tensor, **forward_options) -> Tensor:
    """The output of module ``hook`` for ``input_ids`` ``[B, T]``, as float32 ``[B, T, d]`` on the CPU.

    When the module returns a tuple (older transformer blocks do), its first element is the
    residual stream. The forward pass is stopped right after the module. ``forward_options``
    go to the model's forward (a key/value cache: ``saezoo.absorption``).
    """
    module = model.get_submodule(hook)
    captured: list[Tensor] = []

    def capture(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    handle = module.register_forward_hook(capture)
    try:
        with torch.inference_mode():
            model(input_ids=input_ids.to(_device_of(model)), **{"use_cache": False, **forward_options})
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise UsageError(f"module {hook!r} did not run in the forward pass; choose another --hook")
    out = captured[0]
    if not (
        isinstance(out, Tensor) and out.is_floating_point() and out.dim() == 3 and out.shape[:2] == input_ids.shape
    ):
        # The whole model, a rotary table, a mask: not one activation vector per token.
        what = f"a tensor of shape {list(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
        raise UsageError(
            f"module {hook!r} outputs {what}, not one activation vector per token ({list(input_ids.shape)} + [d]); "
            f"hook a layer, e.g. {default_hook(model)}"
        )
    # Copied outside inference mode: an inference tensor cannot enter the SAE's autograd graph.
    return out.to(device="cpu", dtype=torch.float32, copy=True)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
