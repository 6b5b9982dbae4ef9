"""Forwarding entries: creation with questions, OIL updates, set_mfe, wrong_if, counters, expiry, listing.

(MGM-SPEC: Forwarding entries, and the MFE half of Membership.)
"""

from __future__ import annotations

from typing import Any

import pytest
from rules_harness import ANY, DVMRP, FWD, IGMP, PIM, Core, Proto, ev, iff, sgf

from mgm.bus.status import Status
from mgm.core.state import DEFERRED
from mgm.core.types import Interface

S = "10.0.0.1"
G = "239.1.1.1"


class Net:
    """pim owns 1 (towards S), 2 and 3; IGMP co-owns 2 and 3; dvmrp owns 4; fwd is the forwarder."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.igmp, self.pim, self.dvmrp, self.fwd = core.protos(IGMP, PIM, DVMRP, FWD)
        for i in (1, 2, 3):
            self.pim.take(i)
        for i in (2, 3):
            self.igmp.take(i)
        self.dvmrp.take(4)
        core.routes[S] = Interface(1)
        core.drop()

    def mfe(self, source: str = S, group: str = G, stats: int | None = None) -> dict[str, Any]:
        extra = {} if stats is None else {"stats": stats}
        result: dict[str, Any] = self.core.req(b"observer", "get_mfe", source=source, group=group, **extra)["mfe"]
        return result

    def oil(self, source: str = S, group: str = G) -> list[int]:
        return [o["if_index"] for o in self.mfe(source, group)["oil"]]

    def create(self, source: str = S, group: str = G, arrival: int = 1) -> None:
        """A new_packet whose questions all take their defaults."""
        self.fwd.packet(source, group, arrival)
        self.core.tick(1.0)
        self.core.tick(1.0)
        self.core.drop()
        self.core.mgm.take_completions()


@pytest.fixture
def core() -> Core:
    """Liveness is out of the way here: these tests move the clock by minutes without heartbeats."""
    return Core(liveness=1e9)


@pytest.fixture
def net(core: Core) -> Net:
    return Net(core)


def q_of(events: list[Any], type_: str) -> dict[str, Any]:
    found = [e.fields for e in events if e.type == type_]
    assert len(found) == 1, events
    return found[0]


# --- creation -----------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "arrival", "owner", "incoming"), [(S, 2, "pim", 1), ("10.9.9.9", 4, "dvmrp", 4)],
                         ids=["the owner towards S", "without a route, the arrival interface's owner"])
def test_new_packet_asks_rpf_of_the_incoming_owner(
    core: Core, net: Net, source: str, arrival: int, owner: str, incoming: int
) -> None:
    """Step 1: the incoming interface is the one towards S, or where the resolver has no route to S, the one the
    packet arrived on; its owner gets rpf, and the reply waits."""
    assert net.fwd.packet(source, G, arrival, token="t1") is DEFERRED
    rpf = {"question": 1, "deadline": 0.1, "source": source, "group": G, **iff(incoming), "upstream_neighbor": ANY}
    assert core.events() == [ev(getattr(net, owner), "rpf", **rpf)]
    assert core.mgm.take_completions() == []
    assert core.mgm.next_deadline() == pytest.approx(core.now + 0.1)


def test_rpf_goes_to_igmp_where_it_owns_alone(core: Core, net: Net) -> None:
    """The owner of an interface IGMP owns alone is IGMP, which then gets the rpf question."""
    net.igmp.take(8)
    core.drop()
    net.fwd.packet("10.9.9.9", G, 8)
    assert [(e.to, e.type) for e in core.events()] == [(net.igmp.id, "rpf")]


def test_answered_rpf_leads_to_creation_alerts_per_owner(core: Core, net: Net) -> None:
    """Steps 2-3: the OIL is every interface with a matching membership minus the incoming one;
    each owner gets creation_alert listing its own interfaces only."""
    net.igmp.join(ANY, G, 2)
    net.pim.join(S, G, 3)
    net.dvmrp.join(ANY, ANY, 4)
    net.pim.join(ANY, G, 1)  # on the incoming interface: never in the OIL
    core.drop()
    net.fwd.packet(S, G, 1, token="t")
    rpf = q_of(core.events(), "rpf")
    assert net.pim.answer(rpf["question"], **iff(1), upstream_neighbor="10.0.0.254") == {}
    alert = {"deadline": 0.1, "source": S, "group": G, "in_if_index": 1, "in_next_hop": ANY}
    assert core.events() == [
        ev(net.pim, "creation_alert", question=2, **alert, oil=[iff(2), iff(3)]),
        ev(net.dvmrp, "creation_alert", question=3, **alert, oil=[iff(4)]),
    ]
    net.pim.answer(2, oil=[{**iff(2), "enabled": True}, {**iff(3), "enabled": False}])
    assert core.events() == []  # still waiting for dvmrp
    net.dvmrp.answer(3, oil=[{**iff(4), "enabled": True}])
    events = core.events()
    assert [e.type for e in events] == ["mfe_created"]
    mfe = events[0].fields["mfe"]
    assert mfe == {
        "source": S,
        "group": G,
        "in_if_index": 1,
        "in_next_hop": ANY,
        "upstream_neighbor": "10.0.0.254",
        "in_protocol_id": PIM,
        "oil": [iff(2), iff(4)],
        "created": core.now,
        "expires": core.now + 900.0,
        "timeout": 900.0,
    }
    assert core.mgm.take_completions() == [("t", {"mfe": mfe})]


def test_rpf_answer_may_move_the_incoming_interface(core: Core, net: Net) -> None:
    """The rpf answer may name another incoming interface; the OIL is built without it."""
    net.igmp.join(ANY, G, 2)
    net.igmp.join(ANY, G, 3)
    core.drop()
    net.fwd.packet(S, G, 1)
    net.pim.answer(1, **iff(2), upstream_neighbor="10.0.2.1")
    assert q_of(core.events(), "creation_alert")["oil"] == [iff(3)]
    core.tick(1.0)
    assert net.mfe()["in_if_index"] == 2 and net.oil() == [3]


def test_unanswered_questions_take_their_defaults(core: Core, net: Net) -> None:
    """[ours] rpf keeps the proposed interface, creation_alert enables every interface, at the deadline."""
    net.igmp.join(ANY, G, 2)
    core.drop()
    net.fwd.packet(S, G, 1, token="t")
    assert [e.type for e in core.events()] == ["rpf"]
    core.tick(0.05)
    assert core.events() == []
    core.tick(0.05)
    assert [e.type for e in core.events()] == ["creation_alert"]
    core.tick(0.1)
    assert [e.type for e in core.events()] == ["mfe_created"]
    assert [t for t, _ in core.mgm.take_completions()] == ["t"]
    assert net.oil() == [2]


def test_no_owner_no_members_replies_at_once(core: Core, net: Net) -> None:
    """Without an owner to ask and no OIL, the MFE is stored and returned at once (a negative MFE)."""
    result = net.fwd.packet("10.9.9.9", G, 9)
    assert result["mfe"]["oil"] == [] and result["mfe"]["in_protocol_id"] == 0
    assert [e.type for e in core.events()] == ["mfe_created"]


def test_new_packet_of_a_known_mfe_replies_at_once(core: Core, net: Net) -> None:
    """A new_packet for an (S,G) that has an MFE is answered with it at once."""
    net.create()
    assert net.fwd.packet(S, G, 1) == {"mfe": net.mfe()}
    assert core.events() == []


def test_new_packet_while_pending_waits_with_the_first(core: Core, net: Net) -> None:
    """A new_packet for an (S,G) still being created is deferred too; both replies come together."""
    assert net.fwd.packet(S, G, 1, token="a") is DEFERRED
    assert net.fwd.packet(S, G, 1, token="b") is DEFERRED
    assert [e.type for e in core.events()] == ["rpf"]
    core.tick(1.0)
    done = core.mgm.take_completions()
    assert [t for t, _ in done] == ["a", "b"] and done[0][1] == done[1][1]


def test_negative_mfe_asks_the_incoming_owner_prune_alert(core: Core, net: Net) -> None:
    """Step 4: an empty OIL makes a negative MFE; the incoming owner gets prune_alert member_delete=false."""
    net.fwd.packet(S, G, 1)
    core.drop()
    core.tick(1.0)
    events = core.events()
    assert [e.type for e in events] == ["mfe_created", "prune_alert"]
    assert events[1] == ev(net.pim, "prune_alert", question=2, deadline=0.1, **sgf(S, G), **iff(1), member_delete=False)
    assert core.questions(net.pim, "prune_alert")[0]["question"] == 2


@pytest.mark.parametrize(("answer", "timeout"), [({"timeout": 30}, 30.0), ({}, 900.0)],
                         ids=["sets the timeout", "without timeout keeps the default"])
def test_prune_alert_answer_sets_the_timeout(core: Core, net: Net, answer: dict[str, Any], timeout: float) -> None:
    """The answer to prune_alert (member_delete=false) may set the MFE's timeout; one without leaves the default."""
    net.fwd.packet(S, G, 1)
    core.tick(1.0)
    core.drop()
    assert net.pim.answer(2, **answer) == {}
    events = core.events()
    assert [e.type for e in events] == (["mfe_updated"] if answer else [])
    assert all(e.fields["mfe"]["timeout"] == timeout for e in events)
    assert net.mfe()["timeout"] == timeout and net.mfe()["expires"] == net.mfe()["created"] + timeout


@pytest.mark.parametrize("timeout", [0, -1, True, "5", float("nan"), float("inf")])
def test_prune_alert_answer_with_bad_timeout_is_invalid(core: Core, net: Net, timeout: Any) -> None:
    """timeout must be a number of seconds > 0."""
    net.fwd.packet(S, G, 1)
    core.tick(1.0)
    core.refused(Status.ERROR_INVALID_PARAMETER, net.pim.answer, 2, timeout=timeout)


# --- answers: who, which, late -------------------------------------------------------------------


def test_answer_to_an_unknown_question_is_not_found(core: Core, net: Net) -> None:
    """An answer naming a question that never existed is ERROR_NOT_FOUND."""
    core.refused(Status.ERROR_NOT_FOUND, net.pim.answer, 77, **iff(1), upstream_neighbor=ANY)


def test_answer_from_another_client_is_invalid(core: Core, net: Net) -> None:
    """An answer from a client the question was not sent to is ERROR_INVALID_PARAMETER."""
    net.fwd.packet(S, G, 1)
    core.refused(Status.ERROR_INVALID_PARAMETER, net.dvmrp.answer, 1, **iff(1), upstream_neighbor=ANY)


def test_creation_answer_naming_a_foreign_interface_is_invalid(core: Core, net: Net) -> None:
    """A creation_alert answer may only speak of the interfaces it was asked about."""
    net.igmp.join(ANY, G, 2)
    net.fwd.packet(S, G, 1)
    core.tick(0.1)
    core.refused(Status.ERROR_INVALID_PARAMETER, net.pim.answer, 2, oil=[{**iff(4), "enabled": False}])


def test_late_rpf_answer_moves_the_incoming_interface(core: Core, net: Net) -> None:
    """[ours] An rpf answer after its deadline is applied as an update: mfe_updated."""
    net.igmp.join(ANY, G, 2)
    net.igmp.join(ANY, G, 3)
    net.create()
    assert net.oil() == [2, 3]
    assert net.pim.answer(1, **iff(3), upstream_neighbor="10.0.3.1") == {}
    events = core.events()
    assert [e.type for e in events] == ["mfe_updated"]
    mfe = events[0].fields["mfe"]
    assert (mfe["in_if_index"], mfe["upstream_neighbor"], [o["if_index"] for o in mfe["oil"]]) == (3, "10.0.3.1", [2])


def test_late_creation_answer_disables_then_reenables(core: Core, net: Net) -> None:
    """[ours] A late creation_alert answer disables/enables interfaces of the stored MFE (mfe_updated)."""
    net.igmp.join(ANY, G, 2)
    net.igmp.join(ANY, G, 3)
    net.create()
    net.pim.answer(2, oil=[{**iff(2), "enabled": False}])
    assert [e.type for e in core.events()] == ["mfe_updated"]
    assert net.oil() == [3]
    net.pim.answer(2, oil=[{**iff(2), "enabled": True}])
    assert [e.type for e in core.events()] == ["mfe_updated"]
    assert net.oil() == [2, 3]


def test_late_answer_for_a_deleted_mfe_is_accepted_and_ignored(core: Core, net: Net) -> None:
    """A late answer whose MFE is gone changes nothing."""
    net.create()
    net.pim.release(1)
    core.drop()
    assert net.pim.answer(1, **iff(2), upstream_neighbor=ANY) == {}
    assert core.events() == []


# --- OIL follows the memberships ------------------------------------------------------------------


def test_join_adds_the_interface_at_once(core: Core, net: Net) -> None:
    """Membership changes update existing MFEs at once: the interface joins the OIL (mfe_updated)."""
    net.igmp.join(ANY, G, 2)
    net.create()
    net.igmp.join(S, G, 3)
    assert [e.type for e in core.events()][-1] == "mfe_updated" and net.oil() == [2, 3]


def test_negative_mfe_starts_forwarding_when_a_member_joins(core: Core, net: Net) -> None:
    """OIL empty -> non-empty: mfe_updated, and the incoming owner gets join_alert member_update=false."""
    net.create()
    net.dvmrp.join(ANY, G, 4)
    assert core.events()[-2:] == [
        ev(None, "mfe_updated", mfe=net.mfe()),
        ev(net.pim, "join_alert", **sgf(S, G), member_update=False),
    ]
    assert net.oil() == [4]


def test_last_member_leaving_asks_prune_alert(core: Core, net: Net) -> None:
    """OIL non-empty -> empty: mfe_updated, then prune_alert member_delete=false (a question) to the incoming owner."""
    net.dvmrp.join(ANY, G, 4)
    net.create()
    net.dvmrp.leave(ANY, G, 4)
    events = core.events()
    assert [(e.to, e.type) for e in events][-2:] == [(None, "mfe_updated"), (net.pim.id, "prune_alert")]
    assert events[-1].fields["member_delete"] is False and "question" in events[-1].fields
    assert net.oil() == []


def test_interface_stays_while_another_membership_wants_it(core: Core, net: Net) -> None:
    """An interface leaves the OIL only when no matching membership on it remains."""
    net.igmp.join(ANY, G, 2)
    net.pim.join(S, G, 2)
    net.create()
    net.igmp.leave(ANY, G, 2)
    assert net.oil() == [2]
    assert "mfe_updated" not in [e.type for e in core.events()]
    net.pim.leave(S, G, 2)
    assert net.oil() == []


def test_membership_on_the_incoming_interface_is_not_forwarded_to(core: Core, net: Net) -> None:
    """The incoming interface is never in the OIL."""
    net.create()
    net.pim.join(ANY, G, 1)
    assert net.oil() == []
    assert "mfe_updated" not in [e.type for e in core.events()]


def test_star_g_join_updates_every_mfe_of_the_group_only(core: Core, net: Net) -> None:
    """(*,G) matches every source of G; (S,G) only its own MFE."""
    core.routes["10.0.0.2"] = Interface(1)
    net.create(S, G)
    net.create("10.0.0.2", G)
    net.create(S, "239.2.2.2")
    net.igmp.join(ANY, G, 2)
    assert (net.oil(S, G), net.oil("10.0.0.2", G), net.oil(S, "239.2.2.2")) == ([2], [2], [])
    net.igmp.join("10.0.0.2", "239.2.2.2", 3)
    assert net.oil(S, "239.2.2.2") == []
    net.igmp.join(S, "239.2.2.2", 3)
    assert net.oil(S, "239.2.2.2") == [3]


def test_star_star_join_updates_every_mfe(core: Core, net: Net) -> None:
    """(*,*) matches every MFE."""
    net.create(S, G)
    net.create(S, "239.2.2.2")
    net.dvmrp.join(ANY, ANY, 4)
    assert (net.oil(S, G), net.oil(S, "239.2.2.2")) == ([4], [4])


def test_forward_flag_adds_and_removes_oil_of_an_existing_mfe(core: Core, net: Net) -> None:
    """MGM_FORWARD_STATE_FLAG adds the interface to the matching MFE's OIL without a membership; delete undoes it."""
    net.create()
    net.dvmrp.join(S, G, 4, flags=2)
    assert net.oil() == [4]
    assert core.mgm.snapshot("state")["memberships"] == []
    net.dvmrp.leave(S, G, 4, flags=2)
    assert net.oil() == []


def test_forward_state_of_igmp_stays_when_the_routing_owner_releases(core: Core, net: Net) -> None:
    """[ours] Forward state is its adder's: PIM releasing 2, which IGMP shares, leaves IGMP's add there."""
    net.create()
    net.igmp.join(S, G, 2, flags=2)
    assert net.oil() == [2]
    net.pim.release(2)
    assert net.oil() == [2]
    net.igmp.leave(S, G, 2, flags=2)
    assert net.oil() == []


@pytest.mark.parametrize("how", ["release", "connection lost"])
def test_forward_state_goes_with_the_client_that_added_it(core: Core, net: Net, how: str) -> None:
    """[ours] IGMP releasing 2 (or going) takes its forward state there along; PIM's own add stays."""
    net.create()
    net.create(S, "239.2.2.2")
    net.igmp.join(S, G, 2, flags=2)
    net.igmp.join(ANY, "239.2.2.2", 3, flags=2)
    net.pim.join(S, "239.2.2.2", 3, flags=2)
    assert (net.oil(), net.oil(S, "239.2.2.2")) == ([2], [3])
    if how == "release":
        net.igmp.release(2)
        net.igmp.release(3)
    else:
        core.mgm.connection_lost(net.igmp.conn, core.now)
    assert (net.oil(), net.oil(S, "239.2.2.2")) == ([], [3])
    net.pim.leave(S, "239.2.2.2", 3, flags=2)
    assert net.oil(S, "239.2.2.2") == []


def test_a_forward_state_delete_removes_only_the_callers_own(core: Core, net: Net) -> None:
    """[ours] Two clients forwarding out of 2: each delete ends only its own add; one not there answers 0."""
    net.create()
    net.pim.join(S, G, 2, flags=2)
    net.igmp.join(S, G, 2, flags=2)
    core.drop()
    assert net.pim.leave(S, G, 2, flags=2) == {}
    assert net.oil() == [2]
    assert core.events() == []
    assert net.pim.leave(S, G, 2, flags=2) == {}  # not there (any more): 0, and nothing changes
    assert net.oil() == [2]
    net.igmp.leave(S, G, 2, flags=2)
    assert net.oil() == []


def vetoed_on_2(core: Core, net: Net, member: Proto | None = None) -> None:
    """`member` (PIM unless given) has (*,G) on 2 and PIM vetoes 2 in its creation_alert answer: the MFE has an
    empty OIL."""
    (member or net.pim).join(ANY, G, 2)
    net.fwd.packet(S, G, 1)
    core.tick(0.1)
    net.pim.answer(2, oil=[{**iff(2), "enabled": False}])
    assert net.oil() == []
    core.drop()


def test_creation_veto_holds_until_a_new_membership_on_that_interface(core: Core, net: Net) -> None:
    """[ours] An interface vetoed in creation_alert stays out until a membership newly appears on it."""
    vetoed_on_2(core, net, net.igmp)
    net.igmp.join(ANY, G, 2)  # a re-add changes nothing
    assert net.oil() == []
    net.pim.join(S, G, 2)  # a new membership there
    assert net.oil() == [2]


@pytest.mark.parametrize(("source", "group"), [(ANY, G), (S, G), (ANY, ANY)], ids=["(*,G)", "(S,G)", "(*,*)"])
def test_creation_veto_is_lifted_by_any_new_matching_membership_there(
    core: Core, net: Net, source: str, group: str
) -> None:
    """[ours] A new membership on the vetoed interface lifts the veto, also when its key already has one there.

    IGMP's (*,G) on 2 is not the first (*,G) there (PIM's is), yet it is new
    receiver interest, just like IGMP's (S,G), the first of its key there;
    (*,*) matches every MFE.
    """
    vetoed_on_2(core, net)
    net.igmp.join(source, group, 2)
    events = core.events()
    assert [e.type for e in events if e.to is None] == ["membership_added", "mfe_updated"]
    assert ev(net.pim, "join_alert", **sgf(S, G), member_update=False) in events  # the OIL turned non-empty
    assert net.oil() == [2]


def test_creation_veto_stays_for_memberships_elsewhere_or_of_other_groups(core: Core, net: Net) -> None:
    """[ours] Only a membership on the vetoed interface matching the MFE lifts it."""
    vetoed_on_2(core, net)
    net.igmp.join(ANY, "239.9.9.9", 2)  # another group
    net.igmp.join("10.0.0.2", G, 2)  # another source
    net.igmp.join(ANY, G, 3)  # another interface
    assert net.oil() == [3]
    net.pim.join(ANY, G, 2)  # a re-add of the vetoing owner's own membership changes nothing
    assert net.oil() == [3]


# --- set_mfe, wrong_if ---------------------------------------------------------------------------


def test_set_mfe_of_unknown_mfe_is_not_found(core: Core, net: Net) -> None:
    """set_mfe of an MFE that does not exist is ERROR_NOT_FOUND."""
    core.refused(Status.ERROR_NOT_FOUND, net.pim, "set_mfe", source=S, group=G, upstream_neighbor="10.0.0.9")


def test_set_mfe_changes_the_upstream_neighbour(core: Core, net: Net) -> None:
    """set_mfe by the incoming owner changes the upstream neighbour (mfe_updated); the same value changes nothing."""
    net.create()
    assert net.pim("set_mfe", source=S, group=G, upstream_neighbor="10.0.0.9") == {}
    assert [e.type for e in core.events()] == ["mfe_updated"]
    assert net.mfe()["upstream_neighbor"] == "10.0.0.9"
    net.pim("set_mfe", source=S, group=G, upstream_neighbor="10.0.0.9")
    assert core.events() == []


def test_set_mfe_moves_the_incoming_interface_if_it_owns_both(core: Core, net: Net) -> None:
    """set_mfe may change the incoming interface when the client owns both interfaces."""
    net.igmp.join(ANY, G, 2)
    net.create()
    net.pim("set_mfe", source=S, group=G, upstream_neighbor=ANY, **iff(2))
    mfe = net.mfe()
    assert mfe["in_if_index"] == 2 and mfe["oil"] == []
    core.refused(Status.ERROR_INVALID_PARAMETER, net.pim, "set_mfe", source=S, group=G, upstream_neighbor=ANY, **iff(4))


def test_set_mfe_by_a_client_not_owning_the_incoming_interface_is_invalid(core: Core, net: Net) -> None:
    """[ours] Only the owner of the incoming interface changes an MFE."""
    net.create()
    core.refused(Status.ERROR_INVALID_PARAMETER, net.dvmrp, "set_mfe", source=S, group=G, upstream_neighbor=ANY)


@pytest.mark.parametrize(("arrival", "owner"), [(4, "dvmrp"), (9, None)], ids=["owned", "no owner, nobody to tell"])
def test_wrong_interface_tells_the_owner_of_the_arrival_interface(
    core: Core, net: Net, arrival: int, owner: str | None
) -> None:
    """wrong_if goes to the owner of the interface the packet arrived on (PIM asserts need it)."""
    net.create()
    assert net.fwd("wrong_interface", source=S, group=G, **iff(arrival)) == {}
    told = [] if owner is None else [ev(getattr(net, owner), "wrong_if", source=S, group=G, **iff(arrival))]
    assert core.events() == told


def test_wrong_interface_refusals(core: Core, net: Net) -> None:
    """wrong_interface for an unknown MFE is ERROR_NOT_FOUND; on the incoming interface it is 87."""
    core.refused(Status.ERROR_NOT_FOUND, net.fwd, "wrong_interface", source=S, group=G, **iff(4))
    net.create()
    core.refused(Status.ERROR_INVALID_PARAMETER, net.fwd, "wrong_interface", source=S, group=G, **iff(1))


# --- counters, statistics, expiry ----------------------------------------------------------------------


def counters(in_packets: int, out: int = 0, discards: int | None = None) -> dict[str, Any]:
    oil: dict[str, Any] = {**iff(2), "out_packets": out}
    if discards is not None:
        oil["discards"] = discards
    return {"source": S, "group": G, "in_packets": in_packets, "in_bytes": in_packets * 100, "wrong_if_packets": 1,
            "oil": [oil]}  # fmt: skip


def test_counters_feed_statistics_levels(core: Core, net: Net) -> None:
    """get_mfe with stats 0 gives packet counts; stats 1 adds discards per OIL entry; absent gives none."""
    net.igmp.join(ANY, G, 2)
    net.create()
    assert net.fwd("mfe_counters", entries=[counters(5, out=4, discards=1)]) == {}
    assert core.events() == []
    plain = net.mfe()
    assert "in_packets" not in plain and "out_packets" not in plain["oil"][0]
    level0 = net.mfe(stats=0)
    assert (level0["in_packets"], level0["in_bytes"], level0["wrong_if_packets"]) == (5, 500, 1)
    assert level0["oil"] == [{**iff(2), "out_packets": 4}]
    assert net.mfe(stats=1)["oil"] == [{**iff(2), "out_packets": 4, "discards": 1}]


def test_counters_for_unknown_mfes_are_ignored(core: Core, net: Net) -> None:
    """A report about an MFE deleted meanwhile is not an error."""
    assert net.fwd("mfe_counters", entries=[counters(5)]) == {}


def test_bad_counter_report_changes_nothing(core: Core, net: Net) -> None:
    """A report with one bad entry is refused whole (87), the good entries are not applied."""
    net.create()
    bad = {**counters(7), "in_bytes": -1}
    core.refused(Status.ERROR_INVALID_PARAMETER, net.fwd, "mfe_counters", entries=[counters(5), bad])
    assert net.mfe(stats=0)["in_packets"] == 0


def test_mfe_expires_without_traffic(core: Core, net: Net) -> None:
    """An MFE whose timeout passes without in_packets growth is deleted (mfe_deleted)."""
    net.create()
    created = net.mfe()["created"]
    core.now = created + 899.0
    core.mgm.tick(core.now)
    assert core.events() == []
    core.now = created + 900.0
    core.mgm.tick(core.now)
    assert [e.type for e in core.events()] == ["mfe_deleted"]
    core.refused(Status.ERROR_NOT_FOUND, core.req, b"x", "get_mfe", source=S, group=G)


def test_traffic_keeps_the_mfe(core: Core, net: Net) -> None:
    """Growth of in_packets pushes expiry back by the timeout; a report without growth does not."""
    net.create()
    created = net.mfe()["created"]
    core.now = created + 500.0
    net.fwd("mfe_counters", entries=[counters(10)])
    core.now = created + 800.0
    net.fwd("mfe_counters", entries=[counters(10)])  # no growth
    core.now = created + 1000.0
    core.mgm.tick(core.now)
    assert core.events() == []
    assert net.mfe()["expires"] == created + 1400.0
    core.now = created + 1400.0
    core.mgm.tick(core.now)
    assert [e.type for e in core.events()] == ["mfe_deleted"]


def test_counters_move_expires_without_an_event_and_nothing_else(core: Core, net: Net) -> None:
    """[ours] mfe_counters publishes nothing: the `state` snapshot's MFE differs from the last MFE event only in
    `expires` (observers that need it read get_mfe / list_mfes); expiry itself is published (mfe_deleted)."""
    net.igmp.join(ANY, G, 2)
    net.fwd.packet(S, G, 1)
    core.tick(1.0)
    core.tick(1.0)
    (last,) = [e.fields["mfe"] for e in core.events() if e.type in ("mfe_created", "mfe_updated")]
    core.now += 60.0
    assert net.fwd("mfe_counters", entries=[counters(10, out=9)]) == {}
    assert core.events() == []
    (snap,) = core.mgm.snapshot("state")["mfes"]
    assert snap["expires"] == last["expires"] + 60.0 == net.mfe()["expires"]
    assert {k: v for k, v in snap.items() if k != "expires"} == {k: v for k, v in last.items() if k != "expires"}
    assert core.req(b"observer", "list_mfes", max_entries=1)["entries"][0]["expires"] == snap["expires"]


def test_shorter_timeout_from_prune_answer_expires_sooner(core: Core, net: Net) -> None:
    """A prune_alert answer shortening the timeout brings expiry forward."""
    net.fwd.packet(S, G, 1)
    core.tick(1.0)
    net.pim.answer(2, timeout=5)
    core.drop()
    core.tick(4.5)
    assert core.events() == []
    assert core.mgm.next_deadline() is not None
    core.tick(0.5)
    assert [e.type for e in core.events()] == ["mfe_deleted"]


def test_wall_offset_renders_wall_clock_times(core: Core, net: Net) -> None:
    """created/expires are monotonic times plus wall_offset; timeout stays a duration."""
    core.mgm.wall_offset = 1_000_000.0
    net.create()
    mfe = net.mfe()
    assert mfe["created"] == 101.0 + 1_000_000.0  # created at the first deadline, t=101
    assert mfe["expires"] == 101.0 + 1_000_900.0 and mfe["timeout"] == 900.0


# --- get / list -------------------------------------------------------------------------------------


def test_get_mfe_unknown_is_not_found(core: Core, net: Net) -> None:
    """get_mfe of an (S,G) without MFE (or still pending) is ERROR_NOT_FOUND."""
    net.fwd.packet(S, G, 1)
    core.refused(Status.ERROR_NOT_FOUND, core.req, b"x", "get_mfe", source=S, group=G)


def test_list_mfes_pages_by_group_then_source(core: Core, net: Net) -> None:
    """MFE listing comes ordered by group, then source (numerically), never more than asked per page."""
    keys = [("10.0.0.9", "239.1.1.1"), ("10.0.0.10", "239.1.1.1"), ("9.0.0.1", "225.0.0.1"), ("10.0.0.3", "239.0.0.9")]
    for s, g in keys:
        net.fwd.packet(s, g, 9)  # unowned arrival interface: created at once
    pages = [core.req(b"x", "list_mfes", max_entries=3)]
    while pages[-1]["more"]:
        after = {k: pages[-1]["entries"][-1][k] for k in ("source", "group")}
        pages.append(core.req(b"x", "list_mfes", max_entries=3, after=after))
    assert len(pages) == 2 and all(len(page["entries"]) <= 3 for page in pages)
    assert [(m["source"], m["group"]) for page in pages for m in page["entries"]] == [
        ("9.0.0.1", "225.0.0.1"), ("10.0.0.3", "239.0.0.9"), ("10.0.0.9", "239.1.1.1"), ("10.0.0.10", "239.1.1.1")
    ]  # fmt: skip


def test_list_mfes_with_stats_and_empty_list(core: Core, net: Net) -> None:
    """list_mfes carries statistics when asked; an empty listing is an empty page with more=false."""
    assert core.req(b"x", "list_mfes", max_entries=5) == {"entries": [], "more": False}
    net.fwd.packet("10.9.9.9", G, 9)
    entry = core.req(b"x", "list_mfes", max_entries=5, stats=1)["entries"][0]
    assert entry["in_packets"] == 0 and entry["wrong_if_packets"] == 0


@pytest.mark.parametrize("max_entries", [0, -1, True, 1.5, None])
def test_list_mfes_bad_page_size_is_invalid(core: Core, max_entries: Any) -> None:
    """max_entries must be an int >= 1."""
    core.refused(Status.ERROR_INVALID_PARAMETER, core.req, b"x", "list_mfes", max_entries=max_entries)


# --- snapshots --------------------------------------------------------------------------------


def test_proto_snapshot_lists_open_questions(core: Core, net: Net) -> None:
    """A client's snapshot carries the questions still waiting for its answer."""
    net.fwd.packet(S, G, 1)
    assert core.questions(net.pim) == [
        {"type": "rpf", "question": 1, "deadline": 0.1, "source": S, "group": G, **iff(1), "upstream_neighbor": ANY}
    ]
    core.tick(1.0)
    assert core.questions(net.pim, "rpf") == []


def test_state_snapshot_has_everything(core: Core, net: Net) -> None:
    """The state snapshot lists protocols, interfaces (owner, igmp), memberships and MFEs."""
    net.igmp.join(ANY, G, 2)
    net.create()
    snap = core.mgm.snapshot("state")
    assert [p["protocol_id"] for p in snap["protocols"]] == [IGMP, PIM, DVMRP, FWD]
    assert snap["interfaces"][1] == {**iff(2), "owner": {"protocol_id": PIM, "component_id": 1}, "igmp": True,
                                     "boundaries": []}  # fmt: skip
    assert len(snap["memberships"]) == 1 and snap["mfes"] == [net.mfe()]


def test_snapshot_of_unknown_stream(core: Core) -> None:
    """A proto stream of an unregistered client is an empty, unregistered snapshot; a bad name is 87."""
    assert core.mgm.snapshot("proto/5/5")["registered"] is False
    for bad in ("nope", "proto/x/1", "proto/1", "proto/1/2/3"):
        core.refused(Status.ERROR_INVALID_PARAMETER, core.mgm.snapshot, bad)
