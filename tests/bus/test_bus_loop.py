"""The manager's loop and the client's readers under load: nothing is missed, and timers still run.

Both sides read ZeroMQ's edge-like FDs from reader callbacks and ask EVENTS
after sends instead of trusting the FD alone; the manager runs its turns from
those callbacks and one timer.  These tests drive them where a missed edge or
a starved timer would show: replies arriving while the client is still
sending, events published while the follower is busy, and heartbeats and the
core's deadlines while a client keeps the manager busy without pause.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import zmq
from bus_support import membership
from test_bus_client import Memberships, registered, run

from mgm.bus.client import Client
from mgm.bus.codec import encode_request, unpack
from mgm.plugins.testing import wait_for_async


def test_a_pipelined_burst_gets_every_reply_and_its_follower_every_event(start_manager: Callable[..., Any]) -> None:
    manager = start_manager()
    n = 3000

    async def main() -> None:
        model = Memberships()
        async with Client(manager.api, manager.events) as watcher, Client(manager.api, manager.events) as client:
            watcher.follow("state", model.on_event, model.on_snapshot)
            await wait_for_async(lambda: model.snapshots, 20, "the first snapshot")
            handle = await registered(client, 19, 1)
            # all sent in one go, pings between: replies come back while the client is still sending
            futures = []
            for i in range(n):
                futures.append(client.request_nowait("add_group_membership", membership(handle, i)))
                if i % 100 == 0:
                    futures.append(client.request_nowait("ping"))
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            assert not failed, f"{len(failed)} of {len(results)} requests failed, first: {failed[0]!r}"
            expected = {membership(handle, i)["group"] for i in range(n)}
            await wait_for_async(lambda: model.groups == expected, 20, "the follower to see every membership")
            assert model.snapshots == 1, "the follower never lost an event, so it never resynced"

    run(main())


def test_heartbeats_and_the_cores_deadlines_still_come_while_a_client_floods_the_manager(
    start_manager: Callable[..., Any],
) -> None:
    manager = start_manager(liveness=1.0)

    async def main() -> None:
        # on the way out: the sockets close (LINGER 0), then the context terminates
        with zmq.Context() as ctx, ctx.socket(zmq.SUB) as hb, ctx.socket(zmq.DEALER) as silent:
            hb.setsockopt(zmq.LINGER, 0)
            hb.setsockopt(zmq.SUBSCRIBE, b"hb")
            hb.connect(manager.events)
            silent.setsockopt(zmq.LINGER, 0)
            silent.connect(manager.api)
            async with Client(manager.api, manager.events) as flooder:
                stop = asyncio.Event()
                sent = answered = 0
                errors: list[BaseException] = []

                def more(fut: asyncio.Future[Any] | None = None) -> None:
                    """Keep 200 pings in flight until stopped: the manager never runs out of requests."""
                    nonlocal sent, answered
                    if fut is not None:
                        answered += 1
                        if fut.exception() is not None:
                            errors.append(fut.exception())  # type: ignore[arg-type]
                    while not stop.is_set() and sent - answered < 200:
                        sent += 1
                        flooder.request_nowait("ping").add_done_callback(more)

                more()
                await wait_for_async(lambda: answered > 1000, 20, "the flood to be under way")
                # a client that registers and falls silent: only the core's liveness deadline removes it
                silent.send_multipart([b"", encode_request(1, "register_protocol",
                                                           {"protocol_id": 20, "component_id": 1})])
                assert silent.poll(20_000), "no reply to register_protocol"
                assert unpack(silent.recv_multipart()[1])["status"] == 0
                while hb.poll(0):
                    hb.recv_multipart()  # count only heartbeats sent during the flood
                beats = 0

                def heartbeats() -> int:
                    nonlocal beats
                    while hb.poll(0):
                        hb.recv_multipart()
                        beats += 1
                    return beats

                await wait_for_async(lambda: heartbeats() >= 3, 20, "heartbeats while the manager is flooded")
                async def removed() -> bool:
                    listing = await flooder.request("sync", {"stream": "state"})
                    return all(p["protocol_id"] != 20 for p in listing["state"]["protocols"])

                await wait_for_async(removed, 20, "the silent client to be removed during the flood")
                before = answered
                await wait_for_async(lambda: answered > before + 1000, 20, "the flood to go on meanwhile")
                stop.set()
                await wait_for_async(lambda: answered == sent, 20, "every ping of the flood answered")
                assert not errors, f"{len(errors)} pings of the flood failed, first: {errors[0]!r}"

    run(main())
