"""The proxy's immediate upstream report for real: `mgm up` in a router namespace, the reports seen upstream.

    ups (eth0) --- (r1) rtr (r2) --- (eth0) hrx
    sniffs IGMP        proxy: r1 up, r2 down

The upstream namespace records every IGMP datagram arriving from the router
(AF_PACKET, the IP header included).  The router's kernel is set to
``igmp_qrv = 1`` before its interfaces exist, so for a join it sends exactly
one unsolicited report and no retransmission; with ``immediate_report`` the
proxy adds exactly one, so a join is seen twice upstream with it and once
without.  "Once the kernel is done" is not a wait but a marker: after the
first group's reports, the receiver joins a second group; once that one's
reports are seen upstream, every report for the first group went before.
Needs root; under CI=true a missing root fails instead of skipping.
"""

from __future__ import annotations

import pytest
from netns import (
    Namespace,
    NsProcess,
    Topology,
    seen,
    sniff_igmp,
    wait_until,
)
from test_proxy_netns import WAIT, proxy_tables, start_router

from mgm.plugins.igmp import packet

pytestmark = pytest.mark.netns

G, P = "239.73.1.1", 5731
G_MARK, P_MARK = "239.73.9.9", 5739
G_SSM, P_SSM, SRC = "232.73.1.1", 5732, "10.73.5.5"


def joining(message: packet.Message, group: str) -> bool:
    """Whether `message` asks for traffic of `group` (a v1/v2 report, or a v3 record TO_EX/IS_EX/ALLOW for it)."""
    if isinstance(message, packet.Report):
        return message.group == group
    if isinstance(message, packet.V3Report):
        return any(r.group == group and r.type in (packet.MODE_IS_EXCLUDE, packet.CHANGE_TO_EXCLUDE_MODE,
                                                   packet.ALLOW_NEW_SOURCES) for r in message.records)  # fmt: skip
    return False


def reports_for(sniffer: NsProcess, group: str) -> list[tuple[packet.IPv4Header, packet.Message]]:
    return [(h, m) for h, m in seen(sniffer) if joining(m, group)]


def setup(topology: Topology, *, immediate: bool, up_addr: str | None = "10.73.0.1/24",
          force_version: int | None = None) -> tuple[Namespace, NsProcess, NsProcess]:  # fmt: skip
    """The three namespaces, the sniffer and the router; (receiving host, sniffer, mgm up)."""
    ups, rtr, hrx = topology.namespaces("ups", "rtr", "hrx")
    rtr.sysctl("net.ipv4.igmp_qrv", 1)  # before the links: an interface takes it when it is created
    up_link = topology.link(ups, rtr, "10.73.0.2/24", up_addr)
    topology.link(rtr, hrx, "10.73.1.1/24", "10.73.1.2/24")
    if force_version is not None:
        rtr.sysctl(f"net.ipv4.conf.{up_link.b_if}.force_igmp_version", force_version)
    sniffer = ups.spawn(sniff_igmp, up_link.a_if, False, name="sniff-upstream")
    wait_until(lambda: '"ready"' in sniffer.log(), WAIT, "the upstream sniffer")
    # what is reported upstream is the proxy's and the kernel's doing, whichever backend forwards
    up = start_router(rtr, proxy_tables(f"immediate_report = {'true' if immediate else 'false'}"), backend="auto")
    assert f"immediate report of joins: {'on' if immediate else 'off'}" in up.log(), up.log()
    return hrx, sniffer, up


def count_after_marker(hrx: Namespace, sniffer: NsProcess, group: str, expected: int) -> int:
    """The number of reports for `group` once `expected` were seen and a later join's were too."""
    wait_until(lambda: len(reports_for(sniffer, group)) >= expected, WAIT, f"{expected} report(s) for {group}")
    marker = hrx.receiver(G_MARK, P_MARK, name="rx-marker")
    marker.wait_joined()
    wait_until(lambda: len(reports_for(sniffer, G_MARK)) >= expected, WAIT, f"{expected} report(s) for {G_MARK}")
    return len(reports_for(sniffer, group))


@pytest.mark.parametrize("immediate", [True, False], ids=["immediate", "kernel-only"])
def test_a_join_is_reported_upstream_once_more_with_immediate_report(topology: Topology, immediate: bool) -> None:
    hrx, sniffer, up = setup(topology, immediate=immediate)
    expected = 2 if immediate else 1  # the kernel's one report (igmp_qrv = 1), and ours
    rx = hrx.receiver(G, P, name="rx-g")
    rx.wait_joined()
    assert count_after_marker(hrx, sniffer, G, expected) == expected, seen(sniffer)
    for header, message in reports_for(sniffer, G):  # ours among them: well formed (parsed), as the kernel's
        assert (header.source, header.destination) == ("10.73.0.1", packet.ALL_IGMPV3_ROUTERS), header
        assert header.ttl == 1 and header.router_alert, header
        assert isinstance(message, packet.V3Report)
        assert packet.GroupRecord(packet.CHANGE_TO_EXCLUDE_MODE, G) in message.records, message
    # an (S,G) join: a new source of an include-mode group is ALLOW_NEW_SOURCES {S}
    ssm = hrx.receiver(G_SSM, P_SSM, source=SRC, name="rx-ssm")
    ssm.wait_joined()
    allow = packet.GroupRecord(packet.ALLOW_NEW_SOURCES, G_SSM, (SRC,))
    wait_until(lambda: sum(allow in m.records for _, m in reports_for(sniffer, G_SSM)  # type: ignore[union-attr]
                           ) >= expected, WAIT, f"{expected} ALLOW ({SRC}) record(s) for {G_SSM}")  # fmt: skip
    assert up.alive() and "immediate report on" not in up.log(), up.log()  # no send failure logged


def test_a_v2_upstream_gets_v2_reports_only(topology: Topology) -> None:
    """force_igmp_version = 2 on the upstream interface: the kernel reports in v2, and so do we."""
    hrx, sniffer, up = setup(topology, immediate=True, force_version=2)
    rx = hrx.receiver(G, P, name="rx-g")
    rx.wait_joined()
    assert count_after_marker(hrx, sniffer, G, 2) == 2, seen(sniffer)
    from_router = [(h, m) for h, m in seen(sniffer) if h.source == "10.73.0.1"]
    assert from_router and all(isinstance(m, packet.Report) for _, m in from_router), from_router  # never a v3 one
    header, first = reports_for(sniffer, G)[0]
    assert first == packet.Report(2, G) and header.destination == G and header.ttl == 1 and header.router_alert
    assert up.alive() and "immediate report on" not in up.log(), up.log()


def test_an_upstream_without_ipv4_reports_from_0_0_0_0(topology: Topology) -> None:
    """No address upstream: our report leaves from 0.0.0.0 as the kernel's does, not from a downstream address."""
    hrx, sniffer, up = setup(topology, immediate=True, up_addr=None)
    assert "no IPv4 address" in up.log()
    rx = hrx.receiver(G, P, name="rx-g")
    rx.wait_joined()
    assert count_after_marker(hrx, sniffer, G, 2) == 2, seen(sniffer)
    got = reports_for(sniffer, G)
    assert {h.source for h, _ in got} == {"0.0.0.0"}, got
    assert all(h.ttl == 1 and h.router_alert and h.destination == packet.ALL_IGMPV3_ROUTERS for h, _ in got), got
    assert all(packet.GroupRecord(packet.CHANGE_TO_EXCLUDE_MODE, G) in m.records for _, m in got)  # type: ignore[union-attr]
