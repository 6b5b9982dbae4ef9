"""A host leaves while the manager is down: after the restart, the interface's owner is told local_leave.

Found by test_res_chaos: IGMP's delete met the dead (or the new) manager and
was refused, so the new manager never had the membership, nothing ever
announced its end, and the routing plugin kept a local receiver that no
longer existed (a proxy would keep its upstream join for ever).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from mgm_testplugins.control import ControlError
from mgm_testplugins.processes import ManagerProc, PluginProc

G, KEPT = "239.5.5.5", "239.5.5.6"


def test_a_local_member_gone_while_the_manager_was_down_ends_in_local_leave(
    start_manager: Callable[..., ManagerProc], start_plugin: Callable[..., PluginProc]
) -> None:
    manager = start_manager()
    igmp = start_plugin("test-igmp", {"interfaces": [11]})
    routing = start_plugin("test-routing-a", {"protocol_id": 100, "component_id": 1, "interfaces": [11]})
    assert igmp.control is not None and routing.control is not None
    for group in (G, KEPT):
        igmp.control.call("add_membership", source="0.0.0.0", group=group, if_index=11)
        routing.control.wait_for_call("mgm_local_join", group=group, interface=[11, "0.0.0.0"])

    manager.send_signal(signal.SIGKILL)
    manager.wait(10)
    outcome: list[str] = []

    def leave() -> None:  # the host left: IGMP deletes, but no manager takes it
        assert igmp.control is not None
        try:
            igmp.control.call("delete_membership", source="0.0.0.0", group=G, if_index=11)
            outcome.append("accepted")
        except (ControlError, TimeoutError) as exc:
            outcome.append(repr(exc))

    worker = threading.Thread(target=leave)
    worker.start()
    manager = start_manager()
    worker.join(20)
    assert outcome and outcome[0] != "accepted", outcome

    routing.control.wait_for_call("mgm_local_leave", timeout=20, group=G, interface=[11, "0.0.0.0"])
    kept = [c for c in routing.control.calls("mgm_local_leave") if c["group"] == KEPT]
    assert kept == [], "the member IGMP replayed must not be told to leave"
    state = manager.request("sync", {"stream": "state"})["state"]
    assert {m["group"] for m in state["memberships"]} == {KEPT}
