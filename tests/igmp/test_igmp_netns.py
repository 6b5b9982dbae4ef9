"""The igmp plugin for real: `mgm plugin igmp` in a router namespace, Linux hosts on the same link.

Topology: a bridge (multicast snooping off, so it floods like a hub) in a
namespace of its own, and one namespace per node with a veth into it.  The
manager runs in the test's namespace (ipc endpoints are files, which every
namespace sees).  Hosts join with ordinary sockets, so the namespace's
kernel sends the reports exactly as for any application; a sniffer on a
host records every IGMP message on the link.

Intervals are small (query interval 1 s, last member query interval
0.2 s) so a leave is noticed in well under a second; every wait is a poll
with a deadline, never a sleep.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mgm_testplugins.processes import ManagerProc, toml_config
from netns import Node, NsProcess, Receiver, Topology, seen, segment, sniff_igmp, wait_until

from mgm.plugins.igmp.packet import IPv4Header, Leave, Message, Query, Report

pytestmark = pytest.mark.netns

ANY = "0.0.0.0"
SUBNET = "10.77.0"
FAST = {
    "query_interval": 1,
    "query_response_interval": 0.5,
    "last_member_query_interval": 0.2,
    "last_member_query_count": 2,
    "startup_query_interval": 0.25,
    "startup_query_count": 2,
}
WAIT = 15.0


# --- helpers -----------------------------------------------------------------------------------


def router_and_host(topology: Topology) -> tuple[Node, Node]:
    nodes = segment(topology, SUBNET, rtr=1, hst=2)
    return nodes["rtr"], nodes["hst"]


def joined(host: Node, router: Node, manager: ManagerProc, group: str, port: int, what: str,
           source: str = ANY) -> tuple[Receiver, tuple[str, str, int]]:  # fmt: skip
    """`host` joins (`source`,`group`); the receiver and the membership, once the manager holds it (`what`)."""
    rx = host.ns.receiver(group, port, source=None if source == ANY else source)
    rx.wait_joined()
    wanted = (source, group, router.if_index)
    wait_memberships(manager, lambda m: wanted in m, what)
    return rx, wanted


def start_igmp(node: Node, manager: ManagerProc, workdir: Path, **table: Any) -> NsProcess:
    """`mgm plugin igmp` in `node`'s namespace (on its one link unless `interfaces` says); returns once it runs."""
    config = workdir / f"igmp-{node.ns.role}.toml"
    table.setdefault("interfaces", [node.ifname])
    config.write_text(toml_config({"igmp": {**FAST, **table}}))
    argv = [sys.executable, "-m", "mgm.core.cli", "plugin", "igmp", "--config", str(config),
            "--api", manager.api, "--events", manager.events, "--log-level", "debug"]  # fmt: skip
    proc = node.ns.popen(argv, name=f"igmp-{node.ns.role}")

    def running() -> bool:
        if not proc.alive():
            raise AssertionError(f"the igmp plugin exited {proc.popen.returncode}:\n{proc.log()}")
        return "igmp: running IGMPv" in proc.log()

    wait_until(running, WAIT, "the igmp plugin to start")
    return proc


def start_sniffer(node: Node) -> NsProcess:
    """A sniffer of every IGMP message on `node`'s link (the host's own reports on their way out too)."""
    proc = node.ns.spawn(sniff_igmp, node.ifname, name=f"sniff-{node.ns.role}")
    wait_until(lambda: '"ready"' in proc.log(), WAIT, "the sniffer to start")
    return proc


def messages(sniffer: NsProcess) -> list[Message]:
    return [message for _, message in seen(sniffer)]


def queries(sniffer: NsProcess, source: str | None = None, group: str | None = None) -> list[tuple[IPv4Header, Query]]:
    """(IP header, query) of each query on the link, from `source` and for `group` if given."""
    return [(h, m) for h, m in seen(sniffer) if isinstance(m, Query)
            and (source is None or h.source == source) and (group is None or m.group == group)]  # fmt: skip


def igmp_memberships(manager: ManagerProc) -> set[tuple[str, str, int]]:
    """(source, group, if_index) of every membership protocol 10 holds in the manager."""
    state = manager.request("sync", {"stream": "state"})["state"]
    return {(m["source"], m["group"], m["if_index"]) for m in state["memberships"] if m["protocol_id"] == 10}


def wait_memberships(manager: ManagerProc, check: Callable[[set[tuple[str, str, int]]], bool], what: str) -> None:
    wait_until(lambda: check(igmp_memberships(manager)), WAIT, what)


# --- tests ---------------------------------------------------------------------------------------------


def test_v3_join_and_leave_become_a_star_g_membership_and_its_deletion(
    manager: ManagerProc, ipc_dir: Path, topology: Topology
) -> None:
    router, host = router_and_host(topology)
    start_igmp(router, manager, ipc_dir)
    sniffer = start_sniffer(host)
    wait_until(lambda: queries(sniffer, router.address), WAIT, "a general query from the router")
    header, general = queries(sniffer, router.address)[0]
    assert (general.version, general.group, header.ttl, header.router_alert) == (3, ANY, 1, True)

    rx, wanted = joined(host, router, manager, "239.7.7.7", 5007, "(*,239.7.7.7) from the host's v3 report")

    rx.leave()
    wait_memberships(manager, lambda m: wanted not in m, "(*,239.7.7.7) deleted after the leave")
    specific = queries(sniffer, router.address, "239.7.7.7")
    assert len(specific) >= 2, "the last member queries (count 2) for the group"
    assert all(h.destination == "239.7.7.7" for h, _ in specific)


def test_v2_host_report_and_leave_with_a_v2_router(manager: ManagerProc, ipc_dir: Path, topology: Topology) -> None:
    router, host = router_and_host(topology)
    host.ns.sysctl(f"net.ipv4.conf.{host.ifname}.force_igmp_version", 2)
    start_igmp(router, manager, ipc_dir, version=2)
    sniffer = start_sniffer(host)
    wait_until(lambda: queries(sniffer, router.address), WAIT, "a general query from the router")
    assert queries(sniffer, router.address)[0][1].version == 2

    rx, wanted = joined(host, router, manager, "239.8.8.8", 5008, "(*,239.8.8.8) from the host's v2 report")
    assert Report(2, "239.8.8.8") in messages(sniffer), "the host spoke v2"

    rx.leave()
    wait_memberships(manager, lambda m: wanted not in m, "(*,239.8.8.8) deleted after the v2 leave")
    assert any(isinstance(m, Leave) for m in messages(sniffer)), "the host sent a v2 leave"
    assert len(queries(sniffer, router.address, "239.8.8.8")) >= 2


def test_v3_source_join_becomes_an_s_g_membership(manager: ManagerProc, ipc_dir: Path, topology: Topology) -> None:
    router, host = router_and_host(topology)
    start_igmp(router, manager, ipc_dir)
    source = "10.99.0.5"
    rx, wanted = joined(host, router, manager, "232.9.9.9", 5009,
                        f"({source},232.9.9.9) from the host's ALLOW/TO_IN record", source)
    assert (ANY, "232.9.9.9", router.if_index) not in igmp_memberships(manager), "INCLUDE mode: no (*,G)"

    sniffer = start_sniffer(host)
    rx.leave()
    wait_memberships(manager, lambda m: wanted not in m, f"({source},232.9.9.9) deleted after the BLOCK")
    assert any(source in q.sources for _, q in queries(sniffer, router.address, "232.9.9.9")), (
        "a group-and-source-specific query for the blocked source"
    )


def test_the_lower_address_wins_the_querier_election_and_the_other_takes_over_when_it_goes(
    manager: ManagerProc, start_manager: Callable[..., ManagerProc], ipc_dir: Path, topology: Topology
) -> None:
    nodes = segment(topology, SUBNET, rtr=5, rlow=3, hst=2)
    high, low, host = nodes["rtr"], nodes["rlow"], nodes["hst"]
    second_dir = ipc_dir / "second"  # the low router has a manager of its own, as on another machine
    second_dir.mkdir()
    second = start_manager(second_dir)
    sniffer = start_sniffer(host)
    high_igmp = start_igmp(high, manager, ipc_dir)
    wait_until(lambda: queries(sniffer, high.address), WAIT, "queries from the high router, alone on the link")
    low_igmp = start_igmp(low, second, second_dir)

    def settled() -> bool:
        """Three general queries in a row from the low router, none from the high one among them."""
        general = [h for h, q in queries(sniffer) if q.group == ANY]
        tail = general[-3:]
        return len(tail) == 3 and all(h.source == low.address for h in tail)

    wait_until(settled, WAIT, "the low address to be the only querier")
    assert "we stop querying" in high_igmp.log()
    before = len(queries(sniffer, high.address))

    low_igmp.stop()
    wait_until(lambda: len(queries(sniffer, high.address)) > before, WAIT,
               "the high router to query again once the other querier is gone")  # fmt: skip
    assert "we are querier again" in high_igmp.log()


def test_a_routing_protocol_taking_the_interface_learns_the_receivers_from_the_re_adds(
    manager: ManagerProc, ipc_dir: Path, start_plugin: Any, topology: Topology
) -> None:
    router, host = router_and_host(topology)
    igmp = start_igmp(router, manager, ipc_dir)
    rx, wanted = joined(host, router, manager, "239.6.6.6", 5006, "(*,239.6.6.6) before the routing protocol comes")

    routing = start_plugin("test-routing-a", {"protocol_id": 100, "component_id": 1})
    assert routing.control is not None
    routing.control.call("take", if_index=router.if_index)  # IGMP gets disable_igmp, then enable_igmp
    join = routing.control.wait_for_call("mgm_local_join", WAIT, group="239.6.6.6", source=ANY)
    assert join["interface"] == [router.if_index, ANY]
    assert "enabled: 1 membership(s) added again" in igmp.log()

    rx.leave()
    routing.control.wait_for_call("mgm_local_leave", WAIT, group="239.6.6.6", source=ANY)
    wait_memberships(manager, lambda m: wanted not in m, "(*,239.6.6.6) deleted after the leave")


def test_each_interface_gets_its_own_queries_and_memberships(
    manager: ManagerProc, ipc_dir: Path, topology: Topology
) -> None:
    router, host = router_and_host(topology)
    other = topology.namespace("h2")
    link = topology.link(router.ns, other, "10.78.0.1/24", "10.78.0.2/24")
    other.multicast_route(link.b_if)
    host2 = Node(other, link.b_if, "10.78.0.2")
    start_igmp(router, manager, ipc_dir, interfaces=[router.ifname, link.a_if])
    sniffers = {"hst": start_sniffer(host), "h2": start_sniffer(host2)}
    for name, sniffer in sniffers.items():
        wait_until(lambda s=sniffer: len(queries(s)) >= 2, WAIT, f"queries on the link of {name}")
    assert {h.source for h, _ in queries(sniffers["hst"])} == {router.address}
    assert {h.source for h, _ in queries(sniffers["h2"])} == {"10.78.0.1"}

    rx = host2.ns.receiver("239.5.5.5", 5005)
    rx.wait_joined()
    second_if = router.ns.if_index(link.a_if)
    wait_memberships(manager, lambda m: (ANY, "239.5.5.5", second_if) in m, "(*,239.5.5.5) on the second interface")
    assert (ANY, "239.5.5.5", router.if_index) not in igmp_memberships(manager)


def test_a_v1_host_is_tracked_by_queries_alone(manager: ManagerProc, ipc_dir: Path, topology: Topology) -> None:
    """IGMPv1 has no leave: the membership goes when the host stops answering, one membership interval later."""
    router, host = router_and_host(topology)
    host.ns.sysctl(f"net.ipv4.conf.{host.ifname}.force_igmp_version", 1)
    igmp = start_igmp(router, manager, ipc_dir)
    sniffer = start_sniffer(host)
    rx, wanted = joined(host, router, manager, "239.4.4.4", 5004, "(*,239.4.4.4) from the host's v1 report")
    assert Report(1, "239.4.4.4") in messages(sniffer), "the host spoke v1"
    rx.leave()
    wait_memberships(manager, lambda m: wanted not in m, "(*,239.4.4.4) gone once the host stops answering")
    assert "(*,239.4.4.4) left" in igmp.log()
