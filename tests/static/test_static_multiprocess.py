"""Static routes against a real manager: `mgm manager` + `mgm plugin static` + a forwarder-like client.

The client here stands for the forwarder: it registers, reports a flow's
first packet (`new_packet`) and reads the MFE the manager made.  Interfaces
are plain indexes (nothing is sent on a wire), so no root is needed.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mgm_testplugins.processes import ManagerProc, PluginProc, toml_config
from test_multiprocess_foundation import oil

from mgm.bus.client import Client
from mgm.core.runtime.config import loads
from mgm.plugins.testing import wait_for_async

StartPlugin = Callable[..., PluginProc]
STATIC = (10006, 1)
FORWARDER = (65001, 1)  # any unused protocol id: the test's forwarder

TABLE: dict[str, Any] = {
    "interfaces": [10, 11, 12, 13, 14],
    "routes": [
        {"source": "10.0.0.1", "group": "239.1.1.1", "from": 10, "to": [11, 12]},
        {"group": "239.2.2.2", "from": 13, "to": [11]},
    ],
}
HELD = {("10.0.0.1", "239.1.1.1", 11), ("10.0.0.1", "239.1.1.1", 12), ("0.0.0.0", "239.2.2.2", 11)}
"""What TABLE's routes hold: each (S,G) on each outgoing interface."""
RELOADED: dict[str, Any] = {
    "interfaces": [10, 11, 12, 13, 14],
    "routes": [
        {"source": "10.0.0.1", "group": "239.1.1.1", "from": 12, "to": [11]},
        {"group": "239.2.2.2", "from": 13, "to": [11, 14]},
    ],
}


async def static_memberships(fwd: Client) -> set[tuple[str, str, int]]:
    _, _, state = await fwd.fetch_snapshot("state")
    return {
        (m["source"], m["group"], m["if_index"])
        for m in state["memberships"]
        if (m["protocol_id"], m["component_id"]) == STATIC and m["flags"] == 1
    }


async def forwarder(manager: ManagerProc) -> tuple[Client, int]:
    fwd = Client(api=manager.api, events=manager.events)
    await fwd.start()
    reply = await fwd.request("register_protocol", {"protocol_id": FORWARDER[0], "component_id": FORWARDER[1],
                                                    "name": "test-forwarder"})  # fmt: skip
    fwd.heartbeat_handle = reply["handle"]
    return fwd, reply["handle"]


async def new_packet(fwd: Client, handle: int, source: str, group: str, arrival: int) -> dict[str, Any]:
    args = {"handle": handle, "source": source, "group": group, "if_index": arrival, "next_hop": "0.0.0.0"}
    reply = await fwd.request("new_packet", args)
    mfe: dict[str, Any] = reply["mfe"]
    return mfe


@pytest.fixture
def static(start_plugin: StartPlugin) -> PluginProc:
    return start_plugin("static", TABLE)


def test_a_new_flow_gets_the_configured_incoming_interface_and_oil(manager: ManagerProc, static: PluginProc) -> None:
    async def body() -> None:
        fwd, handle = await forwarder(manager)
        try:
            await wait_for_async(lambda: _equal(static_memberships(fwd), HELD), 10, "the static routes' memberships")
            # (S,G): the packet arrives on 14; the route says it comes in on 10
            mfe = await new_packet(fwd, handle, "10.0.0.1", "239.1.1.1", arrival=14)
            assert (mfe["in_if_index"], mfe["in_protocol_id"], oil(mfe)) == (10, STATIC[0], [11, 12])
            # (*,G): any source of 239.2.2.2 comes in on 13, whatever the arrival interface
            mfe = await new_packet(fwd, handle, "10.0.0.9", "239.2.2.2", arrival=11)
            assert (mfe["in_if_index"], oil(mfe)) == (13, [11])
            # another source of the (S,G) route's group: no (*,G) route for it, so the manager's choice stands
            mfe = await new_packet(fwd, handle, "10.0.0.2", "239.1.1.1", arrival=14)
            assert (mfe["in_if_index"], oil(mfe)) == (14, [])
        finally:
            await fwd.close()

    asyncio.run(body())
    assert static.alive(), static.log()


def test_sighup_applies_a_new_file_and_keeps_the_routes_when_the_new_file_is_bad(
    manager: ManagerProc, static: PluginProc
) -> None:
    assert static.config_path is not None
    path = static.config_path

    async def body() -> None:
        fwd, handle = await forwarder(manager)
        try:
            await wait_for_async(lambda: _equal(static_memberships(fwd), HELD), 10, "the static routes' memberships")
            mfe = await new_packet(fwd, handle, "10.0.0.1", "239.1.1.1", arrival=14)
            assert (mfe["in_if_index"], oil(mfe)) == (10, [11, 12])

            path.write_text(toml_config({"static": RELOADED}))
            static.send_signal(signal.SIGHUP)
            after = {("10.0.0.1", "239.1.1.1", 11), ("0.0.0.0", "239.2.2.2", 11), ("0.0.0.0", "239.2.2.2", 14)}
            await wait_for_async(lambda: _equal(static_memberships(fwd), after), 10, "the reloaded memberships")

            async def moved() -> dict[str, Any] | None:
                reply = await fwd.request("get_mfe", {"source": "10.0.0.1", "group": "239.1.1.1"})
                current: dict[str, Any] = reply["mfe"]
                return current if current["in_if_index"] == 12 else None

            mfe = await wait_for_async(moved, 10, "the (S,G) MFE to move to its new incoming interface")
            assert oil(mfe) == [11]  # 12 is now incoming; the route no longer lists it

            # a file with two incoming interfaces for one (S,G): refused, the routes in force stay
            bad = dict(RELOADED, routes=[*RELOADED["routes"], {"source": "10.0.0.1", "group": "239.1.1.1",
                                                                  "from": 14, "to": [11]}])  # fmt: skip
            text = toml_config({"static": bad})
            path.write_text(text)
            static.send_signal(signal.SIGHUP)
            line = text.splitlines().index(next(ln for ln in text.splitlines() if ln.startswith("routes"))) + 1
            await wait_for_async(lambda: "reload refused" in static.log(), 10, "the refusal in the plugin's log")
            assert f"{path}:{line}: plugins.static.routes[2]" in static.log()
            assert loads(text, str(path))  # the file itself is valid TOML: the refusal is the plugin's own check
            assert await static_memberships(fwd) == after
        finally:
            await fwd.close()

    asyncio.run(body())
    assert static.alive(), static.log()


async def _equal(probe: Awaitable[set[tuple[str, str, int]]], want: set[tuple[str, str, int]]) -> bool:
    return await probe == want


def test_the_plugin_log_names_the_file(static: PluginProc, ipc_dir: Path) -> None:
    async def body() -> None:
        await wait_for_async(lambda: "route(s) from" in static.log(), 10, "the start log line")

    asyncio.run(body())
    assert f"2 route(s) from {ipc_dir / 'static.toml'}" in static.log()
