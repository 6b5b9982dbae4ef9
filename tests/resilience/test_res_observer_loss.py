"""A Client-library observer that loses events still ends with exactly the manager's state.

The observer mirrors the whole `state` stream (protocols, interfaces,
memberships, MFEs) from `on_snapshot` and `on_event` only.  Its SUB socket
keeps 5 messages (RCVHWM), the manager's XPUB 50 (``--events-hwm``), and its event loop is blocked while the manager
publishes thousands of events (registrations, ownership, memberships, MFEs
created, updated and deleted), so most of them are dropped on the way.
Afterwards its mirror must equal a fresh `sync`, field by field, and it must
have resynced to get there.

(tests/bus/test_bus_client.py has the narrower case: joined groups only,
with the manager's own events queue made tiny.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from mgm_testplugins.processes import ManagerProc
from test_res_fuzz_manager import Wire

from mgm.bus.client import Client
from mgm.plugins.testing import wait_for_async

WRITER, OTHER = 300, 301
GROUPS = 1500


def group(i: int) -> str:
    return f"239.1.{i >> 8}.{i & 255}"


class Mirror:
    """The `state` stream applied to a copy of the snapshot, as any observer would."""

    def __init__(self) -> None:
        self.protocols: dict[tuple[int, int], dict[str, Any]] = {}
        self.interfaces: dict[tuple[int, str], dict[str, Any]] = {}
        self.memberships: set[tuple[Any, ...]] = set()
        self.mfes: dict[tuple[str, str], dict[str, Any]] = {}
        self.snapshots = 0
        self.events = 0

    def on_snapshot(self, stream: str, state: dict[str, Any]) -> None:
        assert stream == "state"
        self.snapshots += 1
        self.protocols = {(p["protocol_id"], p["component_id"]): p for p in state["protocols"]}
        self.interfaces = {(i["if_index"], i["next_hop"]): i for i in state["interfaces"]}
        self.memberships = {member(m) for m in state["memberships"]}
        self.mfes = {(m["source"], m["group"]): m for m in state["mfes"]}

    def on_event(self, event: dict[str, Any]) -> None:
        self.events += 1
        kind = event["type"]
        client = {"protocol_id": event.get("protocol_id"), "component_id": event.get("component_id")}
        if kind == "protocol_registered":
            self.protocols[(event["protocol_id"], event["component_id"])] = {**client, "name": event.get("name")}
        elif kind == "protocol_deregistered":
            del self.protocols[(event["protocol_id"], event["component_id"])]
        elif kind == "interface_owned":  # no IGMP in this test: the one owner is the taker
            key = (event["if_index"], event["next_hop"])
            self.interfaces[key] = {"if_index": key[0], "next_hop": key[1], "owner": client, "igmp": False}
        elif kind == "interface_released":
            del self.interfaces[(event["if_index"], event["next_hop"])]
        elif kind == "membership_added":
            self.memberships.add(member(event))
        elif kind == "membership_deleted":
            self.memberships.discard(member(event))
        elif kind in ("mfe_created", "mfe_updated"):
            self.mfes[(event["mfe"]["source"], event["mfe"]["group"])] = event["mfe"]
        elif kind == "mfe_deleted":
            del self.mfes[(event["mfe"]["source"], event["mfe"]["group"])]

    def state(self) -> dict[str, Any]:
        return {"protocols": sorted(self.protocols.items()), "interfaces": sorted(self.interfaces.items()),
                "memberships": self.memberships, "mfes": self.mfes}  # fmt: skip


def member(m: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(m[k] for k in ("protocol_id", "component_id", "source", "source_mask", "group", "group_mask",
                                "if_index", "next_hop", "flags"))  # fmt: skip


def expected(state: dict[str, Any]) -> dict[str, Any]:
    mirror = Mirror()
    mirror.on_snapshot("state", state)
    return mirror.state()


def membership(handle: int, i: int, if_index: int) -> dict[str, Any]:
    return {"handle": handle, "source": "0.0.0.0", "source_mask": "0.0.0.0", "group": group(i),
            "group_mask": "255.255.255.255", "if_index": if_index, "next_hop": "0.0.0.0", "flags": 1}  # fmt: skip


def churn(writer: Wire, other: Wire) -> int:
    """Thousands of state changes of every kind, pipelined; the number of requests that succeeded."""
    handle = writer.call("register_protocol", {"protocol_id": WRITER, "component_id": 1, "name": "writer"})["handle"]
    for if_index in (1, 2, 3, 4):
        writer.request("take_interface_ownership", {"handle": handle, "if_index": if_index, "next_hop": "0.0.0.0"})
    for i in range(0, GROUPS, 10):  # MFEs, in from 1 or 4 (no resolver: the arrival interface), negative at first
        writer.request("new_packet", {"handle": handle, "source": "10.0.0.1", "group": group(i),
                                   "if_index": 1 if i % 20 else 4, "next_hop": "0.0.0.0"})  # fmt: skip
    for i in range(GROUPS):  # the MFEs' OILs grow (mfe_updated)
        writer.request("add_group_membership", membership(handle, i, 2 + i % 2))
    for i in range(0, GROUPS, 3):
        writer.request("delete_group_membership", membership(handle, i, 2 + i % 2))
    writer.request("release_interface_ownership", {"handle": handle, "if_index": 4, "next_hop": "0.0.0.0"})
    oh = other.call("register_protocol", {"protocol_id": OTHER, "component_id": 1, "name": "other"})["handle"]
    other.request("take_interface_ownership", {"handle": oh, "if_index": 9, "next_hop": "0.0.0.0"})
    other.request("release_interface_ownership", {"handle": oh, "if_index": 9, "next_hop": "0.0.0.0"})
    other.request("deregister_protocol", {"handle": oh})
    for wire in (writer, other):
        wire.collect(lambda wire=wire: wire.received == wire.sent, timeout=30.0)
    ok: int = sum(status == 0 for wire in (writer, other) for status in wire.statuses.values())
    return ok - 2  # the two registrations are not part of the churn


def state_of(api: str) -> tuple[int, dict[str, Any]]:
    """A fresh `sync` of the state stream, every page joined: (seq, state)."""
    writer = Wire(api)
    try:
        result = writer.call("sync", {"stream": "state"})
        state = result["state"]
        while result.get("more"):
            result = writer.call("sync", {"stream": "state", "cursor": result["cursor"]})
            for key, value in result["state"].items():
                state[key].extend(value)
        seq: int = result["seq"]
        return seq, state
    finally:
        writer.close()


def test_a_stalled_observer_with_a_tiny_queue_resyncs_to_exactly_the_managers_state(
    start_manager: Callable[..., ManagerProc],
) -> None:
    # The writers send no heartbeats (long liveness).  The manager's XPUB queue is made small too: with the
    # default (1M messages) a stalled subscriber loses nothing, the manager queues everything for it.
    manager = start_manager(liveness=3600, events_hwm=50)

    async def main() -> None:
        async with Client(manager.api, manager.events, events_hwm=5) as observer:
            mirror = Mirror()
            observer.follow("state", mirror.on_event, mirror.on_snapshot)
            await wait_for_async(lambda: mirror.snapshots, 10, "the first snapshot")
            first_seq, _ = state_of(manager.api)
            writer, other = Wire(manager.api), Wire(manager.api)
            try:
                # The loop is blocked for all of this: the observer reads nothing while it happens.
                succeeded = churn(writer, other)
            finally:
                writer.close()
                other.close()
            seq, truth = state_of(manager.api)
            published = seq - first_seq
            assert succeeded > GROUPS and published > GROUPS
            assert truth["mfes"] and any(m["oil"] for m in truth["mfes"]) and truth["memberships"]
            want = expected(truth)
            await wait_for_async(lambda: mirror.state() == want, 20, "the observer's mirror to equal a fresh sync")
            print(f"\nobserver: {published} events published, {mirror.events} applied, {mirror.snapshots} snapshots")
            assert mirror.snapshots >= 2, "events were dropped, so the observer must have synced again"
            assert mirror.events < published, "the tiny queue must have dropped events"

    asyncio.run(asyncio.wait_for(main(), 90))
