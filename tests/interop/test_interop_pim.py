"""mgmbus's pim plugin beside FRR's pimd (issue 12's interop tests 1 and 2).

1. Adjacency both ways on a shared link, and the DR both sides elect: by priority, then by address.
2. mgmbus as last-hop router, FRR as RP and first-hop router: a receiver behind mgmbus gets the
   source's packets through FRR; after its leave, our prune takes the join out of FRR's state::

     src 10.81.0.2 -- 10.81.0.1 FRR (RP 10.80.0.1) 10.80.0.1 -- 10.80.0.2 r1 mgmbus r2 10.82.0.1 -- host

FRR's pimd needs the multicast routing socket, so these run where the kernel has it (User-mode
Linux on a kernel without it); mgmbus runs `mgm up` with igmp, pim and the MRT forwarder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from frr import FrrRouter, pimd_config
from mgm_testplugins.processes import toml_config
from netns import Namespace, NsProcess, Topology, send_udp, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.mroute]

WAIT = 40.0
"""Seconds (times MGM_TEST_TIME_SCALE): FRR's first Hello comes up to 5 s after its start."""
FAST_PIM = {"hello_period": 2, "triggered_hello_delay": 0.5, "join_prune_interval": 5}
G, PORT = "239.80.1.1", 5080


def start_mgm(ns: Namespace, workdir: Path, plugins: dict[str, Any], name: str) -> NsProcess:
    """`mgm up` in `ns` with `plugins`; returns once pim runs (and igmp, when configured)."""
    manager = {"api": f"ipc://{workdir}/{name}-api", "events": f"ipc://{workdir}/{name}-events",
               "log_level": "debug"}  # fmt: skip
    config = workdir / f"{name}.toml"
    config.write_text(toml_config(plugins, manager))
    up = ns.mgm("up", "--config", str(config), name=name)

    def running() -> bool:
        assert up.alive(), up.log()
        log = up.log()
        return "pim: running on" in log and ("igmp" not in plugins or "igmp: running IGMPv" in log)

    wait_until(running, WAIT, "mgm up with pim running")
    return up


def frr_dr(frr: FrrRouter, ifname: str) -> str | None:
    """The DR FRR elected on `ifname` (`drAddress` of the interface's detailed view)."""
    shown = frr.json(f"show ip pim interface {ifname}")
    row = shown.get(ifname, shown)
    found = row.get("drAddress") if isinstance(row, dict) else None
    return None if found is None else str(found)


@pytest.mark.parametrize(("ours", "theirs", "dr"), [(10, 1, "mgmbus"), (1, 1, "frr")])
def test_adjacency_both_ways_and_the_same_dr_on_both_sides(
    topology: Topology, frr_router: Callable[..., FrrRouter], ours: int, theirs: int, dr: str
) -> None:
    """Equal priorities: the higher address (FRR's 10.83.0.2) wins; our priority 10: we win."""
    us_ns, frr_ns = topology.namespaces("rtr", "frr")
    link = topology.link(us_ns, frr_ns, "10.83.0.1/24", "10.83.0.2/24")
    frr = frr_router(frr_ns, pimd_config(pim=[link.b_if], extra="", interface_extra=f"ip pim drpriority {theirs}"))
    up = start_mgm(us_ns, topology.workdir, {"pim": {"interfaces": [link.a_if], "dr_priority": ours, **FAST_PIM}},
                   "mgm")  # fmt: skip
    wait_until(lambda: "10.83.0.1" in frr.pim_neighbors(link.b_if), WAIT, "FRR to list us as a neighbour")
    wait_until(lambda: "neighbour 10.83.0.2 up" in up.log(), WAIT, "us to list FRR as a neighbour")
    want = "10.83.0.1" if dr == "mgmbus" else "10.83.0.2"
    wait_until(lambda: frr_dr(frr, link.b_if) == want, WAIT, f"FRR to elect {want}")
    ours_says = [line for line in up.log().splitlines() if "the DR is now" in line]
    assert ours_says and want in ours_says[-1], up.log()


def test_mgmbus_as_last_hop_router_behind_frr_as_rp_and_first_hop(
    topology: Topology, frr_router: Callable[..., FrrRouter]
) -> None:
    src, frr_ns, rtr, host = topology.namespaces("src", "frr", "rtr", "host")
    source_link = topology.link(src, frr_ns, "10.81.0.2/24", "10.81.0.1/24")
    transit = topology.link(frr_ns, rtr, "10.80.0.1/24", "10.80.0.2/24")
    down = topology.link(rtr, host, "10.82.0.1/24", "10.82.0.2/24")
    src.ip("route", "add", "default", "via", "10.81.0.1")
    src.multicast_route(source_link.a_if)
    host.ip("route", "add", "default", "via", "10.82.0.1")
    rtr.ip("route", "add", "10.81.0.0/24", "via", "10.80.0.1")
    rtr.sysctl("net.ipv4.conf.all.rp_filter", 0)
    rp = "10.80.0.1"
    frr = frr_router(frr_ns, pimd_config(pim=[source_link.b_if, transit.a_if], rp=rp, rp_range="239.0.0.0/8"))
    plugins = {
        "igmp": {"interfaces": [down.a_if], "query_response_interval": 1, "last_member_query_interval": 0.2},
        "pim": {"interfaces": [transit.b_if], "rp": [{"address": rp, "groups": ["239.0.0.0/8"]}], **FAST_PIM},
        "forwarder": {"backend": "mrt", "counters_interval": 1},
    }
    up = start_mgm(rtr, topology.workdir, plugins, "mgm")
    wait_until(lambda: "10.80.0.2" in frr.pim_neighbors(transit.a_if), WAIT, "FRR to list us as a neighbour")

    receiver = host.receiver(G, PORT)
    receiver.wait_joined()
    wait_until(lambda: G in json.dumps(frr.json("show ip pim join")), WAIT, "our (*,G) join in FRR's join state")
    sender = src.spawn(send_udp, G, PORT, 100_000, interval=0.02, source="10.81.0.2", name="send")
    receiver.wait_count(10, WAIT)
    assert sender.alive()
    assert f"(10.81.0.2,{G}) wanted (spt)" in up.log(), up.log()  # the switch to the shortest-path tree

    receiver.leave()
    wait_until(lambda: G not in json.dumps(frr.json("show ip pim join")), WAIT,
               "FRR's join state for G to go after our prune")  # fmt: skip
