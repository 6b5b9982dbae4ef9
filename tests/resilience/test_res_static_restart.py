"""The static plugin across a manager SIGKILL: it sees the new epoch, registers again and replays its routes."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from mgm_testplugins.control import wait_for
from mgm_testplugins.processes import ManagerProc, PluginProc

STATIC = (10006, 1)
TABLE: dict[str, Any] = {
    "interfaces": [10, 11, 12, 13],
    "routes": [
        {"source": "10.0.0.1", "group": "239.1.1.1", "from": 10, "to": [11, 12]},
        {"group": "239.2.2.2", "from": 13, "to": [11]},
    ],
}


def static_view(manager: ManagerProc) -> tuple[int, set[int], set[tuple[Any, ...]]] | None:
    """(epoch, interfaces static owns, its memberships) as the manager has them; None while it does not answer."""
    try:
        result = manager.request("sync", {"stream": "state"}, timeout=1.0)
    except TimeoutError:
        return None
    state = result["state"]
    owner = {"protocol_id": STATIC[0], "component_id": STATIC[1]}
    owned = {i["if_index"] for i in state["interfaces"] if i["owner"] == owner}
    members = {(m["source"], m["group"], m["if_index"], m["flags"]) for m in state["memberships"]
               if (m["protocol_id"], m["component_id"]) == STATIC}  # fmt: skip
    return result["epoch"], owned, members


def test_static_replays_its_routes_to_a_restarted_manager(
    start_manager: Callable[..., ManagerProc], start_plugin: Callable[..., PluginProc]
) -> None:
    manager = start_manager()
    static = start_plugin("static", TABLE, ready=lambda: (v := static_view(manager)) is not None and v[2])
    epoch, owned, members = wait_for(lambda: static_view(manager), 10, "static's routes in the manager")
    assert owned == {10, 11, 12, 13}
    assert {(s, g, i) for s, g, i, _flags in members} == {("10.0.0.1", "239.1.1.1", 11), ("10.0.0.1", "239.1.1.1", 12),
                                                          ("0.0.0.0", "239.2.2.2", 11)}  # fmt: skip

    manager.send_signal(signal.SIGKILL)
    manager.wait(10)
    manager = start_manager()

    def replayed() -> bool:
        view = static_view(manager)
        return view is not None and view[0] != epoch and view[1:] == (owned, members)

    wait_for(replayed, 15, "static to register again and replay its interfaces and routes")
    assert static.alive()
    assert "the manager restarted" in static.log()
