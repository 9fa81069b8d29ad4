"""Downstream fidelity: splice the SAE's reconstruction into the model's forward pass.

Each context is run three ways — clean, with the hooked activation replaced by the SAE's
reconstruction, and with it zero-ablated — and the next-token predictions are compared. The
runs share the layers below the hook, which run once (see ``_runs``). The zero-ablated run
does not depend on the SAE: given a ``baseline_key``, its sums are cached, and later
evaluations on the same contexts run only the clean and the SAE runs. Several SAEs
(``spliced_metrics_many``, as ``compare`` evaluates them) share the clean run too. Positions whose
activation is not a training token (BOS, padding, massive outliers) are left untouched in
both spliced runs. A position counts when its activation was spliced and the token it
predicts is real (the next position's mask is true).

* ``ce_clean``, ``ce_sae``, ``ce_zero``: mean next-token cross-entropy (nats).
* ``ce_recovered`` = (ce_zero − ce_sae) / (ce_zero − ce_clean); ``delta_ce`` = ce_sae − ce_clean.
* ``kl_sae``, ``kl_zero``: mean over positions of KL(p_clean ‖ p_spliced).
* ``cosine``, ``norm_ratio``: mean cosine similarity of x̂ to x, and mean ‖x̂‖ / ‖x‖.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saezoo import cpu_share
from saezoo.activations.cache import cache_root, key_hash
from saezoo.checkpoint import write_json
from saezoo.errors import UsageError
from saezoo.sae import SAE


def _replace_output(module: nn.Module, fn: Callable[[Tensor], Tensor]):
    """A forward hook replacing the module's activation (first element of a tuple)."""

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    return module.register_forward_hook(hook)


# Bytes of one run's float32 logits handled at once. Under glibc's largest mmap threshold (32 MB) the
# temporaries are reused from the heap; above it every step maps and page-faults fresh memory,
# which made CE/KL 3-4x slower than at 16 MB (SmolLM2's 49k vocabulary, 2 cores).
_CHUNK_BYTES = 16 << 20


def spliced_metrics(
    model: nn.Module, hook: str, sae: SAE, input_ids: Tensor, mask: Tensor, **options: Any
) -> dict[str, float]:
    """Spliced CE/KL of one SAE; see :func:`spliced_metrics_many` for the arguments."""
    return spliced_metrics_many(model, hook, [sae], input_ids, mask, **options)[0]


@torch.no_grad()
def spliced_metrics_many(
    model: nn.Module,
    hook: str,
    saes: list[SAE],
    input_ids: Tensor,
    mask: Tensor,
    batch_size: int = 8,
    max_norm: float | None = None,
    device: torch.device | str = "cpu",
    baseline_key: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> list[dict[str, float]]:
    """Spliced CE/KL of each SAE on contexts ``input_ids`` ``[N, T]`` with splice mask
    ``mask`` ``[N, T]``; the clean (and zero-ablated) runs are shared, so K SAEs cost
    K + 1 runs above the hook instead of 2K.

    The SAEs take raw activations (saved SAEs). ``max_norm``: activations above it are
    outliers and stay untouched. ``baseline_key`` identifies the model and hook (the
    activation cache's key does); with it the zero-ablated run's sums are read from, or
    written to, ``<cache_dir>/downstream``.
    """
    module = model.get_submodule(hook)
    saes = [sae.to(device).eval() for sae in saes]
    baseline_file = None
    if baseline_key is not None:
        contexts = hashlib.sha256(input_ids.cpu().numpy().tobytes() + mask.cpu().numpy().tobytes()).hexdigest()
        key = {
            **baseline_key,
            "contexts": contexts,
            "shape": list(input_ids.shape),
            "max_norm": max_norm,
            "batch_size": batch_size,
        }
        baseline_file = (
            (Path(cache_dir).expanduser() if cache_dir else cache_root()) / "downstream" / f"{key_hash(key)}.json"
        )
        baseline = _read_baseline(baseline_file, key)
    else:
        baseline = None
    shared = {k: 0.0 for k in ("ce_clean", "ce_zero", "kl_zero")}
    own = [{k: 0.0 for k in ("ce_sae", "kl_sae", "cosine", "norm_ratio")} for _ in saes]
    positions, spliced_tokens = 0, 0
    for ids, m in zip(input_ids.split(batch_size), mask.split(batch_size)):
        cpu_share.refresh()  # another run may have started or ended
        ids, m = ids.to(device), m.to(device)
        state: dict[str, Any] = {}

        def spliced(act: Tensor, m: Tensor = m, state: dict = state) -> list[Tensor]:
            """The activation with each SAE's reconstruction, and (without a cached
            baseline) zero-ablated, on one mask."""
            keep = m.clone()
            if max_norm is not None:
                keep &= act.float().norm(dim=-1) <= max_norm
            x = act[keep].float()
            state["keep"], state["cos"], state["ratio"] = keep, [], []
            replaced = []
            for sae in saes:
                x_hat = sae.decode(sae.encode(x))
                state["cos"].append(float(torch.cosine_similarity(x_hat, x, dim=-1).sum()))
                state["ratio"].append(float((x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).sum()))
                with_sae = act.clone()
                with_sae[keep] = x_hat.to(act.dtype)
                replaced.append(with_sae)
            if not baseline:
                with_zero = act.clone()
                with_zero[keep] = 0
                replaced.append(with_zero)
            return replaced

        logits = _runs(model, module, ids, spliced)  # [R, B, T, V]: clean, each SAE(, zero)
        # Position t predicts token t+1: count it when t was spliced and t+1 is real. Chunks
        # are contiguous runs of positions, uncounted ones weighted 0: slicing a view is
        # cheaper than gathering the counted rows, and nearly every position counts.
        counted = torch.zeros_like(m)
        counted[:, :-1] = state["keep"][:, :-1] & m[:, 1:]
        targets = torch.zeros_like(ids)
        targets[:, :-1] = ids[:, 1:]
        weight, targets = counted.flatten().float(), targets.flatten()
        flat = logits.flatten(1, 2)  # [R, B*T, V], a view
        # Chunk rows depend on the vocabulary only, not on how many runs share the batch: a
        # cached baseline (fewer runs) must sum its chunks exactly as the run that wrote it.
        per_chunk = max(1, _CHUNK_BYTES // (flat.shape[-1] * 4))
        for start in range(0, flat.shape[1], per_chunk):
            w = weight[start : start + per_chunk]
            if not w.any():
                continue
            # Sums of CE of clean, each SAE (and zero); of KL of each SAE (and zero).
            ce_sums, kl_sums = _ce_kl(flat[:, start : start + per_chunk], targets[start : start + per_chunk], w)
            shared["ce_clean"] += ce_sums[0]
            for i, totals in enumerate(own):
                totals["ce_sae"] += ce_sums[1 + i]
                totals["kl_sae"] += kl_sums[i]
            if not baseline:
                shared["ce_zero"] += ce_sums[-1]
                shared["kl_zero"] += kl_sums[-1]
        positions += int(counted.sum())
        for totals, cos, ratio in zip(own, state["cos"], state["ratio"]):
            totals["cosine"] += cos
            totals["norm_ratio"] += ratio
        spliced_tokens += int(state["keep"].sum())
    if baseline:
        if baseline["positions"] != positions:  # altered by hand: its sums cannot be trusted
            baseline_file.unlink(missing_ok=True)
            raise UsageError(
                f"{baseline_file}: damaged cached baseline ({baseline['positions']} positions, this run {positions}); "
                "removed it, run again"
            )
        shared["ce_zero"], shared["kl_zero"] = baseline["ce_zero"], baseline["kl_zero"]
    elif baseline_file is not None:
        # Atomic (temp file + rename): a killed run leaves no half-written baseline. It only
        # saves time, so a cache that cannot be written (read-only, full) is not an error.
        try:
            write_json(
                baseline_file,
                {
                    "key": key,
                    "sums": {"positions": positions, "ce_zero": shared["ce_zero"], "kl_zero": shared["kl_zero"]},
                },
            )
        except (OSError, UsageError):
            pass
    return [_finish(shared, totals, positions, spliced_tokens) for totals in own]


def _finish(shared: dict[str, float], own: dict[str, float], positions: int, spliced_tokens: int) -> dict[str, float]:
    """One SAE's metrics from the summed CE/KL (per counted position) and cosine/ratio (per spliced token)."""
    out = {k: v / max(positions, 1) for k, v in {**shared, **own}.items() if k not in ("cosine", "norm_ratio")}
    out["cosine"] = own["cosine"] / max(spliced_tokens, 1)
    out["norm_ratio"] = own["norm_ratio"] / max(spliced_tokens, 1)
    denom = out["ce_zero"] - out["ce_clean"]
    out["ce_recovered"] = (out["ce_zero"] - out["ce_sae"]) / denom if abs(denom) > 1e-12 else float("nan")
    out["delta_ce"] = out["ce_sae"] - out["ce_clean"]
    out["downstream_positions"] = float(positions)
    return out


def _runs(model: nn.Module, module: nn.Module, ids: Tensor, spliced: Callable[[Tensor], list[Tensor]]) -> Tensor:
    """Logits ``[R, B, T, V]`` of the clean run and of the R − 1 runs ``spliced(act)`` gives.

    The runs share everything below the hook, so one forward pass serves them: at the hook
    the batch becomes ``[clean; spliced...]`` and the layers above run on R·B rows. This
    needs every tensor those layers take besides the hidden states (rotary tables, masks) to
    broadcast over the batch, which holds for decoder-only models run without a padding mask;
    a model where it does not fails on the shapes, and then gets separate passes.
    """
    b = ids.shape[0]
    handle = _replace_output(module, lambda act: torch.cat([act, *spliced(act)]))
    try:
        logits = model(ids, use_cache=False).logits
        if logits.shape[0] > b:
            return logits.unflatten(0, (-1, b))
    except RuntimeError:
        pass
    finally:
        handle.remove()
    replacements: list[Tensor] = []

    def keep_clean(act: Tensor) -> Tensor:  # the replacements are made once, from the clean activation
        replacements.extend(spliced(act))
        return act

    handle = _replace_output(module, keep_clean)
    try:
        runs = [model(ids, use_cache=False).logits]
    finally:
        handle.remove()
    for replacement in replacements:
        handle = _replace_output(module, lambda _act, r=replacement: r)
        try:
            runs.append(model(ids, use_cache=False).logits)
        finally:
            handle.remove()
    return torch.stack(runs)


def _ce_kl(logits: Tensor, targets: Tensor, weight: Tensor) -> tuple[list[float], list[float]]:
    """Weighted sums over positions of each run's CE ``[R]`` and of KL(clean ‖ run) of the
    spliced runs ``[R − 1]``, from logits ``[R, n, V]`` (overwritten when they are float32
    already) and position weights ``[n]``.

    With s = l − max(l) the shifted logits and Z = Σ_v exp(s_v), log p = s − log Z, so
    CE = log Z − s[target] and KL(p ‖ q) = Σ_v p_v (s_p,v − s_q,v) − log Z_p + log Z_q:
    one exp per logit, and no log-softmax tensor is built.

    Runs are handled one at a time with the same kernels on the same shapes, and their sums
    are elementwise products reduced in float64: identical logits give bit-identical sums
    whichever row of the batch they sit in. (A matrix-vector product over all runs does
    not: its kernel peels each row by its memory alignment, so the zero-ablated row and an
    SAE returning zeros summed in different orders, and ce_recovered was 2.8e-5, not 0.)
    """
    weight = weight.double()
    ce_sums: list[float] = []
    kl_sums: list[float] = []
    for r, run in enumerate(logits):
        shifted = run.float()
        shifted.sub_(shifted.amax(dim=-1, keepdim=True))
        picked = shifted.gather(1, targets.unsqueeze(-1)).squeeze(-1)
        exp = torch.exp(shifted)
        z = exp.sum(dim=-1)
        log_z = z.log()  # [n]
        ce_sums.append(float(((log_z - picked).double() * weight).sum()))
        if r == 0:
            p_clean = exp.div_(z.unsqueeze(-1))
            expected_clean = shifted.mul_(p_clean).sum(dim=-1)  # Σ_v p_v s_v; the product overwrites s
            log_z_clean = log_z
            continue
        expected = torch.mul(shifted, p_clean, out=exp).sum(dim=-1)  # reuses exp's buffer
        kl = expected_clean - expected - log_z_clean + log_z
        kl_sums.append(float((kl.double() * weight).sum()))
    return ce_sums, kl_sums


def _read_baseline(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        stored = json.loads(path.read_text())
        sums = stored["sums"] if stored.get("key") == key else None
        if sums is not None and not all(isinstance(sums[k], (int, float)) for k in ("positions", "ce_zero", "kl_zero")):
            return None
    except (OSError, ValueError, AttributeError, KeyError, TypeError):  # damaged: recomputed (and rewritten)
        return None
    return sums
