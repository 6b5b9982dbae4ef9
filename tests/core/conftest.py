"""Fixtures of the core's rule tests; the harness itself is in rules_harness.py."""

from __future__ import annotations

import pytest
from rules_harness import PIM, Core, Proto


@pytest.fixture
def core() -> Core:
    """A fresh Mgm at t=100 s whose resolver reads `core.routes`."""
    return Core()


@pytest.fixture
def pim(core: Core) -> Proto:
    """A routing protocol (PIM's id) owning interface 1."""
    p = core.register(PIM)
    p.take(1)
    return p
