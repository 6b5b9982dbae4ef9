"""Static routes forward real UDP multicast between namespaces, with no IGMP on the router at all.

    snd (eth0) --- (r1) rtr (r2) --- (eth0) hrx1
                        rtr (r3) --- (eth0) hrx2
                        rtr (r4) --- (eth0) hrx3

The router runs `mgm up` with the Linux forwarder on each backend the
kernel offers (`forwarder_backend`) and the static plugin (and, in the
second test, the recorder test protocol on other interfaces); what the
kernel sent out of each interface is read through `KernelView`.
Every receiver joins with an ordinary socket (the host's kernel needs the
membership to deliver), but nobody on the router listens to IGMP: what is
forwarded where is the configuration's doing alone.  Needs root; under
CI=true a missing root fails instead of skipping.
"""

from __future__ import annotations

import pytest
from kernel_view import KernelView
from mgm_testplugins.control import Control
from mgm_testplugins.processes import ManagerProc
from netns import Topology, send_udp, wait_until

from mgm.plugins.testing import scaled

pytestmark = pytest.mark.netns

SOURCE = "10.61.1.2"
G_SG, PORT_SG = "239.61.1.1", 5611  # (S,G) route: r1 -> r2, r3
G_STAR, PORT_STAR = "239.61.2.2", 5622  # (*,G) route: r1 -> r2


def test_static_routes_forward_with_no_igmp_on_the_router(topology: Topology, forwarder_backend: str) -> None:
    snd, rtr, rcv1, rcv2, rcv3 = topology.namespaces("snd", "rtr", "hrx1", "hrx2", "hrx3")
    up_link = topology.link(snd, rtr, f"{SOURCE}/24", "10.61.1.1/24")
    topology.link(rtr, rcv1, "10.61.2.1/24", "10.61.2.2/24")
    topology.link(rtr, rcv2, "10.61.3.1/24", "10.61.3.2/24")
    topology.link(rtr, rcv3, "10.61.4.1/24", "10.61.4.2/24")
    snd.multicast_route(up_link.a_if)

    tables = f"""\
[plugins.static]
interfaces = ["r1", "r2", "r3", "r4"]
routes = [
  {{ source = "{SOURCE}", group = "{G_SG}", from = "r1", to = ["r2", "r3"] }},
  {{ group = "{G_STAR}", from = "r1", to = ["r2"] }},
]
"""
    up = rtr.mgm_up(tables, backend=forwarder_backend)

    receivers = {(ns.role, group): ns.receiver(group, port, name=f"{ns.role}-{group}")
                 for ns in (rcv1, rcv2, rcv3) for group, port in ((G_SG, PORT_SG), (G_STAR, PORT_STAR))}  # fmt: skip
    for rx in receivers.values():
        rx.wait_joined()

    # Senders run until the test has seen enough: the first packets may come before the routes are in force.
    snd.spawn(send_udp, G_SG, PORT_SG, 100_000, interval=0.02, source=SOURCE, name="send-sg")
    snd.spawn(send_udp, G_STAR, PORT_STAR, 100_000, interval=0.02, source=SOURCE, name="send-star")
    with topology.on_timeout("static routes did not forward"):
        receivers[("hrx1", G_SG)].wait_count(20, timeout=30)
        receivers[("hrx2", G_SG)].wait_count(20, timeout=30)
        receivers[("hrx1", G_STAR)].wait_count(20, timeout=30)
    assert up.alive(), up.log()

    # rcv2 and rcv3 joined too, and the same packets went by at the same time: they were not forwarded there.
    assert receivers[("hrx2", G_STAR)].count() == 0  # (*,G) route lists only r2
    assert receivers[("hrx3", G_SG)].count() == 0  # r4 is in no route
    assert receivers[("hrx3", G_STAR)].count() == 0
    assert all(p["src"] == SOURCE for p in receivers[("hrx1", G_SG)].packets())
    # the manager's MFEs say the same: incoming and outgoing interfaces as configured
    manager = ManagerProc("probe", [], topology.workdir / "probe.log", api=f"ipc://{topology.workdir}/api")
    index = {name: rtr.if_index(name) for name in ("r1", "r2", "r3")}
    for group, oil in ((G_SG, {"r2", "r3"}), (G_STAR, {"r2"})):
        mfe = manager.request("get_mfe", {"source": SOURCE, "group": group})["mfe"]
        assert mfe["in_if_index"] == index["r1"], mfe
        assert {e["if_index"] for e in mfe["oil"]} == {index[name] for name in oil}, mfe
    out = KernelView(rtr, forwarder_backend).out_packets()
    assert out.get("r2", 0) > 0 and out.get("r3", 0) > 0, out
    assert out.get("r4", 0) == 0, out
    assert out.get("r1", 0) == 0, out  # nothing goes back towards the source


SOURCE_B = "10.62.3.2"
G_A, PORT_A = "239.62.1.1", 5621  # static: snd-a via r1 -> r2
G_B, PORT_B = "239.62.2.2", 5622  # the test routing protocol: snd-b via r3 -> r4


def test_static_and_another_routing_protocol_forward_at_once(topology: Topology, forwarder_backend: str) -> None:
    """Static owns r1 and r2, the recorder test protocol (100/1) owns r3 and r4; each forwards its own flow."""
    snda, sndb, rtr, rxa, rxb = topology.namespaces("snda", "sndb", "rtr", "hrxa", "hrxb")
    link_a = topology.link(snda, rtr, "10.62.1.2/24", "10.62.1.1/24")
    topology.link(rtr, rxa, "10.62.2.1/24", "10.62.2.2/24")
    link_b = topology.link(sndb, rtr, f"{SOURCE_B}/24", "10.62.3.1/24")
    topology.link(rtr, rxb, "10.62.4.1/24", "10.62.4.2/24")
    snda.multicast_route(link_a.a_if)
    sndb.multicast_route(link_b.a_if)

    work = topology.workdir
    control = f"ipc://{work}/routing-a.ctl"
    tables = f"""\
[plugins.static]
interfaces = ["r1", "r2"]
routes = [{{ source = "10.62.1.2", group = "{G_A}", from = "r1", to = ["r2"] }}]

[plugins.test-routing-a]
protocol_id = 100
component_id = 1
interfaces = ["r3", "r4"]
control = "{control}"
"""
    up = rtr.mgm_up(tables, backend=forwarder_backend)
    routing_a = Control(control, timeout=scaled(2.0))
    try:
        wait_until(lambda: _pings(routing_a), 30, "the test routing protocol under mgm up")
        routing_a.call("add_membership", source="0.0.0.0", group=G_B, if_index=rtr.if_index("r4"))

        receivers = {(ns.role, group): ns.receiver(group, port, name=f"{ns.role}-{group}")
                     for ns in (rxa, rxb) for group, port in ((G_A, PORT_A), (G_B, PORT_B))}  # fmt: skip
        for rx in receivers.values():
            rx.wait_joined()
        snda.spawn(send_udp, G_A, PORT_A, 100_000, interval=0.02, source="10.62.1.2", name="send-a")
        sndb.spawn(send_udp, G_B, PORT_B, 100_000, interval=0.02, source=SOURCE_B, name="send-b")
        with topology.on_timeout("the two protocols did not both forward"):
            receivers[("hrxa", G_A)].wait_count(20, timeout=30)
            receivers[("hrxb", G_B)].wait_count(20, timeout=30)
        assert up.alive(), up.log()
        assert receivers[("hrxa", G_B)].count() == 0  # nobody wants G_B on r2
        assert receivers[("hrxb", G_A)].count() == 0  # nor G_A on r4
        out = KernelView(rtr, forwarder_backend).out_packets()
        assert out.get("r2", 0) > 0 and out.get("r4", 0) > 0, out
        manager = ManagerProc("probe", [], work / "probe.log", api=f"ipc://{work}/api")
        mfe_b = manager.request("get_mfe", {"source": SOURCE_B, "group": G_B})["mfe"]
        assert (mfe_b["in_if_index"], mfe_b["in_protocol_id"]) == (rtr.if_index("r3"), 100), mfe_b
        mfe_a = manager.request("get_mfe", {"source": "10.62.1.2", "group": G_A})["mfe"]
        assert (mfe_a["in_if_index"], mfe_a["in_protocol_id"]) == (rtr.if_index("r1"), 10006), mfe_a
    finally:
        routing_a.close()


def _pings(control: Control) -> bool:
    try:
        control.call("ping")
        return True
    except TimeoutError:
        return False
