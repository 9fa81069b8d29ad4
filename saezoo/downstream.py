"""Downstream fidelity: splice the SAE's reconstruction into the model's forward pass.

Each context is run three ways — clean, with the hooked activation replaced by the SAE's
reconstruction, and with it zero-ablated — and the next-token predictions are compared. The
three share the layers below the hook, which run once (see ``_three_runs``). Positions whose activation is not a training token (BOS, padding, massive
outliers) are left untouched in both spliced runs. A position counts when its activation
was spliced and the token it predicts is real (the next position's mask is true).

* ``ce_clean``, ``ce_sae``, ``ce_zero``: mean next-token cross-entropy (nats).
* ``ce_recovered`` = (ce_zero − ce_sae) / (ce_zero − ce_clean); ``delta_ce`` = ce_sae − ce_clean.
* ``kl_sae``, ``kl_zero``: mean over positions of KL(p_clean ‖ p_spliced).
* ``cosine``, ``norm_ratio``: mean cosine similarity of x̂ to x, and mean ‖x̂‖ / ‖x‖.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from saezoo.sae import SAE


def _replace_output(module: nn.Module, fn: Callable[[Tensor], Tensor]):
    """A forward hook replacing the module's activation (first element of a tuple)."""

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    return module.register_forward_hook(hook)


# Bytes of float32 logits handled at once. Under glibc's largest mmap threshold (32 MB) the
# temporaries are reused from the heap; above it every step maps and page-faults fresh memory,
# which made CE/KL 3-4x slower than at 16 MB (SmolLM2's 49k vocabulary, 2 cores).
_CHUNK_BYTES = 16 << 20


@torch.no_grad()
def spliced_metrics(
    model: nn.Module,
    hook: str,
    sae: SAE,
    input_ids: Tensor,
    mask: Tensor,
    batch_size: int = 8,
    max_norm: float | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Spliced CE/KL on contexts ``input_ids`` ``[N, T]`` with splice mask ``mask`` ``[N, T]``.

    ``sae`` takes raw activations (a saved SAE). ``max_norm``: activations above it are
    outliers and stay untouched.
    """
    module = model.get_submodule(hook)
    sae = sae.to(device).eval()
    totals = {k: 0.0 for k in ("ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero", "cosine", "norm_ratio")}
    positions, spliced_tokens = 0, 0
    for ids, m in zip(input_ids.split(batch_size), mask.split(batch_size)):
        ids, m = ids.to(device), m.to(device)
        state: dict[str, Tensor] = {}

        def spliced(act: Tensor, m: Tensor = m, state: dict = state) -> tuple[Tensor, Tensor]:
            """The activation with the SAE's reconstruction, and zero-ablated, on one mask."""
            keep = m.clone()
            if max_norm is not None:
                keep &= act.float().norm(dim=-1) <= max_norm
            x = act[keep].float()
            x_hat = sae.decode(sae.encode(x))
            state["cos"] = torch.cosine_similarity(x_hat, x, dim=-1)
            state["ratio"] = x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)
            state["keep"] = keep
            with_sae, with_zero = act.clone(), act.clone()
            with_sae[keep] = x_hat.to(act.dtype)
            with_zero[keep] = 0
            return with_sae, with_zero

        logits = _three_runs(model, module, ids, spliced)  # [3, B, T, V]: clean, sae, zero
        # Position t predicts token t+1: count it when t was spliced and t+1 is real.
        counted = state["keep"][:, :-1] & m[:, 1:]
        rows, cols = counted.nonzero(as_tuple=True)
        flat = logits.flatten(1, 2)  # [3, B*T, V], a view
        per_chunk = max(1, _CHUNK_BYTES // (3 * flat.shape[-1] * 4))
        for chunk in (rows * ids.shape[1] + cols).split(per_chunk):
            targets = ids.flatten()[chunk + 1]
            for name, value in _ce_kl(flat.index_select(1, chunk).float(), targets).items():
                totals[name] += value
        positions += len(rows)
        totals["cosine"] += float(state["cos"].sum())
        totals["norm_ratio"] += float(state["ratio"].sum())
        spliced_tokens += int(state["keep"].sum())
    out = {k: v / max(positions, 1) for k, v in totals.items() if k not in ("cosine", "norm_ratio")}
    out["cosine"] = totals["cosine"] / max(spliced_tokens, 1)
    out["norm_ratio"] = totals["norm_ratio"] / max(spliced_tokens, 1)
    denom = out["ce_zero"] - out["ce_clean"]
    out["ce_recovered"] = (out["ce_zero"] - out["ce_sae"]) / denom if abs(denom) > 1e-12 else float("nan")
    out["delta_ce"] = out["ce_sae"] - out["ce_clean"]
    out["downstream_positions"] = float(positions)
    return out


def _three_runs(model: nn.Module, module: nn.Module, ids: Tensor, spliced) -> Tensor:
    """Logits ``[3, B, T, V]`` of the clean run and the two runs ``spliced(act)`` gives.

    The three share everything below the hook, so one forward pass serves them: at the hook
    the batch becomes ``[clean; spliced; ablated]`` and the layers above run on 3B rows. This
    needs every tensor those layers take besides the hidden states (rotary tables, masks) to
    broadcast over the batch, which holds for decoder-only models run without a padding mask;
    a model where it does not fails on the shapes, and then gets three separate passes.
    """
    b = ids.shape[0]
    handle = _replace_output(module, lambda act: torch.cat([act, *spliced(act)]))
    try:
        logits = model(ids, use_cache=False).logits
        if logits.shape[0] == 3 * b:
            return logits.unflatten(0, (3, b))
    except RuntimeError:
        pass
    finally:
        handle.remove()
    runs = [model(ids, use_cache=False).logits]
    for i in (0, 1):
        handle = _replace_output(module, lambda act, i=i: spliced(act)[i])
        try:
            runs.append(model(ids, use_cache=False).logits)
        finally:
            handle.remove()
    return torch.stack(runs)


def _ce_kl(logits: Tensor, targets: Tensor) -> dict[str, float]:
    """Summed CE of each run and KL(clean ‖ run) from logits ``[3, n, V]`` (overwritten).

    With s = l − max(l) the shifted logits and Z = Σ_v exp(s_v), log p = s − log Z, so
    CE = log Z − s[target] and KL(p ‖ q) = Σ_v p_v (s_p,v − s_q,v) − log Z_p + log Z_q:
    one exp per logit, and no log-softmax tensor is built.
    """
    shifted = logits.float()
    shifted.sub_(shifted.amax(dim=-1, keepdim=True))
    picked = shifted.gather(2, targets.expand(3, -1).unsqueeze(-1)).squeeze(-1)
    exp = torch.exp(shifted)
    log_z = exp.sum(dim=-1).log()  # [3, n]
    ce = (log_z - picked).sum(dim=1)
    p_clean = exp[0].div_(exp[0].sum(dim=-1, keepdim=True))
    expected = torch.stack([(p_clean * run).sum(dim=-1) for run in shifted])  # Σ_v p_v s_v per run
    kl = (expected[0] - expected[1:] - log_z[0] + log_z[1:]).sum(dim=1)
    return {
        "ce_clean": float(ce[0]),
        "ce_sae": float(ce[1]),
        "ce_zero": float(ce[2]),
        "kl_sae": float(kl[0]),
        "kl_zero": float(kl[1]),
    }
