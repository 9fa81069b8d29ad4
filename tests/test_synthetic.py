"""The synthetic source's tree of features: its edges, its firing rules at every depth, the
stream it kept from its two-level form, and its settings."""

from __future__ import annotations

import hashlib

import pytest
import torch

from saezoo.activations import SyntheticConfig, SyntheticSource
from saezoo.activations.factory import build_source
from saezoo.config.resolve import resolve_run
from saezoo.errors import UsageError

SHAPES = [[8, 4, 3], [2, 3, 2, 2], [5], [3, 1, 4]]


def test_default_stream_is_the_two_level_one_it_always_was():
    """Recorded from the two-level source before trees of any depth existed (commit b8b1a92):
    the default settings must give the same stream, so earlier runs and numbers stand. The true
    coefficients are random draws only (exact on any CPU); the activations go through a matmul."""
    x, coeffs = SyntheticSource(SyntheticConfig())._generate(1024, 3)
    assert hashlib.sha256(coeffs.numpy().tobytes()).hexdigest() == "ba2e4cc4ddeda9b4c90cec7a353dc818d2cb38dbd6cdc92f124984941ff4ddbd"
    assert int((coeffs > 0).sum()) == 3177
    assert x[0, :3].tolist() == pytest.approx([-0.2389630526304245, 0.16510991752147675, 0.020358752459287643], abs=1e-6)
    assert float(x.double().sum()) == pytest.approx(-823.7175584731476, abs=1e-3)
    held_out = SyntheticSource(SyntheticConfig()).eval_features(512)
    assert hashlib.sha256(held_out.numpy().tobytes()).hexdigest() == "323d66b0b1c12403e91368f9c1c2ed38ff186c07b4048617bb84728d178c74ec"


def test_two_level_settings_are_the_branching_special_case():
    a = SyntheticSource(SyntheticConfig(n_parents=4, children_per_parent=3, n_independent=10))
    b = SyntheticSource(SyntheticConfig(branching=[4, 3], n_independent=10))
    (xa, ca), (xb, cb) = a._generate(2048, 5), b._generate(2048, 5)
    assert torch.equal(xa, xb) and torch.equal(ca, cb)
    for field in ("directions", "parent", "depth"):
        assert torch.equal(getattr(a.ground_truth, field), getattr(b.ground_truth, field))
    assert a.ground_truth.kind == b.ground_truth.kind


@pytest.mark.parametrize("branching", SHAPES)
def test_tree_edges_at_every_depth(branching):
    src = SyntheticSource(SyntheticConfig(branching=branching, n_independent=7))
    truth = src.ground_truth
    sizes = [1]
    for b in branching:
        sizes.append(sizes[-1] * b)
    sizes = sizes[1:]  # nodes per depth
    n_tree = sum(sizes)
    assert src.n_features == n_tree + 7 == len(truth.kind) == truth.directions.shape[0]
    assert truth.depth.tolist() == [d for d, n in enumerate(sizes) for _ in range(n)] + [0] * 7
    assert truth.parent[: sizes[0]].tolist() == [-1] * sizes[0]
    assert truth.parent[n_tree:].tolist() == [-1] * 7
    assert truth.kind == ["parent"] * sizes[0] + ["child"] * (n_tree - sizes[0]) + ["independent"] * 7
    for f in range(sizes[0], n_tree):
        p = int(truth.parent[f])
        assert truth.depth[p] == truth.depth[f] - 1
    # every node above the leaves has exactly the branching factor of the next depth as children
    children = torch.bincount(truth.parent[truth.parent >= 0], minlength=src.n_features)
    for d, b in enumerate(branching[1:]):
        at = truth.depth == d
        at[n_tree:] = False
        assert children[at].tolist() == [b] * sizes[d]
    assert children[truth.depth == len(branching) - 1].sum() == 0


@pytest.mark.parametrize("branching", SHAPES)
def test_firing_rules_at_every_depth(branching):
    cfg = SyntheticConfig(branching=branching, n_independent=5, p_parent=0.3, p_child=0.7, p_independent=0.1)
    src = SyntheticSource(cfg)
    truth = src.ground_truth
    on = src._generate(20000, 1)[1] > 0
    has_parent = (truth.parent >= 0).nonzero().flatten()
    # a child never without its parent
    assert not (on[:, has_parent] & ~on[:, truth.parent[has_parent]]).any()
    firing_children = torch.zeros(on.shape[0], src.n_features, dtype=torch.long)
    firing_children.index_add_(1, truth.parent[has_parent], on[:, has_parent].long())
    # siblings mutually exclusive: at most one child of each node per token
    assert firing_children.max() <= 1
    # a firing node has a firing child with probability p_child; a root fires with p_parent
    inner = torch.bincount(truth.parent[has_parent], minlength=src.n_features) > 0
    if len(branching) > 1:
        rate = float(firing_children[:, inner].sum()) / float(on[:, inner].sum())
        assert rate == pytest.approx(0.7, abs=0.02)
    roots = (truth.depth == 0) & (truth.parent < 0)
    roots[-5:] = False
    assert float(on[:, roots].double().mean()) == pytest.approx(0.3, abs=0.02)
    assert float(on[:, -5:].double().mean()) == pytest.approx(0.1, abs=0.01)
    # the children of a node share its firing evenly
    if len(branching) > 1:
        first = (truth.parent == 0).nonzero().flatten()
        share = on[:, first].double().sum(0) / on[:, first].double().sum()
        assert share.tolist() == pytest.approx([1 / len(first)] * len(first), abs=0.05)


def test_branching_from_the_command_line_and_toml():
    for value in ("[8,4,3]", "[8, 4, 3]", "8,4,3"):
        run = resolve_run("flat", sets=["data.source=synthetic", f"data.synthetic.branching={value}"])
        assert run.data.synthetic.branching == [8, 4, 3]
    run = resolve_run("flat", options={"data": {"synthetic": {"branching": [2, 5]}}})
    assert SyntheticSource(run.data.synthetic).level_sizes == [2, 10]


@pytest.mark.parametrize(
    "value, needle",
    [
        ("[]", "data.synthetic: branching must be a non-empty list of positive integers, got []"),
        ("[8,0,3]", "data.synthetic: branching must be a non-empty list of positive integers, got [8, 0, 3]"),
        ("[-2]", "data.synthetic: branching must be a non-empty list of positive integers, got [-2]"),
        ("[2.5]", "data.synthetic.branching: 2.5 is not an integer"),
        ("eight", "data.synthetic.branching: 'eight' is not an integer"),
    ],
)
def test_bad_branching_is_a_usage_error(value, needle):
    """The CLI turns these into one line and exit 2 (docs/errors.md, bad-synthetic-tree)."""
    with pytest.raises(UsageError) as err:
        run = resolve_run("flat", sets=["data.source=synthetic", f"data.synthetic.branching={value}"])
        build_source(run.data, tokens=1024, seed=0)
    assert str(err.value) == needle


def test_branching_with_two_level_settings_is_refused():
    with pytest.raises(ValueError, match="set one or the other"):
        SyntheticSource(SyntheticConfig(branching=[2, 2], n_parents=3))
