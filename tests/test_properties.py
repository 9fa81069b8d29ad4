"""Property tests (hypothesis): config parsing and metric formulas."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saezoo import evaluation as ev
from saezoo.config.coerce import coerce
from saezoo.config.layers import parse_set
from saezoo.errors import UsageError

finite = st.floats(allow_nan=False, allow_infinity=False, width=32, min_value=-1e6, max_value=1e6)


@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_int_round_trip(n):
    assert coerce(str(n), int, "k") == n


@given(finite)
def test_float_round_trip(x):
    assert coerce(repr(x), float, "k") == x


@given(st.lists(st.integers(min_value=-1000, max_value=1000), min_size=1, max_size=8))
def test_list_round_trip(values):
    assert coerce(",".join(map(str, values)), list[int], "k") == values
    assert coerce(str(values), list[int], "k") == values


@given(st.text(max_size=20))
def test_coerce_never_crashes(text):
    for tp in (int, float, bool, Optional[float], list[float], tuple[float, float]):
        try:
            coerce(text, tp, "k")
        except UsageError as exc:
            assert str(exc).startswith("k: ")


@given(st.text(alphabet="abc._=", min_size=1, max_size=15))
def test_parse_set_only_raises_usage_errors(item):
    try:
        parse_set([item])
    except UsageError:
        pass


tensors = st.integers(min_value=2, max_value=40).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(min_value=1, max_value=8), st.integers(min_value=0, max_value=2**31))
)


@settings(max_examples=50, deadline=None)
@given(tensors, st.floats(min_value=0.0, max_value=3.0))
def test_reconstruction_metrics(shape, noise):
    n, d, seed = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen) * 5
    x_hat = x + noise * torch.randn(n, d, generator=gen)
    f = ev.fvu(x, x_hat)
    assert f >= 0
    assert ev.explained_variance(x, x_hat) == pytest.approx(1 - f)
    assert ev.fvu(x, x) == 0
    assert ev.mse(x, x_hat) >= 0


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=30), st.integers(min_value=1, max_value=50), st.floats(min_value=0, max_value=1), st.integers(0, 2**31))
def test_l0_bounds(n, width, p, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = (torch.rand(n, width, generator=gen) < p).float() * torch.rand(n, width, generator=gen)
    value = ev.l0(codes)
    assert 0 <= value <= width
    stats = ev.SparsityStats(width, [("all", slice(0, width))])
    stats.add(codes)
    r = stats.result()
    assert r["l0"] == pytest.approx(value)
    assert 0 <= r["dead_fraction"] <= 1 and 0 <= r["dense_fraction"] <= 1
