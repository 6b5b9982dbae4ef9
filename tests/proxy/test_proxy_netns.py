"""The IGMP proxy for real: `mgm up` with the forwarder, IGMP downstream and the proxy, in namespaces.

    snd (eth0) --- (r1) rtr (r2) --- (eth0) hrx1
       upstream         rtr (r3) --- (eth0) hrx2
                             downstream

The sender sits directly on the upstream link and sends whether or not
anyone joined (no snooping on a veth), so what reaches a receiver is the
router's forwarding alone; a sniffer on the sender's interface records the
IGMP reports the router's kernel sends upstream for the proxy, and
/proc/net/igmp and /proc/net/mcfilter of the router show the memberships
the proxy holds there.  Receivers join with ordinary sockets; their kernels
speak IGMPv3.  The tests that forward traffic run once per forwarder
backend the kernel offers (`forwarder_backend`, passed to `start_router`).
Needs root; under CI=true a missing root fails instead of skipping.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from mgm_testplugins.processes import ManagerProc
from netns import (
    Namespace,
    NsProcess,
    Topology,
    seen,
    send_udp,
    sniff_igmp,
    wait_until,
)

from mgm.bus.status import MgmError
from mgm.plugins.igmp import packet

pytestmark = pytest.mark.netns

WAIT = 20.0
IGMP_FAST = """\
query_interval = 2
query_response_interval = 1
last_member_query_interval = 0.2
last_member_query_count = 2
startup_query_interval = 0.25
startup_query_count = 2
"""


# --- run inside namespaces -------------------------------------------------------------------------


PROBE_GROUP, PROBE_SOURCE = "232.255.255.254", "192.0.2.254"
"""A source membership `upstream_memberships` holds while it reads /proc/net/mcfilter (see there)."""


def upstream_memberships(ifname: str) -> dict[str, Any]:
    """{"groups": {group: users}, "sources": [[group, source], ...]} of `ifname`, from /proc/net/igmp and mcfilter.

    /proc/net/mcfilter lists a device's source lists only when the group the
    device joined last has one (checked on Linux 6: the kernel's iterator
    looks at the head of the device's group list only), so a (*,G) joined
    after an (S,G) hides every source of that device.  A source membership
    of our own, joined just before reading, is that head; it is left out of
    the result (and the kernel reports it upstream: tests filter reports by
    group).
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        request = struct.pack("=I4x", socket.if_nametoindex(ifname))
        request += _sockaddr_in(PROBE_GROUP) + _sockaddr_in(PROBE_SOURCE)
        probe.setsockopt(socket.IPPROTO_IP, 46, request)  # MCAST_JOIN_SOURCE_GROUP
        with open("/proc/net/igmp") as f:
            igmp = f.read()
        with open("/proc/net/mcfilter") as f:
            mcfilter = f.read()
    finally:
        probe.close()
    groups: dict[str, int] = {}
    device = None
    for line in igmp.splitlines()[1:]:
        fields = line.split()
        if not line.startswith("\t"):  # a device line, then a line per group it joined
            device = fields[1]
        elif device == ifname:
            groups[socket.inet_ntoa(bytes.fromhex(fields[0])[::-1])] = int(fields[1])
    groups.pop(PROBE_GROUP, None)
    sources = []
    for line in mcfilter.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and fields[1] == ifname:
            pair = [socket.inet_ntoa(bytes.fromhex(fields[2][2:])), socket.inet_ntoa(bytes.fromhex(fields[3][2:]))]
            if pair != [PROBE_GROUP, PROBE_SOURCE]:
                sources.append(pair)
    return {"groups": groups, "sources": sources}


def _sockaddr_in(address: str) -> bytes:
    """A struct sockaddr_storage holding an IPv4 address (for group_source_req)."""
    head = struct.pack("=H2x4s", socket.AF_INET, socket.inet_aton(address))
    return head + bytes(128 - len(head))


def pool_in_namespace(ifname: str, groups: int, sources: int) -> dict[str, Any]:
    """Join `groups` (*,G) and `sources` (S,G) of one group through the proxy's socket pool; what the kernel holds."""
    from mgm.plugins.proxy.upstream import UpstreamMemberships

    pool = UpstreamMemberships(ifname, socket.if_nametoindex(ifname))
    for i in range(groups):
        pool.join(f"239.70.{i // 250}.{i % 250 + 1}", None)
    for i in range(sources):
        pool.join("232.70.0.1", f"10.70.{i // 250}.{i % 250 + 1}")
    held = upstream_memberships(ifname)
    sockets = len(pool.pool)
    pool.leave("239.70.0.1", None)
    pool.leave("232.70.0.1", "10.70.0.1")
    after_leave = upstream_memberships(ifname)
    pool.close()
    return {"held": held, "sockets": sockets, "after_leave": after_leave, "after_close": upstream_memberships(ifname)}


# --- helpers ------------------------------------------------------------------------------------------


def records_seen(sniffer: NsProcess, group: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """(sender, v3 record type, sources) of each record for `group`; a v1/v2 report is (sender, 0, ()), a leave
    (sender, -1, ())."""
    found = []
    for header, message in seen(sniffer):
        if isinstance(message, packet.V3Report):
            found += [(header.source, r.type, r.sources) for r in message.records if r.group == group]
        elif isinstance(message, packet.Report | packet.Leave) and message.group == group:
            found.append((header.source, 0 if isinstance(message, packet.Report) else -1, ()))
    return found


def joins_seen(sniffer: NsProcess, group: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """v3 records that ask for traffic of `group` (IS_EX, TO_EX, ALLOW, IS_IN/TO_IN with sources) and v2 reports."""
    return [r for r in records_seen(sniffer, group) if r[1] in (0, 2, 4, 5) or (r[1] in (1, 3) and r[2])]


def leaves_seen(sniffer: NsProcess, group: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """v3 TO_IN({}) records and v2 leaves for `group`."""
    return [r for r in records_seen(sniffer, group) if r[1] == -1 or (r[1] == 3 and not r[2])]


def proxy_tables(*proxy_keys: str, down: tuple[str, ...] = ("r2",), downstream: str = "", listed: bool = True,
                 after: str = "") -> str:  # fmt: skip
    """The router's tables: IGMP on `down`, the proxy from upstream r1 (in its `interfaces` if `listed`) to `down`.

    `downstream` replaces the plain list of `down` (to give filters), `proxy_keys` are more lines of the proxy's
    table, `after` more tables.
    """
    names = ", ".join(f'"{name}"' for name in down)
    keys = "".join(f"{key}\n" for key in proxy_keys)
    return f"""\
[plugins.igmp]
interfaces = [{names}]
{IGMP_FAST}
[plugins.proxy]
interfaces = [{'"r1", ' if listed else ""}{names}]
upstream = "r1"
downstream = {downstream or f"[{names}]"}
{keys}{after}"""


def start_router(rtr: Namespace, tables: str, *, backend: str) -> NsProcess:
    """`mgm up` in `rtr`: the forwarder on `backend` ("mrt", "nft", or "auto" where forwarding is not the
    point), and `tables`; returns once the proxy and IGMP run."""
    up = rtr.mgm_up(tables, backend=backend)

    def ready() -> bool:
        if not up.alive():
            raise AssertionError(f"mgm up exited {up.popen.returncode}:\n{up.log()}")
        log = up.log()
        return "proxy: upstream" in log and "igmp: running IGMPv" in log

    wait_until(ready, WAIT, "the router's plugins to start")
    return up


def probe(topology: Topology) -> ManagerProc:
    work = topology.workdir
    return ManagerProc("probe", [], work / "probe.log", api=f"ipc://{work}/api")


def igmp_members(manager: ManagerProc) -> set[tuple[str, str, int]]:
    state = manager.request("sync", {"stream": "state"})["state"]
    return {(m["source"], m["group"], m["if_index"]) for m in state["memberships"] if m["protocol_id"] == 10}


# --- tests ----------------------------------------------------------------------------------------------

SENDS = 100_000
"""A sender's datagrams: it outlives the test (the teardown kills it), however slow the machine."""
SRC = "10.66.0.2"
FAR = "198.51.100.7"  # a second address of the sender, outside the upstream subnet
G1, P1 = "239.66.1.1", 5661
G_NONE, P_NONE = "239.66.9.9", 5669
G_SSM, P_SSM = "232.66.1.1", 5662


def test_proxy_join_traffic_leave_rejoin_with_one_upstream_membership_per_group(
    topology: Topology, forwarder_backend: str
) -> None:
    snd, rtr, rx1, rx2 = topology.namespaces("snd", "rtr", "hrx1", "hrx2")
    up_link = topology.link(snd, rtr, f"{SRC}/24", "10.66.0.1/24")
    topology.link(rtr, rx1, "10.66.1.1/24", "10.66.1.2/24")
    topology.link(rtr, rx2, "10.66.2.1/24", "10.66.2.2/24")
    snd.ip("addr", "add", f"{FAR}/32", "dev", up_link.a_if)
    snd.multicast_route(up_link.a_if)
    sniffer = snd.spawn(sniff_igmp, up_link.a_if, name="sniff-upstream")
    wait_until(lambda: '"ready"' in sniffer.log(), WAIT, "the upstream sniffer")
    up = start_router(rtr, proxy_tables(down=("r2", "r3")), backend=forwarder_backend)
    # senders run through the whole test; G1 from outside the upstream subnet, as IPTV sources are
    snd.spawn(send_udp, G1, P1, SENDS, interval=0.01, source=FAR, name="send-g1")
    snd.spawn(send_udp, G_NONE, P_NONE, SENDS, interval=0.01, source=SRC, name="send-none")
    snd.spawn(send_udp, G_SSM, P_SSM, SENDS, interval=0.01, source=SRC, name="send-ssm-a")
    snd.spawn(send_udp, G_SSM, P_SSM, SENDS, interval=0.01, source=FAR, name="send-ssm-b")

    # join: two downstream receivers of G1, one (S,G) receiver, one receiver of a group the proxy must not see
    a = rx1.receiver(G1, P1, name="a-g1")
    b = rx2.receiver(G1, P1, name="b-g1")
    ssm = rx1.receiver(G_SSM, P_SSM, source=SRC, name="a-ssm")
    for rx in (a, b, ssm):
        rx.wait_joined()
    with topology.on_timeout("the proxy did not forward"):
        a.wait_count(10, timeout=WAIT)
        b.wait_count(10, timeout=WAIT)
        ssm.wait_count(10, timeout=WAIT, source=SRC)
    assert up.alive()
    # The senders feed the upstream link whatever the proxy joined, so forwarding can start before the
    # proxy's upstream join is complete: wait for the (S,G) source list there, then read the whole picture.
    wait_until(lambda: [G_SSM, SRC] in rtr.call(upstream_memberships, "r1")["sources"], WAIT,
               f"the ({SRC}, {G_SSM}) source list joined upstream")  # fmt: skip
    held = rtr.call(upstream_memberships, "r1")
    assert held["groups"].get(G1) == 1, held  # one membership upstream for two downstream receivers
    assert G_NONE not in held["groups"], held  # nobody downstream wants it
    assert [G_SSM, SRC] in held["sources"], held  # the (S,G) join is an IGMPv3 source list upstream
    assert [G_SSM, FAR] not in held["sources"], held
    wait_until(lambda: joins_seen(sniffer, G1), WAIT, f"a report for {G1} upstream")
    wait_until(lambda: any(SRC in sources for _, _, sources in joins_seen(sniffer, G_SSM)), WAIT,
               f"a report with source {SRC} for {G_SSM} upstream")  # fmt: skip
    assert {sender for sender, _, _ in joins_seen(sniffer, G1)} == {"10.66.0.1"}, "only the router reports upstream"
    assert not joins_seen(sniffer, G_NONE)
    assert ssm.count(source=FAR) == 0, "the (S,G) receiver got the other source"

    # leave: one receiver goes, the other keeps receiving, the upstream membership stays
    a.leave()
    manager = probe(topology)
    rtr_r2 = rtr.if_index("r2")
    wait_until(lambda: ("0.0.0.0", G1, rtr_r2) not in igmp_members(manager), WAIT, "IGMP to drop hrx1's membership")
    b.wait_count(b.count() + 5, timeout=WAIT)  # the kernel's entry follows the manager's within a packet or two
    settled = a.count()
    b.wait_count(b.count() + 20, timeout=WAIT)
    assert a.count() == settled, "hrx1 still receives after its leave"
    assert rtr.call(upstream_memberships, "r1")["groups"].get(G1) == 1

    # the last receiver goes: the proxy leaves upstream
    b.leave()
    wait_until(lambda: G1 not in rtr.call(upstream_memberships, "r1")["groups"], WAIT, f"{G1} left upstream")
    wait_until(lambda: leaves_seen(sniffer, G1), WAIT, f"a leave for {G1} upstream")

    # rejoin: joined upstream again, forwarded again
    again = rx1.receiver(G1, P1, name="a-g1-again")
    again.wait_joined()
    with topology.on_timeout("no traffic after the rejoin"):
        again.wait_count(10, timeout=WAIT)
    assert rtr.call(upstream_memberships, "r1")["groups"].get(G1) == 1
    assert len(joins_seen(sniffer, G1)) >= 2, "a second upstream join after the leave"


GA, PA = "239.67.1.1", 5671  # allowed on r2 and r3
GD, PD = "239.67.2.2", 5672  # allowed on r2, denied on r3
GX, PX = "239.68.0.1", 5673  # outside r2's allow list, denied on r3: joined nowhere
GL, PL = "239.67.2.9", 5674  # allowed on r2, denied on r3, and joined on r3 after it already forwards to r2
G_UP, P_UP = "239.72.1.1", 5721  # sent by a downstream host
FILTERS = ('[{ interface = "r2", allow = ["239.67.0.0/16"] }, '
           '{ interface = "r3", deny = ["239.67.2.0/24", "239.68.0.0/16"] }]')  # fmt: skip


def test_proxy_allow_and_deny_lists_shape_upstream_joins_and_forwarding(
    topology: Topology, forwarder_backend: str
) -> None:
    snd, rtr, rx1, rx2 = topology.namespaces("snd", "rtr", "hrx1", "hrx2")
    up_link = topology.link(snd, rtr, "10.67.0.2/24", "10.67.0.1/24")
    topology.link(rtr, rx1, "10.67.1.1/24", "10.67.1.2/24")
    topology.link(rtr, rx2, "10.67.2.1/24", "10.67.2.2/24")
    snd.multicast_route(up_link.a_if)
    start_router(rtr, proxy_tables(down=("r2", "r3"), downstream=FILTERS), backend=forwarder_backend)
    receivers = {(ns.role, g): ns.receiver(g, p, name=f"{ns.role}-{g}")
                 for ns in (rx1, rx2) for g, p in ((GA, PA), (GD, PD), (GX, PX))}  # fmt: skip
    for rx in receivers.values():
        rx.wait_joined()
    # IGMP has every receiver before the first packet, so each flow's creation alert sees both interfaces
    manager = probe(topology)
    r2, r3 = rtr.if_index("r2"), rtr.if_index("r3")
    wanted = {("0.0.0.0", g, i) for g in (GA, GD, GX) for i in (r2, r3)}
    wait_until(lambda: wanted <= igmp_members(manager), WAIT, "IGMP memberships of all six receivers")
    for g, p in ((GA, PA), (GD, PD), (GX, PX)):
        snd.spawn(send_udp, g, p, SENDS, interval=0.01, source="10.67.0.2", name=f"send-{g}")
    with topology.on_timeout("allowed groups were not forwarded"):
        receivers[("hrx1", GA)].wait_count(10, timeout=WAIT)
        receivers[("hrx2", GA)].wait_count(10, timeout=WAIT)
        receivers[("hrx1", GD)].wait_count(10, timeout=WAIT)
    # GD and GX went by the router all along (the sender floods the upstream link) and GD forwards to hrx1
    more = receivers[("hrx1", GD)].count() + 20
    receivers[("hrx1", GD)].wait_count(more, timeout=WAIT)
    assert receivers[("hrx2", GD)].count() == 0, "GD is denied on r3"
    assert receivers[("hrx1", GX)].count() == 0, "GX is outside r2's allow list"
    assert receivers[("hrx2", GX)].count() == 0, "GX is denied on r3"
    held = rtr.call(upstream_memberships, "r1")["groups"]
    assert held.get(GA) == 1 and held.get(GD) == 1, held
    assert GX not in held, f"a group no downstream may receive was joined upstream: {held}"
    mfe = manager.request("get_mfe", {"source": "10.67.0.2", "group": GD})["mfe"]
    assert {e["if_index"] for e in mfe["oil"]} == {r2}, mfe

    # without forward_upstream, a downstream host's flow does not go up
    up_rx = snd.receiver(G_UP, P_UP, name="upstream-rx")
    up_rx.wait_joined()
    rx1.multicast_route("eth0")
    rx1.spawn(send_udp, G_UP, P_UP, 300, interval=0.01, source="10.67.1.2", name="send-down")
    wait_until(lambda: _has_mfe(manager, "10.67.1.2", G_UP), WAIT, "the downstream flow to reach the router")
    receivers[("hrx1", GD)].wait_count(receivers[("hrx1", GD)].count() + 20, timeout=WAIT)
    assert up_rx.count() == 0, "a downstream flow went upstream without forward_upstream"
    assert not manager.request("get_mfe", {"source": "10.67.1.2", "group": G_UP})["mfe"]["oil"]

    # a receiver joining a denied group after its flow already forwards elsewhere gets nothing either:
    # the filter is r3's boundary in the manager, not only a veto when the MFE was created
    early = rx1.receiver(GL, PL, name="hrx1-late-group")
    early.wait_joined()
    snd.spawn(send_udp, GL, PL, SENDS, interval=0.01, source="10.67.0.2", name=f"send-{GL}")
    early.wait_count(10, timeout=WAIT)
    late = rx2.receiver(GL, PL, name="hrx2-late-group")
    late.wait_joined()
    wait_until(lambda: ("0.0.0.0", GL, r3) in igmp_members(manager), WAIT, "IGMP's membership of the late receiver")
    early.wait_count(early.count() + 30, timeout=WAIT)  # the flow went on past the late join
    assert late.count() == 0, "a late receiver got a group its interface's filter denies"
    mfe = manager.request("get_mfe", {"source": "10.67.0.2", "group": GL})["mfe"]
    assert {e["if_index"] for e in mfe["oil"]} == {r2}, mfe


def _has_mfe(manager: ManagerProc, source: str, group: str) -> bool:
    try:
        manager.request("get_mfe", {"source": source, "group": group})
        return True
    except MgmError:
        return False


GP, PP = "239.69.1.1", 5691  # the proxy's: upstream r1 (no IPv4 address) -> r2
GS, PS = "239.69.2.2", 5692  # static's: r3 -> r4
SRC_S = "10.69.3.2"


def test_proxy_with_an_address_less_upstream_and_static_routes_forward_on_one_router(
    topology: Topology, forwarder_backend: str
) -> None:
    snd, snd2, rtr, rx1, rx2 = topology.namespaces("snd", "snd2", "rtr", "hrx1", "hrx2")
    up_link = topology.link(snd, rtr, "10.69.0.2/24", None)  # r1 has no IPv4 address, as on PPPoE or some VLANs
    topology.link(rtr, rx1, "10.69.1.1/24", "10.69.1.2/24")
    s_link = topology.link(snd2, rtr, f"{SRC_S}/24", "10.69.3.1/24")
    topology.link(rtr, rx2, "10.69.4.1/24", "10.69.4.2/24")
    snd.multicast_route(up_link.a_if)
    snd2.multicast_route(s_link.a_if)
    sniffer = snd.spawn(sniff_igmp, up_link.a_if, name="sniff-upstream")
    wait_until(lambda: '"ready"' in sniffer.log(), WAIT, "the upstream sniffer")
    static = f"""
[plugins.static]
interfaces = ["r3", "r4"]
routes = [{{ source = "{SRC_S}", group = "{GS}", from = "r3", to = ["r4"] }}]
"""
    up = start_router(rtr, proxy_tables(after=static), backend=forwarder_backend)
    assert "no IPv4 address: reports leave with source 0.0.0.0" in up.log()
    receivers = {(ns.role, g): ns.receiver(g, p, name=f"{ns.role}-{g}")
                 for ns in (rx1, rx2) for g, p in ((GP, PP), (GS, PS))}  # fmt: skip
    for rx in receivers.values():
        rx.wait_joined()
    snd.spawn(send_udp, GP, PP, SENDS, interval=0.01, source="10.69.0.2", name="send-proxy")
    snd2.spawn(send_udp, GS, PS, SENDS, interval=0.01, source=SRC_S, name="send-static")
    with topology.on_timeout("the proxy and static did not both forward"):
        receivers[("hrx1", GP)].wait_count(10, timeout=WAIT)
        receivers[("hrx2", GS)].wait_count(10, timeout=WAIT)
        # a receiver behind the proxy gets static's flow too: the flow has one incoming interface (r3), and
        # the proxy vetoes nothing (without forward_upstream it is asked no question)
        receivers[("hrx1", GS)].wait_count(10, timeout=WAIT)
    assert up.alive()
    wait_until(lambda: joins_seen(sniffer, GP), WAIT, f"the proxy's report for {GP} upstream")
    assert {sender for sender, _, _ in joins_seen(sniffer, GP)} == {"0.0.0.0"}
    assert receivers[("hrx2", GP)].count() == 0  # r4 is static's, which has no route for GP
    manager = probe(topology)
    mfe_p = manager.request("get_mfe", {"source": "10.69.0.2", "group": GP})["mfe"]
    assert (mfe_p["in_if_index"], mfe_p["in_protocol_id"]) == (rtr.if_index("r1"), 65002), mfe_p
    mfe_s = manager.request("get_mfe", {"source": SRC_S, "group": GS})["mfe"]
    assert (mfe_s["in_if_index"], mfe_s["in_protocol_id"]) == (rtr.if_index("r3"), 10006), mfe_s
    assert {o["if_index"] for o in mfe_s["oil"]} == {rtr.if_index("r2"), rtr.if_index("r4")}, mfe_s
    protocols = manager.request("sync", {"stream": "state"})["state"]["protocols"]
    assert {p["name"]: p["questions"] for p in protocols}["proxy"] == []  # so its flows need no question


def test_proxy_socket_pool_outgrows_the_kernel_per_socket_limits(topology: Topology) -> None:
    """50 groups and 15 sources of one group, past igmp_max_memberships=20 and igmp_max_msf=10 per socket."""
    host, peer = topology.namespaces("host", "peer")
    link = topology.link(host, peer, None, "10.70.9.1/24")
    host.sysctl("net.ipv4.igmp_max_memberships", 20)
    host.sysctl("net.ipv4.igmp_max_msf", 10)
    got = host.call(pool_in_namespace, link.a_if, 50, 15)
    held = got["held"]
    joined = {g for g in held["groups"] if g.startswith("239.70.")}
    assert len(joined) == 50 and all(held["groups"][g] == 1 for g in joined), held
    assert len([s for g, s in held["sources"] if g == "232.70.0.1"]) == 15, held
    assert got["sockets"] >= 5, got["sockets"]  # 50/20 -> 3 for the groups, 15/10 -> 2 for the sources
    after = got["after_leave"]
    assert "239.70.0.1" not in after["groups"] and len([g for g in after["groups"] if g.startswith("239.70.")]) == 49
    assert ["232.70.0.1", "10.70.0.1"] not in after["sources"] and len(after["sources"]) == 14
    assert not [g for g in got["after_close"]["groups"] if g.startswith(("239.70.", "232.70."))]


def test_proxy_forwards_downstream_sources_upstream_only_when_configured(
    topology: Topology, forwarder_backend: str
) -> None:
    """forward_upstream = true: a downstream host's flow reaches a receiver on the upstream link."""
    ups, rtr, hst = topology.namespaces("ups", "rtr", "hsnd")
    topology.link(ups, rtr, "10.72.0.2/24", "10.72.0.1/24")
    down = topology.link(rtr, hst, "10.72.1.1/24", "10.72.1.2/24")
    hst.multicast_route(down.b_if)
    start_router(rtr, proxy_tables("forward_upstream = true"), backend=forwarder_backend)
    rx = ups.receiver(G_UP, P_UP, name="upstream-rx")
    rx.wait_joined()
    hst.spawn(send_udp, G_UP, P_UP, SENDS, interval=0.01, source="10.72.1.2", name="send-down")
    with topology.on_timeout("forward_upstream did not forward upstream"):
        rx.wait_count(10, timeout=WAIT)
    mfe = probe(topology).request("get_mfe", {"source": "10.72.1.2", "group": G_UP})["mfe"]
    assert mfe["in_if_index"] == rtr.if_index("r2"), mfe
    assert {e["if_index"] for e in mfe["oil"]} == {rtr.if_index("r1")}, mfe
