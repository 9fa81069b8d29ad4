"""The tree-gated HSAE: every latent of tier i > 1 has one fixed parent in tier i-1 and fires
only where its parent fires (``hsae`` with ``coupling=tree``, the ``tree`` preset).

Tier widths are whole multiples of each other: the latents of tier i are grouped in blocks of
``children_per_parent`` (the width ratio), block p belonging to latent p of tier i-1. Each
latent has its own encoder column and decoder row, as in a flat SAE, so the dictionary is one
``[width, d_in]`` matrix. A step computes tier 1's pre-activations (a dense product over
tier 1's columns only), then, tier by tier, those of the children of the parents that fire
(a product sampled at those entries, ``torch.sparse.sampled_addmm``: O(batch x k x ratio x
d_in)), and goes through topk's fused sparse node (``saezoo_topk.fused``), whose backward
touches the selected entries only. So a step costs less than TopK's at the same width
(TopK computes every pre-activation), and nothing costs width^2: the hierarchy lives in the
selection, not in weights between tiers.

The selection goes down the tiers (as H-SAE, Muchane et al. 2025: top-level TopK, children of
active parents only, one child per active parent). Tier 1 keeps its largest pre-activations;
in tier i > 1 each parent that fires offers one candidate, its child with the largest
pre-activation (siblings are exclusive), and the tier keeps its largest candidates. Each tier
has its own budget, a share of k (``tier_shares``), kept as BatchTopK keeps its budget: the
batch x k_i largest in training, a running threshold per tier in eval. Per-tier budgets keep
every tier in use: with one budget for all tiers the unconstrained tier 1 took it all
(SmolLM2, 80 steps: L0 42 / 5.5 / 0.6 of 48). A kept latent's value is its pre-activation
(kept only when positive, so a child may stay silent).

Two things make the tree the features' own rather than an arbitrary grouping (each one
setting, so the ablation can turn it off):

* prefix losses (``prefix_losses``): tier 1 alone, and tiers 1-2, also reconstruct the input,
  as Matryoshka SAEs train their nested dictionaries, so a parent stands for all its
  children's tokens and does not take in one child's direction (for the first
  ``prefix_until`` of training: all of it by default);
* placement (:mod:`saezoo_hsae.placement`, ``regraft_every``): the slots are fixed, but a
  latent found firing inside another latent moves under it, and a child found to be a guest
  of its parent (the parent fires there only to let it fire) moves up to tier 1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from saezoo import SAEOutput
from saezoo_hsae.placement import SAMPLE_TOKENS, Placement
from saezoo_hsae.sae import HSAE, HSAEConfig, tier_widths
from saezoo_topk.fused import Encoder, csr
from saezoo_topk.sae import (
    TopKFamilySAE,
    by_token,
    check_threshold_beta,
    largest_entries,
    squared_error,
    update_running_threshold,
)


class TreeHSAE(HSAE, TopKFamilySAE):
    """Tree-gated tiers: one parent per latent, one child per active parent, a budget of
    latents per tier."""

    knobs = frozenset({"k"})

    def __init__(self, d_in: int, cfg: HSAEConfig):
        super().__init__(d_in, cfg)
        self.tier_widths = tier_widths(d_in, cfg)
        self.register_buffer("thresholds", torch.zeros(self.n_tiers))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long))
        self.placement = Placement(self.tier_widths, self.latent_parents())
        # Whether the current window's counts can still lead to moves (see reorganise).
        self.placing = cfg.regraft_every > 0 and self.n_tiers > 1
        self.moves_made = 0
        self.prefix_on = True  # whether this step trains the prefix losses (begin_step)

    @property
    def children_per_parent(self) -> list[int]:
        return [b // a for a, b in zip(self.tier_widths, self.tier_widths[1:])]

    def dictionary_width(self) -> int:
        self.validate_tiers()
        widths = tier_widths(self.d_in, self.cfg)
        if any(b % a for a, b in zip(widths, widths[1:])):
            raise ValueError(
                f"coupling=tree needs each tier's width to be a whole multiple of the one before "
                f"(children_per_parent is the ratio); tier_expansion {self.cfg.tier_expansion} gives "
                f"widths {widths} at d_in {self.d_in}"
            )
        return sum(widths)

    def validate(self) -> None:
        super().validate()
        cfg = self.cfg
        if cfg.regraft_every < 0 or not 0 < cfg.regraft_share <= 1 or not 0 <= cfg.regraft_until <= 1:
            raise ValueError(
                "regraft_every must be >= 0, regraft_share in (0, 1] and regraft_until in [0, 1]; got "
                f"{cfg.regraft_every}, {cfg.regraft_share}, {cfg.regraft_until}"
            )
        if not 0 <= cfg.prefix_until <= 1:
            raise ValueError(f"prefix_until must be in [0, 1]; got {cfg.prefix_until}")
        n = len(cfg.tier_expansion)
        if cfg.tier_shares is not None and (len(cfg.tier_shares) != n or any(s <= 0 for s in cfg.tier_shares)):
            raise ValueError(
                f"tier_shares needs {n} positive entries, one per tier of tier_expansion {cfg.tier_expansion}; "
                f"got {cfg.tier_shares} (set sae.tier_shares with sae.tier_expansion)"
            )
        check_threshold_beta(cfg.threshold_beta)

    def tier_budgets(self, k: int) -> list[float]:
        """Latents per token each tier keeps on average: k split by ``tier_shares`` (equal by
        default). A batch keeps round(batch x budget) of a tier, so shares need not give whole
        numbers per token."""
        shares = self.cfg.tier_shares or [1.0] * self.n_tiers
        return [k * s / sum(shares) for s in shares]

    def latent_parents(self) -> Tensor:
        parents = [torch.full((self.tier_widths[0],), -1, dtype=torch.long)]
        start = 0
        for width, ratio in zip(self.tier_widths, self.children_per_parent):
            parents.append(start + torch.arange(width * ratio) // ratio)
            start += width
        return torch.cat(parents)

    def encoder(self, k: int) -> Encoder:
        budgets = self.tier_budgets(k)
        # Until thresholds have been estimated, eval mode keeps the batch rule.
        by_threshold = not self.training and self.threshold_updates > 0

        def encode(x: Tensor, W_enc: Tensor, b_enc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            batch, width = x.shape[0], W_enc.shape[1]
            first = self.tier_widths[0]
            pre = torch.addmm(b_enc[:first], x, W_enc[:, :first])
            index, value = self._keep(pre, budgets[0], 0, by_threshold, batch)
            token, latent = index // first, index % first
            tokens, latents, values = [token], [latent], [value]
            start = 0  # of the parents' tier
            for tier, ratio in enumerate(self.children_per_parent, start=1):
                # The children of each firing parent, in a CSR pattern by token (rows sorted,
                # columns increasing), and only their pre-activations: a product sampled at
                # those entries.
                order = (token * width + latent).argsort()
                token, latent = token[order], latent[order]
                child_start = start + self.tier_widths[tier - 1]
                children = child_start + (latent - start).unsqueeze(1) * ratio + torch.arange(ratio, device=x.device)
                rows = torch.zeros(batch + 1, dtype=torch.long, device=x.device)
                torch.cumsum(torch.bincount(token, minlength=batch) * ratio, 0, out=rows[1:])
                pattern = csr(rows, children.flatten(), x.new_zeros(children.numel()), (batch, width))
                pre = torch.sparse.sampled_addmm(pattern, x, W_enc).values().view_as(children) + b_enc[children]
                # Siblings are exclusive: each firing parent offers its best child.
                best, which = pre.max(1)
                index, value = self._keep(best, budgets[tier], tier, by_threshold, batch)
                token, latent = token[index], children[index, which[index]]
                tokens.append(token)
                latents.append(latent)
                values.append(value)
                start = child_start
            token, latent, value = torch.cat(tokens), torch.cat(latents), torch.cat(values)
            order = (token * width + latent).argsort()
            return by_token(token[order], latent[order], value[order], batch)

        return encode

    def _keep(
        self, candidates: Tensor, budget: float, tier: int, by_threshold: bool, batch: int
    ) -> tuple[Tensor, Tensor]:
        """(flat index, value) of the kept candidates, all positive: the batch x budget largest
        (training: the tier's threshold follows the smallest kept) or those above the tier's
        threshold. ``candidates``: tier 1's pre-activations ``[batch, width]``, or one per
        firing parent in a deeper tier."""
        flat = candidates.flatten()
        if by_threshold:
            index = (flat > self.thresholds[tier].clamp_min(0)).nonzero().squeeze(1)
            return index, flat[index]
        n = min(max(1, round(batch * budget)), flat.numel())
        value, index = largest_entries(candidates, n) if candidates.dim() == 2 else flat.topk(n, sorted=False)
        positive = value > 0
        value, index = value[positive], index[positive]
        if self.training and value.numel():
            self._update_threshold(tier, value.min())
        return index, value

    @torch.no_grad()
    def _update_threshold(self, tier: int, smallest: Tensor) -> None:
        # BatchTopK's running average, one per tier; the count advances once per step, with tier 1.
        if tier == 0:
            self.threshold_updates += 1
        update_running_threshold(self.thresholds[tier], smallest, self.threshold_updates, self.cfg.threshold_beta)

    def begin_step(self, step: int, steps: int) -> None:
        self.prefix_on = step < self.cfg.prefix_until * steps

    @torch.no_grad()
    def after_step(self) -> None:
        # Before the unit norm, which then rescales the corrected rows with the others.
        if self.cfg.orthogonal_children:
            orthogonalise_children(self.W_dec.data, self.tier_widths)
        super().after_step()

    def training_state(self) -> dict[str, Tensor]:
        # Placement's window and per-latent state: without them a run resumed inside a window
        # moved other latents than the run that never stopped (tests/test_resume.py).
        state = {f"placement.{k}": v for k, v in self.placement.state().items()}
        return {**state, "placing": torch.tensor(self.placing), "moves_made": torch.tensor(self.moves_made)}

    def load_training_state(self, state: dict[str, Tensor]) -> None:
        if not state:
            return  # a checkpoint written before placement's state was saved: counting starts over
        self.placement.load({k.removeprefix("placement."): v for k, v in state.items() if k.startswith("placement.")})
        self.placing, self.moves_made = bool(state["placing"]), int(state["moves_made"])

    def diagnostics(self) -> dict[str, float]:
        out = {f"threshold/tier{i + 1}": float(t) for i, t in enumerate(self.thresholds)}
        if self.cfg.regraft_every:
            out["regraft/moves"] = float(self.moves_made)
        return out

    def forward(self, x: Tensor, knobs: dict[str, float] | None = None, dead_mask: Tensor | None = None) -> SAEOutput:
        out = super().forward(x, knobs, dead_mask)
        if self.cfg.prefix_losses and self.n_tiers > 1 and self.prefix_on:
            out.losses["prefix_mse"] = self.prefix_error(x, out.codes)
        if self.training and self.placing:
            n = SAMPLE_TOKENS
            self.placement.record(out.codes[:n].detach(), (x[:n] - out.x_hat[:n]).detach(), self.W_dec.detach())
        return out

    def prefix_error(self, x: Tensor, codes: Tensor) -> Tensor:
        """The squared errors of tier 1 alone, tiers 1-2, ... (all but the whole), summed. The
        codes are the selection's (no gradient), so these terms train the decoder rows: each
        parent's row must reconstruct all its tokens without its children. Decoded sparsely,
        from the kept entries only."""
        batch = x.shape[0]
        token, latent = codes[:, : self.width - self.tier_widths[-1]].nonzero(as_tuple=True)  # by token
        value = codes[token, latent]
        partial, start, errors = self.b_dec, 0, []
        for width in self.tier_widths[:-1]:
            inside = (latent >= start) & (latent < start + width)
            offsets = torch.searchsorted(token[inside], torch.arange(batch, device=x.device))
            partial = partial + F.embedding_bag(
                latent[inside], self.W_dec, offsets, mode="sum", per_sample_weights=value[inside]
            )
            errors.append(squared_error(x, partial))
            start += width
        return sum(errors, x.new_zeros(()))

    @torch.no_grad()
    def reorganise(self, step: int, steps: int) -> None:
        every = self.cfg.regraft_every
        if not self.placing or step % every:
            return
        until = self.cfg.regraft_until * steps
        if step <= until:
            self.moves_made = self.placement.regraft(self, self.cfg.regraft_share)
        self.placement.reset()
        # Counting stops after the last window that can move a latent: the training steps
        # after it do not pay for it.
        self.placing = step + every <= until

    def reconstruct(self, x: Tensor, k: int) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
        x_hat, codes, pre_of = super().reconstruct(x, k)
        parents = self.latent_parents().to(x.device)

        def gated_pre_of(dead: Tensor) -> Tensor:
            # AuxK revives a dead child only where its parent fires: revived elsewhere, it
            # would learn a direction it can never fire on.
            of = parents[dead]
            allowed = (of < 0) | (codes[:, of.clamp_min(0)] > 0)
            return pre_of(dead).masked_fill(~allowed, float("-inf"))

        return x_hat, codes, gated_pre_of


def orthogonalise_children(W_dec: Tensor, tier_widths: list[int]) -> None:
    """Take out of each child's decoder row its component along its parent's, in place, tier
    by tier (a grandchild is taken against its parent's row as already corrected); the norms
    are left to the unit norm that follows. The children of one parent are a contiguous
    block, so this is two batched products over ``[parents, ratio, d_in]``: O(width x d_in),
    no gather and no temporary of the decoder's size. Measured at 16,384 latents (1024 / 3072 /
    12288), d_in 576, 2 threads: 3.9 ms against 1.9 ms for the unit norm, under 0.5 % of a
    training step of that width (benchmarks/tree_cost.py)."""
    start = 0
    for width, child_width in zip(tier_widths, tier_widths[1:]):
        parents = F.normalize(W_dec[start : start + width], dim=-1).unsqueeze(1)  # [p, 1, d]
        rows = W_dec[start + width : start + width + child_width].view(width, child_width // width, -1)
        rows.baddbmm_(torch.bmm(rows, parents.transpose(1, 2)), parents, alpha=-1)
        start += width
