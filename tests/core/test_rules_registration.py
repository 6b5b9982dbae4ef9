"""Registration, handles, deregistration, liveness and lost connections (MGM-SPEC: Registration)."""

from __future__ import annotations

import itertools

import pytest
from rules_harness import ANY, IGMP, PIM, Core, Proto, ev, iff, sgf

from mgm.bus.status import MgmError, Status
from mgm.core.state import DEFERRED
from mgm.core.types import CORE_OPS, ClientId, Event, Interface


def test_register_returns_a_handle_and_publishes_the_client(core: Core) -> None:
    """register(protocol_id, component_id) gives a handle; observers see protocol_registered."""
    assert isinstance(core.register(PIM, 2, name="pim").handle, int)
    assert core.events() == [ev(None, "protocol_registered", protocol_id=PIM, component_id=2, name="pim",
                                questions=["creation_alert", "rpf"])]  # fmt: skip
    assert core.mgm.streams() == ["state", "proto/20/2"]


def test_register_twice_is_already_exists(core: Core) -> None:
    """A (protocol_id, component_id) pair registers once: the second gets ERROR_ALREADY_EXISTS."""
    core.register(PIM, 1)
    core.refused(Status.ERROR_ALREADY_EXISTS, core.req, b"other", "register_protocol", protocol_id=PIM, component_id=1)


def test_same_protocol_other_component_may_register(core: Core) -> None:
    """Clients are told apart by the pair, so another component of the same protocol is a new client."""
    core.register(PIM, 1)
    core.register(PIM, 2)
    assert core.mgm.streams() == ["state", "proto/20/1", "proto/20/2"]


def test_handles_are_opaque_not_sequential(core: Core) -> None:
    """Handles are opaque: consecutive registrations do not get consecutive numbers."""
    handles = [core.register(PIM, c).handle for c in range(20)]
    assert len(set(handles)) == 20
    assert {b - a for a, b in itertools.pairwise(handles)} != {1}
    assert 0 not in handles


def test_unknown_handle_is_invalid_parameter(core: Core) -> None:
    """Every call with a handle nobody registered fails with ERROR_INVALID_PARAMETER."""
    p = core.register(PIM)
    core.refused(Status.ERROR_INVALID_PARAMETER, core.req, p.conn, "heartbeat", handle=p.handle ^ 1)


def test_handle_from_another_connection_is_invalid_parameter(core: Core) -> None:
    """[ours] A handle is bound to the connection that registered it; elsewhere it is foreign (87)."""
    p = core.register(PIM)
    core.refused(
        Status.ERROR_INVALID_PARAMETER, core.req, b"intruder", "take_interface_ownership", handle=p.handle, **iff(1)
    )


def test_deregister_removes_the_client(core: Core) -> None:
    """deregister(handle) forgets the client and its handle; observers see protocol_deregistered."""
    p = core.register(PIM)
    core.drop()
    assert p("deregister_protocol") == {}
    assert core.events() == [ev(None, "protocol_deregistered", protocol_id=PIM, component_id=1)]
    core.refused(Status.ERROR_INVALID_PARAMETER, p, "heartbeat")
    core.register(PIM)  # the pair is free again


def test_deregister_while_owning_an_interface_cannot_complete(core: Core) -> None:
    """deregister is ERROR_CAN_NOT_COMPLETE while the client still owns an interface."""
    p = core.register(PIM)
    p.take(1)
    core.refused(Status.ERROR_CAN_NOT_COMPLETE, p, "deregister_protocol")


def test_heartbeat_is_empty_success(core: Core) -> None:
    """heartbeat(handle) answers {} and keeps the client alive."""
    assert core.register(PIM)("heartbeat") == {}


def test_unknown_op_is_not_supported(core: Core) -> None:
    """An operation the core does not know is ERROR_NOT_SUPPORTED (ping and sync are the manager's)."""
    core.refused(Status.ERROR_NOT_SUPPORTED, core.req, b"c", "ping")
    assert "ping" not in CORE_OPS and "sync" not in CORE_OPS
    assert "register_protocol" in CORE_OPS and len(CORE_OPS) == 22  # v1, set_boundaries, status, set_mfe_oil


def test_args_must_be_a_map(core: Core) -> None:
    """args that are not a map are ERROR_INVALID_PARAMETER."""
    core.refused(Status.ERROR_INVALID_PARAMETER, core.mgm.handle, b"c", "register_protocol", [1, 2], core.now)


# --- liveness -----------------------------------------------------------------------


def _member_on(core: Core) -> tuple[Proto, Proto]:
    igmp = core.register(IGMP, conn=b"igmp")
    pim = core.register(PIM, conn=b"pim")
    pim.take(1)
    igmp.take(1)
    igmp.join(ANY, "239.1.1.1", 1)
    core.drop()
    return igmp, pim


def test_silent_connection_is_cleaned_up_like_a_polite_client(core: Core) -> None:
    """[ours] After `liveness` s of silence: delete memberships, release interfaces, deregister, with all events."""
    _igmp, pim = _member_on(core)
    core.now += 2.0
    pim("heartbeat")
    core.tick(1.0)  # igmp silent 3 s: gone; pim spoke 1 s ago
    assert core.events() == [
        ev(None, "membership_deleted", protocol_id=IGMP, component_id=1, **sgf(ANY, "239.1.1.1"), **iff(1), flags=1),
        ev(pim, "local_leave", **sgf(ANY, "239.1.1.1"), **iff(1)),
        ev(pim, "prune_alert", **sgf(ANY, "239.1.1.1"), **iff(1), member_delete=True),
        ev(None, "interface_released", protocol_id=IGMP, component_id=1, **iff(1)),
        ev(None, "protocol_deregistered", protocol_id=IGMP, component_id=1),
    ]
    assert core.mgm.streams() == ["state", "proto/20/1"]


def test_any_request_counts_as_sign_of_life(core: Core) -> None:
    """A client that sends anything (even a refused request) within `liveness` s stays."""
    p = core.register(PIM)
    core.now += 2.5
    core.refused(Status.ERROR_INVALID_PARAMETER, p, "take_interface_ownership", if_index=-1, next_hop=ANY)
    core.tick(2.5)
    assert ClientId(PIM, 1) in [ClientId(*map(int, s.split("/")[1:])) for s in core.mgm.streams()[1:]]


def test_next_deadline_includes_liveness(core: Core) -> None:
    """next_deadline() tells the manager when the silent client must be checked."""
    assert core.mgm.next_deadline() is None
    core.register(PIM)
    assert core.mgm.next_deadline() == pytest.approx(core.now + 3.0)


def test_connection_lost_cleans_up_at_once(core: Core) -> None:
    """[ours] A lost connection is cleaned up at once, every client on it, in registration order."""
    a = core.register(PIM, 1, conn=b"shared")
    b = core.register(PIM, 2, conn=b"shared")
    a.take(1)
    b.take(2)
    core.drop()
    core.mgm.connection_lost(b"shared", core.now)
    assert core.types() == [(None, "interface_released"), (None, "protocol_deregistered")] * 2
    assert core.mgm.streams() == ["state"]
    assert core.mgm.next_deadline() is None


def test_connection_lost_of_unknown_connection_is_harmless(core: Core) -> None:
    """Losing a connection that registered nothing changes nothing."""
    core.register(PIM)
    core.drop()
    core.mgm.connection_lost(b"nobody", core.now)
    assert core.events() == []


def test_cleanup_deletes_mfes_of_released_incoming_interfaces(core: Core) -> None:
    """Cleanup releases interfaces, which deletes the MFEs coming in on them."""
    pim, fwd = core.protos(PIM, 99)
    pim.take(1)
    core.routes["10.0.0.1"] = Interface(1)
    assert fwd.packet("10.0.0.1", "239.1.1.1", 1) is DEFERRED  # rpf to pim
    core.tick(0.2)
    assert core.mgm.handle(fwd.conn, "get_mfe", {"source": "10.0.0.1", "group": "239.1.1.1"}, core.now)
    core.drop()
    core.mgm.connection_lost(pim.conn, core.now)
    assert [t for _, t in core.types()] == ["mfe_deleted", "interface_released", "protocol_deregistered"]


# --- cleanup of a departed client in bounded batches -----------------------------------------------------


def _big_departure(batch: int) -> tuple[Core, Proto, Proto, Proto]:
    """IGMP (shared connection with a second client) beside PIM on 1 and 2 with 12 memberships, an MFE per group."""
    core = Core(liveness=1e9, cleanup_batch=batch)
    igmp = core.register(IGMP, conn=b"shared")
    other = core.register(PIM, 2, conn=b"shared")
    pim, fwd = core.protos(PIM, 99)
    for i in (1, 2):
        pim.take(i)
        igmp.take(i)
    other.take(3)
    core.routes["10.0.0.1"] = Interface(3)
    for g in range(3):
        group = f"239.1.1.{g}"
        for i in (1, 2):
            igmp.join(ANY, group, i)
            igmp.join("10.0.0.1", group, i)
        fwd.packet("10.0.0.1", group, 3)
    core.tick(0.2)
    core.tick(0.2)
    core.drop()
    core.mgm.take_completions()
    return core, igmp, other, fwd


def _clean_up_fully(core: Core) -> list[list[Event]]:
    """Tick while next_deadline() says "now"; the events of each transition."""
    batches = []
    while (due := core.mgm.next_deadline()) is not None and due <= core.now:
        core.mgm.tick(core.now)
        batches.append(core.events())
    return batches


def test_cleanup_goes_in_bounded_batches_with_the_events_of_one_pass() -> None:
    """[ours] A departed client loses at most `cleanup_batch` memberships per transition; next_deadline() asks for
    tick() at once while work remains, and the events come in exactly the order of an unbounded cleanup."""
    whole, *_ = _big_departure(10_000)
    whole.mgm.connection_lost(b"shared", whole.now)
    expected = whole.events()
    assert _clean_up_fully(whole) == []

    core, *_ = _big_departure(5)
    core.mgm.connection_lost(b"shared", core.now)
    batches = [core.events(), *_clean_up_fully(core)]
    assert [e for batch in batches for e in batch] == expected
    deletions = [sum(e.type == "membership_deleted" for e in batch) for batch in batches]
    assert deletions == [5, 5, 2]  # 12 memberships; the last transition also releases and deregisters both
    assert [e.type for e in batches[-1]][-1] == "protocol_deregistered"
    assert core.mgm.streams() == whole.mgm.streams() == ["state", "proto/20/1", "proto/99/1"]
    assert core.whole_state() == whole.whole_state()
    nd = core.mgm.next_deadline()
    assert nd is None or nd > core.now


def test_a_client_being_cleaned_up_is_gone_for_requests_and_registers_again_once_done() -> None:
    """[ours] During its cleanup a departed client's handle is refused (also from a connection that comes back
    after going silent) and its ids are still taken (183); once cleaned up they register again."""
    core, igmp, other, _fwd = _big_departure(5)
    core.mgm.connection_lost(b"shared", core.now)
    core.refused(Status.ERROR_INVALID_PARAMETER, igmp, "heartbeat")
    core.refused(Status.ERROR_INVALID_PARAMETER, other, "release_interface_ownership", **iff(3))
    core.refused(Status.ERROR_ALREADY_EXISTS, core.req, b"new", "register_protocol", protocol_id=IGMP, component_id=1)
    _clean_up_fully(core)
    core.register(IGMP, conn=b"new").take(1)
    assert core.mgm.snapshot("proto/10/1")["interfaces"] == [{**iff(1), "igmp_enabled": True}]


def test_other_clients_are_served_between_cleanup_batches() -> None:
    """[ours] Requests of other clients interleave with a cleanup; each sees the memberships left so far."""
    core, _igmp, _other, fwd = _big_departure(5)
    core.mgm.connection_lost(b"shared", core.now)
    core.drop()
    def oil(group: str) -> list[int]:
        return [o["if_index"] for o in core.req(b"observer", "get_mfe", source="10.0.0.1", group=group)["mfe"]["oil"]]

    # the first 5 of IGMP's memberships on interface 1, in (group, source) order, are gone
    assert (oil("239.1.1.0"), oil("239.1.1.2")) == ([2], [1, 2])
    assert fwd("heartbeat") == {}
    _clean_up_fully(core)
    # the second client on the connection released interface 3, where the MFEs came in
    core.refused(Status.ERROR_NOT_FOUND, core.req, b"observer", "get_mfe", source="10.0.0.1", group="239.1.1.2")


def test_a_silent_client_is_cleaned_up_in_batches_by_tick() -> None:
    """[ours] Liveness cleanup in tick() is bounded the same way."""
    core, *_ = _big_departure(5)
    core.mgm.liveness = 3.0
    core.now += 3.0
    for who in (b"conn-20-1", b"conn-99-1"):
        with pytest.raises(MgmError):  # refused (no handle), but a sign of life
            core.mgm.handle(who, "heartbeat", {}, core.now)
    core.mgm.tick(core.now)
    assert sum(e.type == "membership_deleted" for e in core.events()) == 5
    assert sum(e.type == "membership_deleted" for batch in _clean_up_fully(core) for e in batch) == 7
    assert core.mgm.streams() == ["state", "proto/20/1", "proto/99/1"]
