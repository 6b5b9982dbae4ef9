"""`mgm manager --resolver kernel`: the interface towards a source comes from the kernel's routing table."""

from __future__ import annotations

from typing import Any

import pytest
from netns import Topology

from mgm.core.mgmd import kernel_resolver


def resolve_all(sources: list[str]) -> list[Any]:
    """Run inside a namespace: the resolver's answer for each source, as JSON values."""
    resolve = kernel_resolver()
    answers = (resolve(s) for s in sources)
    return [None if i is None else [i.if_index, i.next_hop] for i in answers]


@pytest.mark.netns
def test_the_kernel_resolver_follows_the_unicast_routes(topology: Topology) -> None:
    rtr, left, right = topology.namespaces("rtr", "left", "right")
    up = topology.link(rtr, left, "10.1.0.1/24", "10.1.0.2/24")
    down = topology.link(rtr, right, "10.2.0.1/24", "10.2.0.2/24")
    rtr.ip("route", "add", "10.9.0.0/16", "via", "10.2.0.2")
    got = rtr.call(resolve_all, ["10.1.0.5", "10.9.1.1", "192.0.2.1", "10.1.0.1"])
    assert got == [
        [up.if_index(rtr), "0.0.0.0"],  # on-link
        [down.if_index(rtr), "0.0.0.0"],  # via a gateway
        None,  # no route: the core falls back to the arrival interface
        None,  # our own address (a local route) is no interface towards a source
    ]
