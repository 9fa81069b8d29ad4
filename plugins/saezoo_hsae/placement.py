"""Where each latent of the tree-gated HSAE sits: fixed slots, learned placement.

The tree's slots are fixed (block p of tier i+1 belongs to latent p of tier i), but which
feature ends up in which slot is learned, and gradient descent alone puts many of them in the
wrong tier: a child feature is often first picked up by a free latent of tier 1, which can fire
anywhere, rather than by a child slot of its parent's latent, which can only fire after the
parent has been learned. Measured on the synthetic tree [8, 4, 3], 2000 steps: 3 of each root's
4 children ended in tier 1, next to their parent, and the structural tree found 23 % of the
depth-1 edges.

So every ``regraft_every`` steps the co-firing of the latents of each tier over those steps
decides moves: a latent that fires on at most half as many tokens as another latent of its
tier (counting back to that latent the tokens where it stood for it), and fires with it on at
least ``regraft_share`` of its own tokens, is a child sitting in the wrong place. It swaps
places with its new parent's least used child slot, and its own children follow it one tier
down, recursively. A swap is a permutation of latents: nothing learned is lost, and the
latent keeps its encoder and decoder.

Co-firing cannot see an *absorber*: a grandchild + child latent in tier 1 stands for the child
too where it fires, so the child's latent learns to stay silent there and the two fire together
on too few tokens. Decoder rows see it (the absorber's row points part-way to the child's), so
a latent whose row has cosine >= ``ABSORB_COS`` with a latent it fires with moves under that
latent as well, and every latent that moves under a parent whose direction it took in is
separated from it (:func:`separate`): the direction leaves its row, and the parent's encoder
stops staying silent along the latent's new row.

A child whose parent fires on its tokens only to let it fire is a *guest* (an independent
feature hosted in a child slot) and goes up to tier 1 (``GUEST_BELOW``). It goes back under
the latent it left by co-firing (it still fires inside it on ``regraft_share`` of its tokens,
though now free to fire anywhere), never by the absorber rule, nor that latent under it: their
rows' likeness is what let one host the other. With one exception: a latent that, free for
``SETTLE_WINDOWS`` windows, still fires inside the parent of the latent it left (on
``regraft_share`` of its tokens, at lift ``MIN_LIFT``) is a grandchild that took in its
parent's direction (so its parent looked unused on its tokens), and the absorber rule may bring
it back: an independent feature hosted there has no reason to fire inside its host's parent once
free. On the synthetic tree [6, 4, 2] (16,000 steps) four of the six missed edges of seed 7 were
such grandchildren, left in tier 1 for good (session 29). Once it has gone back, the guest rule
leaves the pair alone. The guest rule's measure does not tell true children from hosted
independent features well, and without this the rules undid each other every few windows to
the end of training, so each pair ended wherever the last window left it. Traced on the trees
[4, 3, 2] and [6, 4, 2] (seed 1, session 21): 40 true children sent up from their parent
(measure 0.17-0.6), 19 brought back in the next window by co-firing and 16 by the absorber
rule; 54 independent features sent up from another (0.22-0.58), 3 brought back by co-firing
and 28 by the absorber rule.

A guest may also have been part of a latent that stands for two features. On the synthetic tree
[6, 4, 2] (seed 5, 16,000 steps) a latent of tier 1 stood for an independent feature and for
a child of root 0 (it fired on 0.99 and 0.84 of their tokens) and held that child's subtree:
sent up as guests, those latents fired inside it and inside root 0's latent, and went back
under it, the more specific holder, every time, for want of a slot of root 0's used less than
half as often as they (traced window by window in session 31). So a guest that fires inside its
host and inside another holder that is not the host's parent tries the host last, and takes
the least used slot of another from any latent that fires less often than it; that latent takes
its place in tier 1, free to find its own. On seed 5 the latent then stood for the independent
feature alone.

A child may also find every slot of its parent in use, one of them by its own child (a
grandchild that reached its root's slot first, while the child sat in tier 1): a slot is free
only if its latent fires less than half as often as the newcomer, and a grandchild fires about
half as often as its parent. The child then stays in tier 1 and the grandchild in its root's
slot for good, the most common miss on the synthetic tree [6, 4, 2] in sessions 27-31. So a
latent that finds no free slot under any holder takes a slot of one of them whose latent fires
less often than it and inside it (on ``regraft_share`` of that latent's tokens) or with a row
like its own (cosine >= ``ABSORB_COS``), at lift ``MIN_LIFT``, and that latent goes under it.
Session 28 tried such a rule alone, and it cost other seeds. With the rule for guests above,
[6, 4, 2] went from 9 to 10 of 10 seeds at issue 17's bar (NOTEBOOK.md, session 31).

Counting co-firing costs tokens x (active latents of the tier)^2 per step, a scatter into a
``[width_i, width_i]`` table per tier that has children; nothing per step is width^2.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from saezoo import distributed

# Co-firing is counted on at most this many tokens of each batch, its first: batches are
# shuffled, so these are a random sample. A window of 200 steps then holds 102,400 tokens,
# and a latent firing on 1 token in 1000 fires about 100 times in it, five times MIN_FIRES.
# Counting every token of a batch of 2048 made a step of 16,384 latents 0.8x of TopK's step
# slower (one thread); with this sample and one matmul for r . d it is within the noise.
SAMPLE_TOKENS = 512
# A latent must have fired on this many tokens in the window before it may move: fewer is
# noise.
MIN_FIRES = 20
# Its holder must fire this many times more often with it than over all tokens.
MIN_LIFT = 4
# A child is a guest of its parent when the parent's use on the child's tokens (what the
# squared error would grow by without it) is under this share of its use where it fires
# without the child: the parent fires there only to let the child fire. Measured on the
# synthetic tree [8, 4, 3]: guests 0.29-0.46, true children 0.79-1.4; on [4, 3, 2]
# (session 20, held-out tokens), independent features hosted by one whose direction is like
# theirs (cosine 0.33-0.43) 0.23-0.33, true children 0.48-1.8.
GUEST_BELOW = 0.6
# A latent that has just moved under a new parent still carries part of that parent's direction
# (it absorbed it in its old place), so in the next window the parent looks unused on its
# tokens and the guest rule would send it straight back up; on the synthetic tree [8, 4, 3]
# grandchildren went down and up every window until moves stopped. It is exempt from the
# guest rule for this many windows, while gating trains the absorbed direction out of its row.
# A latent sent up as a guest is free for as many before the absorber rule may bring it back
# (the module docstring), so that what decides is counted while it fires free, not while hosted.
SETTLE_WINDOWS = 2
# An absorber: a latent whose decoder row has at least this cosine with the row of a latent
# that fires more often and with it (a lift of MIN_LIFT), but on too few of its tokens to
# hold it by co-firing. Measured on the synthetic trees (trained, 20,000 tokens): grandchild +
# child latents in tier 1 have cosine 0.42-0.53 with their true parent's latent on [8, 4, 3],
# child + root latents 0.29-0.40 with their root's on [12, 3, 2]; pairs of unrelated latents
# that pass the lift reached 0.31-0.37 on [8, 4, 3], true children and their parent 0.3-0.5 (a
# child keeps some of its parent's direction: see separate). 0.4 missed the [12, 3, 2] ones;
# 0.3 lets some unrelated pairs through as well, and measured on both trees gave the better
# trees all the same (plugins/saezoo_hsae/NOTEBOOK.md, session 13).
ABSORB_COS = 0.3


class Window(NamedTuple):
    """A tier's counts over the current window (:meth:`Placement._window`)."""

    fires: Tensor  # [a]: tokens each latent of the tier fired on
    holder_fires: Tensor  # [b]: the same for each latent that may hold one of them
    together: Tensor  # [a, b]: P(b fires | a fires)
    # [a, b]: b's firing with the tokens a took from it counted back (where a stands for b
    # too, b learns to stay silent there)
    holder_own: Tensor
    lift: Tensor  # [a, b]: b fires far more often with a than over all tokens (MIN_LIFT)


class Placement:
    """Firing statistics over the current window, and the moves they call for."""

    # Per-latent counts of the current window (besides ``tokens`` and the co-firing tables).
    WINDOW = ("fires", "use", "parent_use")
    # Per-position state that belongs to the latent, so a move carries it.
    CARRIED = ("settling", "identity", "evicted_by")

    def __init__(self, tier_widths: list[int], parents: Tensor):
        """``parents``: the fixed tree, ``SAE.latent_parents()`` of the tree-gated HSAE."""
        self.widths = tier_widths
        self.starts = [sum(tier_widths[:i]) for i in range(len(tier_widths))]
        self.ratios = [b // a for a, b in zip(tier_widths, tier_widths[1:])]
        width = sum(tier_widths)
        self.parents = parents.clone()
        # A latent of tier i may belong under a latent of tier i or, if that tier is not the
        # last but one, of tier i + 1 (a grandchild left in tier 1 next to its parent, whose
        # own parent has moved to tier 2): those are the holders counted for it.
        n = len(tier_widths)
        self.holders = [
            (self.starts[i], self.starts[i] + tier_widths[i] + (tier_widths[i + 1] if i + 2 < n else 0))
            for i in range(n - 1)
        ]
        self.tokens = 0
        self.fires = torch.zeros(width)
        self.use = torch.zeros(width)  # sum over a latent's tokens of its use
        self.parent_use = torch.zeros(width)  # sum over a latent's tokens of its parent's use
        self.cofires = [torch.zeros(w, hi - lo) for w, (lo, hi) in zip(tier_widths, self.holders)]
        # Windows left before a latent that moved down may move up, or one sent up may go back
        # (by position; moves carry it).
        self.settling = torch.zeros(width, dtype=torch.long)
        # The latent at each position (moves carry it), and per latent, by position, the latent
        # it was last sent up from as a guest (-1: none; why: the module docstring, on guests).
        # A latent found under that latent again went back by co-firing, the only way back.
        self.identity = torch.arange(width)
        self.evicted_by = torch.full((width,), -1, dtype=torch.long)

    def state(self) -> dict[str, Tensor]:
        """Everything a resumed run needs to move the same latents: the window's counts so far,
        summed over ranks (every rank must call this), each co-firing table as its nonzero
        cells (at 16,384 latents a dense table of tier 1 is 4096 x 16,384), and the state each
        latent carries (the same on every rank: moves follow the summed counts)."""
        out = {"tokens": distributed.sum_ranks(torch.tensor(self.tokens, device=self.fires.device))}
        out.update({name: distributed.sum_ranks(getattr(self, name).clone()) for name in self.WINDOW})
        out.update({name: getattr(self, name).clone() for name in self.CARRIED})
        for i, table in enumerate(self.cofires):
            counts = distributed.sum_ranks(table.clone()).view(-1)
            cells = counts.nonzero().flatten()
            out[f"cofires{i}.cells"], out[f"cofires{i}.counts"] = cells, counts[cells]
        return out

    def load(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`state` returned. The window's counts, summed over the ranks
        that saved them, go to rank 0 alone: :meth:`regraft` sums them over ranks again."""
        for name in self.CARRIED:
            setattr(self, name, state[name].clone())  # moves change it in place
        for name in self.WINDOW:
            setattr(self, name, torch.zeros_like(state[name]))
        self._to(state["fires"].device)
        self.reset()  # the co-firing tables and the token count
        if distributed.is_main():
            self.tokens = int(state["tokens"])
            for name in self.WINDOW:
                getattr(self, name).copy_(state[name])
            for i, table in enumerate(self.cofires):
                table.view(-1)[state[f"cofires{i}.cells"]] = state[f"cofires{i}.counts"]

    def reset(self) -> None:
        self.tokens = 0
        for t in (*(getattr(self, name) for name in self.WINDOW), *self.cofires):
            t.zero_()

    def _to(self, device: torch.device) -> None:
        """Every tensor on ``device`` (record() keeps them on the codes' device)."""
        for name in (*self.WINDOW, "parents", *self.CARRIED):
            setattr(self, name, getattr(self, name).to(device))
        self.cofires = [table.to(device) for table in self.cofires]

    @torch.no_grad()
    def record(self, codes: Tensor, residual: Tensor, decoder: Tensor) -> None:
        """Add a batch to the window: its codes ``[batch, width]``, what the SAE left of it
        (``x - x_hat``) and the decoder ``[width, d_in]``."""
        if self.fires.device != codes.device:
            self._to(codes.device)
        codes, residual, decoder = codes.float(), residual.float(), decoder.float()
        on = codes > 0
        self.tokens += codes.shape[0]
        self.fires += on.sum(0)
        # Use is read only of parents (the last tier has no children), from r . d of every
        # token and parent: one matmul, cheaper than gathering a decoder row per entry.
        upper = decoder[: self.starts[-1]]
        dots, norms = residual @ upper.T, upper.square().sum(-1)
        token, latent = on[:, : self.starts[-1]].nonzero(as_tuple=True)
        self.use.index_add_(0, latent, use(codes[token, latent], norms[latent], dots[token, latent]))
        token, latent = on[:, self.starts[1] :].nonzero(as_tuple=True)
        latent = latent + self.starts[1]
        parent = self.parents[latent]
        self.parent_use.index_add_(0, latent, use(codes[token, parent], norms[parent], dots[token, parent]))
        for start, width, (lo, hi), table in zip(self.starts, self.widths, self.holders, self.cofires):
            rows, rows_on = active(on[:, start : start + width])
            cols, cols_on = active(on[:, lo:hi])
            if rows is None or cols is None:
                continue
            pairs = rows_on.unsqueeze(2) & cols_on.unsqueeze(1)
            cell = (rows.unsqueeze(2) * (hi - lo) + cols.unsqueeze(1))[pairs]
            table.view(-1).index_add_(0, cell, torch.ones(len(cell), device=table.device))

    @torch.no_grad()
    def regraft(self, sae: nn.Module, share: float) -> int:
        """Make the moves the window calls for in ``sae``'s weights (``W_enc``, ``b_enc``,
        ``W_dec``); returns how many latents moved (not counting those that followed)."""
        self.tokens = int(distributed.sum_ranks(torch.tensor(self.tokens)))
        for t in (*(getattr(self, name) for name in self.WINDOW), *self.cofires):
            distributed.sum_ranks(t)
        self.touched: set[int] = set()
        # Unit decoder rows as the window ends; a position that changes in this round is
        # touched, and no rule reads a touched position again.
        self.rows = nn.functional.normalize(sae.W_dec.data.float(), dim=-1)
        self.settling.clamp_(min=1).sub_(1)
        moved = 0
        for tier in range(len(self.cofires)):
            moved += self._move_down(sae, tier, share)
        for tier in range(len(self.cofires)):
            moved += self._move_absorbers(sae, tier, share)
        return moved + self._move_up(sae)

    def _move_down(self, sae: nn.Module, tier: int, share: float) -> int:
        """Latents of ``tier`` that fire mostly inside another go under it."""
        start, lo = self.starts[tier], self.holders[tier][0]
        w = self._window(tier)
        fires, holder_fires = w.fires, w.holder_fires
        # A holder fires at least twice as often as what it holds, counting back the tokens
        # it lost to it (a grandchild that took in part of its parent fires inside it on 0.5-0.6
        # of its tokens, and the parent then fires less than twice as often: on the tree
        # [12, 3, 2], 1192 and 1948 times in a window), and far more often with it than
        # without: a latent that fires everywhere holds nothing.
        holds = (w.holder_own >= 2 * fires.unsqueeze(1)) & w.lift
        together = torch.where(holds, w.together, torch.zeros_like(w.together))
        best, _ = together.max(dim=1)
        inside = (best >= share) & (fires >= MIN_FIRES)
        moved = 0
        # The most specific first: a grandchild moves under its parent before that parent
        # moves under its own, and then follows it down as one of its children.
        order = inside.nonzero().flatten()
        for a in order[fires[order].argsort(stable=True)].tolist():
            a_global = start + a
            if a_global in self.touched:
                continue
            # Its holders, the most specific (least often firing) first: a grandchild fires
            # inside its root's latent as surely as inside its parent's, and belongs under the
            # parent. (Taking the largest share first put grandchildren into their root's child
            # slots on the tree [12, 3, 2], where their own parents then found none free.) Where
            # that holder has no free slot, the next may take it.
            candidates = (together[a] >= share).nonzero().flatten()
            ordered = candidates[holder_fires[candidates].argsort(stable=True)].tolist()
            for b, room in self._tried(a_global, lo, ordered):
                b_global = lo + b
                if b_global in self.touched:
                    continue  # moved earlier in this round: the counts describe its old place
                b_tier = self.tier_of(b_global)
                slot = self.slot(b_tier, b_global, float(fires[a]), room)
                if slot is not None:
                    self.place(sae, tier, a_global, b_global, slot)
                    moved += 1
                    break
            else:
                moved += self._take_from_own_child(sae, tier, a, ordered, share, w)
        return moved

    def _take_from_own_child(
        self, sae: nn.Module, tier: int, a: int, holders: list[int], share: float, w: Window
    ) -> int:
        """Latent ``a`` of ``tier`` found no free slot under its ``holders`` (offsets, the most
        specific first): it takes a slot of one of them in its own tier whose latent fires
        less often than it and inside it (on ``share`` of its tokens) or with a row like its
        own (``ABSORB_COS``), at lift MIN_LIFT, and that latent goes under it, into its least
        used slot (the module docstring, on a child whose own child holds its slot)."""
        start, lo = self.starts[tier], self.holders[tier][0]
        if tier + 2 >= len(self.widths):
            return 0  # the co-firing table has no column for a slot of its tier's latents
        a_global, fires = start + a, self.fires
        for b in holders:
            b_global = lo + b
            if b_global in self.touched or self.tier_of(b_global) != tier:
                continue
            for s in self.children(tier, b_global).tolist():
                if s in self.touched or fires[s] >= fires[a_global] or fires[s] < MIN_FIRES:
                    continue
                if not w.lift[a, s - lo]:  # (lift is symmetric: a fires far more often with s, too)
                    continue
                inside = float(self.cofires[tier][a, s - lo]) / float(fires[s])  # P(a fires | s fires)
                if inside < share and float(self.rows[s] @ self.rows[a_global]) < ABSORB_COS:
                    continue
                self.place(sae, tier, a_global, b_global, s)  # a takes the slot; its latent comes up...
                block = self.children(tier + 1, s)
                self.place(sae, tier, a_global, s, int(block[fires[block].argmin()]))  # ...and goes under a
                return 1
        return 0

    def _tried(self, latent: int, lo: int, holders: list[int]) -> list[tuple[int, float]]:
        """The ``holders`` of ``latent`` (offsets from ``lo``, the most specific first) in the
        order it tries them, each with the ``room`` it needs in a slot of it (:meth:`slot`).
        A guest whose host comes before another holder that is not the host's parent tries
        the host last, and takes a slot of the others from a latent that fires less often
        than it (the module docstring, on latents that stand for two features)."""
        host = [b for b in holders if int(self.identity[lo + b]) == int(self.evicted_by[latent])]
        if host and host[0] != holders[-1]:
            up = int(self.parents[lo + host[0]])
            others = [b for b in holders if b != host[0]]
            if any(lo + b != up for b in others):
                return [(b, 1.0) for b in others] + [(host[0], 2.0)]
        return [(b, 2.0) for b in holders]

    def _move_absorbers(self, sae: nn.Module, tier: int, share: float) -> int:
        """Latents of ``tier`` that took in the direction of a latent they fire with go under
        it, with that direction taken out of their row.

        A grandchild + child latent in tier 1 fires with the child's latent on only 0.35-0.6
        of its tokens (where it fires, it stands for the child too, so the child's latent
        learns to stay silent there): too few for the co-firing rule, but its decoder row
        still points half-way to the child's. Moved under the child alone it would die: the
        child's encoder has learned to stay silent on its tokens. So the move also undoes that:
        the child's encoder column loses its component along the moved latent's new row."""
        start, (lo, hi), width = self.starts[tier], self.holders[tier], self.widths[tier]
        w = self._window(tier)
        fires = w.fires
        cos = self.rows[start : start + width] @ self.rows[lo:hi].T
        # The holder must fire half as often again, its tokens counted back. (Twice, as the
        # co-firing rule asks, missed most absorbers on the tree [12, 3, 2], where a
        # grandchild fires on 0.4 of its parent's tokens.)
        candidate = (
            (cos >= ABSORB_COS)
            & (w.holder_own >= 1.5 * fires.unsqueeze(1))
            & w.lift
            & (fires >= MIN_FIRES).unsqueeze(1)
        )
        candidate &= ~self._kept_apart(w, tier, share)
        # Not its own parent: gating already trains the parent's direction out of the row.
        own = self.parents[start : start + width] - lo
        inside = (own >= 0) & (own < hi - lo)
        candidate[inside.nonzero().flatten(), own[inside]] = False
        best, holder = torch.where(candidate, cos, torch.full_like(cos, -2)).max(dim=1)
        moved = 0
        for a in best.argsort(descending=True)[: int((best > -2).sum())].tolist():  # strongest first
            a_global, b_global = start + a, lo + int(holder[a])
            if {a_global, b_global} & self.touched:
                continue
            b_tier = self.tier_of(b_global)
            if b_tier + 1 >= len(self.widths):
                continue
            slot = self.slot(b_tier, b_global, float(fires[a]))
            if slot is None:
                continue
            self.place(sae, tier, a_global, b_global, slot)
            moved += 1
        return moved

    def _kept_apart(self, w: Window, tier: int, share: float) -> Tensor:
        """[a, b]: pairs the absorber rule may not join. Latent a of ``tier`` was last sent up as
        a guest of latent b, or b of a (their rows' likeness is what let one host the other),
        unless a, free for SETTLE_WINDOWS windows, still fires inside b's parent (on ``share``
        of its tokens at lift MIN_LIFT): a grandchild that took in its parent's direction does,
        an independent feature its host held does not (the module docstring)."""
        start, (lo, hi) = self.starts[tier], self.holders[tier]
        mine = slice(start, start + self.widths[tier])
        a_of_b = self.evicted_by[mine].unsqueeze(1) == self.identity[lo:hi].unsqueeze(0)
        b_of_a = self.evicted_by[lo:hi].unsqueeze(0) == self.identity[mine].unsqueeze(1)
        up = self.parents[lo:hi] - lo  # b's parent among the holders (a column), if it is one
        cols = ((up >= 0) & (up < hi - lo)).nonzero().flatten()
        inside = torch.zeros_like(w.lift)
        inside[:, cols] = (w.together[:, up[cols]] >= share) & w.lift[:, up[cols]]
        settled = (self.settling[mine] == 0).unsqueeze(1)
        return (a_of_b | b_of_a) & ~(settled & inside)

    def _window(self, tier: int) -> Window:
        """The window's counts that both moving-down rules read, for the latents of ``tier``
        (rows) and their possible holders (columns)."""
        start, (lo, hi), table = self.starts[tier], self.holders[tier], self.cofires[tier]
        fires = self.fires[start : start + self.widths[tier]]
        holder_fires = self.fires[lo:hi]
        together = table / fires.clamp_min(1).unsqueeze(1)
        return Window(
            fires=fires,
            holder_fires=holder_fires,
            together=together,
            holder_own=holder_fires.unsqueeze(0) + (1 - together) * fires.unsqueeze(1),
            lift=together >= MIN_LIFT * holder_fires.unsqueeze(0) / max(self.tokens, 1),
        )

    def _move_up(self, sae: nn.Module) -> int:
        """Children that are guests of their parent go to the least used slots of tier 1."""
        child = (self.parents >= 0) & (self.fires >= MIN_FIRES)
        parent = self.parents.clamp_min(0)
        with_child = self.parent_use / self.fires.clamp_min(1)
        # The parent's tokens without this child (a child fires only where its parent does).
        without = (self.use[parent] - self.parent_use) / (self.fires[parent] - self.fires).clamp_min(1)
        guest = child & (self.fires[parent] > self.fires) & (with_child < GUEST_BELOW * without) & (self.settling == 0)
        guest &= self.evicted_by != self.identity[parent]  # it went back under this parent once
        top = torch.arange(self.widths[0])
        free = top[self.fires[top].argsort()].tolist()
        moved = 0
        for c in guest.nonzero().flatten().tolist():
            if {c, int(self.parents[c])} & self.touched:
                continue  # it or its parent moved earlier in this round: the counts are of old places
            while free and free[0] in self.touched:
                free.pop(0)
            if not free or self.fires[free[0]] * 2 >= self.fires[c]:
                continue
            host, target = int(self.identity[self.parents[c]]), free.pop(0)
            self.move(sae, self.tier_of(c), c, 0, target)
            self.evicted_by[target] = host
            self.settling[target] = SETTLE_WINDOWS + 1  # free for this many windows before it may go back
            moved += 1
        return moved

    def place(self, sae: nn.Module, tier: int, latent: int, holder: int, slot: int) -> None:
        """Move ``latent`` (in ``tier``) into ``slot``, a child slot of ``holder``, where it
        settles (the guest rule waits) and is separated from the holder's direction."""
        self.move(sae, tier, latent, self.tier_of(holder) + 1, slot)
        self.settling[slot] = SETTLE_WINDOWS + 1  # this window's +1 goes at the next
        separate(sae, slot, holder)

    def slot(self, tier: int, holder: int, fires: float, room: float = 2.0) -> int | None:
        """The child slot of ``holder`` (in ``tier``) for a latent firing ``fires`` times: its
        least used, if used ``room`` times less often (half as often, unless :meth:`_tried`
        says) and not moved in this round."""
        block = self.children(tier, holder)
        least = int(block[self.fires[block].argmin()])
        return least if self.fires[least] * room < fires and least not in self.touched else None

    def tier_of(self, latent: int) -> int:
        return sum(1 for s in self.starts[1:] if latent >= s)

    def children(self, tier: int, latent: int) -> Tensor:
        """Global indices of the child slots of ``latent`` (global index, in ``tier``)."""
        ratio = self.ratios[tier]
        return self.starts[tier + 1] + (latent - self.starts[tier]) * ratio + torch.arange(ratio)

    def move(self, sae: nn.Module, tier: int, latent: int, slot_tier: int, slot: int) -> None:
        """Swap ``latent`` (in ``tier``) with ``slot`` (in ``slot_tier``); its most used
        children take the least used child slots of ``slot``, and so on down."""
        swap(sae, latent, slot)
        for stat in (self.fires, *(getattr(self, name) for name in self.CARRIED)):
            stat[[latent, slot]] = stat[[slot, latent]]
        self.touched.update((latent, slot))
        if tier + 1 >= len(self.widths) or slot_tier + 1 >= len(self.widths):
            return
        kids = self.children(tier, latent)
        targets = self.children(slot_tier, slot)
        kids = kids[self.fires[kids].argsort(descending=True)]
        targets = targets[self.fires[targets].argsort()]
        for kid, target in zip(kids.tolist(), targets.tolist()):
            if self.fires[kid] <= self.fires[target]:
                break
            self.move(sae, tier + 1, kid, slot_tier + 1, target)


def separate(sae: nn.Module, child: int, parent: int) -> None:
    """After ``child`` moved under ``parent``: if its decoder row took in the parent's direction
    (cosine >= ABSORB_COS), that direction leaves its row (the parent now fires wherever it
    does, and stands for it there), and the parent's encoder column loses its component along
    the child's new row (it learned to stay silent where the child stood for it, and must fire
    there now, or the child can never fire)."""
    W_dec, W_enc = sae.W_dec.data, sae.W_enc.data
    up = nn.functional.normalize(W_dec[parent].float(), dim=0)
    row = W_dec[child].float()
    if float(row @ up) < ABSORB_COS * float(row.norm()):
        return
    own = row - (row @ up) * up
    direction = nn.functional.normalize(own, dim=0)
    W_dec[child] = (direction * row.norm()).to(W_dec.dtype)
    column = W_enc[:, parent].float()
    W_enc[:, parent] = (column - (column @ direction) * direction).to(W_enc.dtype)


def use(value: Tensor, norm: Tensor, dot: Tensor) -> Tensor:
    """How much a token's squared error would grow without one latent's term ``v * d``, from
    ``norm`` = |d|^2 and ``dot`` = r . d (``r`` is what the SAE left of the token):
    v^2 |d|^2 + 2 v (r . d), per entry."""
    return value.square() * norm + 2 * value * dot


def active(on: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Each row's active columns, padded to the most any row has: ``(index, valid)``."""
    most = int(on.sum(1).max()) if on.numel() else 0
    if most == 0:
        return None, None
    valid, index = on.to(torch.int8).topk(most, dim=1)
    return index, valid.bool()


def swap(sae: nn.Module, a: int, b: int) -> None:
    """Exchange latents ``a`` and ``b``: encoder columns, encoder biases, decoder rows."""
    for param, dim in ((sae.W_enc, 1), (sae.b_enc, 0), (sae.W_dec, 0)):
        index = torch.tensor([a, b], device=param.device)
        param.data.index_copy_(dim, index, param.data.index_select(dim, index.flip(0)))
