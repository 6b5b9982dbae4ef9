"""The whole stack forwarding real traffic: hosts join with ordinary sockets, `mgm up` routes.

Every test builds `e2e_stack.build`'s topology (sender, router running
`mgm up` with igmp and the Linux forwarder, one host per receiver) and
removes it afterwards.  Senders run in the background for longer than a
test needs and are killed with the topology; every wait is a poll with a
deadline.  Needs root; under CI=true a missing root fails.
"""

from __future__ import annotations

import pytest
from e2e_stack import S1, S2, WAIT, Stack, build
from netns import Topology, send_udp, wait_until

pytestmark = pytest.mark.netns

G, PORT = "239.90.1.1", 6001


def test_packets_reach_exactly_the_joined_receivers_and_stop_after_a_leave(
    topology: Topology, forwarder_backend: str
) -> None:
    stack = build(topology, receivers=3, backend=forwarder_backend)
    rx1 = stack.receiver(0, G, PORT)
    rx2 = stack.receiver(1, G, PORT)  # h3 (behind r4) joins nothing
    stack.sender.spawn(send_udp, G, PORT, 100_000, interval=0.005, source=S1, name="send")
    rx1.wait_count(20, WAIT)
    rx2.wait_count(20, WAIT)
    assert stack.kernel_oil(S1, G) == {"r2", "r3"}
    assert stack.oil(S1, G) == {"r2", "r3"}
    assert stack.kernel.out_packets().get("r4") == 0, "nothing goes to the host that joined nothing"
    assert stack.kernel.out_packets().get("r1") == 0, "nothing goes back towards the sender"

    rx2.leave()
    # The default query interval (membership interval 251 s) is far beyond this deadline: only the
    # last member queries (2 x 0.2 s) can take r3 out so soon.
    wait_until(lambda: stack.kernel_oil(S1, G) == {"r2"}, WAIT, "r3 out of the kernel's output list after the leave")
    assert stack.oil(S1, G) == {"r2"}
    stopped_at = rx2.count()
    before = rx1.count()
    rx1.wait_count(before + 50, WAIT)  # 50 more packets went by: none of them reached the host that left
    assert rx2.count() == stopped_at
    stack.alive()


def test_an_igmpv3_source_join_gets_that_source_and_not_another(topology: Topology, forwarder_backend: str) -> None:
    stack = build(topology, receivers=1, backend=forwarder_backend)
    rx = stack.receiver(0, G, PORT, source=S1)  # IP_ADD_SOURCE_MEMBERSHIP: (S1,G) only
    stack.sender.spawn(send_udp, G, PORT, 100_000, interval=0.005, source=S1, name="send-s1")
    stack.sender.spawn(send_udp, G, PORT, 100_000, interval=0.005, source=S2, name="send-s2")
    rx.wait_count(20, WAIT, source=S1)
    # S2's packets reached the router too (its kernel entry exists) and go nowhere: the host's own
    # source filter is not what keeps them away.
    wait_until(lambda: stack.kernel_oil(S2, G) == set(), WAIT, "a kernel entry for (S2,G) with an empty output list")
    assert stack.kernel_oil(S1, G) == {"r2"}
    assert stack.oil(S2, G) == set()
    s2 = stack.kernel.entry(S2, G)
    assert s2 is not None and s2.packets > 0
    assert rx.count(S2) == 0
    stack.alive()


def _agrees(stack: Stack) -> bool:
    """Every resolved kernel entry is an MFE with the same incoming interface and outgoing list, and back."""
    names = stack.if_names()
    kernel = {key: (e.parent, set(e.oifs)) for key, e in stack.kernel.entries().items()}
    manager = {(m["source"], m["group"]): (names[m["in_if_index"]], {names[o["if_index"]] for o in m["oil"]})
               for m in stack.show("mfes")}  # fmt: skip
    return bool(kernel) and kernel == manager


def test_show_mfes_agrees_with_the_kernel_and_shows_its_counters(topology: Topology, forwarder_backend: str) -> None:
    stack = build(topology, receivers=2, backend=forwarder_backend)
    group2, port2 = "239.90.2.2", 6002
    stack.receiver(0, G, PORT)
    stack.receiver(1, G, PORT)
    rx3 = stack.receiver(1, group2, port2)
    # A few packets make each flow: the kernel holds only a handful while the MFE is being made.
    stack.sender.call(send_udp, G, PORT, 3, interval=0.02, source=S1)
    stack.sender.call(send_udp, group2, port2, 3, interval=0.02, source=S2)
    wait_until(lambda: stack.kernel_oil(S1, G) == {"r2", "r3"} and stack.kernel_oil(S2, group2) == {"r3"}, WAIT,
               "both flows in the kernel")  # fmt: skip
    wait_until(lambda: _agrees(stack), WAIT, "`mgm show mfes` to list what the kernel lists")

    before = rx3.count()
    stack.sender.call(send_udp, G, PORT, 30, interval=0.002, source=S1)
    stack.sender.call(send_udp, group2, port2, 20, interval=0.002, source=S2)
    rx3.wait_count(before + 20, WAIT)

    # The sender has stopped: the kernel's counters are final, and after a counter period the
    # manager's statistics say the same.
    def counted() -> bool:
        mfe = stack.mfe(S1, G, "--stats")
        entry = stack.kernel.entry(S1, G)
        return mfe is not None and entry is not None and entry.packets >= 30 and mfe.get("in_packets") == entry.packets

    wait_until(counted, WAIT, "the kernel's packet count of (S1,G) in `mgm show mfes --stats`")
    mfe = stack.mfe(S1, G, "--stats")
    entry = stack.kernel.entry(S1, G)
    assert mfe is not None and entry is not None
    assert mfe["in_bytes"] == entry.bytes
    names = stack.if_names()
    # the output list never changed since the entry was made: every packet went out of both
    assert {names[o["if_index"]]: o["out_packets"] for o in mfe["oil"]} == {"r2": entry.packets, "r3": entry.packets}
    stack.alive()


def test_traffic_before_any_receiver_makes_a_negative_mfe_that_a_join_opens_at_once(
    topology: Topology, forwarder_backend: str
) -> None:
    """The MFE timeout is the manager's default (900 s); the join must open the entry long before."""
    stack = build(topology, receivers=1, backend=forwarder_backend)
    stack.sender.spawn(send_udp, G, PORT, 100_000, interval=0.005, source=S1, name="send")
    wait_until(lambda: stack.kernel_oil(S1, G) == set(), WAIT, "a negative kernel entry (empty output list)")
    mfe = stack.mfe(S1, G)
    assert mfe is not None and mfe["oil"] == [], mfe
    rx = stack.receiver(0, G, PORT)
    rx.wait_count(10, WAIT)  # within 10 s of the join, 890 s before the negative entry would expire
    assert stack.kernel_oil(S1, G) == {"r2"}
    stack.alive()


def test_link_local_groups_are_never_forwarded(topology: Topology, forwarder_backend: str) -> None:
    stack = build(topology, receivers=1, backend=forwarder_backend)
    mdns, mdns_port = "224.0.0.251", 5353
    rx_local = stack.receiver(0, mdns, mdns_port)
    rx = stack.receiver(0, G, PORT)  # the path works: a routable group sent at the same time arrives
    stack.sender.spawn(send_udp, mdns, mdns_port, 100_000, interval=0.005, ttl=8, source=S1, name="send-mdns")
    stack.sender.spawn(send_udp, G, PORT, 100_000, interval=0.005, source=S1, name="send")
    rx.wait_count(50, WAIT)
    assert rx_local.count() == 0
    assert stack.mfe(S1, mdns) is None and stack.kernel.entry(S1, mdns) is None
    stack.alive()
