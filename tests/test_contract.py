"""The architecture contract (saezoo/contract.py) on every built-in architecture; plugin
authors run the same checks on theirs with ``saezoo check ARCH`` (tests/test_check.py)."""

from __future__ import annotations

import pytest

from saezoo import contract
from saezoo.plugins import get_plugins


@pytest.mark.parametrize("check", sorted(contract.CHECKS))
@pytest.mark.parametrize("name", get_plugins().architectures.names())
def test_contract(name, check):
    try:
        contract.CHECKS[check](name)
    except contract.Skip as exc:
        pytest.skip(str(exc))
