"""The FRR harness itself (frr.py), which the interop tests reuse: not a test of mgmbus.

Two FRR routers (zebra + pimd) in two namespaces on one veth link must become PIM
neighbors of each other::

    ra r1 10.0.0.1/24 ---- r1 10.0.0.2/24 rb        (static RP 10.0.0.1, hello every 5 s)

If this fails, the interop tests cannot work either: look here first.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from frr import FrrRouter, pimd_config
from netns import Topology, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.mroute]  # pimd holds MRT_INIT

RP = "10.0.0.1"
ADJACENCY_TIMEOUT = 30.0
"""Seconds (times MGM_TEST_TIME_SCALE): FRR sends its first hello up to 5 s after start (3.7-10 s in UML)."""


def test_two_frr_routers_become_pim_neighbors(topology: Topology, frr_router: Callable[..., FrrRouter]) -> None:
    ns_a, ns_b = topology.namespaces("rtra", "rtrb")
    link = topology.link(ns_a, ns_b, f"{RP}/24", "10.0.0.2/24")
    assert link.a_ip is not None and link.b_ip is not None
    config = pimd_config(pim=[link.a_if], igmp=[link.a_if], rp=RP)
    a = frr_router(ns_a, config)
    b = frr_router(ns_b, pimd_config(pim=[link.b_if], rp=RP))

    wait_until(lambda: link.b_ip in a.pim_neighbors(link.a_if), ADJACENCY_TIMEOUT, f"{a.name} to list {link.b_ip}")
    wait_until(lambda: link.a_ip in b.pim_neighbors(link.b_if), ADJACENCY_TIMEOUT, f"{b.name} to list {link.a_ip}")

    # what interop tests read: text and JSON from both daemons, and the configuration taken as written
    assert RP in b.vty("show ip pim rp-info")
    assert link.a_if in a.json("show ip igmp interface")
    assert a.alive() and b.alive()
