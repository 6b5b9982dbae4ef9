"""Memberships, local join/leave, and the join_alert / prune_alert table (MGM-SPEC: Membership)."""

from __future__ import annotations

import pytest
from rules_harness import ANY, DVMRP, IGMP, PIM, Core, Proto, ev, iff, sgf

from mgm.bus.status import Status
from mgm.core.state import ALERTS
from mgm.core.types import Interface

G = "239.1.1.1"
S = "10.0.0.1"
Three = tuple[Proto, Proto, Proto]


def added(p: Proto, source: str, group: str, if_index: int, type_: str = "membership_added") -> object:
    return ev(None, type_, protocol_id=p.pid, component_id=p.cid, **sgf(source, group), **iff(if_index), flags=1)


def deleted(p: Proto, source: str, group: str, if_index: int) -> object:
    return added(p, source, group, if_index, "membership_deleted")


def join_alert(to: Proto, source: str = ANY, group: str = G, update: bool = True) -> object:
    return ev(to, "join_alert", **sgf(source, group), member_update=update)


def prune_alert(to: Proto, if_index: int, source: str = ANY, group: str = G) -> object:
    return ev(to, "prune_alert", **sgf(source, group), **iff(if_index), member_delete=True)


@pytest.fixture
def three(core: Core) -> Three:
    """Three routing protocols, each owning two interfaces (1,2), (3,4), (5,6)."""
    a, b, c = core.protos(PIM, DVMRP, 40)
    for p, ifs in ((a, (1, 2)), (b, (3, 4)), (c, (5, 6))):
        for i in ifs:
            p.take(i)
    core.drop()
    return a, b, c


# --- recording ------------------------------------------------------------------


def test_add_records_the_membership(core: Core, pim: Proto) -> None:
    """add with MGM_JOIN_STATE_FLAG records the membership (membership_added, in the state snapshot)."""
    core.drop()
    assert pim.join(ANY, G, 1) == {}
    assert core.events() == [added(pim, ANY, G, 1)]  # nobody else is registered to alert
    state = core.mgm.snapshot("state")
    assert state["memberships"] == [{"protocol_id": PIM, "component_id": 1, **sgf(ANY, G), **iff(1), "flags": 1}]


def test_add_on_an_interface_not_owned_is_invalid_parameter(core: Core) -> None:
    """[ours] A client must own the interface before adding a membership on it (87)."""
    pim, dvmrp = core.protos(PIM, DVMRP)
    dvmrp.take(1)
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.join, ANY, G, 1)
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.join, ANY, G, 2)


def test_delete_on_an_interface_not_owned_is_invalid_parameter(core: Core, pim: Proto) -> None:
    """[ours] Deleting on an interface the client does not own is 87, even if the membership is elsewhere."""
    pim.join(ANY, G, 1)
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.leave, ANY, G, 2)


@pytest.mark.parametrize("flags", [0, 3, 4, 8, -1, 1 << 40, True])  # True: a bool is not an int
def test_flags_other_than_join_or_forward_are_invalid(core: Core, pim: Proto, flags: int) -> None:
    """flags must be MGM_JOIN_STATE_FLAG (1) or MGM_FORWARD_STATE_FLAG (2); anything else is 87."""
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.join, ANY, G, 1, flags=flags)


def test_delete_of_a_missing_membership_is_not_found(core: Core, pim: Proto) -> None:
    """[ours] Deleting a membership that does not exist is ERROR_NOT_FOUND."""
    core.refused(Status.ERROR_NOT_FOUND, pim.leave, ANY, G, 1)
    pim.join(ANY, G, 1)
    core.refused(Status.ERROR_NOT_FOUND, pim.leave, S, G, 1)


def test_delete_publishes_membership_deleted(core: Core, pim: Proto) -> None:
    """delete removes the membership; observers see membership_deleted."""
    pim.join(ANY, G, 1)
    core.drop()
    assert pim.leave(ANY, G, 1) == {}
    assert core.events() == [deleted(pim, ANY, G, 1)]
    assert core.mgm.snapshot("state")["memberships"] == []


def test_re_add_is_no_error_and_changes_nothing(core: Core, pim: Proto) -> None:
    """[ours] Adding an existing membership again is NO_ERROR with no event and no state change."""
    pim.join(ANY, G, 1)
    before = core.mgm.snapshot("state")
    core.drop()
    assert pim.join(ANY, G, 1) == {}
    assert core.events() == []
    assert core.mgm.snapshot("state") == before


# --- local join / leave ---------------------------------------------------------------


def test_igmp_add_and_delete_tell_the_routing_owner_local_join_and_leave(core: Core) -> None:
    """IGMP adding on an interface a routing protocol owns: that owner gets local_join; local_leave mirrors it."""
    igmp, pim = core.protos(IGMP, PIM)
    pim.take(1)
    igmp.take(1)
    core.drop()
    igmp.join(S, G, 1)
    assert core.events()[:2] == [added(igmp, S, G, 1), ev(pim, "local_join", **sgf(S, G), **iff(1))]
    igmp.join(ANY, G, 1)
    core.drop()
    igmp.leave(ANY, G, 1)
    assert core.events()[:2] == [deleted(igmp, ANY, G, 1), ev(pim, "local_leave", **sgf(ANY, G), **iff(1))]


def test_no_local_join_where_igmp_owns_alone(core: Core) -> None:
    """Nobody gets a local join for an interface IGMP owns alone."""
    igmp = core.register(IGMP)
    igmp.take(1)
    core.drop()
    igmp.join(ANY, G, 1)
    assert core.events() == [added(igmp, ANY, G, 1)]


def test_routing_protocol_membership_is_no_local_join_to_igmp(core: Core) -> None:
    """A routing protocol's own membership is never reported to IGMP beside it."""
    igmp, pim = core.protos(IGMP, PIM)
    pim.take(1)
    igmp.take(1)
    core.drop()
    pim.join(ANY, G, 1)
    assert [e.type for e in core.events() if e.to is not None] == ["join_alert"]


def test_local_members_are_in_the_owners_snapshot(core: Core) -> None:
    """The proto snapshot lists the local joins in effect for the routing owner."""
    igmp, pim = core.protos(IGMP, PIM)
    pim.take(1)
    igmp.take(1)
    igmp.join(ANY, G, 1)
    snap = core.mgm.snapshot("proto/20/1")
    assert snap["local_members"] == [{**sgf(ANY, G), **iff(1)}]
    assert snap["interfaces"] == [{**iff(1), "igmp_enabled": True}]


# --- the (*,G) alert table ---------------------------------------------------------------


def test_alert_table_reads_as_documented() -> None:
    """The ALERTS table has exactly the six rows of the spec."""
    assert len(ALERTS) == 6
    assert ALERTS[("(*,G)", "join", 1)] != ALERTS[("(*,G)", "join", 2)]


# Each row: the (client, interface) pairs joined before (clients a, b, c = 0, 1, 2 own (1,2), (3,4), (5,6)),
# then one join or leave of (*,G), and the clients the (*,G) table alerts for it (join_alert for a join,
# prune_alert naming the interface for a leave).
STAR_G_TABLE = [
    pytest.param((), "join", (1, 3), (0, 2), id="first client for G alerts every other registered client"),
    pytest.param(((1, 3),), "join", (2, 5), (1,), id="second client for G alerts the first only"),
    pytest.param(((1, 3), (2, 5)), "join", (0, 1), (), id="later clients alert nobody"),
    pytest.param(((0, 1),), "join", (0, 2), (), id="a client already with receivers adding an interface is not new"),
    pytest.param(((0, 1), (1, 3), (2, 5)), "leave", (0, 1), (), id="one of three clients leaving alerts nobody"),
    pytest.param(((0, 1), (1, 3)), "leave", (1, 3), (0,), id="second-to-last client leaving alerts the one remaining"),
    pytest.param(((1, 3),), "leave", (1, 3), (0, 2), id="last client leaving alerts every other registered client"),
    pytest.param(((0, 1), (0, 2)), "leave", (0, 1), (), id="only a client's last interface going counts"),
]


@pytest.mark.parametrize(("before", "op", "change", "alerted"), STAR_G_TABLE)
def test_star_g_alert_table(core: Core, three: Three, before: tuple[tuple[int, int], ...], op: str,
                            change: tuple[int, int], alerted: tuple[int, ...]) -> None:  # fmt: skip
    """(*,G): join_alert for a client's first receivers, prune_alert for its last, to the clients the table names."""
    for who, if_index in before:
        three[who].join(ANY, G, if_index)
    core.drop()
    p, if_index = three[change[0]], change[1]
    if op == "join":
        p.join(ANY, G, if_index)
        expected = [added(p, ANY, G, if_index), *(join_alert(three[k]) for k in alerted)]
    else:
        p.leave(ANY, G, if_index)
        expected = [deleted(p, ANY, G, if_index), *(prune_alert(three[k], if_index) for k in alerted)]
    assert core.events() == expected


def test_igmp_counts_as_a_client_in_the_alert_rules(core: Core) -> None:
    """[ours] IGMP is a client like any other for join_alert/prune_alert."""
    igmp, pim = core.protos(IGMP, PIM)
    pim.take(1)
    igmp.take(2)
    igmp.join(ANY, G, 2)
    core.drop()
    pim.join(ANY, G, 1)
    assert core.events() == [added(pim, ANY, G, 1), join_alert(igmp)]


def test_star_star_follows_the_star_g_rules(core: Core, three: Three) -> None:
    """(*,*) is (*,G) with all groups as the one group."""
    a, b, c = three
    a.join(ANY, ANY, 1)
    assert core.events() == [added(a, ANY, ANY, 1), join_alert(b, ANY, ANY), join_alert(c, ANY, ANY)]
    b.join(ANY, ANY, 3)
    assert core.events() == [added(b, ANY, ANY, 3), join_alert(a, ANY, ANY)]
    b.leave(ANY, ANY, 3)
    assert core.events() == [deleted(b, ANY, ANY, 3), prune_alert(a, 3, ANY, ANY)]


def test_groups_are_counted_separately(core: Core, three: Three) -> None:
    """Clients with receivers are counted per group: a join to another group is another first join."""
    a, b, c = three
    a.join(ANY, G, 1)
    core.drop()
    b.join(ANY, "239.1.1.2", 3)
    assert core.events() == [
        added(b, ANY, "239.1.1.2", 3),
        join_alert(a, ANY, "239.1.1.2"),
        join_alert(c, ANY, "239.1.1.2"),
    ]


# --- the (S,G) alert rules ---------------------------------------------------------------


def test_first_sg_client_alerts_only_the_owner_towards_s(core: Core, three: Three) -> None:
    """(S,G): the first client with receivers -> join_alert only to the owner of the interface towards S."""
    a, b, c = three
    core.routes[S] = Interface(5)
    a.join(S, G, 1)
    assert core.events() == [added(a, S, G, 1), join_alert(c, S)]
    b.join(S, G, 3)
    assert core.events() == [added(b, S, G, 3)]


def test_last_sg_client_leaving_alerts_the_owner_towards_s(core: Core, three: Three) -> None:
    """(S,G): prune_alert only to the owner of the interface towards S, when the last client goes."""
    a, b, c = three
    core.routes[S] = Interface(5)
    a.join(S, G, 1)
    b.join(S, G, 3)
    core.drop()
    a.leave(S, G, 1)
    assert core.events() == [deleted(a, S, G, 1)]
    b.leave(S, G, 3)
    assert core.events() == [deleted(b, S, G, 3), prune_alert(c, 3, S)]


@pytest.mark.parametrize("towards", [None, 2], ids=["S cannot be resolved", "[ours] the owner towards S joins itself"])
def test_sg_join_alerting_nobody(core: Core, three: Three, towards: int | None) -> None:
    """No (S,G) alert where S cannot be resolved, nor to the owner towards S about its own receivers."""
    a, _b, _c = three
    if towards is not None:
        core.routes[S] = Interface(towards)
    a.join(S, G, 1)
    assert core.events() == [added(a, S, G, 1)]


@pytest.mark.parametrize("routing_owner", [False, True], ids=["igmp alone", "a routing protocol beside igmp"])
def test_sg_alert_goes_to_the_routing_owner_else_igmp(core: Core, routing_owner: bool) -> None:
    """Alerts for an interface go to its routing protocol, never to IGMP beside it; to IGMP where it owns alone."""
    igmp, pim, dvmrp = core.protos(IGMP, PIM, DVMRP)
    igmp.take(7)
    if routing_owner:
        dvmrp.take(7)
    pim.take(1)
    core.routes[S] = Interface(7)
    core.drop()
    pim.join(S, G, 1)
    assert core.events() == [added(pim, S, G, 1), join_alert(dvmrp if routing_owner else igmp, S)]


def test_sg_join_does_not_count_for_star_g(core: Core, three: Three) -> None:
    """(S,G) and (*,G) receivers are counted apart: an (S,G) join is no (*,G) client."""
    a, b, c = three
    a.join(S, G, 1)
    core.drop()
    b.join(ANY, G, 3)
    assert core.events() == [added(b, ANY, G, 3), join_alert(a), join_alert(c)]


# --- forward-only state -------------------------------------------------------------------


def test_forward_flag_records_no_membership(core: Core, pim: Proto) -> None:
    """MGM_FORWARD_STATE_FLAG adds to matching MFEs' OILs only: no membership, no alert, no event without MFE."""
    core.drop()
    assert pim.join(S, G, 1, flags=2) == {}
    assert core.events() == []
    assert core.mgm.snapshot("state")["memberships"] == []
    assert pim.leave(S, G, 1, flags=2) == {}
    assert core.events() == []
