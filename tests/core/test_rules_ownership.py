"""Interface ownership, the IGMP exception, and disable/enable_igmp (MGM-SPEC: Interface ownership)."""

from __future__ import annotations

import pytest
from rules_harness import ANY, DVMRP, FWD, IGMP, PIM, Core, ev, iff, sgf

from mgm.bus.status import Status
from mgm.core.types import Interface


def owned(p_id: int, **fields: object) -> dict[str, object]:
    return {"protocol_id": p_id, "component_id": 1, **fields}


def test_take_publishes_interface_owned(core: Core) -> None:
    """take(handle, interface) makes the client the owner; observers see interface_owned."""
    pim = core.register(PIM)
    core.drop()
    assert pim.take(3, "10.1.1.2") == {}
    assert core.events() == [ev(None, "interface_owned", **owned(PIM, **iff(3, "10.1.1.2")))]


@pytest.mark.parametrize(("first", "second"), [((PIM, 1), (DVMRP, 1)), ((PIM, 1), (PIM, 1)), ((IGMP, 1), (IGMP, 2))],
                         ids=["a second routing protocol", "[ours] the owner again", "[ours] a second IGMP"])
def test_a_second_owner_of_the_same_kind_is_already_exists(
    core: Core, first: tuple[int, int], second: tuple[int, int]
) -> None:
    """At most one routing protocol owns an interface, and the IGMP exception admits one IGMP beside it, not two:
    a second one, or the owner taking its interface again, gets ERROR_ALREADY_EXISTS."""
    owner = core.register(*first)
    owner.take(1)
    core.refused(Status.ERROR_ALREADY_EXISTS, (owner if second == first else core.register(*second)).take, 1)


def test_next_hops_tell_interfaces_apart(core: Core) -> None:
    """An interface is (if_index, next_hop): two next hops of one link are two interfaces."""
    pim, dvmrp = core.protos(PIM, DVMRP)
    pim.take(1, "10.0.0.2")
    dvmrp.take(1, "10.0.0.3")
    assert core.req(b"x", "get_protocol_on_interface", **iff(1, "10.0.0.3")) == owned(DVMRP)


def test_igmp_may_co_own_with_one_routing_protocol(core: Core) -> None:
    """IGMP (protocol 10) may own an interface together with one routing protocol, in either order."""
    igmp, pim = core.protos(IGMP, PIM)
    igmp.take(1)
    pim.take(1)
    pim.take(2)
    igmp.take(2)


def test_igmp_taking_beside_a_routing_protocol_has_no_bracket(core: Core) -> None:
    """IGMP joining an interface a routing protocol owns is just interface_owned."""
    igmp, pim = core.protos(IGMP, PIM)
    pim.take(1)
    core.drop()
    igmp.take(1)
    assert core.events() == [ev(None, "interface_owned", **owned(IGMP, **iff(1)))]


@pytest.mark.parametrize(
    ("pim_owns", "change", "published"),
    [(False, "take", "interface_owned"), (True, "release", "interface_released")],
    ids=["taking from igmp", "releasing beside igmp"],
)
def test_routing_protocol_beside_igmp_brackets_with_disable_enable(
    core: Core, pim_owns: bool, change: str, published: str
) -> None:
    """A routing protocol taking an interface IGMP owns, or releasing one IGMP also owns: disable_igmp, the change,
    enable_igmp, in that order."""
    igmp, pim = core.protos(IGMP, PIM)
    igmp.take(1)
    if pim_owns:
        pim.take(1)
    core.drop()
    getattr(pim, change)(1)
    assert core.events() == [
        ev(igmp, "disable_igmp", **iff(1)),
        ev(None, published, **owned(PIM, **iff(1))),
        ev(igmp, "enable_igmp", **iff(1)),
    ]
    assert core.req(b"x", "get_protocol_on_interface", **iff(1)) == owned(IGMP if pim_owns else PIM)


def test_igmp_memberships_survive_the_ownership_change(core: Core) -> None:
    """[ours] IGMP's memberships stay across disable/enable; the MFE keeps forwarding."""
    igmp, pim = core.protos(IGMP, PIM)
    igmp.take(1)
    igmp.join(ANY, "239.1.1.1", 1)
    pim.take(1)
    pim.release(1)
    assert [(m["protocol_id"], m["group"]) for m in core.mgm.snapshot("state")["memberships"]] == [(IGMP, "239.1.1.1")]


def test_igmp_re_add_after_enable_tells_the_new_owner(core: Core) -> None:
    """[ours] A re-add is NO_ERROR and changes nothing, but the new owner gets the local_join."""
    igmp, pim = core.protos(IGMP, PIM)
    igmp.take(1)
    igmp.join(ANY, "239.1.1.1", 1)
    pim.take(1)
    before = core.mgm.snapshot("state")
    core.drop()
    assert igmp.join(ANY, "239.1.1.1", 1) == {}
    assert core.events() == [ev(pim, "local_join", **sgf(ANY, "239.1.1.1"), **iff(1))]
    assert core.mgm.snapshot("state") == before


def test_release_not_owned_is_invalid_parameter(core: Core) -> None:
    """release of an interface the client does not own is ERROR_INVALID_PARAMETER."""
    pim, dvmrp = core.protos(PIM, DVMRP)
    dvmrp.take(1)
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.release, 1)
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.release, 7)


def test_release_deletes_the_clients_memberships_there_with_their_effects(core: Core) -> None:
    """Releasing deletes the client's memberships on the interface, each with its events, then releases."""
    pim, dvmrp = core.protos(PIM, DVMRP)
    pim.take(1)
    pim.take(2)
    pim.join(ANY, "239.1.1.1", 1)
    pim.join(ANY, "239.1.1.2", 1)
    pim.join(ANY, "239.1.1.2", 2)
    core.drop()
    pim.release(1)
    member = {"protocol_id": PIM, "component_id": 1, **iff(1), "flags": 1}
    assert core.events() == [
        ev(None, "membership_deleted", **sgf(ANY, "239.1.1.1"), **member),
        ev(dvmrp, "prune_alert", **sgf(ANY, "239.1.1.1"), **iff(1), member_delete=True),
        ev(None, "membership_deleted", **sgf(ANY, "239.1.1.2"), **member),
        ev(None, "interface_released", **owned(PIM, **iff(1))),
    ]


def test_release_deletes_mfes_whose_incoming_interface_it_was(core: Core) -> None:
    """Releasing deletes the MFEs coming in on the interface (the owner kept them)."""
    pim, fwd = core.protos(PIM, FWD)
    pim.take(1)
    core.routes["10.0.0.1"] = Interface(1)
    core.routes["10.0.0.2"] = Interface(2)
    fwd.packet("10.0.0.1", "239.1.1.1", 1)
    fwd.packet("10.0.0.2", "239.1.1.1", 2)
    core.tick(1.0)
    core.drop()
    pim.release(1)
    assert [(e.type, e.fields.get("mfe", {}).get("source")) for e in core.events()] == [
        ("mfe_deleted", "10.0.0.1"), ("interface_released", None)
    ]  # fmt: skip
    assert [m["source"] for m in core.req(b"x", "list_mfes", max_entries=10)["entries"]] == ["10.0.0.2"]


def test_igmp_releasing_beside_owner_keeps_the_owners_mfes(core: Core) -> None:
    """[ours] IGMP releasing an interface a routing protocol owns leaves that protocol's MFEs alone."""
    igmp, pim, fwd = core.protos(IGMP, PIM, FWD)
    pim.take(1)
    igmp.take(1)
    core.routes["10.0.0.1"] = Interface(1)
    fwd.packet("10.0.0.1", "239.1.1.1", 1)
    core.tick(1.0)
    core.drop()
    igmp.release(1)
    assert core.types() == [(None, "interface_released")]


@pytest.mark.parametrize("routing_owner", [True, False], ids=["the routing owner, even when IGMP co-owns",
                                                             "[ours] IGMP only where it owns the interface alone"])
def test_get_protocol_on_interface_names_the_routing_owner_else_igmp(core: Core, routing_owner: bool) -> None:
    """get_protocol_on_interface gives the routing protocol, else IGMP."""
    core.register(IGMP).take(1)
    if routing_owner:
        core.register(PIM, 4).take(1)
    expected = {"protocol_id": PIM, "component_id": 4} if routing_owner else owned(IGMP)
    assert core.req(b"x", "get_protocol_on_interface", **iff(1)) == expected


def test_get_protocol_on_unowned_interface_is_not_found(core: Core) -> None:
    """get_protocol_on_interface of an interface nobody owns is ERROR_NOT_FOUND."""
    core.refused(Status.ERROR_NOT_FOUND, core.req, b"x", "get_protocol_on_interface", **iff(9))


def test_take_after_release_is_allowed(core: Core) -> None:
    """A released interface can be taken by another routing protocol."""
    pim, dvmrp = core.protos(PIM, DVMRP)
    pim.take(1)
    pim.release(1)
    assert dvmrp.take(1) == {}


def test_taking_an_incoming_interface_reassigns_its_mfes(core: Core) -> None:
    """[ours] An MFE's in_protocol_id follows the owner of its incoming interface (mfe_updated)."""
    igmp, pim, fwd = core.protos(IGMP, PIM, FWD)
    igmp.take(1)
    core.routes["10.0.0.1"] = Interface(1)
    fwd.packet("10.0.0.1", "239.1.1.1", 1)
    core.tick(1.0)
    assert core.req(b"x", "get_mfe", source="10.0.0.1", group="239.1.1.1")["mfe"]["in_protocol_id"] == IGMP
    core.drop()
    pim.take(1)
    assert core.types() == [
        (igmp.id, "disable_igmp"), (None, "interface_owned"), (None, "mfe_updated"), (igmp.id, "enable_igmp")
    ]  # fmt: skip
    assert core.req(b"x", "get_mfe", source="10.0.0.1", group="239.1.1.1")["mfe"]["in_protocol_id"] == PIM
