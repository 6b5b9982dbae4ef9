"""The SSM range and the local-source rule against real Linux hosts, `mgm plugin igmp` in a router namespace.

Same link as test_igmp_netns.py (a bridge flooding like a hub, one
namespace per node).  What the router dropped is read from its log: each
drop is logged (at info, or at debug once a minute has not passed; the
plugin runs at debug), so "the report arrived and was ignored" is an
event to wait for, after which the absence of a membership means
something.  The counters logged at stop must agree.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mgm_testplugins.processes import ManagerProc
from netns import Node, NsProcess, Topology, segment, wait_until
from test_igmp_netns import ANY, SUBNET, WAIT, igmp_memberships, start_igmp, wait_memberships

pytestmark = pytest.mark.netns

SSM_GROUP = "232.11.11.11"
SSM_SOURCE = "10.99.0.5"


def drops(igmp: NsProcess, reason: str, text: str) -> int:
    """How many log lines say a message matching `text` was dropped under counter `reason`."""
    return sum(1 for line in igmp.log().splitlines() if text in line and f"counter {reason}" in line)


def stopped_counters(igmp: NsProcess) -> dict[str, int]:
    """Stop the plugin; the counters it logs at stop (one interface)."""
    igmp.stop()
    found = re.findall(r"igmp: \S+ counters: (\{.*\})", igmp.log())
    assert found, f"no counters logged at stop:\n{igmp.log()[-3000:]}"
    return {k: int(v) for k, v in re.findall(r"'(\w+)': (\d+)", found[-1])}


def off_the_subnet(far: Node) -> None:
    """Readdress `far` as 10.88.0.3/24: on the router's link, in another subnet than the router's."""
    far.ns.ip("addr", "flush", "dev", far.ifname)
    far.ns.ip("addr", "add", "10.88.0.3/24", "dev", far.ifname)
    far.ns.multicast_route(far.ifname)


def test_any_source_joins_for_an_ssm_group_make_no_membership_a_source_join_does(
    manager: ManagerProc, ipc_dir: Path, topology: Topology
) -> None:
    nodes = segment(topology, SUBNET, rtr=1, asm=2, old=3, ssm=4)
    router, asm, old, ssm = nodes["rtr"], nodes["asm"], nodes["old"], nodes["ssm"]
    old.ns.sysctl(f"net.ipv4.conf.{old.ifname}.force_igmp_version", 2)
    igmp = start_igmp(router, manager, ipc_dir)
    star_g = (ANY, SSM_GROUP, router.if_index)
    s_g = (SSM_SOURCE, SSM_GROUP, router.if_index)

    asm_rx = asm.ns.receiver(SSM_GROUP, 5011)  # IP_ADD_MEMBERSHIP: a v3 TO_EX({}) record
    old_rx = old.ns.receiver(SSM_GROUP, 5011)  # the same from a v2 host: a v2 report
    asm_rx.wait_joined()
    old_rx.wait_joined()
    wait_until(lambda: drops(igmp, "ignored_ssm_asm", f"record for {SSM_GROUP} from {asm.address}")
               and drops(igmp, "ignored_ssm_asm", f"v2 report for {SSM_GROUP} from {old.address}"),
               WAIT, "the router to drop both any-source joins")  # fmt: skip
    assert not {m for m in igmp_memberships(manager) if m[1] == SSM_GROUP}, "no membership from an any-source join"

    ssm_rx = ssm.ns.receiver(SSM_GROUP, 5011, source=SSM_SOURCE)  # IP_ADD_SOURCE_MEMBERSHIP: ALLOW({S})
    ssm_rx.wait_joined()
    wait_memberships(manager, lambda m: s_g in m, f"({SSM_SOURCE},{SSM_GROUP}) from the source-specific join")

    # The any-source hosts keep answering the general queries; every answer is dropped and (*,G) never appears.
    seen = drops(igmp, "ignored_ssm_asm", f"for {SSM_GROUP} from {asm.address}")
    wait_until(lambda: drops(igmp, "ignored_ssm_asm", f"for {SSM_GROUP} from {asm.address}") > seen, WAIT,
               "the any-source host's next report, dropped")  # fmt: skip
    memberships = {m for m in igmp_memberships(manager) if m[1] == SSM_GROUP}
    assert memberships == {s_g}, f"only the (S,G) membership, never {star_g}: {memberships}"
    assert "(*,232.11.11.11) joined" not in igmp.log()

    counters = stopped_counters(igmp)
    assert counters["ignored_ssm_asm"] >= 3 and counters["reports_received"] >= counters["ignored_ssm_asm"]
    assert counters["foreign_source"] == counters["bad_ttl"] == counters["no_router_alert"] == 0, counters


def test_a_host_outside_the_interfaces_subnet_is_not_listened_to(
    manager: ManagerProc, ipc_dir: Path, topology: Topology
) -> None:
    nodes = segment(topology, SUBNET, rtr=1, near=2, far=3)
    router, near, far = nodes["rtr"], nodes["near"], nodes["far"]
    off_the_subnet(far)
    igmp = start_igmp(router, manager, ipc_dir)

    far_rx = far.ns.receiver("239.12.0.2", 5012)
    near_rx = near.ns.receiver("239.12.0.1", 5012)
    far_rx.wait_joined()
    near_rx.wait_joined()
    wait_memberships(manager, lambda m: (ANY, "239.12.0.1", router.if_index) in m, "(*,239.12.0.1) from the near host")
    wait_until(lambda: drops(igmp, "foreign_source", "from 10.88.0.3 (not on the interface's subnets 10.77.0.0/24)"),
               WAIT, "the router to drop the far host's report")  # fmt: skip
    assert (ANY, "239.12.0.2", router.if_index) not in igmp_memberships(manager)

    counters = stopped_counters(igmp)
    assert counters["foreign_source"] >= 1 and counters["ignored_ssm_asm"] == 0, counters


def test_an_address_added_to_the_interface_widens_the_subnet_check_at_once(
    manager: ManagerProc, ipc_dir: Path, topology: Topology
) -> None:
    nodes = segment(topology, SUBNET, rtr=1, far=3)
    router, far = nodes["rtr"], nodes["far"]
    off_the_subnet(far)
    igmp = start_igmp(router, manager, ipc_dir)
    far.ns.receiver("239.12.0.2", 5012).wait_joined()
    wait_until(lambda: drops(igmp, "foreign_source", "from 10.88.0.3"), WAIT, "the far host dropped")

    router.ns.ip("addr", "add", "10.88.0.1/24", "dev", router.ifname)
    # an address event, not the 10 s poll there was: 2 s is room for a loaded machine, not for a poll
    wait_until(lambda: "local subnets: 10.77.0.0/24, 10.88.0.0/24" in igmp.log(), 2.0, "the new subnet to count")
    far.ns.receiver("239.12.0.3", 5012).wait_joined()
    wait_memberships(manager, lambda m: (ANY, "239.12.0.3", router.if_index) in m, "the far host's join, now local")
