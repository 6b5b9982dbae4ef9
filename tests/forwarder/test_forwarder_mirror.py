"""The forwarder's mirror over the simulated dataplane: what reaches the forwarding cache, and when (no root)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from mgm.plugins.forwarder.mirror import Mirror
from mgm.plugins.forwarder.mroute import IGMPMSG_NOCACHE, IGMPMSG_WRONGVIF, MrouteError, Upcall
from mgm.plugins.forwarder.sim import SimDataplane, SimVif
from mgm.plugins.links import Link

S, G = "10.1.0.2", "239.1.1.1"
ROUTING = {"protocol_id": 10006, "component_id": 1}
IGMP = {"protocol_id": 10, "component_id": 1}


class Recording(SimDataplane):
    """The simulated plane, remembering every call, so a test can see that nothing needless happened."""

    def __init__(self) -> None:
        self.upcalls: list[Upcall] = []
        super().__init__(self.upcalls.append)
        self.calls: list[tuple[Any, ...]] = []

    def add_vif(self, vifi: int, if_index: int, *, threshold: int = 1) -> None:
        self.calls.append(("add_vif", vifi, if_index))
        super().add_vif(vifi, if_index)

    def del_vif(self, vifi: int) -> None:
        self.calls.append(("del_vif", vifi))
        super().del_vif(vifi)

    def add_mfc(self, source: str, group: str, parent: int, oifs: Mapping[int, int] | Iterable[int] = ()) -> None:
        self.calls.append(("add_mfc", source, group, parent, sorted(oifs)))
        super().add_mfc(source, group, parent, oifs)

    def del_mfc(self, source: str, group: str) -> None:
        self.calls.append(("del_mfc", source, group))
        super().del_mfc(source, group)


def mfe(source: str, group: str, in_if: int, oil: Iterable[int]) -> dict[str, Any]:
    return {"source": source, "group": group, "in_if_index": in_if, "in_next_hop": "0.0.0.0",
            "upstream_neighbor": "0.0.0.0", "in_protocol_id": 10006,
            "oil": [{"if_index": i, "next_hop": "0.0.0.0"} for i in oil], "created": 0.0, "expires": 900.0,
            "timeout": 900.0}  # fmt: skip


def iface(if_index: int, owner: dict[str, int] | None = ROUTING, igmp: bool = False) -> dict[str, Any]:
    return {"if_index": if_index, "next_hop": "0.0.0.0", "owner": owner, "igmp": igmp}


def state(ifaces: Iterable[int], mfes: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    return {"protocols": [], "interfaces": [iface(i) for i in ifaces], "memberships": [], "mfes": list(mfes)}


@pytest.fixture
def plane() -> Recording:
    return Recording()


@pytest.fixture
def mirror(plane: Recording) -> Mirror:
    return Mirror(plane, logging.getLogger("test.mirror"))


def test_resync_adds_a_vif_per_owned_interface_and_installs_the_mfes(mirror: Mirror, plane: Recording) -> None:
    mirror.resync(state([3, 5, 7], [mfe(S, G, 3, [5, 7])]))
    assert mirror.vifs == {3: 0, 5: 1, 7: 2}
    assert plane.mfc[(S, G)].parent == 0 and plane.mfc[(S, G)].oifs == {1, 2}


def test_the_incoming_interface_is_never_an_outgoing_one(mirror: Mirror, plane: Recording) -> None:
    mirror.resync(state([3, 5], [mfe(S, G, 3, [3, 5])]))
    assert plane.mfc[(S, G)].oifs == {1}


def test_events_update_and_delete_the_entry(mirror: Mirror, plane: Recording) -> None:
    mirror.resync(state([3, 5, 7]))
    mirror.apply({"type": "mfe_created", "mfe": mfe(S, G, 3, [5])})
    mirror.apply({"type": "mfe_updated", "mfe": mfe(S, G, 3, [5, 7])})
    assert plane.mfc[(S, G)].oifs == {1, 2}
    mirror.apply({"type": "mfe_updated", "mfe": mfe(S, G, 3, [])})
    assert plane.mfc[(S, G)].oifs == frozenset()  # negative: the kernel drops the flow, no more upcalls
    mirror.apply({"type": "mfe_deleted", "mfe": mfe(S, G, 3, [])})
    assert (S, G) not in plane.mfc and (S, G) not in mirror.installed


def test_resync_reconciles_without_touching_what_is_right(mirror: Mirror, plane: Recording) -> None:
    same, changed, stale, missing = (mfe(S, f"239.1.1.{i}", 3, [5]) for i in (1, 2, 3, 4))
    mirror.resync(state([3, 5, 7], [same, changed, stale]))
    plane.calls.clear()
    mirror.resync(state([3, 5, 7], [same, {**changed, "oil": changed["oil"] + [iface(7)]}, missing]))
    assert sorted(plane.calls) == [
        ("add_mfc", S, "239.1.1.2", 0, [1, 2]),
        ("add_mfc", S, "239.1.1.4", 0, [1]),
        ("del_mfc", S, "239.1.1.3"),
    ]


def test_after_a_manager_restart_unknown_entries_keep_forwarding_and_are_asked_for(
    mirror: Mirror, plane: Recording
) -> None:
    other = mfe(S, "239.1.1.2", 3, [5])
    mirror.resync(state([3, 5], [mfe(S, G, 3, [5]), other]))
    mirror.resync(state([3, 5]), defer_stale=True)  # the new manager knows nothing yet
    assert (S, G) in plane.mfc
    mirror.apply({"type": "mfe_created", "mfe": other})  # it learnt this one meanwhile
    assert mirror.stale_requests() == [{"source": S, "group": G, "if_index": 3, "next_hop": "0.0.0.0"}]
    assert (S, G) in plane.mfc  # still forwarding while the manager decides
    plane.calls.clear()
    mirror.apply({"type": "mfe_created", "mfe": mfe(S, G, 3, [5])})
    assert plane.calls == [] and mirror.stale == set()  # the same entry: nothing to change


def test_a_kept_entry_whose_request_is_refused_is_deleted(mirror: Mirror, plane: Recording) -> None:
    mirror.resync(state([3, 5], [mfe(S, G, 3, [5])]))
    mirror.resync(state([3, 5]), defer_stale=True)
    assert len(mirror.stale_requests()) == 1
    mirror.forget((S, G))
    assert (S, G) not in plane.mfc and mirror.stale == set()


def test_a_vif_stays_while_anyone_owns_the_interface(mirror: Mirror, plane: Recording) -> None:
    mirror.resync({"interfaces": [iface(3), iface(5, ROUTING, igmp=True)], "mfes": [mfe(S, G, 3, [5])]})
    mirror.apply({"type": "interface_released", **ROUTING, "if_index": 5, "next_hop": "0.0.0.0"})
    assert 5 in mirror.vifs  # IGMP still owns it
    mirror.apply({"type": "interface_released", **IGMP, "if_index": 5, "next_hop": "0.0.0.0"})
    assert 5 not in mirror.vifs and ("del_vif", 1) in plane.calls
    assert plane.mfc[(S, G)].oifs == frozenset()  # the OIL lost the VIF with it


def test_an_mfe_waits_for_the_vif_of_its_incoming_interface(mirror: Mirror, plane: Recording) -> None:
    mirror.resync(state([5], [mfe(S, G, 3, [5])]))
    assert (S, G) not in plane.mfc
    mirror.apply({"type": "interface_owned", **ROUTING, "if_index": 3, "next_hop": "0.0.0.0"})
    assert plane.mfc[(S, G)].parent == mirror.vifs[3]


def test_a_vif_waits_for_its_link_and_goes_with_it(mirror: Mirror, plane: Recording) -> None:
    mirror.set_links({3: Link(3, "r1", True)})
    mirror.resync(state([3, 5], [mfe(S, G, 3, [5])]))
    assert 5 not in mirror.vifs and plane.mfc[(S, G)].oifs == frozenset()
    mirror.link_changed(5, Link(5, "r2", True))
    assert plane.mfc[(S, G)].oifs == {mirror.vifs[5]}
    plane.vifs.pop(mirror.vifs[3])  # the kernel removes the VIF of a deleted link by itself
    mirror.link_removed(3)
    assert 3 not in mirror.vifs and (S, G) not in plane.mfc


def test_source_wildcard_and_link_local_mfes_are_not_installed(mirror: Mirror, plane: Recording) -> None:
    mirror.resync(state([3, 5], [mfe("0.0.0.0", G, 3, [5]), mfe(S, "224.0.0.251", 3, [5])]))
    assert plane.mfc == {}


def test_nocache_becomes_one_new_packet_until_answered(mirror: Mirror) -> None:
    mirror.resync(state([3, 5]))
    upcall = Upcall(IGMPMSG_NOCACHE, 0, S, G)
    assert mirror.upcall(upcall) == ("new_packet", {"source": S, "group": G, "if_index": 3, "next_hop": "0.0.0.0"})
    assert mirror.upcall(upcall) is None
    mirror.request_done((S, G))
    assert mirror.upcall(upcall) is not None


def test_upcalls_that_become_no_request(mirror: Mirror, plane: Recording) -> None:
    mirror.resync(state([3, 5], [mfe(S, G, 3, [5])]))
    assert mirror.upcall(Upcall(IGMPMSG_NOCACHE, 9, S, "239.9.9.9")) is None  # not our VIF
    assert mirror.upcall(Upcall(IGMPMSG_NOCACHE, 0, S, "224.0.0.9")) is None  # link-local
    assert mirror.upcall(Upcall(IGMPMSG_WRONGVIF, 1, S, "239.9.9.9")) is None  # no such MFE
    plane.mfc.clear()  # the kernel lost our entry: the upcall reinstalls it instead of asking
    assert mirror.upcall(Upcall(IGMPMSG_NOCACHE, 0, S, G)) is None
    assert (S, G) in plane.mfc


def test_wrongvif_becomes_wrong_interface(mirror: Mirror) -> None:
    mirror.resync(state([3, 5], [mfe(S, G, 3, [])]))
    assert mirror.upcall(Upcall(IGMPMSG_WRONGVIF, 1, S, G)) == (
        "wrong_interface", {"source": S, "group": G, "if_index": 5, "next_hop": "0.0.0.0"},
    )  # fmt: skip


def test_counters_attribute_packets_to_the_oil_in_force(mirror: Mirror, plane: Recording) -> None:
    mirror.resync(state([3, 5, 7], [mfe(S, G, 3, [5])]))
    for _ in range(4):
        plane.packet(S, G, 3, size=50)
    mirror.apply({"type": "mfe_updated", "mfe": mfe(S, G, 3, [5, 7])})
    plane.packet(S, G, 3, size=50)
    plane.packet(S, G, 5, size=50)  # a wrong interface
    (entry,) = mirror.counters()
    assert (entry["in_packets"], entry["in_bytes"], entry["wrong_if_packets"]) == (5, 250, 1)
    assert {o["if_index"]: o["out_packets"] for o in entry["oil"]} == {5: 5, 7: 1}


def test_vif_errors_are_logged_not_raised(mirror: Mirror, plane: Recording, caplog: pytest.LogCaptureFixture) -> None:
    def refuse(vifi: int, if_index: int, *, threshold: int = 1) -> None:
        raise MrouteError(19, "MRT_ADD_VIF: No such device")

    plane.add_vif = refuse  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        mirror.resync(state([3]))
    assert mirror.vifs == {} and "No such device" in caplog.text


def test_a_vif_number_held_by_another_process_is_skipped(mirror: Mirror, plane: Recording) -> None:
    plane.vifs[0] = SimVif(99)  # a static VIF someone else added
    mirror.resync(state([3, 5]))
    assert mirror.vifs == {3: 1, 5: 2} and mirror.foreign_vifs == {0}
