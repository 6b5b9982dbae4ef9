"""The proxy's upstream going and coming back, for real: `mgm up` in a router namespace, the upstream veth
taken down and up, deleted and created again (a new if_index), and an upstream that does not exist at start.

    snd (eth0) --- (r1) rtr (r2) --- (eth0) hrx
       upstream           downstream

The sender floods the upstream link whether or not anyone joined (no
snooping on a veth), so what reaches the receiver is the router's
forwarding alone; a sniffer on the sender's interface records the reports
the router's kernel sends upstream.  Every wait is on a condition with a
deadline.  Once per forwarder backend the kernel offers
(`forwarder_backend`).  Needs root; under CI=true a missing root fails
instead of skipping.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from netns import (
    Namespace,
    NsProcess,
    Topology,
    send_udp,
    sniff_igmp,
    wait_until,
)
from test_proxy_netns import (
    WAIT,
    igmp_members,
    joins_seen,
    probe,
    proxy_tables,
    start_router,
    upstream_memberships,
)

from mgm.plugins.proxy.plugin import PROXY_PROTOCOL_ID
from mgm.plugins.testing import ManagerProc

pytestmark = pytest.mark.netns

SRC, UP_RTR = "10.74.0.2", "10.74.0.1"
G, P = "239.74.1.1", 5741
SENDS = 100_000  # a sender outlives the test (its namespace's teardown kills it)


def owners(manager: ManagerProc) -> dict[int, int]:
    """if_index -> protocol_id of its owner, from the manager's state."""
    state = manager.request("sync", {"stream": "state"})["state"]
    return {i["if_index"]: i["owner"]["protocol_id"] for i in state["interfaces"] if i["owner"] is not None}


def proxy_memberships(manager: ManagerProc) -> set[tuple[str, str, int]]:
    state = manager.request("sync", {"stream": "state"})["state"]
    return {(m["source"], m["group"], m["if_index"]) for m in state["memberships"]
            if m["protocol_id"] == PROXY_PROTOCOL_ID}  # fmt: skip


def upstream_link(snd: Namespace, rtr: Namespace, sniffer_name: str) -> NsProcess:
    """The veth snd eth0 <-> rtr r1 (again), a sniffer on eth0 ready before r1 comes up, then a sender of G.

    The router's kernel reports its memberships the moment r1 comes up (the
    proxy may have joined while r1 was down), so the sniffer must listen
    before that.  The namespaces' teardown deletes the veth.
    """
    snd.ip("link", "add", "eth0", "type", "veth", "peer", "name", "r1", "netns", rtr.name)
    snd.sh(f"ip addr add {SRC}/24 dev eth0\nip link set dev eth0 up\n")
    snd.multicast_route("eth0")
    sniffer = snd.spawn(sniff_igmp, "eth0", name=sniffer_name)
    wait_until(lambda: '"ready"' in sniffer.log(), WAIT, f"the upstream sniffer {sniffer_name}")
    rtr.sh(f"echo 0 > /proc/sys/net/ipv4/conf/r1/rp_filter\nip addr add {UP_RTR}/24 dev r1\nip link set dev r1 up\n")
    snd.spawn(send_udp, G, P, SENDS, interval=0.01, source=SRC, name="send-g")
    return sniffer


def logged(up: NsProcess, pattern: str) -> Any:
    return re.search(pattern, up.log())


def test_upstream_down_up_then_deleted_and_created_again_under_a_new_if_index(
    topology: Topology, forwarder_backend: str
) -> None:
    snd, rtr, hrx = topology.namespaces("snd", "rtr", "hrx")
    first = upstream_link(snd, rtr, "sniff-first")
    topology.link(rtr, hrx, "10.74.1.1/24", "10.74.1.2/24", a_if="r2")
    up = start_router(rtr, proxy_tables("forward_upstream = true"), backend=forwarder_backend)
    manager = probe(topology)
    old = rtr.if_index("r1")
    rx = hrx.receiver(G, P, name="rx-g")
    rx.wait_joined()
    rx.wait_count(10, timeout=WAIT)
    wait_until(lambda: G in rtr.call(upstream_memberships, "r1")["groups"], WAIT, f"{G} joined upstream")
    assert ("0.0.0.0", "0.0.0.0", old) in proxy_memberships(manager)  # forward_upstream's (*,*)

    # link down and up: same if_index, the kernel keeps the membership and reports it again at link up
    rtr.ip("link", "set", "dev", "r1", "down")
    wait_until(lambda: logged(up, rf"upstream r1 \(if_index {old}\) is down"), WAIT, "the proxy to log r1 down")
    assert G in rtr.call(upstream_memberships, "r1")["groups"], "the kernel dropped the membership at link down"
    reports_before = len(joins_seen(first, G))
    rtr.ip("link", "set", "dev", "r1", "up")
    wait_until(lambda: logged(up, rf"upstream r1 \(if_index {old}\) is up"), WAIT, "the proxy to log r1 up")
    wait_until(lambda: len(joins_seen(first, G)) > reports_before, WAIT, f"a report for {G} after link up")
    rx.wait_count(rx.count() + 10, timeout=WAIT)
    assert owners(manager).get(old) == PROXY_PROTOCOL_ID

    # deleted: released in the manager, nothing crashed
    rtr.ip("link", "del", "r1")
    wait_until(lambda: logged(up, rf"upstream r1 \(if_index {old}\) was deleted"), WAIT, "the proxy to log r1 gone")
    wait_until(lambda: old not in owners(manager), WAIT, f"the manager to forget if_index {old}")
    assert not any(i == old for _s, _g, i in proxy_memberships(manager)), proxy_memberships(manager)
    assert ("0.0.0.0", G, rtr.if_index("r2")) in igmp_members(manager)  # the receiver is still known downstream

    # created again under the same name: a new if_index, taken, joined, forwarded
    second = upstream_link(snd, rtr, "sniff-second")
    new = rtr.if_index("r1")
    assert new != old, "the kernel gave the re-created interface its old if_index"
    wait_until(lambda: owners(manager).get(new) == PROXY_PROTOCOL_ID, WAIT, f"the proxy to own if_index {new}")
    wait_until(lambda: logged(up, rf"upstream r1 is back \(if_index {new}\): 1 group\(s\) joined upstream again"),
               WAIT, "the proxy to log r1 back")  # fmt: skip
    wait_until(lambda: G in rtr.call(upstream_memberships, "r1")["groups"], WAIT, f"{G} joined on the new r1")
    wait_until(lambda: joins_seen(second, G), WAIT, f"a report for {G} on the new upstream link")
    rx.wait_count(rx.count() + 10, timeout=WAIT)
    assert ("0.0.0.0", "0.0.0.0", new) in proxy_memberships(manager)  # forward_upstream's (*,*) again
    assert up.alive()
    log = up.log()
    assert len(re.findall(r"proxy started \(pid \d+\)", log)) == 1, "the proxy was restarted"
    assert "Traceback" not in log, log


def test_proxy_starts_without_its_upstream_and_takes_it_when_it_appears(
    topology: Topology, forwarder_backend: str
) -> None:
    """PPPoE not up at boot: the upstream is left out of `interfaces`, so the host does not need it to start."""
    snd, rtr, hrx = topology.namespaces("snd", "rtr", "hrx")
    topology.link(rtr, hrx, "10.74.1.1/24", "10.74.1.2/24", a_if="r2")
    up = start_router(rtr, proxy_tables(listed=False), backend=forwarder_backend)
    assert "proxy: upstream r1 does not exist yet" in up.log()
    manager = probe(topology)
    rx = hrx.receiver(G, P, name="rx-g")
    rx.wait_joined()
    wait_until(lambda: ("0.0.0.0", G, rtr.if_index("r2")) in igmp_members(manager), WAIT, "IGMP's membership")

    sniffer = upstream_link(snd, rtr, "sniff")
    r1 = rtr.if_index("r1")
    wait_until(lambda: owners(manager).get(r1) == PROXY_PROTOCOL_ID, WAIT, f"the proxy to own r1 ({r1})")
    wait_until(lambda: G in rtr.call(upstream_memberships, "r1")["groups"], WAIT, f"{G} joined upstream")
    wait_until(lambda: joins_seen(sniffer, G), WAIT, f"a report for {G} upstream")
    rx.wait_count(10, timeout=WAIT)
    assert logged(up, rf"upstream r1 is back \(if_index {r1}\): 1 group\(s\) joined upstream again")
