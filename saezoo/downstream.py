"""Downstream fidelity: splice the SAE's reconstruction into the model's forward pass.

For each context we run the model three times — clean, with the hooked activation
replaced by the SAE's reconstruction, and with it zero-ablated — and compare next-token
predictions. Positions whose activation is not a training token (BOS, padding, massive
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

        def splice_mask(act: Tensor) -> Tensor:
            keep = m.clone()
            if max_norm is not None:
                keep &= act.float().norm(dim=-1) <= max_norm
            return keep

        def with_sae(act: Tensor) -> Tensor:
            keep = splice_mask(act)
            x = act[keep].float()
            x_hat = sae.decode(sae.encode(x))
            state["cos"] = torch.cosine_similarity(x_hat, x, dim=-1)
            state["ratio"] = x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)
            state["keep"] = keep
            out = act.clone()
            out[keep] = x_hat.to(act.dtype)
            return out

        def with_zero(act: Tensor) -> Tensor:
            out = act.clone()
            out[splice_mask(act)] = 0
            return out

        logits_clean = model(ids).logits.float()
        handle = _replace_output(module, with_sae)
        try:
            logits_sae = model(ids).logits.float()
        finally:
            handle.remove()
        handle = _replace_output(module, with_zero)
        try:
            logits_zero = model(ids).logits.float()
        finally:
            handle.remove()
        # Position t predicts token t+1: count it when t was spliced and t+1 is real.
        counted = state["keep"][:, :-1] & m[:, 1:]
        targets = ids[:, 1:][counted]
        logp = {
            name: torch.log_softmax(logits[:, :-1][counted], dim=-1)
            for name, logits in (("clean", logits_clean), ("sae", logits_sae), ("zero", logits_zero))
        }
        for name in ("clean", "sae", "zero"):
            totals[f"ce_{name}"] -= float(logp[name].gather(1, targets.unsqueeze(1)).sum())
        p_clean = logp["clean"].exp()
        for name in ("sae", "zero"):
            totals[f"kl_{name}"] += float((p_clean * (logp["clean"] - logp[name])).sum())
        positions += int(counted.sum())
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
