"""The simulated forwarder under a real `mgm manager`, driven by a routing test plugin (no root needed).

The routing plugin (test-routing-a) owns interfaces 3 and 5 and adds a
membership on 5; packets are injected into the simulated forwarder
through its control socket.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq
from mgm_testplugins.control import wait_for
from mgm_testplugins.processes import ManagerProc, PluginProc

from mgm.bus.codec import pack, unpack
from mgm.bus.status import MgmError

S, G = "10.1.0.2", "239.7.7.7"
IN, OUT = 3, 5


class Sim:
    """The test's side of the simulated forwarder's injection socket."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 10_000)
        self.sock.connect(endpoint)

    def call(self, cmd: str, **args: Any) -> Any:
        self.sock.send(pack({"cmd": cmd, **args}))
        reply = unpack(self.sock.recv())
        assert reply["ok"], reply
        return reply["result"]

    def entry(self) -> dict[str, Any] | None:
        return next((e for e in self.call("mfc") if (e["source"], e["group"]) == (S, G)), None)


@pytest.fixture
def sim(manager: ManagerProc, start_plugin: Callable[..., PluginProc], ipc_dir: Path) -> Any:
    routing = start_plugin("test-routing-a", {"protocol_id": 10006, "component_id": 1, "interfaces": [IN, OUT]})
    assert routing.control is not None
    routing.control.call("add_membership", source="0.0.0.0", group=G, if_index=OUT)
    endpoint = f"ipc://{ipc_dir}/sim.ctl"
    proc = start_plugin("forwarder-sim", {"control": endpoint, "counters_interval": 0.1})
    sim = Sim(endpoint)
    wait_for(lambda: proc.alive() and _vifs(sim), 15, "the simulated forwarder to add its VIFs")
    yield sim, routing, proc
    sim.sock.close(0)


def _vifs(sim: Sim) -> bool:
    try:
        return set(sim.call("vifs")) == {str(IN), str(OUT)}
    except zmq.Again:
        sim.sock.close(0)
        raise


def test_new_packet_becomes_an_mfe_and_an_entry_that_forwards(manager: ManagerProc, sim: Any) -> None:
    fwd, _routing, proc = sim
    assert fwd.call("inject", source=S, group=G, if_index=IN) == {"queued": 1}
    entry = wait_for(fwd.entry, 10, "the MFC entry for the new (S,G)")
    vifs = {int(k): v for k, v in fwd.call("vifs").items()}
    assert (entry["parent"], entry["oifs"]) == (vifs[IN], [vifs[OUT]])
    assert entry["packets"] == 1  # the queued packet went out once the entry existed
    mfe = manager.request("get_mfe", {"source": S, "group": G})["mfe"]
    assert (mfe["in_if_index"], [o["if_index"] for o in mfe["oil"]]) == (IN, [OUT])
    assert fwd.call("inject", source=S, group=G, if_index=IN, count=9, size=200) == {"forwarded": 9}

    def counted() -> dict[str, Any] | None:
        got = manager.request("get_mfe", {"source": S, "group": G, "stats": 0})["mfe"]
        return got if got["in_packets"] == 10 else None

    stats = wait_for(counted, 10, "the forwarder's counters in the manager's MFE")
    assert stats["in_bytes"] == 100 + 9 * 200
    assert stats["oil"][0]["out_packets"] == 10
    assert "forwarder (simulated)" in proc.log() and "mgm.plugins.forwarder.simulated" in proc.log()
    protocols = manager.request("sync", {"stream": "state"})["state"]["protocols"]
    assert (65001, 1, "forwarder (simulated)") in {(p["protocol_id"], p["component_id"], p["name"]) for p in protocols}


def test_membership_deleted_empties_the_entry_and_wrong_interface_reaches_the_owner(
    manager: ManagerProc, sim: Any
) -> None:
    fwd, routing, _proc = sim
    fwd.call("inject", source=S, group=G, if_index=IN)
    wait_for(fwd.entry, 10, "the MFC entry")
    routing.control.call("delete_membership", source="0.0.0.0", group=G, if_index=OUT)
    wait_for(lambda: fwd.entry()["oifs"] == [], 10, "the entry's output list to empty")
    assert fwd.call("inject", source=S, group=G, if_index=OUT) == {"wrong_if": 1}
    call = routing.control.wait_for_call("mgm_wrong_if", source=S, group=G)
    assert call["interface"] == [OUT, "0.0.0.0"]


def test_link_local_groups_are_never_asked_for(manager: ManagerProc, sim: Any) -> None:
    fwd, _routing, _proc = sim
    assert fwd.call("inject", source=S, group="224.0.0.251", if_index=IN) == {"local": 1}
    fwd.call("inject", source=S, group=G, if_index=IN)  # a flow after it: once it exists, the other was not asked
    wait_for(fwd.entry, 10, "the MFC entry")
    with pytest.raises(MgmError):
        manager.request("get_mfe", {"source": S, "group": "224.0.0.251"})
