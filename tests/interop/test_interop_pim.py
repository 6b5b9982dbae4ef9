"""mgmbus's pim plugin beside FRR's pimd (issue 12's interop tests 1 to 8).

1. Adjacency both ways on a shared link, and the DR both sides elect: by priority, then by address.
2. mgmbus as last-hop router, FRR as RP and first-hop router: a receiver behind mgmbus gets the
   source's packets through FRR; after its leave, our prune takes the join out of FRR's state::

     src 10.81.0.2 -- 10.81.0.1 FRR (RP 10.80.0.1) 10.80.0.1 -- 10.80.0.2 r1 mgmbus r2 10.82.0.1 -- host

3. mgmbus as RP with the source on its own link, FRR as last-hop router:
   FRR's (*,G) join makes mgmbus forward down the transit link, FRR switches to the shortest-path
   tree through us, and after the leave FRR's prunes make the transit link quiet::

     src 10.84.1.2 -- 10.84.1.1 r1 mgmbus (RP 10.84.0.1) r2 10.84.0.1 -- 10.84.0.2 FRR 10.84.2.1 -- host

   And with the source behind an FRR that registers to us (below): our join towards the source brings its
   packets natively to a receiver behind a second FRR, and our Register-Stop ends the Registers.
4. mgmbus as the source's first-hop DR, FRR as RP (below): the first packets reach the receiver inside our
   Registers, FRR joins the shortest-path tree through us, and its Register-Stop ends the Registers.
5. Assert with FRR on a LAN where both forward (below): exactly one keeps forwarding, the higher address.
6. Two protocols on mgmbus: static routes own a second downstream link; their receiver alone makes PIM
   join towards FRR (the manager's join alert), beside a receiver behind IGMP (topology of 2, plus
   r3 10.86.0.1 -- host2).
7. kill -9 of the PIM plugin: `mgm up` starts it again, the adjacency and the flow come back, and after
   the leave FRR keeps no stale join.
8. IGMP querier election with FRR (below).

FRR's pimd needs the multicast routing socket, so these run where the kernel has it (User-mode
Linux on a kernel without it); mgmbus runs `mgm up` with igmp, pim and the MRT forwarder.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from frr import FrrRouter, pimd_config
from kernel_view import KernelView
from mgm_testplugins.processes import toml_config
from netns import Namespace, NsProcess, Topology, send_udp, wait_until

from mgm.plugins.testing import TIME_SCALE, scaled

pytestmark = [pytest.mark.netns, pytest.mark.mroute]

WAIT = 40.0
"""Seconds (times MGM_TEST_TIME_SCALE): FRR's first Hello comes up to 5 s after its start."""
FAST_PIM = {"hello_period": 2, "triggered_hello_delay": 0.5, "join_prune_interval": 5}
G, PORT = "239.80.1.1", 5080


def start_mgm(ns: Namespace, workdir: Path, plugins: dict[str, Any], name: str) -> NsProcess:
    """`mgm up` in `ns` with `plugins`; returns once pim and igmp run, those of them configured."""
    manager = {"api": f"ipc://{workdir}/{name}-api", "events": f"ipc://{workdir}/{name}-events",
               "log_level": "debug"}  # fmt: skip
    config = workdir / f"{name}.toml"
    config.write_text(toml_config(plugins, manager))
    up = ns.mgm("up", "--config", str(config), name=name)

    def running() -> bool:
        assert up.alive(), up.log()
        log = up.log()
        return all(started in log for name, started in (("pim", "pim: running on"), ("igmp", "igmp: running IGMPv"))
                   if name in plugins)  # fmt: skip

    wait_until(running, WAIT, f"mgm up with {', '.join(plugins)} running")
    return up


def routed_hosts(src: Namespace, src_if: str, src_gateway: str, host: Namespace, host_gateway: str) -> None:
    """The source and the receiving host route through their routers; the source sends multicast out of `src_if`."""
    src.ip("route", "add", "default", "via", src_gateway)
    src.multicast_route(src_if)
    host.ip("route", "add", "default", "via", host_gateway)


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


def last_hop_behind_frr(topology: Topology, frr_router: Callable[..., FrrRouter],
                        more: Callable[[Namespace], dict[str, Any]] = lambda rtr: {},
                        **pim: Any) -> tuple[Namespace, NsProcess, FrrRouter]:  # fmt: skip
    """Test 2's topology: source -- FRR (RP, first hop) -- mgmbus -- host, the source sending, `mgm up` running
    igmp on the host's link, pim (settings `pim` over FAST_PIM) on the transit link, adjacent to FRR, and the
    plugins `more(router namespace)` returns.  Returns (host namespace, mgm up, FRR)."""
    src, frr_ns, rtr, host = topology.namespaces("src", "frr", "rtr", "host")
    source_link = topology.link(src, frr_ns, "10.81.0.2/24", "10.81.0.1/24")
    transit = topology.link(frr_ns, rtr, "10.80.0.1/24", "10.80.0.2/24")
    down = topology.link(rtr, host, "10.82.0.1/24", "10.82.0.2/24")
    routed_hosts(src, source_link.a_if, "10.81.0.1", host, "10.82.0.1")
    rtr.ip("route", "add", "10.81.0.0/24", "via", "10.80.0.1")
    rtr.sysctl("net.ipv4.conf.all.rp_filter", 0)
    rp = "10.80.0.1"
    frr = frr_router(frr_ns, pimd_config(pim=[source_link.b_if, transit.a_if], rp=rp, rp_range="239.0.0.0/8"))
    plugins = {
        "igmp": {"interfaces": [down.a_if], "query_response_interval": 1, "last_member_query_interval": 0.2},
        "pim": {"interfaces": [transit.b_if], "rp": [{"address": rp, "groups": ["239.0.0.0/8"]}], **FAST_PIM,
                **pim},
        "forwarder": {"backend": "mrt", "counters_interval": 1},
        **more(rtr),
    }  # fmt: skip
    up = start_mgm(rtr, topology.workdir, plugins, "mgm")
    wait_until(lambda: "10.80.0.2" in frr.pim_neighbors(transit.a_if), WAIT, "FRR to list us as a neighbour")
    src.spawn(send_udp, G, PORT, 1_000_000, interval=0.02, source="10.81.0.2", name="send")
    return host, up, frr


def frr_joined(frr: FrrRouter, group: str = G) -> bool:
    """Whether FRR holds a downstream join of `group` on any interface: an entry of ``show ip pim join`` in
    another state than NOINFO (pruned entries linger there as NOINFO until their timers run out; FRR 8.4
    names the state ``channelJoinName``)."""
    shown = frr.json("show ip pim join")
    return any(isinstance(entry, dict) and entry.get("channelJoinName", entry.get("state", "JOIN")) != "NOINFO"
               for groups in shown.values() if isinstance(groups, dict)
               for sources in [groups.get(group)] if isinstance(sources, dict)
               for entry in sources.values())  # fmt: skip


def test_mgmbus_as_last_hop_router_behind_frr_as_rp_and_first_hop(
    topology: Topology, frr_router: Callable[..., FrrRouter]
) -> None:
    host, up, frr = last_hop_behind_frr(topology, frr_router)
    receiver = host.receiver(G, PORT)
    receiver.wait_joined()
    wait_until(lambda: frr_joined(frr), WAIT, "our (*,G) join in FRR's join state")
    receiver.wait_count(10, WAIT)
    assert f"(10.81.0.2,{G}) wanted (spt)" in up.log(), up.log()  # the switch to the shortest-path tree

    receiver.leave()
    wait_until(lambda: not frr_joined(frr), WAIT, "FRR's join state for G to go after our prune")


def start_as_rp(rtr: Namespace, workdir: Path, interfaces: list[str], rp: str) -> NsProcess:
    """`mgm up` with pim on `interfaces` as the RP (`rp`, an address of ours) of 239.0.0.0/8, and the MRT forwarder."""
    plugins = {
        "pim": {"interfaces": interfaces, "rp": [{"address": rp, "groups": ["239.0.0.0/8"]}], **FAST_PIM},
        "forwarder": {"backend": "mrt", "counters_interval": 1},
    }
    return start_mgm(rtr, workdir, plugins, "mgm")


def pim_status(workdir: Path, name: str) -> dict[str, Any]:
    """The pim plugin's status from `mgm show pim --json` against the `mgm up` that `start_mgm` named `name`."""
    shown = subprocess.run([sys.executable, "-m", "mgm.core.cli", "show", "pim", "--json", "--api",
                            f"ipc://{workdir}/{name}-api", "--events", f"ipc://{workdir}/{name}-events"],
                           capture_output=True, text=True, timeout=scaled(30), check=True)  # fmt: skip
    return dict(json.loads(shown.stdout)["entries"][0]["status"])


def rp_once_adjacent(frr: FrrRouter, ifname: str, ours: str, rp: str) -> None:
    """FRR takes `rp` for 239.0.0.0/8 once it lists us (`ours`) on `ifname`: pimd 8.4 refuses an RP it has no
    route to yet."""
    wait_until(lambda: ours in frr.pim_neighbors(ifname), WAIT, f"FRR to list {ours} as a neighbour")
    frr.configure(f"ip pim rp {rp} 239.0.0.0/8")


def test_mgmbus_as_rp_with_frr_as_last_hop_router(topology: Topology, frr_router: Callable[..., FrrRouter]) -> None:
    src, rtr, frr_ns, host = topology.namespaces("src", "rtr", "frr", "host")
    source_link = topology.link(src, rtr, "10.84.1.2/24", "10.84.1.1/24")
    transit = topology.link(rtr, frr_ns, "10.84.0.1/24", "10.84.0.2/24")
    down = topology.link(frr_ns, host, "10.84.2.1/24", "10.84.2.2/24")
    routed_hosts(src, source_link.a_if, "10.84.1.1", host, "10.84.2.1")
    frr_ns.ip("route", "add", "10.84.1.0/24", "via", "10.84.0.1")  # zebra takes it from the kernel: FRR's RPF
    rtr.sysctl("net.ipv4.conf.all.rp_filter", 0)
    rp, group = "10.84.0.1", "239.84.1.1"
    frr = frr_router(frr_ns, pimd_config(pim=[transit.b_if, down.a_if], igmp=[down.a_if]))
    up = start_as_rp(rtr, topology.workdir, [source_link.b_if, transit.a_if], rp)
    rp_once_adjacent(frr, transit.b_if, "10.84.0.1", rp)

    receiver = host.receiver(group, PORT)
    receiver.wait_joined()
    try:
        wait_until(lambda: f"(*,{group}) joined downstream" in up.log(), WAIT, "FRR's (*,G) join at us, the RP")
    except TimeoutError:
        print(frr.vty("show ip igmp groups", "show ip pim rp-info", "show ip pim upstream", "show ip pim interface"))
        raise
    sender = src.spawn(send_udp, group, PORT, 100_000, interval=0.02, source="10.84.1.2", name="send")
    receiver.wait_count(10, WAIT)
    assert sender.alive()
    wait_until(lambda: f"(10.84.1.2,{group}) joined downstream" in up.log(), WAIT,
               "FRR's (S,G) join: its switch to the shortest-path tree, through us")  # fmt: skip

    receiver.leave()
    for entry in ("*", "10.84.1.2"):
        wait_until(lambda e=entry: f"({e},{group}) pruned downstream" in up.log(), WAIT, f"FRR's prune of ({entry},G)")
    wait_until(lambda: not KernelView(rtr, "mrt").oil("10.84.1.2", group), WAIT, "our entry's outgoing list to empty")
    kernel = KernelView(rtr, "mrt")
    quiet_from = (receiver.count(), kernel.out_packets().get(transit.a_if, 0))
    time.sleep(scaled(2.0))  # 100 datagrams at the sender's pace, had we still forwarded
    assert (receiver.count(), kernel.out_packets().get(transit.a_if, 0)) == quiet_from, "G still crosses the link"


def test_mgmbus_as_rp_joins_towards_a_source_frr_registers_and_stops_its_registers(
    topology: Topology, frr_router: Callable[..., FrrRouter]
) -> None:
    """Interop test 3 whole: the source's DR is FRR, which registers to us; the receiver is behind another FRR::

         src 10.88.1.2 -- 10.88.1.1 FRR1 10.88.0.2 -- 10.88.0.1 mgmbus (RP) 10.88.3.1 -- 10.88.3.2 FRR2 -- host

    What FRR1's Registers carry we forward down to FRR2; our (S,G) join towards the source brings the flow
    natively, and once it comes, our Register-Stop ends FRR1's registering."""
    src, frr1_ns, rtr, frr2_ns, host = topology.namespaces("src", "frr1", "rtr", "frr2", "host")
    source_link = topology.link(src, frr1_ns, "10.88.1.2/24", "10.88.1.1/24")
    west = topology.link(frr1_ns, rtr, "10.88.0.2/24", "10.88.0.1/24")
    east = topology.link(rtr, frr2_ns, "10.88.3.1/24", "10.88.3.2/24")
    down = topology.link(frr2_ns, host, "10.88.4.1/24", "10.88.4.2/24")
    routed_hosts(src, source_link.a_if, "10.88.1.1", host, "10.88.4.1")
    rtr.ip("route", "add", "10.88.1.0/24", "via", "10.88.0.2")
    rtr.ip("route", "add", "10.88.4.0/24", "via", "10.88.3.2")
    for prefix in ("10.88.0.0/24", "10.88.1.0/24"):  # not a default route: FRR resolves no RP or RPF over one
        frr2_ns.ip("route", "add", prefix, "via", "10.88.3.1")
    rtr.sysctl("net.ipv4.conf.all.rp_filter", 0)
    rp, group = "10.88.0.1", "239.88.1.1"
    frr1 = frr_router(frr1_ns, pimd_config(pim=[source_link.b_if, west.a_if]))
    frr2 = frr_router(frr2_ns, pimd_config(pim=[east.b_if, down.a_if], igmp=[down.a_if]))
    up = start_as_rp(rtr, topology.workdir, [west.b_if, east.a_if], rp)
    rp_once_adjacent(frr1, west.a_if, "10.88.0.1", rp)
    rp_once_adjacent(frr2, east.b_if, "10.88.3.1", rp)

    receiver = host.receiver(group, PORT)
    receiver.wait_joined()
    try:
        wait_until(lambda: f"(*,{group}) joined downstream" in up.log(), WAIT, "FRR2's (*,G) join at us, the RP")
        src.spawn(send_udp, group, PORT, 100_000, interval=0.02, source="10.88.1.2", name="send")
        # FRR registers from its address towards the source (10.88.1.1), not the one towards us
        wait_until(lambda: f"(10.88.1.2,{group}) registered by 10.88.1.1" in up.log(), WAIT, "FRR1's Register")
        receiver.wait_count(10, WAIT)
        wait_until(lambda: "RegP" in frr1.vty("show ip pim upstream"), WAIT,
                   "our Register-Stop to put FRR1's register state in prune (RegP)")  # fmt: skip
        counters = pim_status(topology.workdir, "mgm")["counters"]
        assert counters.get("register_relayed", 0) >= 1, counters  # the first packets went down in Registers
    except TimeoutError:
        print(frr1.vty("show ip pim upstream", "show ip pim join", "show ip pim rp-info"))
        print(frr2.vty("show ip pim upstream", "show ip pim rp-info", "show ip igmp groups", "show ip pim rpf"))
        raise


def test_mgmbus_as_first_hop_dr_registers_to_frr_as_rp_until_the_shortest_path_tree_forms(
    topology: Topology, frr_router: Callable[..., FrrRouter]
) -> None:
    """Interop test 4: the source's DR is mgmbus, the RP is FRR, the receiver is behind FRR::

         src 10.89.1.2 -- 10.89.1.1 mgmbus (DR) 10.89.0.1 -- 10.89.0.2 FRR (RP) 10.89.2.1 -- 10.89.2.2 host

    Our Registers carry the source's packets to FRR, which decapsulates them to the receiver and joins
    (S,G) towards the source through us; once the flow comes natively, FRR's Register-Stop ends our
    Registers and the receiver keeps getting the flow, now on the shortest-path tree."""
    src, rtr, frr_ns, host = topology.namespaces("src", "rtr", "frr", "host")
    source_link = topology.link(src, rtr, "10.89.1.2/24", "10.89.1.1/24")
    transit = topology.link(rtr, frr_ns, "10.89.0.1/24", "10.89.0.2/24")
    down = topology.link(frr_ns, host, "10.89.2.1/24", "10.89.2.2/24")
    routed_hosts(src, source_link.a_if, "10.89.1.1", host, "10.89.2.1")
    frr_ns.ip("route", "add", "10.89.1.0/24", "via", "10.89.0.1")  # FRR's RPF towards the source: us
    for ns in (rtr, frr_ns):
        ns.sysctl("net.ipv4.conf.all.rp_filter", 0)
    source, group, rp = "10.89.1.2", "239.89.1.1", "10.89.0.2"
    frr = frr_router(frr_ns, pimd_config(pim=[transit.b_if, down.a_if], igmp=[down.a_if]))
    up = start_mgm(rtr, topology.workdir, {
        "pim": {"interfaces": [source_link.b_if, transit.a_if], "rp": [{"address": rp, "groups": ["239.0.0.0/8"]}],
                **FAST_PIM},
        "forwarder": {"backend": "mrt", "counters_interval": 1},
    }, "mgm")  # fmt: skip
    rp_once_adjacent(frr, transit.b_if, "10.89.0.1", rp)

    receiver = host.receiver(group, PORT)
    receiver.wait_joined()
    src.spawn(send_udp, group, PORT, 100_000, interval=0.02, source=source, name="send")
    try:
        wait_until(lambda: f"({source},{group}) registering to the RP {rp}" in up.log(), WAIT, "our Register state")
        receiver.wait_count(10, WAIT)
        wait_until(lambda: f"({source},{group}) joined downstream" in up.log(), WAIT,
                   "FRR's (S,G) join towards the source, through us")  # fmt: skip
        wait_until(lambda: f"({source},{group}) Register-Stop from {rp}" in up.log(), WAIT, "FRR's Register-Stop")
    except TimeoutError:
        print(frr.vty("show ip pim upstream", "show ip pim join", "show ip pim rp-info", "show ip mroute"))
        raise
    assert transit.a_if in (KernelView(rtr, "mrt").oil(source, group) or set()), "the flow does not leave natively"
    after_stop = receiver.count()
    receiver.wait_count(after_stop + 20, WAIT)  # natively now: no Register carries it


@pytest.mark.parametrize("winner", ["mgmbus", "frr"])
def test_assert_with_frr_on_a_lan_where_both_forward_leaves_one_forwarder_the_higher_address(
    topology: Topology, frr_router: Callable[..., FrrRouter], winner: str
) -> None:
    """Interop test 5: the source is on a LAN with both routers, the receiver on another LAN with both::

         src 10.90.1.2 --+-- 10.90.1.1 mgmbus 10.90.0.x --+-- host 10.90.0.100
                         +-- 10.90.1.3 FRR    10.90.0.y --+

    The host joins (S,G) of an SSM group (IGMPv3 INCLUDE): FRR, DR by priority on both LANs, forwards for it, and mgmbus
    forwards to its IGMP members whether DR or not.  Each sees the other's packets on its outgoing interface
    and asserts; the metrics tie (a connected source), so the higher address on the receivers' LAN wins
    (RFC 7761 4.6.3).  Both routers agree on the winner.  Where mgmbus loses, it stops, and the host then
    gets each datagram once.  Where FRR loses, it shows LOSER with our address as winner, but FRR 8.4 keeps
    forwarding for its own IGMP members (its loser waits for downstream routers' prunes, FRR issue 10595),
    so there the test checks the agreement and that we keep forwarding.  (An (S,G) join of an SSM group,
    because FRR 8.4 asserts only where it has (S,G) state on the LAN: a (*,G) member makes it forward, but
    neither Assert nor accept one.)"""
    ours, theirs = ("10.90.0.9", "10.90.0.2") if winner == "mgmbus" else ("10.90.0.2", "10.90.0.9")
    src, rtr, frr_ns, host = topology.namespaces("src", "rtr", "frr", "host")
    src_lan = topology.lan([(src, "10.90.1.2/24"), (rtr, "10.90.1.1/24"), (frr_ns, "10.90.1.3/24")], role="swa")
    rx_lan = topology.lan([(rtr, f"{ours}/24"), (frr_ns, f"{theirs}/24"), (host, "10.90.0.100/24")], role="swb")
    src.multicast_route(src_lan[0].a_if)
    host.multicast_route(rx_lan[2].a_if)
    source, group = "10.90.1.2", "232.90.1.1"  # SSM: FRR keeps (S,G) member state only in its SSM range
    frr = frr_router(frr_ns, pimd_config(pim=[src_lan[2].a_if, rx_lan[1].a_if], igmp=[rx_lan[1].a_if],
                                         interface_extra="ip pim drpriority 100"))  # fmt: skip
    up = start_mgm(rtr, topology.workdir, {
        "igmp": {"interfaces": [rx_lan[0].a_if], "query_response_interval": 1},
        "pim": {"interfaces": [src_lan[1].a_if, rx_lan[0].a_if], **FAST_PIM},
        "forwarder": {"backend": "mrt", "counters_interval": 1},
    }, "mgm")  # fmt: skip
    wait_until(lambda: ours in frr.pim_neighbors(rx_lan[1].a_if), WAIT, "FRR to list us as a neighbour on the LAN")

    receiver = host.receiver(group, PORT, source=source)
    receiver.wait_joined()
    src.spawn(send_udp, group, PORT, 100_000, interval=0.02, source=source, name="send")
    loser = f"Assert lost to {theirs}"
    try:
        if winner == "frr":
            wait_until(lambda: loser in up.log(), WAIT, "mgmbus to lose the Assert to FRR's higher address")
        else:
            wait_until(lambda: re.search(rf"\bLOSER +{re.escape(ours)}\b", frr.vty("show ip pim assert")), WAIT,
                       "FRR to lose the Assert to our higher address")  # fmt: skip
            assert loser not in up.log()
            won = [(rx_lan[0].a_if, "winner")]
            wait_until(lambda: [(a["interface"], a["state"]) for a in pim_status(topology.workdir, "mgm")["asserts"]]
                       == won, WAIT, "`mgm show pim` to show us as the Assert winner")  # fmt: skip
        time.sleep(scaled(1.0))  # what was in flight when the loser stopped
        settled = len(receiver.packets())
        receiver.wait_count(settled + 50, WAIT)
    except TimeoutError:
        print(frr.vty("show ip pim assert", "show ip pim interface", "show ip mroute", "show ip pim upstream"))
        status = pim_status(topology.workdir, "mgm")
        print("ours:", KernelView(rtr, "mrt").oil(source, group), status["asserts"], status["counters"])
        raise
    seqs = [p["seq"] for p in receiver.packets()[settled:]]
    if winner == "frr":
        assert len(seqs) == len(set(seqs)), "the host still gets datagrams twice: we forward after losing"
    assert pim_status(topology.workdir, "mgm")["counters"].get("assert_sent", 0) >= 1
    forwarding = rx_lan[0].a_if in (KernelView(rtr, "mrt").oil(source, group) or set())
    assert forwarding == (winner == "mgmbus"), KernelView(rtr, "mrt").oil(source, group)


def test_a_static_routes_receiver_makes_pim_join_beside_igmps(
    topology: Topology, frr_router: Callable[..., FrrRouter]
) -> None:
    """Interop test 6: static owns a second downstream link (and a dummy link its route comes `from`, which
    the manager ignores here: the flow's incoming interface is PIM's, whose RPF answer stands)."""
    host2 = topology.namespace("host2")

    def static(rtr: Namespace) -> dict[str, Any]:
        link = topology.link(rtr, host2, "10.86.0.1/24", "10.86.0.2/24")
        host2.ip("route", "add", "default", "via", "10.86.0.1")
        rtr.ip("link", "add", "st0", "type", "dummy")
        rtr.ip("link", "set", "st0", "up")
        route = {"group": G, "from": "st0", "to": [link.a_if]}
        return {"static": {"interfaces": ["st0", link.a_if], "routes": [route]}}

    host, up, frr = last_hop_behind_frr(topology, frr_router, static)
    behind_static = host2.receiver(G, PORT)  # its reports go nowhere: no IGMP on that link, the route is the member
    wait_until(lambda: f"(*,{G}) wanted (alert)" in up.log(), WAIT, "the manager's join alert to PIM")
    wait_until(lambda: frr_joined(frr), WAIT, "our (*,G) join, for static's receiver, in FRR's join state")
    behind_static.wait_count(10, WAIT)

    behind_igmp = host.receiver(G, PORT)
    behind_igmp.wait_joined()
    behind_igmp.wait_count(10, WAIT)
    behind_igmp.leave()
    still = behind_static.count()
    behind_static.wait_count(still + 10, WAIT)  # static's receiver keeps the join: the flow goes on
    assert frr_joined(frr)


def test_kill_9_of_pim_the_restart_brings_the_flow_back_and_frr_keeps_no_stale_join(
    topology: Topology, frr_router: Callable[..., FrrRouter]
) -> None:
    """Interop test 7.  The join/prune interval is 60 s (FRR holds our joins 210 s), so FRR's join state can
    end in the wait below only by our restarted plugin's prunes, never by expiry."""
    host, up, frr = last_hop_behind_frr(topology, frr_router, join_prune_interval=60)
    receiver = host.receiver(G, PORT)
    receiver.wait_joined()
    receiver.wait_count(10, WAIT)

    def starts() -> list[re.Match[str]]:
        return list(re.finditer(r"\bpim started \(pid (\d+)\)", up.log()))

    (first,) = starts()
    os.killpg(int(first[1]), signal.SIGKILL)
    wait_until(lambda: len(starts()) == 2, WAIT, "mgm up to start pim again")
    mark = starts()[1].end()
    wait_until(lambda: "neighbour 10.80.0.1 up" in up.log()[mark:], WAIT, "the adjacency with FRR again")
    counted = receiver.count()
    receiver.wait_count(counted + 10, WAIT)
    assert "(*,239.80.1.1) wanted" in up.log()[mark:], up.log()[mark:]

    receiver.leave()
    try:
        wait_until(lambda: not frr_joined(frr), 150.0 / TIME_SCALE,
                   "FRR's join state for G to go by our prunes, well within its 210 s holdtime")  # fmt: skip
    except TimeoutError:
        print(frr.vty("show ip pim join", "show ip pim upstream", "show ip pim neighbor"))
        raise


def frr_querier(frr: FrrRouter, ifname: str) -> str | None:
    """The IGMP querier FRR sees on `ifname`: its own address when it queries, else the other's."""
    shown = frr.json(f"show ip igmp interface {ifname}")
    row = shown.get(ifname, shown)
    if not isinstance(row, dict):
        return None
    if row.get("querier") == "local":
        return str(row.get("address", "local"))
    found = row.get("querierIp") or row.get("querierAddress")
    return None if found is None else str(found)


@pytest.mark.parametrize("lowest", ["mgmbus", "frr"])
def test_igmp_querier_election_with_frr_and_the_takeover_when_the_querier_stops(
    topology: Topology, frr_router: Callable[..., FrrRouter], lowest: str
) -> None:
    """Issue 12's interop test 8, our igmp plugin and FRR's IGMP on one LAN (no PIM): the lowest address
    queries, as both sides agree; when it stops, the other takes over once its other-querier-present
    interval (RFC 3376 8.5) runs out.  How long that takes is not asserted here: it is a timing."""
    us_ns, frr_ns = topology.namespaces("rtr", "frr")
    ours, theirs = ("10.85.0.1", "10.85.0.2") if lowest == "mgmbus" else ("10.85.0.2", "10.85.0.1")
    link = topology.link(us_ns, frr_ns, f"{ours}/24", f"{theirs}/24")
    frr = frr_router(frr_ns, pimd_config(pim=[link.b_if], igmp=[link.b_if]))  # queries every 10 s
    igmp = {"interfaces": [link.a_if], "query_interval": 5, "query_response_interval": 1}
    up = start_mgm(us_ns, topology.workdir, {"igmp": igmp}, "mgm")
    querier = min(ours, theirs, key=lambda a: int(a.rsplit(".", 1)[1]))
    if lowest == "mgmbus":
        wait_until(lambda: frr_querier(frr, link.b_if) == querier, WAIT, f"FRR to take {querier} as querier")
        up.popen.terminate()
        up.popen.wait(timeout=scaled(WAIT))
        wait_until(lambda: frr_querier(frr, link.b_if) == theirs, WAIT, "FRR to query once we are gone")
    else:
        wait_until(lambda: f"{querier} is querier" in up.log(), WAIT, "us to stop querying for FRR")
        frr.stop()
        wait_until(lambda: f"querier {querier} went quiet: we are querier again" in up.log(), WAIT, "our takeover")

