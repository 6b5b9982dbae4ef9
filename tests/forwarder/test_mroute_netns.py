"""mroute.py against the kernel: a router namespace between a sender and a receiver namespace.

    snd eth0 10.1.0.2 --- r1 10.1.0.1 [rtr] r2 10.2.0.1 --- eth0 10.2.0.2 rcv

The router's multicast routing socket lives in an agent process
(mroute_agent.py) so that it stays open while the sender sends.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

import pytest
from mroute_agent import Agent, AgentError, proc_tables
from netns import Link, Namespace, Receiver, Topology, send_udp, wait_until

from mgm.plugins.forwarder import mroute
from mgm.plugins.testing import scaled

pytestmark = [pytest.mark.netns, pytest.mark.mroute]  # every test here holds MRT_INIT

SENDER = "10.1.0.2"


@dataclass
class Net:
    sender: Namespace
    router: Namespace
    receiver: Namespace
    up: Link
    down: Link
    r1: int
    r2: int


@pytest.fixture
def net(topology: Topology) -> Net:
    sender, router, receiver = topology.namespaces("snd", "rtr", "rcv")
    up = topology.link(sender, router, f"{SENDER}/24", "10.1.0.1/24")
    down = topology.link(router, receiver, "10.2.0.1/24", "10.2.0.2/24")
    sender.multicast_route(up.a_if)
    return Net(sender, router, receiver, up, down, router.if_index("r1"), router.if_index("r2"))


def _vifs(agent: Agent, net: Net) -> None:
    agent.call("add_vif", vif=0, if_index=net.r1)
    agent.call("add_vif", vif=1, if_index=net.r2)


def _join(net: Net, group: str, port: int) -> Receiver:
    rx = net.receiver.receiver(group, port)
    rx.wait_joined()
    return rx


def test_an_mfc_entry_forwards_and_counts(net: Net) -> None:
    agent = Agent.start(net.router)
    _vifs(agent, net)
    agent.call("add_mfc", source=SENDER, group="239.1.1.1", parent=0, oifs={1: 1})
    rx = _join(net, "239.1.1.1", 6000)
    net.sender.call(send_udp, "239.1.1.1", 6000, 5, interval=0)
    assert rx.wait_count(5) == 5
    assert agent.call("sg_count", source=SENDER, group="239.1.1.1") == {"packets": 5, "bytes": 5 * 60, "wrong_if": 0}
    assert agent.call("vif_count", vif=1)["out_packets"] == 5
    assert agent.call("vif_count", vif=0)["in_packets"] == 5
    assert agent.call("vif_count", vif=7) is None
    assert agent.call("sg_count", source=SENDER, group="239.1.1.2") is None
    proc = agent.call("proc")
    by_vif = {v["vif"]: v for v in proc["vif"]}
    assert by_vif[1]["name"] == "r2" and by_vif[1]["out_packets"] == 5
    (entry,) = [m for m in proc["mfc"] if m["group"] == "239.1.1.1"]
    assert (entry["source"], entry["parent"], entry["packets"], entry["oifs"]) == (SENDER, 0, 5, {"1": 1})


def test_a_replaced_entry_keeps_its_counters_and_a_deleted_one_stops(net: Net) -> None:
    agent = Agent.start(net.router)
    _vifs(agent, net)
    agent.call("add_mfc", source=SENDER, group="239.1.1.3", parent=0, oifs={1: 1})
    rx = _join(net, "239.1.1.3", 6001)
    net.sender.call(send_udp, "239.1.1.3", 6001, 3, interval=0)
    rx.wait_count(3)
    agent.call("add_mfc", source=SENDER, group="239.1.1.3", parent=0, oifs={})  # the OIL emptied
    net.sender.call(send_udp, "239.1.1.3", 6001, 2, interval=0)
    wait_until(lambda: agent.call("sg_count", source=SENDER, group="239.1.1.3")["packets"] == 5, 10, "5 packets")
    assert agent.call("vif_count", vif=1)["out_packets"] == 3
    assert rx.count() == 3
    agent.call("add_mfc", source=SENDER, group="239.1.1.3", parent=1, oifs={0: 1})  # another incoming VIF
    (entry,) = [m for m in agent.call("proc")["mfc"] if m["group"] == "239.1.1.3"]
    assert (entry["parent"], entry["oifs"], entry["packets"]) == (1, {"0": 1}, 5)
    agent.call("del_mfc", source=SENDER, group="239.1.1.3")
    assert agent.call("sg_count", source=SENDER, group="239.1.1.3") is None


def test_nocache_upcall_and_the_queued_packet_follows_the_new_entry(net: Net) -> None:
    agent = Agent.start(net.router)
    _vifs(agent, net)
    rx = _join(net, "239.1.1.4", 6002)
    net.sender.call(send_udp, "239.1.1.4", 6002, 1)
    upcalls = agent.call("upcalls", n=1)
    assert upcalls == [{"kind": mroute.IGMPMSG_NOCACHE, "vif": 0, "source": SENDER, "group": "239.1.1.4"}]
    agent.call("add_mfc", source=SENDER, group="239.1.1.4", parent=0, oifs={1: 1})
    assert rx.wait_count(1) == 1  # the kernel held the packet while the entry was unresolved


def test_wrongvif_upcall_for_a_packet_on_another_vif(net: Net) -> None:
    agent = Agent.start(net.router)
    _vifs(agent, net)
    agent.call("add_mfc", source=SENDER, group="239.1.1.5", parent=1, oifs={})  # expects it on r2
    net.sender.call(send_udp, "239.1.1.5", 6003, 1)
    upcalls = agent.call("upcalls", n=1)
    assert upcalls == [{"kind": mroute.IGMPMSG_WRONGVIF, "vif": 0, "source": SENDER, "group": "239.1.1.5"}]
    wait_until(lambda: agent.call("sg_count", source=SENDER, group="239.1.1.5")["wrong_if"] == 1, 10, "wrong_if 1")


def test_no_wrongvif_upcall_outside_the_oil_in_oil_mode(net: Net) -> None:
    agent = Agent.start(net.router, wrong_vif="oil")
    _vifs(agent, net)
    agent.call("add_mfc", source=SENDER, group="239.1.1.6", parent=1, oifs={})
    agent.call("add_mfc", source=SENDER, group="239.1.1.7", parent=1, oifs={0: 1})
    net.sender.call(send_udp, "239.1.1.6", 6004, 1)
    net.sender.call(send_udp, "239.1.1.7", 6004, 1)
    upcalls = agent.call("upcalls", n=2, timeout=2.0)  # the second never comes: at most one is there
    assert [u["group"] for u in upcalls] == ["239.1.1.7"]


def test_a_second_mrt_init_names_the_likely_cause(net: Net) -> None:
    first = Agent.start(net.router)
    second = Agent.start(net.router)
    with pytest.raises(AgentError) as info:
        second.call("add_vif", vif=0, if_index=net.r1)
    assert info.value.errno == errno.EADDRINUSE
    message = str(info.value)
    assert "MRT_INIT" in message and "pimd" in message and "smcroute" in message and "igmpproxy" in message
    first.call("add_vif", vif=0, if_index=net.r1)  # the first one is unaffected


def test_static_entries_outlive_the_routing_socket_and_forward_again_at_the_next_mrt_init(net: Net) -> None:
    first = Agent.start(net.router, static=True)
    _vifs(first, net)
    first.call("add_mfc", source=SENDER, group="239.1.1.8", parent=0, oifs={1: 1})
    rx = _join(net, "239.1.1.8", 6005)
    net.sender.call(send_udp, "239.1.1.8", 6005, 2, interval=0)
    rx.wait_count(2)
    first.stdin.close()  # the agent closes its routing socket (MRT_DONE) and exits
    first.proc.popen.wait(scaled(10))
    tables = net.router.call(proc_tables)  # no process holds the routing socket now
    assert [(v["vif"], v["name"], v["flags"]) for v in tables["vif"]] == [
        (0, "r1", mroute.VIFF_USE_IFINDEX | mroute.VIFF_STATIC),
        (1, "r2", mroute.VIFF_USE_IFINDEX | mroute.VIFF_STATIC),
    ]
    assert [(m["group"], m["parent"], m["oifs"]) for m in tables["mfc"]] == [("239.1.1.8", 0, {"1": 1})]
    second = Agent.start(net.router, static=True)  # MRT_INIT only: nothing added
    net.sender.call(send_udp, "239.1.1.8", 6005, 3, interval=0)
    assert rx.wait_count(5) == 5
    assert second.call("sg_count", source=SENDER, group="239.1.1.8")["packets"] == 5
    second.call("del_mfc", source=SENDER, group="239.1.1.8")
    second.call("del_vif", vif=0)
    second.call("del_vif", vif=1)
    assert second.call("proc") == {"vif": [], "mfc": []}
