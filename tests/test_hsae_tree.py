"""The tree-gated HSAE (``hsae`` with ``coupling=tree``): gating, the fixed tree, steering by
k, and that it learns."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saezoo.activations.synthetic import SyntheticConfig, SyntheticSource
from saezoo.comparison import _matched_l0
from saezoo.config.resolve import resolve_run
from saezoo.curriculum import check_compatible
from saezoo.errors import UsageError
from saezoo.plugins import get_plugins
from saezoo_hsae.placement import SETTLE_WINDOWS, Placement
from saezoo_hsae.sae import HSAE, DenseHSAE, HSAEConfig
from saezoo_hsae.tree import TreeHSAE

from helpers import drifting_eval_l0


def tree(d_in: int, widths: list[int], k: int, seed: int = 0) -> TreeHSAE:
    torch.manual_seed(seed)
    sae = HSAE(d_in, HSAEConfig(coupling="tree", tier_expansion=[w / d_in for w in widths], k=k))
    assert isinstance(sae, TreeHSAE) and sae.tier_widths == widths
    return sae


def parent_violations(sae: TreeHSAE, codes: torch.Tensor) -> int:
    """Firings of a latent whose parent is silent on the same token."""
    parents = sae.latent_parents()
    child = parents >= 0
    fires = codes > 0
    return int((fires[:, child] & ~fires[:, parents[child]]).sum())


def test_default_is_dense_and_the_tree_preset_is_tree():
    assert type(HSAE(16, HSAEConfig())) is DenseHSAE
    assert type(HSAE(64, resolve_run("hsae", preset="tree").sae)) is TreeHSAE
    for preset in ("dense", "paper"):
        assert type(HSAE(64, resolve_run("hsae", preset=preset).sae)) is DenseHSAE


def test_latent_parents_is_the_fixed_assignment():
    sae = tree(4, [2, 4, 8], k=3)
    expected = [-1, -1, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert sae.latent_parents().tolist() == expected
    assert sae.children_per_parent == [2, 2]
    assert sae.latent_groups() == [("tier1", 2), ("tier2", 4), ("tier3", 8)]
    # Unlike the dense coupling's (strongest weight), training does not move it.
    x = torch.randn(64, 4)
    sum(sae(x).losses.values()).backward()
    assert sae.latent_parents().tolist() == expected


@pytest.mark.parametrize("widths", [[8, 12], [4, 8, 12, 6]])
def test_widths_must_be_whole_multiples(widths):
    with pytest.raises(ValueError, match="whole multiple of the one before"):
        tree(4, widths, k=2)


@settings(max_examples=40, deadline=None)
@given(
    d_in=st.integers(2, 8),
    top=st.integers(1, 6),
    ratios=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    k=st.integers(1, 12),
    batch=st.integers(1, 24),
    seed=st.integers(0, 2**16),
    threshold=st.floats(-1.0, 2.0),
)
def test_a_child_never_fires_without_its_parent(d_in, top, ratios, k, batch, seed, threshold):
    widths = [top]
    for r in ratios:
        widths.append(widths[-1] * r)
    k = max(len(widths), min(k, sum(widths)))
    sae = tree(d_in, widths, k, seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Weights of any sign and size, inputs with outliers: the gating must not depend on
        # a trained model.
        for p in (sae.W_enc, sae.b_enc):
            p.copy_(torch.randn(p.shape, generator=gen) * 3)
        x = torch.randn(batch, d_in, generator=gen) * torch.rand(batch, 1, generator=gen) * 10
        sae.train()
        out = sae(x, {"k": k})
        assert parent_violations(sae, out.codes) == 0
        # Eval mode: the threshold rule instead of the batch's largest scores.
        sae.eval()
        sae.thresholds.uniform_(threshold, threshold + 1, generator=gen)
        sae.threshold_updates.fill_(1)
        assert parent_violations(sae, sae.encode(x)) == 0
    # One child per active parent: siblings are exclusive.
    start = widths[0]
    for width, ratio in zip(widths[1:], sae.children_per_parent):
        siblings = (out.codes[:, start : start + width] > 0).reshape(batch, -1, ratio)
        assert int(siblings.sum(-1).max()) <= 1
        start += width


def dense_reference(sae: TreeHSAE, pre: torch.Tensor, k: int) -> torch.Tensor:
    """The tree's training selection written out on every pre-activation: tier 1 keeps the
    batch x budget largest; each firing parent offers its best child, and each deeper tier
    keeps the batch x budget largest offers; only positive values are kept."""
    batch = pre.shape[0]
    codes = torch.zeros_like(pre)
    start, fires = 0, None
    for tier, (width, budget) in enumerate(zip(sae.tier_widths, sae.tier_budgets(k))):
        block = pre[:, start : start + width]
        if fires is None:
            offers, choice = block, torch.arange(width).expand(batch, width)
        else:
            ratio = width // fires.shape[1]
            best, which = block.unflatten(1, (-1, ratio)).max(-1)
            offers = best.masked_fill(~fires, float("-inf"))
            choice = torch.arange(fires.shape[1]) * ratio + which
        n = min(max(1, round(batch * budget)), offers.numel())
        value, index = offers.flatten().topk(n)
        kept = value > 0
        token, column = index[kept] // offers.shape[1], index[kept] % offers.shape[1]
        latent = choice[token, column]
        codes[token, start + latent] = value[kept]
        fires = torch.zeros(batch, width, dtype=torch.bool)
        fires[token, latent] = True
        start += width
    return codes


@pytest.mark.parametrize("widths", [[6, 18, 36], [5, 20], [4, 8, 24, 48]])
def test_children_are_computed_for_firing_parents_only_and_the_selection_is_the_dense_one(widths):
    """The encoder computes tier 1's pre-activations and those of firing parents' children
    alone; what it keeps is what the selection on every pre-activation keeps."""
    sae = tree(8, widths, k=2 * len(widths), seed=1)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=gen))
        sae.b_enc.copy_(torch.randn(sae.b_enc.shape, generator=gen) * 0.5)
        x = torch.randn(96, 8, generator=gen)
        codes = sae(x).codes
        expected = dense_reference(sae, sae.pre_activations(x), sae.cfg.k)
    torch.testing.assert_close(codes, expected)
    assert (codes[:, widths[0]:] > 0).any(), "no child fired: the test would not test the children"


@pytest.mark.parametrize(("k", "shares", "budgets"), [(6, None, [2, 2, 2]), (40, None, [40 / 3] * 3), (10, [2, 1, 1], [5, 2.5, 2.5])])
def test_each_tier_spends_its_share_of_k(k, shares, budgets):
    torch.manual_seed(0)
    sae = HSAE(8, HSAEConfig(coupling="tree", tier_expansion=[8.0, 32.0, 64.0], k=k, tier_shares=shares))
    assert sae.tier_budgets(k) == pytest.approx(budgets)
    x = torch.randn(512, 8)
    sae.init_from_data(x)
    with torch.no_grad():
        out = sae(x)
        pre = sae.pre_activations(x)
    fires = out.codes > 0
    per_tier = [float(fires[:, s].sum(-1).float().mean()) for s in (slice(0, 64), slice(64, 320), slice(320, 832))]
    # Tier 1 spends its budget exactly; a deeper tier keeps at most its budget (a kept child
    # whose pre-activation is not positive stays silent), most of it at initialisation.
    assert per_tier[0] == pytest.approx(budgets[0], abs=0.01)
    assert all(0.5 * b <= t <= b + 0.01 for t, b in zip(per_tier[1:], budgets[1:])), per_tier
    # A kept latent carries its own pre-activation.
    torch.testing.assert_close(out.codes[fires], pre[fires])


def test_target_l0_steers_k_for_tree_and_the_penalty_for_dense():
    assert _matched_l0("hsae", HSAEConfig(coupling="tree"), 40) == ("constant", ["sae.k=40"])
    dense = resolve_run("hsae", preset="dense").sae
    assert _matched_l0("hsae", dense, 40) == ("target-l0", ["curriculum.target=40"])
    curricula = get_plugins().curricula
    check_compatible("k-anneal", curricula.get("k-anneal"), "hsae", TreeHSAE)
    with pytest.raises(UsageError, match="'target-l0' sets knob"):
        check_compatible("target-l0", curricula.get("target-l0"), "hsae", TreeHSAE)
    with pytest.raises(UsageError, match="'k-anneal' sets knob"):
        check_compatible("k-anneal", curricula.get("k-anneal"), "hsae", DenseHSAE)


def test_short_synthetic_run_reconstructs_and_uses_every_tier():
    # Two levels (4 parents x 3 children) plus 16 independent features in 16 dimensions;
    # tier 1 (24 latents) has room for the 20 top-level features, tier 2 for 3 children each.
    source = SyntheticSource(SyntheticConfig(d_in=16, n_parents=4, n_independent=16, p_parent=0.15))
    batches = source.batches(1024)
    sample = next(batches)
    scale = (16 / sample.pow(2).sum(-1).mean()).sqrt()
    sae = tree(16, [24, 72], k=3)
    sae.init_from_data(sample * scale)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(300):
        out = sae(next(batches) * scale, {}, torch.zeros(sae.width, dtype=torch.bool))
        opt.zero_grad()
        sum(out.losses.values()).backward()
        sae.after_backward()
        opt.step()
        sae.after_step()
    sae.eval()
    x = source.eval_activations(4096) * scale
    with torch.no_grad():
        codes = sae.encode(x)
        x_hat = sae.decode(codes)
    ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    # A model whose selection or decoder is broken stays far below (the mean predicts 0);
    # measured 0.88 on an AMD EPYC.
    assert ev > 0.8, ev
    assert parent_violations(sae, codes) == 0
    assert (codes[:, 24:] > 0).any(-1).float().mean() > 0.1  # children carry part of it


@pytest.mark.parametrize("orthogonal", [True, False])
def test_a_child_row_keeps_no_part_of_its_parent_row(orthogonal):
    # Three tiers: grandchildren are taken against their parent's row as corrected in the
    # same step. Rows start random, and one child row is its parent's plus a little: what is
    # left of it must be that little, at unit norm.
    sae = tree(8, [2, 4, 8], k=2)
    sae.cfg.orthogonal_children = orthogonal
    W = sae.W_dec.data
    W[2] = W[0] + 0.1 * W[5]
    before = W.clone()
    sae.after_step()
    rows = torch.nn.functional.normalize(W, dim=-1)
    parents = sae.latent_parents()
    child = (parents >= 0).nonzero().flatten()
    cos = (rows[child] * rows[parents[child]]).sum(-1)
    assert torch.allclose(W.norm(dim=-1), torch.ones(sae.width), atol=1e-5)
    if orthogonal:
        assert cos.abs().max() < 1e-5, cos
        top = torch.nn.functional.normalize(before[0], dim=0)
        left = before[2] - (before[2] @ top) * top
        assert torch.allclose(W[2], left / left.norm(), atol=1e-5)
        assert torch.allclose(W[:2], torch.nn.functional.normalize(before[:2], dim=-1), atol=1e-6)  # tier 1 as it was
    else:
        assert cos.abs().max() > 0.3, cos


def test_a_short_run_finds_the_planted_tree(tmp_path):
    """The whole trainer on the default synthetic source (8 parents x 3 children, 64
    independent features), 1500 steps: the structural tree holds the true parent -> child
    edges. Measured on an Intel Xeon, seeds 0-2: precision 0.875 / 0.833 / 0.957, recall
    0.875 / 0.833 / 0.917, absorption 0.005-0.02. Without placement (regraft_every 0) the
    same run reached precision 0.5, recall 0.125, absorption 0.087: the bounds tell a working
    tree from one whose slots are arbitrary. (The three-level trees of the answer script need
    4000-8000 steps of a larger source: benchmarks/hierarchy_answer.py.)"""
    import saezoo

    sets = ["sae.tier_expansion=[2.5,7.5]", "sae.tier_shares=[0.83,0.17]", "sae.k=4"]
    run = saezoo.train("hsae", "synthetic", preset="tree", steps=1500, sets=sets, out=tmp_path / "run")
    m = run.metrics
    assert m["tree_precision/structural/depth1"] >= 0.7 and m["tree_recall/structural/depth1"] >= 0.7, m
    assert m["absorption"] < 0.05, m
    # benchmarks/tree_misses.py reads such a run: one line per missed edge (two with the slots).
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "tree_misses.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    missed = lines.index("missed edges (a true child not under its parent's latent):")
    edges = 24  # the default source: 8 parents x 3 children
    assert (len(lines) - missed - 1) // 2 == round(edges * (1 - m["tree_recall/structural/depth1"]))


def tree_shapes():
    """benchmarks/tree_shapes.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "tree_shapes.py"
    spec = importlib.util.spec_from_file_location("tree_shapes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("branching", [[8, 4, 3], [12, 3, 2], [10, 3, 3], [6, 4, 2], [4, 3, 2], [5, 2, 2, 2]])
def test_the_shape_benchmarks_last_tier_budget_is_its_parents(branching):
    """benchmarks/tree_shapes.py's rule, in a tree of three levels or more: the last tier's
    budget (k x its share) equals the tier above's, so the last tier, offered one candidate per
    latent the tier above keeps, keeps every positive one (with less, a rotated basis was
    cheaper than the true tree: hsae NOTEBOOK.md, sessions 23-24); and k is the budgets' sum
    rounded up, no more."""
    module = tree_shapes()
    model = module.tree_model(branching)
    shares = model["tier_shares"]
    assert len(shares) == len(branching) and shares[-1] == shares[-2], shares
    src = module.SOURCE
    tree_rate = branching[0] * src["p_parent"]
    top = tree_rate + src["n_independent"] * src["p_independent"]
    deeper = sum(tree_rate * src["p_child"] ** d for d in range(1, len(branching)))
    total = top + deeper + tree_rate * src["p_child"] ** (len(branching) - 2) * (1 - src["p_child"])
    assert model["k"] == math.ceil(total)


def test_the_shape_benchmarks_two_level_tree_has_no_correction_budget():
    """In a tree of two levels tier 1 also keeps the independent features, so room for
    corrections in tier 2 went to independent features hosted in child slots ([8, 3], seeds
    0-5: 0 of 6 runs at issue 17's bar with it, 3 of 6 without; hsae NOTEBOOK.md, session 25): the
    rule gives tier 2 its children's rate and one slot per child."""
    module = tree_shapes()
    model = module.tree_model([8, 3])
    src = module.SOURCE
    top = 8 * src["p_parent"] + src["n_independent"] * src["p_independent"]
    children = 8 * src["p_parent"] * src["p_child"]
    assert model["tier_shares"] == [round(top / (top + children), 4), round(children / (top + children), 4)]
    assert model["tier_expansion"] == [2.5, 7.5] and model["k"] == math.ceil(top + children)


def test_the_tiers_eval_thresholds_keep_up_with_a_drifting_encoder():
    # With a 100-step memory (threshold_beta 0.99) held-out L0 was 34.5 at k 40 on SmolLM2.
    assert drifting_eval_l0(tree(16, [16, 32, 64], k=6)) >= 0.9
    lagging = tree(16, [16, 32, 64], k=6)
    lagging.cfg.threshold_beta = 0.99
    assert drifting_eval_l0(lagging) < 0.85  # 0.76: the test tells the two apart


# --- placement: fixed slots, learned placement --------------------------------------------


def test_placement_state_survives_a_checkpoint():
    """The window's counts and each latent's placement state go through safetensors and back
    (the end-to-end check, a kill inside a window then a resume: tests/test_resume.py)."""
    from saezoo import contract

    contract.training_state_survives(lambda: tree(16, [16, 32, 64], k=6))
    sae = tree(16, [16, 32, 64], k=6)  # and the state it checks is not empty counts
    sae(torch.randn(64, 16))
    state = sae.training_state()
    assert int(state["placement.tokens"]) > 0 and float(state["placement.cofires0.counts"].sum()) > 0, state


def labelled(widths: list[int]) -> tuple[TreeHSAE, Callable[[], torch.Tensor]]:
    """A tree SAE whose decoder rows are random directions in 256 dimensions (pairwise cosines
    below 0.3, so no row repeats another: no absorber, no repeat of a parent), and a function
    giving the original position of the row now at each position."""
    sae = tree(256, widths, k=4)
    original = sae.W_dec.detach().clone()
    return sae, lambda: (sae.W_dec.detach() @ original.T).argmax(1)


def placed(widths: list[int], codes: torch.Tensor) -> tuple[TreeHSAE, torch.Tensor, int]:
    """A tree SAE with labelled rows (:func:`labelled`) after one regraft of ``codes``: the
    SAE, the label now at each position, and the number of moves."""
    sae, labels = labelled(widths)
    placement = Placement(widths, sae.latent_parents())
    # Nothing left to reconstruct, unit decoder rows: a latent's use on a token is its value².
    placement.record(codes, torch.zeros(len(codes), 8), torch.full((sum(widths), 8), 8**-0.5))
    moves = placement.regraft(sae, share=0.5)
    return sae, labels(), moves


def test_a_latent_that_fires_inside_another_moves_under_it_with_its_children():
    # widths 4 / 8 / 16: latent p of tier 1 owns tier-2 slots 4 + 2p, 5 + 2p; tier-2 slot q
    # owns tier-3 slots 12 + 2(q - 4), ...
    codes = torch.zeros(800, 28)
    codes[:100, 0] = 1  # a root
    codes[:30, 1] = 1  # fires only inside latent 0: a child of it left in tier 1
    codes[:10, 6] = 1  # latent 1's own child (tier 2), inside it
    codes[100:200, 2] = 1  # independent of everything
    codes[:, 3] = 1  # fires everywhere: holds nothing, though everything fires inside it
    sae, label, moves = placed([4, 8, 16], codes)
    assert moves == 1
    # Latent 1 took latent 0's first (least used) child slot, 4; what was there came up.
    assert label[4] == 1 and label[1] == 4
    # Its child followed it one tier down, into the first child slot of slot 4.
    assert label[12] == 6 and label[6] == 12
    unmoved = [i for i in range(28) if i not in (1, 4, 6, 12)]
    assert label[unmoved].tolist() == unmoved


def test_a_latent_inside_two_goes_under_the_more_specific_and_follows_it_down():
    # A root (0), its child (1) and a grandchild (2), all in tier 1. The grandchild fires inside
    # the root on all its tokens and inside the child on 0.9 of them: both hold it, and it
    # belongs under the child, the one that fires less often, not the root it shares more with.
    codes = torch.zeros(1000, 28)
    codes[:200, 0] = 1
    codes[3:83, 1] = 1
    codes[:30, 2] = 1
    sae, label, moves = placed([4, 8, 16], codes)
    assert moves == 2
    # The grandchild went into the child's first slot (6), then the child into the root's (4),
    # taking the grandchild with it into slot 4's first child slot (12).
    assert label[4] == 1 and label[12] == 2
    assert label[0] == 0 and label[3] == 3


@pytest.mark.parametrize("holder_tokens, moves", [(100, 1), (80, 0)])
def test_a_holder_counts_back_the_tokens_its_latent_took(holder_tokens, moves):
    # Latent 1 fires on 60 tokens, inside latent 0 on 36 of them (0.6): on the other 24 it
    # stands for latent 0 too, which learned to stay silent there. Counted back, latent 0
    # fires 100 + 24 = 124 times, at least twice 60: it holds latent 1 (on the tree
    # [12, 3, 2], grandchildren that took in part of their parent stayed in tier 1 without
    # this). At 80 + 24 = 104, less than twice 60, it does not.
    codes = torch.zeros(800, 28)
    codes[:holder_tokens, 0] = 1
    codes[holder_tokens - 36 : holder_tokens + 24, 1] = 1
    sae, label, moved = placed([4, 8, 16], codes)
    assert moved == moves
    assert (label[4] == 1) == bool(moves)


def test_a_guest_child_moves_up_to_a_free_slot_of_tier_one():
    # Latent 0 fires on tokens 100-199 only weakly, to let its child 4 fire there: the child is
    # a guest (an independent feature hosted in a child slot), and goes to tier 1.
    codes = torch.zeros(400, 12)
    codes[:100, 0] = 1.0
    codes[100:200, 0] = 0.1
    codes[100:200, 4] = 1.0
    codes[:50, 1] = 1.0  # another root, and its true child, which stays
    codes[:50, 6] = 1.0
    sae, label, moves = placed([4, 8], codes)
    assert moves == 1
    # The least used latent of tier 1 (2) and the guest swap places.
    assert label[2] == 4 and label[4] == 2
    unmoved = [i for i in range(12) if i not in (2, 4)]
    assert label[unmoved].tolist() == unmoved


def test_a_latent_that_just_moved_down_is_not_sent_back_up_until_it_settles():
    """In the window after a move, the latent still carries its new parent's direction, so the
    parent looks unused on its tokens: the guest rule waits SETTLE_WINDOWS windows (on the
    synthetic tree, grandchildren went down and up every window without this)."""
    sae, labels = labelled([4, 8])
    placement = Placement([4, 8], sae.latent_parents())

    def window(codes: torch.Tensor) -> int:
        placement.record(codes, torch.zeros(len(codes), 8), torch.full((12, 8), 8**-0.5))
        moves = placement.regraft(sae, share=0.5)
        placement.reset()
        return moves

    inside = torch.zeros(400, 12)
    inside[:100, 0] = 1.0
    inside[:30, 1] = 1.0  # fires only inside latent 0: moves under it, into slot 4
    assert window(inside) == 1 and int(labels()[4]) == 1
    guest = torch.zeros(400, 12)
    guest[:100, 0] = 1.0
    guest[100:200, 0] = 0.1  # latent 0 now fires on slot 4's tokens only to let it fire
    guest[100:200, 4] = 1.0
    for _ in range(SETTLE_WINDOWS):
        assert window(guest) == 0 and int(labels()[4]) == 1
    assert window(guest) == 1 and int(labels()[4]) != 1  # settled, still a guest: it goes up


def test_a_guest_goes_back_under_its_host_only_by_cofiring_and_then_stays():
    """A latent sent up as a guest of latent 0 is not brought back by the absorber rule (its
    row is like latent 0's, which is what made it a guest: on the synthetic trees the two rules
    undid each other every few windows), but is by co-firing, which it does though free to fire
    anywhere; from then on the guest rule leaves it under latent 0. (Latent 0 has no parent
    for it to fire inside: the next test.)"""
    sae, labels = labelled([4, 8])
    placement = Placement([4, 8], sae.latent_parents())
    tokens = 4000

    def window(host_on_guest: slice, weak: bool) -> int:
        where = int((labels() == 4).nonzero())  # the guest, wherever it is now
        codes = torch.zeros(tokens, 12)
        codes[:100, 0] = 1.0
        codes[100:200, where] = 1.0
        codes[host_on_guest, 0] = 0.1 if weak else 1.0
        codes[300:350, 1] = codes[300:350, 6] = 1.0  # another root and its child: 2 and 3 are free
        placement.record(codes, torch.zeros(tokens, 8), torch.full((12, 8), 8**-0.5))
        moves = placement.regraft(sae, share=0.5)
        placement.reset()
        return moves

    assert window(slice(100, 200), weak=True) == 1 and int(labels()[2]) == 4  # a guest: up to 2
    with torch.no_grad():  # its row half along latent 0's
        sae.W_dec[2] = 0.5 * sae.W_dec[0] + 0.75**0.5 * sae.W_dec[2]
    # Latent 0 fires on 0.3 of its tokens: enough for the absorber rule, not for co-firing.
    assert window(slice(100, 130), weak=False) == 0 and int(labels()[2]) == 4
    assert window(slice(100, 170), weak=False) == 1  # inside latent 0 on 0.7: back under it
    assert int(labels()[4]) == 4 or int(labels()[5]) == 4
    for _ in range(SETTLE_WINDOWS + 2):  # a guest by the use rule again, and it stays
        assert window(slice(100, 200), weak=True) == 0


@pytest.mark.parametrize("inside_root", [True, False])
def test_a_grandchild_sent_up_as_a_guest_goes_back_once_settled_if_it_fires_inside_the_root(inside_root):
    """A grandchild whose row took in part of its parent's (latent 4 of tier 2) looks like a
    guest of it and is sent up to tier 1. Free to fire anywhere, it still fires inside the
    root (latent 0, latent 4's parent), as an independent feature hosted there would not: after
    SETTLE_WINDOWS windows free, the absorber rule brings it back under latent 4 (on the
    synthetic tree [6, 4, 2], four of the six missed edges of seed 7 were such grandchildren,
    left in tier 1). The independent feature stays in tier 1."""
    sae, labels = labelled([4, 8, 16])
    placement = Placement([4, 8, 16], sae.latent_parents())
    tokens = 4000

    def window(guest: slice, host_on_guest: slice, weak: bool) -> int:
        where = int((labels() == 12).nonzero())  # the grandchild, wherever it is now
        codes = torch.zeros(tokens, 28)
        codes[:400, 0] = 1.0  # the root
        codes[:100, 4] = 1.0  # its children, in both of its slots
        codes[200:300, 5] = 1.0
        codes[guest, where] = 1.0
        codes[host_on_guest, 4] = 0.1 if weak else 1.0
        placement.record(codes, torch.zeros(tokens, 8), torch.full((28, 8), 8**-0.5))
        moves = placement.regraft(sae, share=0.5)
        placement.reset()
        return moves

    assert window(slice(100, 200), slice(100, 200), weak=True) == 1  # a guest of latent 4: up
    up = int((labels() == 12).nonzero())
    assert up < 4
    with torch.no_grad():  # its row half along latent 4's
        sae.W_dec[up] = 0.5 * sae.W_dec[4] + 0.75**0.5 * sae.W_dec[up]
    # Free, it fires with latent 4 on 0.3 of its tokens: enough for the absorber rule, not
    # for co-firing; inside the root on all of them, or outside it.
    guest, host = (slice(100, 200), slice(100, 130)) if inside_root else (slice(1000, 1100), slice(1000, 1030))
    for _ in range(SETTLE_WINDOWS):
        assert window(guest, host, weak=False) == 0 and int(labels()[up]) == 12
    assert window(guest, host, weak=False) == int(inside_root)
    back = int((labels() == 12).nonzero())
    assert back in (12, 13) if inside_root else back == up  # under latent 4 again, or still free


@pytest.mark.parametrize(
    "host, guest, other, other_tokens, incumbent, home",
    [
        (0, 4, 1, [(100, 200), (400, 1000)], 0, {7}),  # another root: into its free slot 7
        (0, 4, 1, [(100, 200), (400, 1000)], 60, {7}),  # ...or from a latent that fires less often
        (4, 12, 0, [(0, 600)], 0, {12, 13}),  # the host's own parent: back under the host
    ],
)
def test_a_guest_inside_its_host_and_another_latent_goes_under_the_other(
    host, guest, other, other_tokens, incumbent, home
):
    """A latent sent up as a guest of ``host`` that, free, fires inside it and inside
    ``other`` goes under ``other``, even into a slot whose latent fires more than half as
    often as it (that latent takes the guest's place in tier 1): the host fired on its
    tokens only to let it fire. On the synthetic tree [6, 4, 2], seed 5, a latent of tier 1
    stood for an independent feature and for a child of root 0, whose latents, sent up from
    it as guests, went back under it (the more specific holder) for want of a slot of root
    0's that fired less than half as often. Unless ``other`` is the host's parent: then the
    latent is a grandchild that took in its parent's direction (the test above), and the
    host is its place."""
    sae, labels = labelled([4, 8, 16])
    placement = Placement([4, 8, 16], sae.latent_parents())
    tokens = 4000

    def at(label: int) -> int:
        return int((labels() == label).nonzero())

    def window(weak: bool) -> int:
        codes = torch.zeros(tokens, 28)
        codes[:300, host] = 1.0
        codes[100:200, host] = 0.1 if weak else 1.0
        codes[100:200, at(guest)] = 1.0
        for lo, hi in other_tokens:
            codes[lo:hi, other] = 1.0
        codes[400:480, 6] = 1.0  # latent 1's children: slot 7 is its least used
        codes[500 : 500 + incumbent, at(7)] = 1.0
        placement.record(codes, torch.zeros(tokens, 8), torch.full((28, 8), 8**-0.5))
        moves = placement.regraft(sae, share=0.5)
        placement.reset()
        return moves

    assert window(weak=True) == 1 and at(guest) < 4  # a guest: up to tier 1
    up = at(guest)
    assert window(weak=False) == 1  # free, it fires inside the host and inside the other
    assert at(guest) in home
    if incumbent:
        assert at(7) == up  # the latent it took the slot from has its place in tier 1


@pytest.mark.parametrize(
    "grandchild, like_row, takes",
    [("inside", False, True), ("part", True, True), ("part", False, False), ("few", True, False)],
)
def test_a_child_takes_its_slot_from_its_own_child_which_goes_under_it(grandchild, like_row, takes):
    """Child latent 1 fires inside root 0, whose slots are in use: slot 4 by a sibling that
    fires as often as it, slot 5 by latent 5, which fires more than half as often. Latent 5
    fires inside latent 1 (or on 0.3 of its tokens, with a row like latent 1's): it is latent
    1's own child, holding the slot latent 1 needs. Latent 1 takes the slot and latent 5 goes
    under it (on the synthetic tree [6, 4, 2], children left in tier 1 while their own child
    held their root's slot were the most common miss of sessions 27-31). A latent that fires
    inside latent 1 on 0.3 of its tokens, with a row of its own, keeps its slot; so does one
    with a row like latent 1's that fires with it on 5 of its 60 tokens, no more often than
    chance allows (lift 3.3, under MIN_LIFT)."""
    sae, labels = labelled([4, 8, 16])
    placement = Placement([4, 8, 16], sae.latent_parents())
    codes = torch.zeros(4000, 28)
    codes[:600, 0] = 1.0  # the root
    codes[:100, 1] = 1.0  # its child, in tier 1
    codes[400:500, 4] = 1.0  # a sibling in the root's first slot
    if grandchild == "inside":
        codes[:60, 5] = 1.0
    elif grandchild == "part":
        codes[82:100, 5] = codes[500:542, 5] = 1.0  # 18 of its 60 tokens inside latent 1
    else:
        codes[95:100, 5] = codes[500:555, 5] = 1.0  # 5 of its 60 tokens
    if like_row:
        with torch.no_grad():
            sae.W_dec[5] = 0.5 * sae.W_dec[1] + 0.75**0.5 * sae.W_dec[5]
    placement.record(codes, torch.zeros(len(codes), 8), torch.full((28, 8), 8**-0.5))
    assert placement.regraft(sae, share=0.5) == int(takes)
    label = labels()
    if takes:
        # Latent 1 in the slot, latent 5 in slot 5's first child slot (14), and what was
        # there in tier 1.
        assert label[5] == 1 and label[14] == 5 and label[1] == 14
    else:
        assert label.tolist() == list(range(28))


def absorber_case(absorbed: float | None) -> tuple[TreeHSAE, int]:
    """Root 0 holds children 4 and 5 (both slots in use); latent 1 of tier 1 fires inside root
    0 and with child 4 on 0.35 of its tokens (too few for the co-firing rule). Child 4 fires
    less than twice as often as latent 1, but more than 1.5 times once the 65 tokens latent 1
    took from it are counted back. With ``absorbed`` (a cosine), its decoder row has that
    cosine with child 4's and the rest in a direction of its own, and child 4's encoder has
    learned to stay silent along it; with None its row points elsewhere."""
    e = torch.eye(8)
    sae = tree(8, [4, 8, 16], k=4)
    codes = torch.zeros(4000, 28)
    codes[:400, 0] = 1  # the root
    codes[80:200, 4] = 1  # its child, the absorbed one (120 tokens)
    codes[200:300, 5] = 1  # its other child
    codes[150:185, 1] = 1  # the absorber: with child 4 on 35 of its 100 tokens...
    codes[300:365, 1] = 1  # ...and inside the root without it on the rest
    with torch.no_grad():
        sae.W_dec.copy_(e[4:].repeat(7, 1))  # every other row in e4..e7
        sae.W_dec[0], sae.W_dec[4], sae.W_dec[5] = e[0], e[1], e[2]
        sae.W_dec[1] = (
            absorbed * e[1] + (1 - absorbed**2) ** 0.5 * e[3] if absorbed is not None else (e[5] + e[3]) / 2**0.5
        )
        sae.W_enc[:, 4] = e[1] - e[3]
    placement = Placement([4, 8, 16], sae.latent_parents())
    placement.record(codes, torch.zeros(len(codes), 8), sae.W_dec.detach())
    return sae, placement.regraft(sae, share=0.5)


# Half the child's direction, and 0.35: child + root latents on the tree [12, 3, 2] had cosine
# 0.29-0.40 with their root's row (ABSORB_COS).
@pytest.mark.parametrize("cosine", [2**-0.5, 0.35])
def test_an_absorber_moves_under_the_latent_it_absorbed_which_may_fire_on_its_tokens_again(cosine):
    e = torch.eye(8)
    sae, moves = absorber_case(absorbed=cosine)
    assert moves == 1
    # It took child 4's first free slot (12), its row without child 4's direction...
    torch.testing.assert_close(sae.W_dec[12].detach(), e[3])
    assert sae.W_dec[1].detach() @ e[3] == 0  # ...and what was in slot 12 came up
    # Child 4's encoder no longer stays silent along it, and keeps the rest.
    torch.testing.assert_close(sae.W_enc[:, 4].detach(), e[1])


def test_a_latent_whose_row_points_elsewhere_is_no_absorber():
    sae, moves = absorber_case(absorbed=None)
    assert moves == 0
    torch.testing.assert_close(sae.W_enc[:, 4].detach(), torch.eye(8)[1] - torch.eye(8)[3])


def test_prefix_losses_are_the_errors_of_tier_one_and_of_tiers_one_and_two():
    sae = tree(16, [16, 32, 64], k=6)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    out = sae(x)
    codes = out.codes
    tier1 = codes[:, :16] @ sae.W_dec[:16] + sae.b_dec
    tiers12 = tier1 + codes[:, 16:48] @ sae.W_dec[16:48]
    expected = ((x - tier1) ** 2).sum(-1).mean() + ((x - tiers12) ** 2).sum(-1).mean()
    torch.testing.assert_close(out.losses["prefix_mse"], expected, rtol=1e-5, atol=1e-5)
    # They train the decoder rows of the tiers above the last (the selection has no gradient).
    out.losses["prefix_mse"].backward()
    assert sae.W_dec.grad[:48].abs().sum() > 0 and sae.W_dec.grad[48:].abs().sum() == 0


def test_prefix_losses_stop_at_prefix_until(tmp_path):
    # Decided from the step the trainer gives before each step, no state of its own: a run
    # resumed from a checkpoint past the stop does not train them again.
    sae = tree(16, [16, 32, 64], k=6)
    sae.cfg.prefix_until = 0.5
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    sae.begin_step(4, 10)
    assert "prefix_mse" in sae(x).losses
    sae.begin_step(5, 10)
    assert "prefix_mse" not in sae(x).losses
    # Through the trainer: TensorBoard has the prefix loss for the first half only.
    import saezoo
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sets = ["sae.tier_expansion=[1,2]", "sae.k=4", "sae.prefix_until=0.5", "train.log_every=1"]
    saezoo.train("hsae", "synthetic", preset="tree", steps=20, sets=sets, out=tmp_path / "run")
    logged = []
    for events in (tmp_path / "run" / "tb").iterdir():
        acc = EventAccumulator(str(events))
        acc.Reload()
        logged += [e.step for e in acc.Scalars("loss/prefix_mse")]
    assert sorted(logged) == list(range(1, 11))


def test_prefix_until_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="prefix_until"):
        HSAE(16, HSAEConfig(coupling="tree", tier_expansion=[1, 2], k=4, prefix_until=1.5))
