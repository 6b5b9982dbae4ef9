"""Questions (rpf, creation_alert, prune_alert member_delete=false): deadlines, defaults, late answers.

(MGM-SPEC: Forwarding entries, the [ours] rule on questions with a deadline; core-api.md: answers.)
"""

from __future__ import annotations

from typing import Any

import pytest
from rules_harness import ANY, DVMRP, FWD, IGMP, PIM, Core, Proto, iff

from mgm.bus.status import Status
from mgm.core.state import DEFERRED, MAX_OPEN_ENUMERATIONS
from mgm.core.types import Interface

S = "10.0.0.1"
G = "239.1.1.1"
Clients = tuple[Proto, Proto, Proto]


@pytest.fixture
def core() -> Core:
    return Core(liveness=1e9, question_deadline=0.5)


@pytest.fixture
def clients(core: Core) -> Clients:
    """pim owns 1 (towards S) and 2, dvmrp owns 4, each with a (*,G) member downstream."""
    return declared(core, None, None)


def declared(core: Core, pim_questions: list[str] | None, dvmrp_questions: list[str] | None) -> Clients:
    """The `clients` topology, pim and dvmrp registered answering the given questions (None: all)."""
    pim = core.register(PIM, questions=pim_questions)
    dvmrp = core.register(DVMRP, questions=dvmrp_questions)
    fwd = core.register(FWD)
    pim.take(1)
    pim.take(2)
    dvmrp.take(4)
    pim.join(ANY, G, 2)
    dvmrp.join(ANY, G, 4)
    core.routes[S] = Interface(1)
    core.drop()
    return pim, dvmrp, fwd


def get(core: Core, source: str = S, group: str = G) -> dict[str, Any]:
    mfe: dict[str, Any] = core.req(b"x", "get_mfe", source=source, group=group)["mfe"]
    return mfe


def test_question_deadline_is_the_configured_one(core: Core, clients: Clients) -> None:
    """Questions carry `deadline` in seconds (question_deadline) and next_deadline() points at it."""
    _, _, fwd = clients
    fwd.packet(S, G, 1)
    (rpf,) = core.events()
    assert rpf.fields["deadline"] == 0.5
    assert core.mgm.next_deadline() == pytest.approx(core.now + 0.5)


def test_default_is_taken_only_at_the_deadline(core: Core, clients: Clients) -> None:
    """Before the deadline nothing happens; at it, the unanswered rpf keeps the proposed interface."""
    _, _, fwd = clients
    fwd.packet(S, G, 1)
    core.drop()
    core.tick(0.49)
    assert core.events() == []
    core.tick(0.01)
    assert [e.type for e in core.events()] == ["creation_alert", "creation_alert"]


def test_one_owner_answering_does_not_wait_for_the_deadline_of_others(core: Core, clients: Clients) -> None:
    """Creation waits for every creation_alert answer, or the deadline of the unanswered ones."""
    pim, _dvmrp, fwd = clients
    assert fwd.packet(S, G, 1, token="t") is DEFERRED
    pim.answer(1, **iff(1), upstream_neighbor=ANY)
    core.drop()
    pim.answer(2, oil=[{**iff(2), "enabled": True}])
    assert core.events() == [] and core.mgm.take_completions() == []
    core.tick(0.5)  # dvmrp never answers
    assert [e.type for e in core.events()] == ["mfe_created"]
    assert [o["if_index"] for o in get(core)["oil"]] == [2, 4]
    assert [t for t, _ in core.mgm.take_completions()] == ["t"]


def test_late_rpf_answer_during_creation_moves_the_mfe_to_be(core: Core, clients: Clients) -> None:
    """[ours] An rpf answer after its deadline but before the MFE exists applies to the MFE being created."""
    pim, _, fwd = clients
    fwd.packet(S, G, 1)
    core.tick(0.5)  # rpf defaulted, creation alerts out
    pim.answer(1, **iff(2), upstream_neighbor="10.0.2.1")
    core.tick(0.5)
    mfe = get(core)
    assert (mfe["in_if_index"], mfe["upstream_neighbor"]) == (2, "10.0.2.1")
    assert [o["if_index"] for o in mfe["oil"]] == [4]


def test_unanswered_prune_alert_changes_nothing_and_a_late_answer_still_counts(core: Core, clients: Clients) -> None:
    """The default of prune_alert (member_delete=false) keeps the timeout; [ours] a late prune_alert answer is
    applied: the MFE's timeout changes (mfe_updated)."""
    pim, dvmrp, fwd = clients
    pim.leave(ANY, G, 2)
    dvmrp.leave(ANY, G, 4)
    fwd.packet(S, G, 1)
    core.tick(0.5)
    core.drop()
    core.tick(0.5)
    assert core.events() == []
    assert get(core)["timeout"] == 900.0
    core.tick(0.5)
    pim.answer(2, timeout=60.0)
    assert [e.type for e in core.events()] == ["mfe_updated"]
    assert get(core)["timeout"] == 60.0


def test_answer_of_the_wrong_kind_is_invalid(core: Core, clients: Clients) -> None:
    """An rpf answer must give an interface and neighbour; a creation answer an oil list."""
    pim, _, fwd = clients
    fwd.packet(S, G, 1)
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.answer, 1, oil=[])
    pim.answer(1, **iff(1), upstream_neighbor=ANY)
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.answer, 2, **iff(1), upstream_neighbor=ANY)


def test_questions_to_a_vanished_client_take_their_defaults(core: Core, clients: Clients) -> None:
    """A client that disappears with open questions does not hold the creation beyond the deadline."""
    pim, _, fwd = clients
    fwd.packet(S, G, 1, token="t")
    core.mgm.connection_lost(pim.conn, core.now)
    core.tick(0.5)
    core.tick(0.5)
    assert [t for t, _ in core.mgm.take_completions()] == ["t"]
    assert [o["if_index"] for o in get(core)["oil"]] == [4]


def test_a_vanished_client_s_questions_take_their_defaults_at_once(core: Core, clients: Clients) -> None:
    """[ours] Right after protocol_deregistered its open rpf takes the default: the creation goes on without a wait."""
    pim, dvmrp, fwd = clients
    assert fwd.packet(S, G, 1, token="t") is DEFERRED
    core.drop()
    core.mgm.connection_lost(pim.conn, core.now)
    events = core.events()
    assert [e.type for e in events][-2:] == ["protocol_deregistered", "creation_alert"]  # no deadline passed
    assert events[-1].to == dvmrp.id and [o["if_index"] for o in events[-1].fields["oil"]] == [4]
    dvmrp.answer(events[-1].fields["question"], oil=[{**iff(4), "enabled": True}])
    assert [e.type for e in core.events()] == ["mfe_created"]
    assert [t for t, _ in core.mgm.take_completions()] == ["t"]


def test_a_deregistered_client_s_last_open_question_completes_the_mfe(core: Core, clients: Clients) -> None:
    """[ours] An explicit deregistration closes its open creation_alert with the default (every interface on)."""
    pim, dvmrp, fwd = clients
    fwd.packet(S, G, 1, token="t")
    pim.answer(1, **iff(1), upstream_neighbor=ANY)
    pim.answer(2, oil=[{**iff(2), "enabled": True}])
    dvmrp.release(4)  # dvmrp's creation_alert (question 3) is still open
    dvmrp("deregister_protocol")
    assert [e.type for e in core.events()][-2:] == ["protocol_deregistered", "mfe_created"]
    assert [t for t, _ in core.mgm.take_completions()] == ["t"]
    assert [o["if_index"] for o in get(core)["oil"]] == [2]


def test_a_new_registration_neither_sees_nor_answers_its_predecessor_s_questions(core: Core, clients: Clients) -> None:
    """[ours] Questions are forgotten with the client that was asked: the same ids registered again see none,
    and an answer to one (open or already answered) is ERROR_NOT_FOUND."""
    pim, _, fwd = clients
    fwd.packet(S, G, 1)
    pim.answer(1, **iff(1), upstream_neighbor=ANY)  # answered: kept for late answers while pim lives
    assert [q["question"] for q in core.questions(pim)] == [2]
    core.mgm.connection_lost(pim.conn, core.now)
    again = core.register(PIM, conn=b"pim-again")
    again.take(1)
    assert core.questions(again) == []
    core.refused(Status.ERROR_NOT_FOUND, again.answer, 2, oil=[{**iff(2), "enabled": False}])
    core.refused(Status.ERROR_NOT_FOUND, again.answer, 1, **iff(1), upstream_neighbor=ANY)


def test_next_deadline_includes_mfe_expiry(core: Core, clients: Clients) -> None:
    """Once no question is open, next_deadline() is the earliest MFE expiry."""
    _, _, fwd = clients
    fwd.packet(S, G, 1)
    core.tick(0.5)
    core.tick(0.5)
    assert core.mgm.next_deadline() == pytest.approx(get(core)["created"] + 900.0)


def test_forced_interface_goes_with_its_release(core: Core, clients: Clients) -> None:
    """Releasing an interface removes it from OILs it was forced into (MGM_FORWARD_STATE_FLAG)."""
    _pim, dvmrp, fwd = clients
    dvmrp.take(5)
    fwd.packet(S, G, 1)
    core.tick(0.5)
    core.tick(0.5)
    dvmrp.join(S, G, 5, flags=2)
    assert [o["if_index"] for o in get(core)["oil"]] == [2, 4, 5]
    dvmrp.release(5)
    assert [o["if_index"] for o in get(core)["oil"]] == [2, 4]


def test_release_of_an_oil_interface_shrinks_the_oil(core: Core, clients: Clients) -> None:
    """Releasing an interface deletes the client's memberships there, so it leaves the OILs."""
    _pim, dvmrp, fwd = clients
    fwd.packet(S, G, 1)
    core.tick(0.5)
    core.tick(0.5)
    core.drop()
    dvmrp.release(4)
    # prune_alert for (*,G): dvmrp was the second-to-last client, pim remains
    assert [e.type for e in core.events()] == ["membership_deleted", "prune_alert", "mfe_updated", "interface_released"]
    assert [o["if_index"] for o in get(core)["oil"]] == [2]


def test_set_mfe_next_hop_without_if_index_is_invalid(core: Core, clients: Clients) -> None:
    """set_mfe takes next_hop only with if_index."""
    pim, _, fwd = clients
    fwd.packet(S, G, 1)
    core.tick(1.0)
    core.tick(1.0)
    core.refused(Status.ERROR_INVALID_PARAMETER, pim, "set_mfe", source=S, group=G, upstream_neighbor=ANY, next_hop=ANY)


def test_open_enumerations_are_bounded(core: Core) -> None:
    """[ours] A client may hold MAX_OPEN_ENUMERATIONS enumerations; one more is ERROR_NOT_ENOUGH_MEMORY."""
    p = core.register(IGMP)
    for _ in range(MAX_OPEN_ENUMERATIONS):
        p("group_enumeration_start", type="all_sources")
    core.refused(Status.ERROR_NOT_ENOUGH_MEMORY, p, "group_enumeration_start", type="all_sources")


# --- questions a client says it answers ([ours]: RRAS skips a callback registered as NULL) ----------


def test_nobody_answering_creates_the_mfe_within_the_request(core: Core) -> None:
    """[ours] With no client answering rpf or creation_alert, new_packet replies with the MFE at once."""
    pim, dvmrp, fwd = declared(core, [], [])
    result = fwd.packet(S, G, 1, token="t")
    assert result is not DEFERRED
    assert [o["if_index"] for o in result["mfe"]["oil"]] == [2, 4]
    assert result["mfe"]["in_if_index"] == 1
    assert [e.type for e in core.events()] == ["mfe_created"]
    for client in (pim, dvmrp):
        assert core.mgm.snapshot(f"proto/{client.id.protocol_id}/1")["questions"] == []


def test_a_client_not_answering_rpf_is_asked_only_creation_alert(core: Core) -> None:
    """[ours] rpf is skipped for an incoming owner that does not answer it: its creation_alert goes out at once."""
    pim, _dvmrp, fwd = declared(core, ["creation_alert"], [])
    assert fwd.packet(S, G, 1, token="t") is DEFERRED
    (alert,) = core.events()
    assert (alert.type, alert.to) == ("creation_alert", pim.id)
    assert [o["if_index"] for o in alert.fields["oil"]] == [2]  # dvmrp, not answering, is not asked about 4
    pim.answer(alert.fields["question"], oil=[{**iff(2), "enabled": False}])
    assert [e.type for e in core.events()] == ["mfe_created"]
    assert [o["if_index"] for o in get(core)["oil"]] == [4]
    assert [t for t, _ in core.mgm.take_completions()] == ["t"]


def test_a_client_not_answering_creation_alert_is_still_asked_rpf(core: Core) -> None:
    """[ours] Declaring only rpf: the rpf question goes out, creation takes every interface enabled."""
    pim, _dvmrp, fwd = declared(core, ["rpf"], ["rpf"])
    fwd.packet(S, G, 1)
    (rpf,) = core.events()
    assert (rpf.type, rpf.to) == ("rpf", pim.id)
    pim.answer(rpf.fields["question"], **iff(1), upstream_neighbor="10.0.1.9")
    assert [e.type for e in core.events()] == ["mfe_created"]
    mfe = get(core)
    assert [o["if_index"] for o in mfe["oil"]] == [2, 4] and mfe["upstream_neighbor"] == "10.0.1.9"


@pytest.mark.parametrize("questions", [["rpf", "prune_alert"], ["RPF"], [1], "rpf", [["rpf"]], ["rpf"] * 3])
def test_questions_must_name_known_questions(core: Core, questions: Any) -> None:
    """`questions` is a list of at most the known question names; anything else is 87 and registers nothing."""
    core.refused(Status.ERROR_INVALID_PARAMETER, core.req, b"c", "register_protocol",
                 protocol_id=PIM, component_id=1, questions=questions)  # fmt: skip
    assert core.mgm.streams() == ["state"]


def test_the_declared_questions_are_published_and_in_the_snapshot(core: Core) -> None:
    """Observers see which questions each client answers: protocol_registered and the state snapshot."""
    core.register(PIM, questions=["creation_alert"])
    core.register(DVMRP)
    registered = [e.fields["questions"] for e in core.events() if e.type == "protocol_registered"]
    assert registered == [["creation_alert"], ["creation_alert", "rpf"]]
    protocols = core.mgm.snapshot("state")["protocols"]
    assert [p["questions"] for p in protocols] == [["creation_alert"], ["creation_alert", "rpf"]]


def test_set_mfe_oil_lets_the_owner_of_an_oil_interface_disable_and_enable_it_in_a_running_mfe(
    core: Core, clients: Clients
) -> None:
    """[ours] set_mfe_oil: after creation, the owner of OIL interfaces turns them off and on in one MFE (PIM's
    Assert loser, (S,G,rpt) prunes), as a late creation_alert answer does: the veto holds through other
    interfaces' changes, and new interest on that interface lifts it (its owner hears of that and decides
    again); only the interface's owner may decide, and only for a stored MFE."""
    pim, dvmrp, fwd = clients
    fwd.packet(S, G, 1)
    core.tick(1.0)  # nobody answers rpf, then creation_alert: the MFE is stored with every interface
    core.tick(1.0)
    assert [o["if_index"] for o in get(core)["oil"]] == [2, 4]
    core.drop()
    assert dvmrp("set_mfe_oil", source=S, group=G, oil=[{**iff(4), "enabled": False}]) == {}
    assert [o["if_index"] for o in get(core)["oil"]] == [2]
    assert core.types()[-1] == (None, "mfe_updated")
    pim.leave(ANY, G, 2)
    pim.join(ANY, G, 2)
    assert [o["if_index"] for o in get(core)["oil"]] == [2], "another interface's change lifted the veto"
    dvmrp("set_mfe_oil", source=S, group=G, oil=[{**iff(4), "enabled": True}])
    assert [o["if_index"] for o in get(core)["oil"]] == [2, 4]
    dvmrp("set_mfe_oil", source=S, group=G, oil=[{**iff(4), "enabled": False}])
    dvmrp.join(S, G, 4)  # new interest on the vetoed interface
    assert [o["if_index"] for o in get(core)["oil"]] == [2, 4]
    core.refused(Status.ERROR_INVALID_PARAMETER, pim, "set_mfe_oil", source=S, group=G,
                 oil=[{**iff(4), "enabled": False}])  # fmt: skip
    core.refused(Status.ERROR_NOT_FOUND, dvmrp, "set_mfe_oil", source=S, group="239.9.9.9",
                 oil=[{**iff(4), "enabled": False}])  # fmt: skip
    assert [o["if_index"] for o in get(core)["oil"]] == [2, 4]
