"""Fixtures of the interop tests: the namespace `topology` (tests/netns.py) and `frr_router` (frr.py).

``frr_router(ns, config, **options)`` starts an `FrrRouter` (zebra, then pimd) inside a
namespace of the test's topology and returns it once both daemons answer on their vty
sockets.  Its daemons are processes of the topology: stopped, and their directories
deleted, when the topology closes, also when the test fails (their logs are printed then).
Without FRR installed the test is skipped, or fails under CI=true.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from frr import FrrRouter, require_frr
from netns import Namespace, Topology, topology

__all__ = ["frr_router", "topology"]


@pytest.fixture
def frr_router(topology: Topology) -> Callable[..., FrrRouter]:
    require_frr()

    def start(ns: Namespace, config: str = "", **options: Any) -> FrrRouter:
        assert ns.topology is topology, "an FRR router goes into a namespace of this test's topology"
        return FrrRouter(ns, config, **options).start()

    return start
