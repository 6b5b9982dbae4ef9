"""The forwarder's mirror across a manager restart, without root (the simulated dataplane).

Found by test_res_restarts_netns (a killed manager under a steady stream):
the new manager's first snapshot came before igmp had taken its interfaces
again, the mirror removed every VIF and added it back 2 ms later, and the
packet in between was lost.  The VIFs must outlive the restart like the
MFC entries do, until the restart grace ends.
"""

from __future__ import annotations

import logging
from typing import Any

from mgm.plugins.forwarder.mirror import Mirror
from mgm.plugins.forwarder.sim import SimDataplane

S, G = "10.1.0.2", "239.1.1.1"
IGMP = {"protocol_id": 10, "component_id": 1}


class Counting(SimDataplane):
    def __init__(self) -> None:
        super().__init__(lambda upcall: None)
        self.removed: list[int] = []

    def del_vif(self, vifi: int) -> None:
        self.removed.append(vifi)
        super().del_vif(vifi)


def state(ifaces: list[int], mfes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "protocols": [],
        "memberships": [],
        "mfes": mfes,
        "interfaces": [{"if_index": i, "next_hop": "0.0.0.0", "owner": IGMP, "igmp": True} for i in ifaces],
    }


def mfe(in_if: int, oil: list[int]) -> dict[str, Any]:
    return {"source": S, "group": G, "in_if_index": in_if, "in_next_hop": "0.0.0.0", "upstream_neighbor": "0.0.0.0",
            "in_protocol_id": 10, "oil": [{"if_index": i, "next_hop": "0.0.0.0"} for i in oil], "created": 0.0,
            "expires": 900.0, "timeout": 900.0}  # fmt: skip


def test_vifs_of_kept_entries_stay_until_the_grace_ends_and_then_only_the_unowned_go() -> None:
    plane = Counting()
    mirror = Mirror(plane, logging.getLogger(__name__))
    mirror.resync(state([2, 3, 4], [mfe(2, [3, 4])]))
    vifs = dict(mirror.vifs)
    installed = dict(mirror.installed)
    mirror.resync(state([], []), defer_stale=True)  # the new manager: nobody has taken anything yet
    assert plane.removed == [] and mirror.vifs == vifs and mirror.installed == installed
    mirror.apply({"type": "interface_owned", "if_index": 2, "next_hop": "0.0.0.0", **IGMP})
    mirror.apply({"type": "interface_owned", "if_index": 3, "next_hop": "0.0.0.0", **IGMP})
    assert plane.removed == [] and mirror.vifs == vifs
    # The grace ends: the entry is asked for again; interface 4, still nobody's, loses its VIF.
    assert mirror.stale_requests() == [{"source": S, "group": G, "if_index": 2, "next_hop": "0.0.0.0"}]
    assert plane.removed == [vifs[4]] and set(mirror.vifs) == {2, 3}


def test_without_kept_entries_a_restart_removes_unowned_vifs_at_once() -> None:
    plane = Counting()
    mirror = Mirror(plane, logging.getLogger(__name__))
    mirror.resync(state([2, 3], []))
    mirror.resync(state([2], []), defer_stale=True)
    assert set(mirror.vifs) == {2} and len(plane.removed) == 1
