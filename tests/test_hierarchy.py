"""Hierarchy metrics on hand-built cases with known answers."""

from __future__ import annotations

import pytest
import torch

from saezoo.activations import SyntheticConfig, SyntheticSource
from saezoo.hierarchy import coverage, frequency_groups, ground_truth_hierarchy, parents_by_coactivation


def test_coverage_hand_built():
    # Two parent latents, two child latents; child 0's parent is 0, child 1's parent is 1.
    parent_codes = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    child_codes = torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.0, 4.0]])
    parents = torch.tensor([[0], [1]])
    num, den = coverage(child_codes, parent_codes, parents)
    # weighted firing: 3 (covered) + 1 (not: parent silent on token 1) + 4 (covered)
    assert (num, den) == (7.0, 8.0)


def test_frequency_groups():
    density = torch.tensor([0.1, 0.5, 0.3, 0.0, 0.2, 0.4])
    groups = frequency_groups(density, [1, 2])  # scaled to 6 latents: 2 and 4
    assert groups[0].tolist() == [1, 5]
    assert groups[1].tolist() == [2, 4, 0, 3]


def test_parents_by_coactivation():
    counts = torch.tensor([[5.0, 1.0, 0.0], [0.0, 2.0, 9.0]])
    assert parents_by_coactivation(counts, 1).flatten().tolist() == [0, 2]


def synthetic(n=20000):
    src = SyntheticSource(SyntheticConfig(d_in=64, n_parents=4, children_per_parent=3, n_independent=10))
    return src, src.eval_features(n)


def test_perfect_dictionary_scores_one():
    src, coeffs = synthetic()
    truth = src.ground_truth
    # A perfect SAE: one latent per true feature, firing exactly with it.
    m = ground_truth_hierarchy(truth, truth.directions * 2.0, coeffs, coeffs)
    assert m["edge_recall"] == 1.0
    assert m["edge_precision"] == 1.0
    assert m["absorption"] == 0.0


def test_absorbing_dictionary_is_caught():
    src, coeffs = synthetic()
    truth = src.ground_truth
    codes = coeffs.clone()
    children = (truth.parent >= 0).nonzero().flatten()
    child_on = (codes[:, children] > 0).any(1)
    codes[child_on, : src.cfg.n_parents] = 0  # the parent latent goes silent whenever a child fires
    m = ground_truth_hierarchy(truth, truth.directions, codes, coeffs)
    assert m["absorption"] == pytest.approx(1.0)
    assert m["edge_recall"] == 0.0


def test_random_dictionary_is_near_chance():
    src, coeffs = synthetic()
    truth = src.ground_truth
    gen = torch.Generator().manual_seed(0)
    codes = (torch.rand(coeffs.shape[0], 64, generator=gen) < 0.05).float()
    m = ground_truth_hierarchy(truth, torch.randn(64, 64, generator=gen), codes, coeffs)
    assert m["edge_recall"] <= 0.2
    assert m["absorption"] >= 0.8
