"""mgm.bus.client.Client against a real manager: following streams through loss and restarts,
liveness, deferred replies, and a manager that survives a broken core."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
from bus_support import call, dealer, membership

from mgm.bus.client import HEARTBEAT_AFTER, TIMER_PERIOD, Client
from mgm.bus.codec import decode_reply, pack
from mgm.bus.status import MgmError, Status
from mgm.core.manager.mgmd import Manager
from mgm.core.state import LIVENESS, Mgm
from mgm.plugins.testing import MGM, ManagerProc, Proc, wait_for, wait_for_async

R = TypeVar("R")


def run(coro: Coroutine[Any, Any, R], timeout: float = 60.0) -> R:
    return asyncio.run(asyncio.wait_for(coro, timeout))


class SkippingClock:
    """A manager's clock: monotonic time plus the seconds the test skipped, so liveness lapses without waiting."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped

    def skip(self, seconds: float) -> None:
        self.skipped += seconds


@contextlib.asynccontextmanager
async def manager_in_this_loop(ipc_dir: Path, **options: Any) -> AsyncIterator[Manager]:
    """A Manager on ipc_dir's endpoints in the test's own event loop (`options` are Manager's: core, clock...)."""
    manager = Manager(f"ipc://{ipc_dir}/api", f"ipc://{ipc_dir}/events", **options)
    await manager.start()
    running = asyncio.ensure_future(manager.run())
    try:
        yield manager
    finally:
        manager.stop()
        await running


async def registered(client: Client, protocol_id: int, component_id: int, if_index: int | None = 1) -> int:
    handle: int = (await client.request("register_protocol", {"protocol_id": protocol_id,
                                                               "component_id": component_id}))["handle"]
    if if_index is not None:
        await client.request("take_interface_ownership", {"handle": handle, "if_index": if_index,
                                                          "next_hop": "0.0.0.0"})
    return handle


async def collected(client: Client, stream: str, event_type: str) -> list[dict[str, Any]]:
    """Follow `stream` until its first snapshot; the list then fills with its events of `event_type`."""
    events: list[dict[str, Any]] = []
    synced: list[str] = []
    client.follow(stream, lambda e: events.append(e) if e["type"] == event_type else None,
                  lambda stream, state: synced.append(stream))  # fmt: skip
    await wait_for_async(lambda: synced, 5, f"the first snapshot of {stream}")
    return events


class Memberships:
    """A follower's model of the state stream: the set of joined groups, rebuilt from snapshots and events."""

    def __init__(self) -> None:
        self.groups: set[str] = set()
        self.snapshots = 0
        self.events = 0

    def on_snapshot(self, stream: str, state: dict[str, Any]) -> None:
        assert stream == "state"
        self.snapshots += 1
        self.groups = {m["group"] for m in state["memberships"]}

    def on_event(self, event: dict[str, Any]) -> None:
        self.events += 1
        if event["type"] == "membership_added":
            self.groups.add(event["group"])
        elif event["type"] == "membership_deleted":
            self.groups.discard(event["group"])


def test_a_follower_that_lost_events_resyncs_to_exactly_the_managers_state(start_manager: Callable[..., Any]) -> None:
    manager = start_manager(events_hwm=10)

    def published(n: int) -> bool:
        """Blocking on purpose (it stalls the follower's loop): has the manager published n state events?"""
        with dealer(zmq.Context.instance(), manager.api) as sock:
            return bool(call(sock, 1, "sync", {"stream": "state"})["result"]["seq"] >= n)

    async def main() -> None:
        async with Client(manager.api, manager.events) as writer, \
                Client(manager.api, manager.events, events_hwm=10) as follower:
            model = Memberships()
            follower.follow("state", model.on_event, model.on_snapshot)
            await wait_for_async(lambda: model.snapshots, 10, "the first snapshot")
            handle = await registered(writer, 10, 1)
            n = 6000
            futures = [writer.request_nowait("add_group_membership", membership(handle, i)) for i in range(n)]
            futures += [writer.request_nowait("delete_group_membership", membership(handle, i))
                        for i in range(0, n, 3)]
            # Stall this loop (and so the follower's reading) until the manager published everything:
            # far more than its 10-event queue and the socket buffers hold, so events are dropped.
            wait_for(lambda: published(2 + n + n // 3), 30, "the manager to publish every event")
            assert all(r == {} for r in await asyncio.gather(*futures))
            _, _, truth = await writer.fetch_snapshot("state")
            expected = {m["group"] for m in truth["memberships"]}
            assert len(expected) == n - n // 3
            await wait_for_async(lambda: model.groups == expected, 15, "the follower to converge")
            assert model.snapshots >= 2, "events were dropped, so the follower must have synced again"

    run(main())


def test_a_restarted_manager_is_noticed_lost_then_as_a_new_epoch(start_manager: Callable[..., Any]) -> None:
    manager = start_manager()

    async def main() -> None:
        async with Client(manager.api, manager.events) as client:
            epochs: list[tuple[int | None, int]] = []
            lost: list[bool] = []
            model = Memberships()
            client.on_new_epoch = lambda old, new: epochs.append((old, new))
            client.on_manager_lost = lambda: lost.append(True)
            client.follow("state", model.on_event, model.on_snapshot)
            await wait_for_async(lambda: model.snapshots, 10, "the first snapshot")
            first = client.epoch
            handle = await registered(client, 10, 1)
            await client.request("add_group_membership", membership(handle, 1))
            await wait_for_async(lambda: model.groups == {"239.0.0.1"}, 5, "the membership")

            assert manager.stop() == 0
            await wait_for_async(lambda: lost, 10, "on_manager_lost")
            start_manager()
            await wait_for_async(lambda: epochs, 10, "on_new_epoch")
            assert epochs[0][0] == first and epochs[0][1] != first and client.epoch == epochs[0][1]
            await wait_for_async(lambda: model.snapshots >= 2 and not model.groups, 10,
                                 "a resync to the empty new state")
            assert (await client.request("ping"))["epoch"] == client.epoch
            assert not client.manager_lost

    run(main())


def test_heartbeats_keep_a_client_and_silence_removes_it(ipc_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert HEARTBEAT_AFTER + TIMER_PERIOD < LIVENESS, "the client must heartbeat well within the default liveness"
    clock = SkippingClock()

    async def main() -> None:
        async with manager_in_this_loop(ipc_dir, clock=clock) as manager:  # the default liveness: 3 s
            api, events = manager.server.api, manager.server.events
            async with Client(api, events) as observer, Client(api, events) as plugin:
                async def next_heartbeat() -> None:
                    seen = manager.counts.requests.get(("heartbeat", 0), 0)
                    await wait_for_async(lambda: manager.counts.requests.get(("heartbeat", 0), 0) > seen, 10,
                                         "the client's next heartbeat")

                gone = await collected(observer, "state", "protocol_deregistered")
                handle = await registered(plugin, 17, 2, if_index=None)
                plugin.heartbeat_handle = handle
                for _ in range(2):  # 4 s of the manager's time, longer than liveness: only heartbeats keep it
                    clock.skip(2.0)
                    await observer.request("ping")  # a turn at the new time: the manager checks the deadlines
                    await next_heartbeat()
                _, _, state = await observer.fetch_snapshot("state")
                assert [(p["protocol_id"], p["component_id"]) for p in state["protocols"]] == [(17, 2)]
                assert gone == []
                plugin.heartbeat_handle = None
                clock.skip(LIVENESS)
                await observer.request("ping")
                await wait_for_async(lambda: gone, 10, "the silent client to be removed")
                assert (gone[0]["protocol_id"], gone[0]["component_id"]) == (17, 2)
                with pytest.raises(MgmError) as info:
                    await plugin.request("heartbeat", {"handle": handle})
                assert info.value.status == Status.ERROR_INVALID_PARAMETER

    with caplog.at_level(logging.INFO, logger="mgm.core.manager.mgmd"):
        run(main())
    assert "client 17/2 gone (timeout)" in caplog.text


def test_any_request_keeps_a_client_alive_also_ping_and_sync(ipc_dir: Path) -> None:
    clock = SkippingClock()

    async def main() -> None:
        async with manager_in_this_loop(ipc_dir, liveness=1.0, clock=clock) as manager:
            api, events = manager.server.api, manager.server.events
            async with Client(api, events) as client, Client(api, events) as other:
                await registered(client, 18, 1, if_index=None)
                # 3.6 s of the manager's time, well past the liveness of 1 s; each op alone keeps the client
                for op, args in [("ping", {}), ("sync", {"stream": "proto/18/1"})] * 3:
                    clock.skip(0.6)
                    await other.request("ping")  # a turn at the new time: the client's deadline is checked first
                    await client.request(op, args)
                _, _, state = await client.fetch_snapshot("state")
                assert [(p["protocol_id"], p["component_id"]) for p in state["protocols"]] == [(18, 1)]

    run(main())


def test_a_deferred_request_and_its_duplicate_both_get_the_one_reply(start_manager: Callable[..., Any]) -> None:
    manager = start_manager(question_deadline=0.3)

    async def main() -> None:
        async with Client(manager.api, manager.events) as owner, Client(manager.api, manager.events) as fwd:
            await registered(owner, 3, 1)  # owns interface 1: it gets the rpf question and never answers
            rpf = await collected(owner, "proto/3/1", "rpf")
            fwd_handle = await registered(fwd, 99, 1, if_index=None)
            # the forwarder's connection, as a raw socket (ROUTER_HANDOVER: this socket takes over the client's
            # pipe; the handle is bound to the identity)
            with dealer(zmq.Context.instance(), manager.api, fwd.identity) as sock:
                request = pack({"v": 1, "id": "np", "op": "new_packet", "args": {
                    "handle": fwd_handle, "source": "10.0.0.1", "group": "239.1.2.3", "if_index": 1,
                    "next_hop": "0.0.0.0"}})
                sock.send_multipart([b"", request])
                sock.send_multipart([b"", request])  # the same id again while the first is deferred
                replies = []
                for _ in range(2):
                    assert sock.poll(5000)
                    replies.append(sock.recv_multipart()[-1])
                assert replies[0] == replies[1]
                reply = decode_reply(replies[0])
                assert reply["status"] == 0 and reply["result"]["mfe"]["group"] == "239.1.2.3"
                assert not sock.poll(100)
            await wait_for_async(lambda: rpf, 5, "the rpf question")
            async with Client(manager.api, manager.events) as observer:
                _, _, state = await observer.fetch_snapshot("state")
            assert [(m["source"], m["group"]) for m in state["mfes"]] == [("10.0.0.1", "239.1.2.3")]

    run(main())


class BuggyCore(Mgm):
    """The real core with two injected bugs: an exception and an unpackable result."""

    def handle(self, conn: bytes, op: str, args: Any, now: float, token: Any = None) -> Any:
        if op == "get_protocol_on_interface" and args.get("if_index") == 666:
            raise RuntimeError("injected bug")
        if op == "get_protocol_on_interface" and args.get("if_index") == 667:
            return {"oops": object()}
        return super().handle(conn, op, args, now, token)


def test_a_bug_in_the_core_is_an_error_reply_not_a_dead_manager(
    ipc_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with manager_in_this_loop(ipc_dir, core=BuggyCore()) as manager, \
                Client(manager.server.api, manager.server.events) as client:
            for if_index in (666, 667):  # an exception; a result that cannot be packed
                with pytest.raises(MgmError) as info:
                    await client.request("get_protocol_on_interface", {"if_index": if_index, "next_hop": "0.0.0.0"})
                assert info.value.status == Status.ERROR_CAN_NOT_COMPLETE
                assert "internal error" in info.value.message
            with pytest.raises(MgmError) as info:
                await client.request("get_protocol_on_interface", {"if_index": 1, "next_hop": "0.0.0.0"})
            assert info.value.status == Status.ERROR_NOT_FOUND  # the core still works
            assert (await client.request("ping"))["version"] == 1
        assert not (ipc_dir / "api").exists()

    with caplog.at_level(logging.ERROR, logger="mgm.core.manager.mgmd"):
        run(main())
    failures = [r for r in caplog.records if r.exc_info]
    assert len(failures) == 2 and "injected bug" in str(failures[0].exc_info[1] if failures[0].exc_info else "")


def test_requests_time_out_when_nobody_answers(ipc_dir: Path) -> None:
    api, events = f"ipc://{ipc_dir}/api", f"ipc://{ipc_dir}/events"

    async def main() -> None:
        client = Client(api, events, connect_timeout=0.5)
        with pytest.raises(TimeoutError, match="no manager answered ping"):
            await client.start()
        with pytest.raises(ValueError, match="at least"):
            Client(api, events, request_timeout=0.001)

    run(main())


def test_a_request_to_a_manager_that_went_away_times_out(start_manager: Callable[..., Any]) -> None:
    manager = start_manager()

    async def main() -> None:
        async with Client(manager.api, manager.events) as client:
            with pytest.raises(ValueError, match="at least"):
                client.request_nowait("ping", timeout=0.001)
            assert manager.stop() == 0
            with pytest.raises(TimeoutError, match="no reply to ping"):
                await client.request("ping", timeout=0.3)

    run(main())



def test_over_tcp_on_loopback(ipc_dir: Path, procs: list[Proc]) -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    api, events = f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}"
    # tcp needs CURVE (tests/security has the refusals): the manager's key pair and one allowed client key
    from mgm.bus.auth import client_curve, generate, load_public_key

    generate(ipc_dir / "keys", "manager")
    generate(ipc_dir / "keys", "client")
    client_key = load_public_key(ipc_dir / "keys" / "client.key").decode()
    config = ipc_dir / "manager.toml"
    config.write_text(f'[[manager.clients]]\nname = "client"\npublic_key = "{client_key}"\n'
                      'protocol_ids = [10]\ninterfaces = [1]\n')
    curve = client_curve(ipc_dir / "keys" / "client.key_secret", load_public_key(ipc_dir / "keys" / "manager.key"))
    proc = ManagerProc("manager", [*MGM, "manager", "--api", api, "--events", events, "--config", str(config),
                                   "--curve-key", str(ipc_dir / "keys" / "manager.key_secret")],
                       ipc_dir / "manager.log", api=api, events=events)  # fmt: skip
    proc.start()
    procs.append(proc)  # stopped at teardown, its log printed if the test fails

    async def main() -> None:
        async with Client(api, events, connect_timeout=15, curve=curve) as client:
            model = Memberships()
            client.follow("state", model.on_event, model.on_snapshot)
            handle = await registered(client, 10, 1)
            await client.request("add_group_membership", membership(handle, 7))
            await wait_for_async(lambda: model.groups == {"239.0.0.7"}, 10, "the membership over tcp")

    run(main())
    assert proc.stop() == 0


def test_start_waits_for_a_late_manager_without_calling_it_lost(start_manager: Callable[..., Any],
                                                                ipc_dir: Path) -> None:
    async def main() -> None:
        client = Client(f"ipc://{ipc_dir}/api", f"ipc://{ipc_dir}/events")
        lost: list[bool] = []
        client.on_manager_lost = lambda: lost.append(True)
        starting = asyncio.ensure_future(client.start())
        await asyncio.sleep(0.5)  # the client is waiting for an answer to its ping
        assert not starting.done()
        manager = start_manager()  # blocks this loop until the manager answers; the client's ping waits queued
        await starting
        try:
            assert client.epoch == manager.request("ping")["epoch"]
            assert lost == [] and not client.manager_lost
        finally:
            await client.close()

    run(main())


def test_a_client_made_again_keeps_its_identity_but_never_gets_old_replies(manager: Any) -> None:
    async def main() -> None:
        first = Client(manager.api, manager.events)
        await first.start()
        handle = await registered(first, 30, 1, if_index=None)
        identity = first.identity
        await first.close()
        async with Client(manager.api, manager.events) as again:
            assert again.identity == identity
            # the handle is bound to the identity, so it still works from the new client
            assert await again.request("heartbeat", {"handle": handle}) == {}
            with pytest.raises(MgmError) as info:  # a fresh request, not a replay of an old reply
                await again.request("register_protocol", {"protocol_id": 30, "component_id": 1})
            assert info.value.status == Status.ERROR_ALREADY_EXISTS
            async with Client(manager.api, manager.events) as beside:
                assert beside.identity != identity

    run(main())


def test_a_reply_that_cannot_be_delivered_releases_the_clients_of_its_connection(
    start_manager: Callable[..., Any],
) -> None:
    manager = start_manager(question_deadline=0.3, liveness=60.0)  # liveness alone would take a minute

    async def main() -> None:
        async with Client(manager.api, manager.events) as owner, Client(manager.api, manager.events) as observer:
            gone = await collected(observer, "state", "protocol_deregistered")
            await registered(owner, 3, 1)  # owns interface 1: the rpf question keeps new_packet deferred
            sock = dealer(zmq.Context.instance(), manager.api)
            handle = call(sock, 1, "register_protocol", {"protocol_id": 99, "component_id": 1})["result"]["handle"]
            sock.send_multipart([b"", pack({"v": 1, "id": 2, "op": "new_packet", "args": {
                "handle": handle, "source": "10.0.0.1", "group": "239.1.2.3", "if_index": 1,
                "next_hop": "0.0.0.0"}})])
            sock.close(linger=2000)  # gone before its deferred reply (the linger lets the request leave first)
            await wait_for_async(lambda: gone, 10, "the forwarder's registration to be released")
            assert (gone[0]["protocol_id"], gone[0]["component_id"]) == (99, 1)

    run(main())
    assert "reply undeliverable" in manager.log()
