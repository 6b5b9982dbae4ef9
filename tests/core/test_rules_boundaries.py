"""Boundaries: group ranges an interface's owner keeps from ever being forwarded out of it.

[ours] After RRAS's per-interface multicast boundaries. The membership rules stay as they are
(memberships are recorded, alerts flow); only the OILs leave bounded interfaces out.
"""

from __future__ import annotations

from typing import Any

import pytest
from rules_harness import ANY, IGMP, PIM, Core, Proto, iff

from mgm.bus.status import Status
from mgm.core.types import Interface

S = "10.0.0.1"
G = "239.5.1.1"
OTHER = "239.6.1.1"


@pytest.fixture
def core() -> Core:
    return Core(liveness=1e9, question_deadline=0.5)


class Router:
    """A proxy-like protocol owns 1 (upstream, towards S), 2 and 3; IGMP co-owns 2 and 3."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.igmp = core.register(IGMP, questions=[])
        self.proxy = core.register(PIM, questions=[])
        self.fwd = core.register(99)
        for i in (1, 2, 3):
            self.proxy.take(i)
        for i in (2, 3):
            self.igmp.take(i)
        core.routes[S] = Interface(1)
        core.routes["10.0.0.2"] = Interface(1)
        core.drop()

    def bound(self, if_index: int, *ranges: tuple[str, str], by: Proto | None = None) -> Any:
        boundaries = [{"group": g, "group_mask": m} for g, m in ranges]
        return (by or self.proxy)("set_boundaries", **iff(if_index), boundaries=boundaries)

    def oil(self, source: str = S, group: str = G) -> list[int]:
        return [o["if_index"] for o in self.core.req(b"observer", "get_mfe", source=source, group=group)["mfe"]["oil"]]


@pytest.fixture
def net(core: Core) -> Router:
    return Router(core)


def test_a_bounded_interface_stays_out_of_a_new_mfe(core: Core, net: Router) -> None:
    """The OIL of a new MFE leaves out interfaces whose boundaries cover the group; others are not affected."""
    net.bound(3, ("239.5.0.0", "255.255.0.0"))
    for i in (2, 3):
        net.igmp.join(ANY, G, i)
        net.igmp.join(ANY, OTHER, i)
    net.fwd.packet(S, G, 1)
    net.fwd.packet(S, OTHER, 1)
    assert net.oil(S, G) == [2]
    assert net.oil(S, OTHER) == [2, 3]


def test_a_later_join_on_a_bounded_interface_is_recorded_but_not_forwarded(core: Core, net: Router) -> None:
    """The leak a creation_alert veto cannot stop: a receiver joining after the MFE exists."""
    net.bound(3, ("239.5.0.0", "255.255.0.0"))
    net.igmp.join(ANY, G, 2)
    net.fwd.packet(S, G, 1)
    core.drop()
    net.igmp.join(ANY, G, 3)
    types = [e.type for e in core.events()]
    assert "membership_added" in types and "local_join" in types  # the MGM still learns the receiver
    assert "mfe_updated" not in types
    assert net.oil() == [2]


def test_setting_a_boundary_takes_the_interface_out_of_existing_mfes(core: Core, net: Router) -> None:
    """Only MFEs of groups in the range lose the interface, and an emptied OIL is pruned as usual."""
    net.igmp.join(ANY, G, 3)
    net.igmp.join(ANY, OTHER, 3)
    net.fwd.packet(S, G, 1)
    net.fwd.packet(S, OTHER, 1)
    core.drop()
    net.bound(3, (G, "255.255.255.255"))
    events = core.events()
    assert [e.type for e in events] == ["boundaries_set", "mfe_updated", "prune_alert"]
    assert events[0].fields["boundaries"] == [{"group": G, "group_mask": "255.255.255.255"}]
    assert net.oil(S, G) == [] and net.oil(S, OTHER) == [3]


def test_lifting_a_boundary_brings_the_members_back(core: Core, net: Router) -> None:
    """Replacing the ranges with none adds the interface back where memberships want it."""
    net.bound(3, ("239.0.0.0", "255.0.0.0"))
    net.igmp.join(ANY, G, 3)
    net.fwd.packet(S, G, 1)
    assert net.oil() == []
    core.drop()
    net.bound(3)
    assert [e.type for e in core.events()] == ["boundaries_set", "mfe_updated", "join_alert"]
    assert net.oil() == [3]


def test_boundaries_go_with_the_ownership(core: Core, net: Router) -> None:
    """A boundary is its setter's: when the proxy releases the interface, IGMP's receivers get traffic again."""
    net.bound(3, ("0.0.0.0", "0.0.0.0"))  # every group
    net.igmp.join(ANY, G, 3)
    net.fwd.packet(S, G, 1)
    assert net.oil() == []
    net.proxy("release_interface_ownership", **iff(3))
    assert net.oil() == [3]
    assert core.mgm.snapshot("state")["interfaces"][-1]["boundaries"] == []


def test_forward_state_adds_respect_boundaries(core: Core, net: Router) -> None:
    """A forward-only add of a bounded interface changes nothing; lifting the boundary lets it in."""
    net.igmp.join(ANY, G, 2)
    net.fwd.packet(S, G, 1)
    net.bound(3, ("239.5.0.0", "255.255.0.0"))
    net.proxy.join(S, G, 3, flags=2)
    assert net.oil() == [2]
    net.bound(3)
    assert net.oil() == [2, 3]


def test_the_snapshot_lists_each_owners_boundaries(core: Core, net: Router) -> None:
    """IGMP may set its own boundaries beside the routing owner's; observers see both, each with its setter."""
    net.bound(2, ("239.5.0.0", "255.255.0.0"), ("239.7.0.0", "255.255.0.0"))
    net.bound(2, ("239.9.9.9", "255.255.255.255"), by=net.igmp)
    (iface,) = [i for i in core.mgm.snapshot("state")["interfaces"] if i["if_index"] == 2]
    assert [(b["protocol_id"], b["group"]) for b in iface["boundaries"]] == [
        (PIM, "239.5.0.0"), (PIM, "239.7.0.0"), (IGMP, "239.9.9.9")
    ]  # fmt: skip
    core.drop()
    net.bound(2, ("239.7.0.0", "255.255.0.0"), ("239.5.0.0", "255.255.0.0"))  # the same set: no event
    assert core.events() == []


@pytest.mark.parametrize(
    ("group", "mask", "words"),
    [
        ("239.5.0.0", "255.0.255.0", "not a prefix mask"),
        ("239.5.1.0", "255.255.0.0", "bits outside"),
        ("10.0.0.0", "255.0.0.0", "not inside 224.0.0.0/4"),
        ("224.0.0.0", "224.0.0.0", "not inside 224.0.0.0/4"),
        ("239.5.0.0", "nonsense", "dotted-quad"),
    ],
)
def test_bad_ranges_are_refused(core: Core, net: Router, group: str, mask: str, words: str) -> None:
    """Each range is a prefix inside 224.0.0.0/4 (or every group); anything else is 87 and changes nothing."""
    assert words in core.refused(Status.ERROR_INVALID_PARAMETER, net.bound, 2, (group, mask)).message


def test_only_an_owner_sets_boundaries(core: Core, net: Router) -> None:
    """Like memberships, boundaries need the interface owned by the caller."""
    core.refused(Status.ERROR_INVALID_PARAMETER, net.bound, 2, ("239.5.0.0", "255.255.0.0"), by=core.register(PIM, 2))
    too_many = [{"group": "239.5.0.0", "group_mask": "255.255.0.0"}] * 257
    core.refused(Status.ERROR_INVALID_PARAMETER, net.proxy, "set_boundaries", **iff(2), boundaries=too_many)
