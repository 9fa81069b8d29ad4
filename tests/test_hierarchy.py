"""Hierarchy metrics on hand-built cases with known answers, and against plain-Python
references written from the definitions in docs/metrics.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from saezoo import hierarchy as h
from saezoo.activations import GroundTruth, SyntheticConfig, SyntheticSource
from saezoo.sae import SAE

Tensor = torch.Tensor
ROOT = Path(__file__).resolve().parents[1]


class Fixed(SAE):
    """An SAE that is only a dictionary, tiers and (optionally) a structural tree: the
    metrics here read its codes from a record, never from ``encode``."""

    def __init__(self, decoder: Tensor, groups=None, parents=None):
        super().__init__(decoder.shape[1], None)
        self.decoder, self.groups, self.parents = decoder, groups, parents

    def decoder_directions(self):
        return self.decoder

    def latent_groups(self):
        return self.groups or [("all", self.decoder.shape[0])]

    def latent_parents(self):
        return self.parents


def truth_from(parent: list[int], d_in: int = 16) -> GroundTruth:
    """A ground truth with the given parent of each feature (random directions)."""
    parent_t = torch.tensor(parent)
    depth = torch.zeros(len(parent), dtype=torch.long)
    for f in range(len(parent)):
        p = parent[f]
        while p >= 0:
            depth[f] += 1
            p = parent[p]
    kind = ["parent" if p < 0 else "child" for p in parent]
    dirs = torch.nn.functional.normalize(torch.randn(len(parent), d_in, generator=torch.Generator().manual_seed(0)), dim=-1)
    return GroundTruth(directions=dirs, parent=parent_t, kind=kind, depth=depth)


def random_codes(n: int, width: int, p: float, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    rates = torch.rand(width, generator=gen) * p
    on = torch.rand(n, width, generator=gen) < rates
    return on * (torch.rand(n, width, generator=gen) + 0.1)


# --- plain-Python references, from the definitions --------------------------------------------


def ref_inferred(codes: Tensor, share: float = 0.5) -> list[int]:
    on = (codes != 0).tolist()
    width = codes.shape[1]
    fires = [sum(row[j] for row in on) for j in range(width)]
    order = sorted(range(width), key=lambda j: (-fires[j], j))
    rank = {j: r for r, j in enumerate(order)}
    parents = []
    for j in range(width):
        best, best_p = -1, -1
        for p in range(width):
            if rank[p] >= rank[j]:
                continue
            c = sum(1 for row in on if row[j] and row[p])
            # most co-firing tokens; among equals, the least frequent (largest rank)
            if c > best or (c == best and rank[p] > rank[best_p]):
                best, best_p = c, p
        parents.append(best_p if fires[j] and best >= share * fires[j] and best > 0 else -1)
    return parents


def ref_coverage(codes: Tensor, children: list[int], parents: dict[int, list[int]]) -> float:
    num = den = 0.0
    for row in codes.tolist():
        for j in children:
            if row[j] != 0:
                den += row[j]
                if any(row[p] != 0 for p in parents[j]):
                    num += row[j]
    return num / den


# --- the record and co-firing counts ----------------------------------------------------------


def test_record_keeps_every_entry_over_batches():
    codes = random_codes(300, 12, 0.4, seed=1)
    record = h.CodeRecord(12)
    for part in codes.split(64):
        record.add(part)
    assert record.tokens == 300
    dense = torch.zeros(300, 12)
    dense[record.token, record.latent] = record.value
    assert torch.equal(dense, codes)
    assert record.fires().tolist() == (codes != 0).sum(0).tolist()
    latents = torch.tensor([3, 0, 3, 11])
    assert torch.equal(record.firing(latents), codes[:, latents] != 0)
    token = torch.randint(0, 300, (500,), generator=torch.Generator().manual_seed(2))
    latent = torch.randint(0, 12, (500,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(record.fire_together(latent, token), codes[token, latent] != 0)


@pytest.mark.parametrize("block_entries", [1, 7 * 12, 1 << 24])
@pytest.mark.parametrize("product", ["sparse", "dense"])
def test_cofiring_counts_equal_the_dense_product(block_entries, product, monkeypatch):
    monkeypatch.setattr(h, "_DENSE_BELOW", 0 if product == "sparse" else 1e9)
    codes = random_codes(500, 12, 0.5, seed=4)
    on = (codes != 0).double()
    blocks = list(h.cofiring_blocks(h.CodeRecord.from_codes(codes), block_entries))
    assert [a for a, _ in blocks] == list(range(0, 12, max(1, block_entries // 12)))
    assert torch.equal(torch.cat([c for _, c in blocks]).double(), on.T @ on)
    # no entries at all: zero counts, same shapes
    empty = torch.cat([c for _, c in h.cofiring_blocks(h.CodeRecord.from_codes(torch.zeros(5, 4)))])
    assert empty.shape == (4, 4) and not empty.any()


# --- the inferred tree ------------------------------------------------------------------------


def planted_tree_codes(n: int = 4000, seed: int = 0) -> tuple[Tensor, list[int]]:
    """Codes of a planted tree under a shuffled latent order: roots A, B; A's children a1, a2
    (exclusive), B's child b1; a1's children x, y (exclusive); an independent latent; a dead one.
    Returns the codes and the true parent of each latent."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda: torch.rand(n, generator=gen)  # noqa: E731
    A, B = r() < 0.4, r() < 0.3
    pick = r()
    a1, a2 = A & (pick < 0.45), A & (pick >= 0.45) & (pick < 0.8)
    b1 = B & (r() < 0.6)
    pick = r()
    x, y = a1 & (pick < 0.5), a1 & (pick >= 0.5) & (pick < 0.9)
    lone = r() < 0.05
    dead = torch.zeros(n, dtype=torch.bool)
    names = [A, B, a1, a2, b1, x, y, lone, dead]
    parent_of = [-1, -1, 0, 0, 1, 2, 2, -1, -1]
    perm = torch.randperm(len(names), generator=gen)  # latent perm[i] holds feature i
    codes = torch.zeros(n, len(names))
    for i, on in enumerate(names):
        codes[:, perm[i]] = on * (torch.rand(n, generator=gen) + 0.5)
    parents = [-1] * len(names)
    for i, p in enumerate(parent_of):
        parents[int(perm[i])] = int(perm[p]) if p >= 0 else -1
    return codes, parents


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inferred_tree_recovers_a_planted_tree_exactly(seed):
    codes, parents = planted_tree_codes(seed=seed)
    co = h.Cofiring(h.CodeRecord.from_codes(codes), [torch.arange(codes.shape[1])])
    # x's tokens are covered by a1 and by A alike: the most specific (a1) is the parent
    assert co.inferred.tolist() == parents
    children = [j for j, p in enumerate(parents) if p >= 0]
    assert co.share[children].tolist() == [1.0] * len(children)


def test_inferred_parent_threshold_and_ties():
    on = torch.zeros(10, 6)
    on[[0, 1, 2, 3], 0] = 1  # 4 tokens, none with the more frequent 4 and 5: a root
    on[[0, 1], 1] = 1  # both with 0 (share 1): parent 0
    on[[2, 3, 4, 5], 2] = 1  # 2 tokens with 0, 2 with 4, 2 with 5: share exactly 0.5, and
    # a tie broken towards the least frequent candidate: parent 0
    on[[3, 6, 9], 3] = 1  # best share 1/3, below the threshold: a root
    on[[4, 5, 6, 7, 8], 4] = 1  # 4 and 5 fire on the same tokens: the lower index counts as
    on[[4, 5, 6, 7, 8], 5] = 1  # more frequent and is the other's parent
    co = h.Cofiring(h.CodeRecord.from_codes(on), [torch.arange(6)])
    assert co.inferred.tolist() == [-1, 0, 0, -1, -1, 4]
    assert co.inferred.tolist() == ref_inferred(on)
    assert co.share.tolist() == pytest.approx([0.0, 1.0, 0.5, 1 / 3, 0.0, 1.0])


@pytest.mark.parametrize("seed", range(4))
def test_inferred_tree_matches_the_reference_on_random_codes(seed):
    codes = random_codes(200, 10, 0.6, seed=seed)
    co = h.Cofiring(h.CodeRecord.from_codes(codes), [torch.arange(10)])
    assert co.inferred.tolist() == ref_inferred(codes)


def test_consistency_and_root_fraction():
    on = torch.zeros(8, 5)
    on[[0, 1, 2, 3, 4], 0] = 1
    on[[0, 1, 2, 5], 1] = 1  # parent 0 on 3 of its 4 tokens
    on[[0, 6], 2] = 1  # parent 0 on 1 of its 2 tokens
    on[[0], 3] = 1  # parent 1 on its only token
    record = h.CodeRecord.from_codes(on)
    # latent 4 never fires: its parent does not count
    parents = torch.tensor([-1, 0, 0, 1, 0])
    assert h.consistency(record, parents) == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    assert h.consistency(record, torch.full((5,), -1)) is None
    assert h.root_fraction(record.fires(), parents) == pytest.approx(1 / 4)
    assert h.root_fraction(record.fires(), torch.full((5,), -1)) == 1.0


# --- matching and tree recovery -----------------------------------------------------------------


def ref_greedy(cos: Tensor, eligible: Tensor | None = None) -> list[int]:
    pairs = sorted(((float(cos[f, j]), f, j) for f in range(cos.shape[0]) for j in range(cos.shape[1])), reverse=True)
    match, used = [-1] * cos.shape[0], set()
    for _, f, j in pairs:
        if match[f] < 0 and j not in used and (eligible is None or eligible[f, j]):
            match[f], used = j, used | {j}
    return match


def test_matching_is_one_to_one_greedy():
    t = torch.eye(3, 4)
    # latent 0 is closest to both features 0 and 1; feature 0 is closer, so feature 1 gets
    # its second best, latent 2; feature 2's best is latent 3
    d = torch.tensor([[1.0, 0.6, 0.0, 0.0], [0.0, 0.1, 0.0, 1.0], [0.0, 0.5, 0.1, 0.0], [0.0, 0.0, 1.0, 0.0]])
    assert h.match_features(t, d).tolist() == [0, 2, 3]
    # fewer latents than features: the leftover is unmatched
    assert h.match_features(torch.eye(3), torch.eye(3)[:2]).tolist() == [0, 1, -1]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("allowed", [1.0, 0.5, 0.1])
def test_matching_equals_global_greedy(seed, allowed):
    gen = torch.Generator().manual_seed(seed)
    t, d = torch.randn(30, 8, generator=gen), torch.randn(40, 8, generator=gen)
    eligible = torch.rand(30, 40, generator=gen) < allowed
    cos = torch.nn.functional.normalize(t, dim=-1) @ torch.nn.functional.normalize(d, dim=-1).T
    expected = ref_greedy(cos, eligible)
    if allowed == 0.1:
        assert expected.count(-1) > 0  # some features run out of eligible latents
    # few candidates per round force many rounds; the answer must not change
    for candidates in (1, 2, 16):
        assert h.match_features(t, d, eligible, candidates=candidates).tolist() == expected


def test_a_latent_that_does_not_fire_with_a_feature_cannot_stand_for_it():
    # feature 0 is active on tokens 0-9; latent 0 (decoder exactly the feature) fires on one of
    # them, latent 1 (cosine 0.8) on eight, latent 2 (cosine 0.6) on all ten
    t = torch.tensor([[1.0, 0.0]])
    d = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8]])
    codes = torch.zeros(20, 3)
    codes[0, 0], codes[:8, 1], codes[:10, 2] = 1.0, 1.0, 1.0
    active = torch.zeros(20, 1, dtype=torch.bool)
    active[:10] = True
    share = h.active_share(h.CodeRecord.from_codes(codes), active)
    assert share.tolist() == [[0.1, 0.8, 1.0]]
    assert h.match_features(t, d).tolist() == [0]  # by cosine alone: the near-silent latent
    assert h.match_features(t, d, share > 0.1).tolist() == [1]
    assert h.match_features(t, d, share > 0.9).tolist() == [2]
    assert h.match_features(t, d, share > 1.0).tolist() == [-1]
    # a feature never active: no latent is eligible
    assert h.active_share(h.CodeRecord.from_codes(codes), torch.zeros(20, 1, dtype=torch.bool)).tolist() == [[0.0] * 3]


def test_tree_recovery_known_numbers():
    # roots 0, 1; depth 1: 2, 3 under 0 and 4, 5 under 1; depth 2: 6 under 2, 7 under 4;
    # independent 8
    truth = truth_from([-1, -1, 0, 0, 1, 1, 2, 4, -1])
    match = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17, 18])  # feature f -> latent 10 + f
    parents = torch.full((20,), -1)
    parents[12], parents[13], parents[14] = 10, 10, 11  # three true depth-1 edges
    parents[15] = 10  # 5 under the wrong root: a spurious depth-1 edge, a missed one
    parents[18] = 11  # the independent feature under a root: a spurious depth-1 edge
    parents[16] = 12  # a true depth-2 edge
    parents[17] = 11  # 7 under its grandparent: a spurious depth-1 edge, a missed depth-2 one
    parents[11] = 5  # a root under an unmatched latent: not judged
    r = h.tree_recovery(truth, match, parents)
    assert r["precision/depth1"] == pytest.approx(3 / 6)
    assert r["recall/depth1"] == pytest.approx(3 / 4)
    assert r["f1/depth1"] == pytest.approx(2 * 0.5 * 0.75 / 1.25)
    assert r["precision/depth2"] == 1.0
    assert r["recall/depth2"] == pytest.approx(1 / 2)
    assert r["f1/depth2"] == pytest.approx(2 / 3)
    assert r["precision"] == pytest.approx(4 / 7)
    assert r["recall"] == pytest.approx(4 / 6)
    assert r["f1"] == pytest.approx(2 * (4 / 7) * (4 / 6) / (4 / 7 + 4 / 6))
    # the right tree scores 1; no tree scores 0
    right = torch.full((20,), -1)
    right[match[2:8]] = match[truth.parent[2:8]]
    assert set(h.tree_recovery(truth, match, right).values()) == {1.0}
    assert set(h.tree_recovery(truth, match, torch.full((20,), -1)).values()) == {0.0}


def test_absorption_known_rate():
    truth = truth_from([-1, 0, 0, 1])  # root 0, children 1 and 2, grandchild 3 under 1
    match = torch.tensor([3, 2, 1, 0])  # feature f -> latent 3 - f
    true = torch.zeros(10, 4)
    true[:8, 0] = 1
    true[:4, 1] = 1
    true[4:7, 2] = 1
    true[:2, 3] = 1
    codes = true[:, [3, 2, 1, 0]].clone()  # latent 3 - f fires with feature f
    codes[[0, 4], 3] = 0  # feature 0's latent silent on one token of each child
    codes[1, 2] = 0  # feature 1's latent silent on one token of its child
    r = h.absorption(truth, match, h.CodeRecord.from_codes(codes), true)
    assert r["absorption/depth1"] == pytest.approx(2 / 7)
    assert r["absorption/depth2"] == pytest.approx(1 / 2)
    assert r["absorption"] == pytest.approx(3 / 9)


# --- composition coverage ---------------------------------------------------------------------


def test_coverage_hand_built():
    # latents 0, 1 are parents; child 2's parent is 0, child 3's is 1
    codes = torch.tensor([[1.0, 0.0, 3.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 4.0]])
    # weighted firing: 3 (covered) + 1 (not: parent silent on token 1) + 4 (covered)
    assert h.coverage(h.CodeRecord.from_codes(codes), torch.tensor([2, 3]), torch.tensor([[0], [1]])) == 7 / 8
    # several parents each: covered when any of them fires
    record = h.CodeRecord.from_codes(codes)
    assert h.coverage(record, torch.tensor([3]), torch.tensor([[0, 1]])) == 1.0
    assert h.coverage(record, torch.tensor([3]), torch.tensor([[0, 2]])) == 0.0
    assert h.coverage(record, torch.tensor([2, 3]), torch.tensor([[3, 0], [0, 1]])) == 7 / 8


def test_frequency_groups():
    density = torch.tensor([0.1, 0.5, 0.3, 0.0, 0.2, 0.4])
    groups = h.frequency_groups(density, [1, 2])  # scaled to 6 latents: 2 and 4
    assert groups[0].tolist() == [1, 5]
    assert groups[1].tolist() == [2, 4, 0, 3]


def tiered_codes() -> Tensor:
    """Tier 1: latents 0..11; tier 2: latents 12..19, latent 12 + i firing mostly with tier-1
    latent i (and now and then alone)."""
    gen = torch.Generator().manual_seed(5)
    n = 3000
    codes = torch.zeros(n, 20)
    codes[:, :12] = (torch.rand(n, 12, generator=gen) < 0.15) * (torch.rand(n, 12, generator=gen) + 0.5)
    for i in range(8):
        with_parent = (codes[:, i] != 0) & (torch.rand(n, generator=gen) < 0.5)
        alone = torch.rand(n, generator=gen) < 0.02
        codes[:, 12 + i] = (with_parent | alone) * (torch.rand(n, generator=gen) + 0.2)
    return codes


def test_ccr_by_value_and_its_chance_level():
    codes = tiered_codes()
    record = h.CodeRecord.from_codes(codes)
    sae = Fixed(torch.randn(20, 4), groups=[("tier1", 12), ("tier2", 8)])
    m = h.hierarchy_metrics(sae, record, seed=3)
    on = (codes != 0).double()
    counts = on[:, 12:].T @ on[:, :12]
    parents = {12 + i: torch.topk(counts[i], 3).indices.tolist() for i in range(8)}
    assert [parents[12 + i][0] for i in range(8)] == list(range(8))
    children = list(range(12, 20))
    assert m["ccr/tier2"] == pytest.approx(ref_coverage(codes, children, parents), rel=1e-12)
    # chance: every parent through one random permutation of tier 1 (seeded)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3)).tolist()
    shuffled = {j: [perm[p] for p in ps] for j, ps in parents.items()}
    assert m["ccr_chance/tier2"] == pytest.approx(ref_coverage(codes, children, shuffled), rel=1e-12)
    assert m["ccr/tier2"] > m["ccr_chance/tier2"] + 0.1


def test_ccr_of_a_flat_sae_uses_frequency_groups():
    codes = tiered_codes()
    record = h.CodeRecord.from_codes(codes)
    m = h.hierarchy_metrics(Fixed(torch.randn(20, 4)), record, group_sizes=[2, 3])
    groups = h.frequency_groups(record.fires().double(), [2, 3])
    on = (codes != 0).double()
    counts = on[:, groups[1]].T @ on[:, groups[0]]
    parents = {int(j): groups[0][torch.topk(counts[k], 3).indices].tolist() for k, j in enumerate(groups[1])}
    assert m["ccr/group2"] == pytest.approx(ref_coverage(codes, groups[1].tolist(), parents), rel=1e-12)
    assert "ccr/group1" not in m and "ccr_chance/group2" in m


# --- everything together ------------------------------------------------------------------------


def oracle(branching, n=6000, n_independent=6):
    """A synthetic source and the perfect SAE for it: one latent per true feature, in a
    shuffled order, firing exactly with it."""
    src = SyntheticSource(SyntheticConfig(branching=branching, n_independent=n_independent, p_parent=0.2))
    coeffs = src.eval_features(n)
    perm = torch.randperm(src.n_features, generator=torch.Generator().manual_seed(0))
    codes = torch.zeros_like(coeffs)
    codes[:, perm] = coeffs
    decoder = torch.zeros_like(src.ground_truth.directions)
    decoder[perm] = src.ground_truth.directions * 3.0
    return src, coeffs, codes, decoder, perm


@pytest.mark.parametrize("branching", [[4, 3, 2], [3, 2, 2, 2]])
def test_a_perfect_sae_scores_one_at_every_depth(branching):
    src, coeffs, codes, decoder, perm = oracle(branching)
    truth = src.ground_truth
    structural = torch.full((src.n_features,), -1)
    children = (truth.parent >= 0).nonzero().flatten()
    structural[perm[children]] = perm[truth.parent[children]]
    m = h.hierarchy_metrics(Fixed(decoder, parents=structural), h.CodeRecord.from_codes(codes), truth=truth, true_coeffs=coeffs)
    for kind in ("inferred", "structural"):
        for d in range(1, len(branching)):
            for score in ("precision", "recall", "f1"):
                assert m[f"tree_{score}/{kind}/depth{d}"] == 1.0
        assert m[f"tree_f1/{kind}"] == 1.0
        assert m[f"consistency/{kind}"] == 1.0
        assert m[f"root_fraction/{kind}"] == pytest.approx((branching[0] + 6) / src.n_features)
    assert f"tree_f1/inferred/depth{len(branching)}" not in m
    assert m["absorption"] == 0.0
    assert all(m[f"absorption/depth{d}"] == 0.0 for d in range(1, len(branching)))


def test_an_absorbing_sae_is_caught():
    src, coeffs, codes, decoder, perm = oracle([4, 3, 2])
    truth = src.ground_truth
    # the root latents go silent whenever one of their children fires
    roots = (truth.depth == 0) & (torch.bincount(truth.parent[truth.parent >= 0], minlength=src.n_features) > 0)
    child_on = coeffs[:, truth.depth == 1] != 0
    codes[:, perm[roots]] *= ~child_on.view(-1, 4, 3).any(-1)
    m = h.hierarchy_metrics(Fixed(decoder), h.CodeRecord.from_codes(codes), truth=truth, true_coeffs=coeffs)
    assert m["absorption/depth1"] == 1.0
    assert m["absorption/depth2"] == 0.0
    assert m["tree_recall/inferred/depth1"] == 0.0
    assert m["tree_recall/inferred/depth2"] == 1.0
    # the share of all (token, child) pairs whose parent latent is silent
    n1, n2 = float(child_on.sum()), float((coeffs[:, truth.depth == 2] != 0).sum())
    assert m["absorption"] == pytest.approx(n1 / (n1 + n2))


def test_a_near_silent_latent_nearest_a_feature_does_not_take_its_place():
    src, coeffs, codes, decoder, perm = oracle([4, 3, 2])
    truth = src.ground_truth
    child = int((truth.depth == 1).nonzero()[0])
    # the child's own latent points a little off its direction (cosine about 0.95); an extra
    # latent points exactly along it but fires on a single token, one of the child's
    tilt = torch.nn.functional.normalize(torch.randn(decoder.shape[1], generator=torch.Generator().manual_seed(1)), dim=0)
    decoder[perm[child]] = decoder[perm[child]] + 1.0 * tilt
    decoder = torch.cat([decoder, truth.directions[child : child + 1]])
    extra = torch.zeros(len(codes), 1)
    extra[int((coeffs[:, child] != 0).nonzero()[0])] = 1.0
    codes = torch.cat([codes, extra], dim=1)
    m = h.hierarchy_metrics(Fixed(decoder), h.CodeRecord.from_codes(codes), truth=truth, true_coeffs=coeffs)
    assert m["tree_recall/inferred/depth1"] == 1.0 and m["tree_recall/inferred/depth2"] == 1.0
    # by decoder cosine alone the extra latent would stand for the child: its edges would miss
    cos_only = h.match_features(truth.directions, decoder)
    assert int(cos_only[child]) == decoder.shape[0] - 1
    assert h.tree_recovery(truth, cos_only, h.Cofiring(h.CodeRecord.from_codes(codes), [torch.arange(len(decoder))]).inferred)["recall/depth1"] < 1.0
    with pytest.raises(ValueError, match="both"):
        h.hierarchy_metrics(Fixed(decoder), h.CodeRecord.from_codes(codes), truth=truth)


def test_every_key_is_documented():
    src, coeffs, codes, decoder, perm = oracle([3, 2, 2])
    sae = Fixed(decoder, groups=[("tier1", 10), ("tier2", src.n_features - 10)], parents=torch.full((src.n_features,), -1))
    m = h.hierarchy_metrics(sae, h.CodeRecord.from_codes(codes), truth=src.ground_truth, true_coeffs=coeffs)
    doc = (ROOT / "docs" / "metrics.md").read_text()
    for key in m:
        generic = re.sub(r"depth\d+$", "depth<d>", key.replace("tier2", "<g>"))
        assert f"`{generic}`" in doc, generic


def test_a_record_holds_no_autograd_graph():
    # Codes straight from a training forward carry the SAE's graph; a record that kept it
    # would keep every activation of that forward alive for as long as the metrics run.
    codes = torch.relu(torch.randn(8, 5, requires_grad=True))
    record = h.CodeRecord.from_codes(codes)
    assert not record.value.requires_grad and record.value.grad_fn is None
