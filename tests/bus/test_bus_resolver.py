"""The kernel resolver (`mgm manager`'s default on Linux): the interface towards a source is the unicast route's.

The resolver alone, inside a namespace and inside a running asyncio loop
(the manager's situation), and a live `mgm manager` with a real route: the
MFE comes in on the route's interface and an (S,G) join alerts its owner.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import closing
from typing import Any

import pytest
from netns import Topology, wait_until

from mgm.core.runtime.routes import KernelRoutes
from mgm.plugins.testing import BusClient

ANY = "0.0.0.0"
S, G = "192.0.2.10", "239.1.2.3"
IGMP, PIM = 10, 20


def resolve_all(sources: list[str]) -> list[Any]:
    """Run inside a namespace: the resolver's answer for each source, as JSON values."""
    return [None if i is None else [i.if_index, i.next_hop] for i in map(KernelRoutes(), sources)]


def routes_of(destinations: list[str]) -> list[Any]:
    """Run inside a namespace: `KernelRoutes.route` of each destination (interface and gateway), as JSON."""
    return [None if r is None else [r.if_index, r.gateway] for r in map(KernelRoutes().route, destinations)]


def resolve_all_in_a_loop(sources: list[str]) -> list[Any]:
    """resolve_all from a callback of a running asyncio loop, where the manager's core calls it."""

    async def main() -> list[Any]:
        return resolve_all(sources)

    return asyncio.run(main())


@pytest.mark.netns
def test_the_kernel_resolver_follows_the_unicast_routes(topology: Topology) -> None:
    rtr, left, right = topology.namespaces("rtr", "left", "right")
    up = topology.link(rtr, left, "10.1.0.1/24", "10.1.0.2/24")
    down = topology.link(rtr, right, "10.2.0.1/24", "10.2.0.2/24")
    rtr.ip("route", "add", "10.9.0.0/16", "via", "10.2.0.2")
    for kind, prefix in (("blackhole", "10.7.1.0/24"), ("prohibit", "10.7.2.0/24"), ("unreachable", "10.7.3.0/24")):
        rtr.ip("route", "add", kind, prefix)
    sources = ["10.1.0.5", "10.9.1.1", "192.0.2.1", "10.1.0.1", "10.7.1.1", "10.7.2.1", "10.7.3.1"]
    want = [
        [up.if_index(rtr), ANY],  # on-link
        [down.if_index(rtr), ANY],  # via a gateway
        None,  # no route: the core falls back to the arrival interface
        None,  # our own address (a local route) is no interface towards a source
        None, None, None,  # blackhole, prohibit, unreachable: no interface either
    ]  # fmt: skip
    assert rtr.call(resolve_all, sources) == want
    assert rtr.call(resolve_all_in_a_loop, sources) == want
    assert rtr.call(routes_of, sources[:3]) == [[up.if_index(rtr), None], [down.if_index(rtr), "10.2.0.2"], None]


@pytest.mark.netns
def test_a_running_manager_takes_the_route_towards_s(topology: Topology) -> None:
    """new_packet arriving on r1 for a source routed out of r2 comes in on r2; an (S,G) join alerts r2's owner."""
    rtr, left, right = topology.namespaces("rtr", "left", "right")
    arrival = topology.link(rtr, left, "10.1.0.1/24", "10.1.0.2/24").if_index(rtr)
    towards = topology.link(rtr, right, "10.2.0.1/24", "10.2.0.2/24").if_index(rtr)
    rtr.ip("route", "add", "192.0.2.0/24", "via", "10.2.0.2")
    api, events = f"ipc://{topology.workdir}/api", f"ipc://{topology.workdir}/events"
    manager = rtr.mgm("manager", "--api", api, "--events", events, "--log-level", "debug")  # the default: kernel
    wait_until(lambda: (topology.workdir / "api").exists() or not manager.alive(), 15, "the manager's api socket")
    assert manager.alive(), manager.log()

    with closing(BusClient(api, events)) as pim, closing(BusClient(api, events)) as igmp:
        registration = {"protocol_id": PIM, "component_id": 1, "questions": []}
        pim.handle = pim.request("register_protocol", registration)["handle"]
        for if_index in (arrival, towards):
            pim.request("take_interface_ownership", {"handle": pim.handle, "if_index": if_index, "next_hop": ANY})
        igmp.register(IGMP, 1)
        igmp.request("take_interface_ownership", {"handle": igmp.handle, "if_index": arrival, "next_hop": ANY})
        sg = {"source": S, "source_mask": "255.255.255.255", "group": G, "group_mask": "255.255.255.255"}
        igmp.request("add_group_membership", {"handle": igmp.handle, **sg, "if_index": arrival, "next_hop": ANY,
                                              "flags": 1})  # fmt: skip
        alert = pim.wait_for_event(lambda e: e.get("type") == "join_alert", 5)
        assert [alert[k] for k in ("topic", "source", "group", "member_update")] == [f"proto/{PIM}/1", S, G, True]
        mfe = pim.request("new_packet", {"handle": pim.handle, "source": S, "group": G, "if_index": arrival,
                                         "next_hop": ANY})["mfe"]  # fmt: skip
        assert (mfe["in_if_index"], mfe["in_protocol_id"]) == (towards, PIM)
        assert [o["if_index"] for o in mfe["oil"]] == [arrival]
    assert "route lookup towards" not in manager.log()


def test_a_failing_lookup_is_a_warning_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """Not "no route" (an answer, at debug) but a lookup that failed: the user must see it, without a flood."""
    now = [0.0]
    resolve = KernelRoutes(timeout=0.0, clock=lambda: now[0])  # no time to wait: every lookup times out
    with caplog.at_level(logging.DEBUG, logger="mgm.core.runtime.routes"):
        for at, source in ((0.0, "192.0.2.1"), (30.0, "192.0.2.2"), (61.0, "192.0.2.3")):
            now[0] = at
            assert resolve(source) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("route lookup towards 192.0.2.1 failed (TimeoutError: ")
    assert "towards 192.0.2.3" in warnings[1] and "1 more since the last such warning" in warnings[1]
    resolve.timeout = 1.0
    assert resolve("127.0.0.1") is None  # local: no interface, but an answer, on a fresh socket
    assert resolve._sock is not None  # a failure would have closed it
    resolve.close()
