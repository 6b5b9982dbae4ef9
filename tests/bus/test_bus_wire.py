"""The wire of a real `mgm manager` process, spoken with raw ZeroMQ sockets.

What PROTOCOL v1 promises and a plugin in another language relies on:
one reply per request with the right status, replay of duplicate ids, seq
from 1 without holes per stream, paged sync, and the manager's behaviour
around its ipc endpoints (refuse a live one, clean a stale one, clean up on
SIGTERM).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from bus_support import T, call, dealer, membership, recv_reply

from mgm.bus.client import Client
from mgm.bus.codec import MAX_FRAME, decode_reply, pack, unpack

MGM = [sys.executable, "-m", "mgm.core.cli"]


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


# --- requests and replies ---------------------------------------------------------------------


def test_every_request_gets_exactly_one_reply_with_the_right_status(manager: Any, ctx: zmq.Context[Any]) -> None:
    sock = dealer(ctx, manager.api)
    cases: list[tuple[list[bytes], Any, int]] = [
        ([b"", b"\xc1"], None, 87),  # not msgpack
        ([b"", pack([1, 2])], None, 87),  # not a map
        ([b"", pack({"v": 1, "op": "ping"})], None, 87),  # no id
        ([b"", pack({"v": 1, "id": 1.5, "op": "ping"})], None, 87),  # bad id type
        ([b"", pack({"v": 1, "id": True, "op": "ping"})], None, 87),  # bool is not an id
        ([b"", pack({"v": 2, "id": "w", "op": "ping"})], "w", 87),  # wrong v
        ([b"", pack({"v": 1, "id": "m", "args": {}})], "m", 87),  # missing op
        ([b"", pack({"v": 1, "id": "a", "op": "ping", "args": 3})], "a", 87),  # args not a map
        ([b"", pack({"v": 1, "id": "u", "op": "no_such_op", "args": {}})], "u", 50),  # unknown op
        ([b"", pack({"v": 1, "id": 9, "op": "register_protocol", "args": {"protocol_id": "x"}})], 9, 87),
        ([pack({"v": 1, "id": "nodelim", "op": "ping"})], None, 87),  # no empty delimiter frame
        ([b"", pack({"v": 1, "id": 10, "op": "ping"}), b"extra"], None, 87),
        ([b"", pack({"v": 1, "id": 11, "op": "sync", "args": {"stream": 5}})], 11, 87),
        ([b"", pack({"v": 1, "id": 12, "op": "sync", "args": {"stream": "state", "cursor": 999}})], 12, 1168),
    ]
    for frames, _, _ in cases:
        sock.send_multipart(frames)
    replies = [recv_reply(sock) for _ in cases]  # pipelined: matched by id, not by order
    assert sorted(((r["id"], r["status"]) for r in replies), key=repr) == sorted(
        ((echo, status) for _, echo, status in cases), key=repr)
    for reply in replies:
        assert reply["v"] == 1 and reply["message"] and reply["error"] != "NO_ERROR" and reply["result"] == {}
    last = call(sock, "last", "ping")  # the next reply is this one: no request got a second reply
    assert last["id"] == "last" and last["status"] == 0
    assert set(last["result"]) == {"epoch", "version"} and last["result"]["version"] == 1
    assert manager.alive()


def test_a_frame_over_64_kib_is_refused_and_the_manager_carries_on(manager: Any, ctx: zmq.Context[Any]) -> None:
    near = dealer(ctx, manager.api)
    assert call(near, "near", "ping", {"pad": "x" * (MAX_FRAME - 1000)})["status"] == 0  # under the limit: served
    huge = dealer(ctx, manager.api)
    huge.send_multipart([b"", pack({"v": 1, "id": "huge", "op": "ping", "args": {"pad": "x" * (MAX_FRAME + 10)}})])
    other = dealer(ctx, manager.api)
    assert call(other, 1, "ping")["status"] == 0
    assert call(other, 2, "ping")["status"] == 0  # served after the huge frame reached the manager
    assert not huge.poll(200), "a frame over ZMQ_MAXMSGSIZE must not be served"
    assert manager.alive()


def test_a_repeated_id_gets_the_first_reply_and_is_applied_once(manager: Any, ctx: zmq.Context[Any]) -> None:
    identity = b"replay-test-1"
    sock = dealer(ctx, manager.api, identity)
    args = {"protocol_id": 200, "component_id": 1, "name": "replayed"}
    first = call(sock, 41, "register_protocol", args)
    assert first["status"] == 0
    again = call(sock, 41, "register_protocol", args)
    assert again == first  # same handle: not registered twice, no ERROR_ALREADY_EXISTS
    assert call(sock, 42, "register_protocol", args)["status"] == 183  # a new id would be applied

    sock.close(linger=0)  # a reconnect with the same routing id keeps its replies (ROUTER_HANDOVER)
    sock = dealer(ctx, manager.api, identity)
    assert call(sock, 41, "register_protocol", args) == first
    state = call(sock, 43, "sync", {"stream": "state"})["result"]["state"]
    assert [p for p in state["protocols"] if p["protocol_id"] == 200] == [
        {"protocol_id": 200, "component_id": 1, "name": "replayed", "questions": ["creation_alert", "rpf"]}
    ]
    other = dealer(ctx, manager.api, b"replay-test-2")  # ids are per connection
    assert call(other, 41, "register_protocol", args)["status"] == 183


# --- events ------------------------------------------------------------------------------------


def subscriber(ctx: zmq.Context[Any], events: str, *prefixes: bytes) -> zmq.Socket[bytes]:
    """A raw SUB that is live: it returns once the manager's hb for its subscription came."""
    sub: zmq.Socket[bytes] = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for p in (b"hb", *prefixes):
        sub.setsockopt(zmq.SUBSCRIBE, p)
    sub.connect(events)
    assert sub.poll(int(T * 1000)), "no heartbeat"
    topic, payload = sub.recv_multipart()
    assert topic == b"hb"
    hb = unpack(payload)
    assert hb["type"] == "heartbeat" and isinstance(hb["epoch"], int) and hb["streams"].get("state") == 0
    return sub


def collect(sub: zmq.Socket[bytes], n: int) -> list[dict[str, Any]]:
    got = []
    while len(got) < n:
        assert sub.poll(int(T * 1000)), f"only {len(got)} of {n} events came"
        topic, payload = sub.recv_multipart()
        if topic != b"hb":
            event = unpack(payload)
            assert event["stream"] == topic.decode()
            got.append(event)
    return got


def test_each_stream_counts_from_1_without_holes_in_one_epoch(manager: Any, ctx: zmq.Context[Any]) -> None:
    sub = subscriber(ctx, manager.events, b"state", b"proto/10/1")
    sock = dealer(ctx, manager.api)
    epoch = call(sock, 0, "ping")["result"]["epoch"]
    igmp = call(sock, 1, "register_protocol", {"protocol_id": 10, "component_id": 1})["result"]["handle"]
    pim = call(sock, 2, "register_protocol", {"protocol_id": 3, "component_id": 1})["result"]["handle"]
    call(sock, 3, "take_interface_ownership", {"handle": igmp, "if_index": 1, "next_hop": "0.0.0.0"})
    for i in range(20):
        assert call(sock, 100 + i, "add_group_membership", membership(igmp, i))["status"] == 0
    # a routing protocol taking IGMP's interface: disable_igmp, the change, enable_igmp (proto/10/1)
    call(sock, 4, "take_interface_ownership", {"handle": pim, "if_index": 1, "next_hop": "0.0.0.0"})
    events = collect(sub, 2 + 1 + 20 + 1 + 2)
    by_stream: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        assert e["v"] == 1 and e["epoch"] == epoch
        by_stream.setdefault(e["stream"], []).append(e)
    for evs in by_stream.values():
        assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    assert [e["type"] for e in by_stream["proto/10/1"]] == ["disable_igmp", "enable_igmp"]
    assert [e["type"] for e in by_stream["state"]].count("membership_added") == 20


def test_sync_pages_a_large_state_from_a_frozen_snapshot(manager: Any, ctx: zmq.Context[Any]) -> None:
    sock = dealer(ctx, manager.api)
    handle = call(sock, "r", "register_protocol", {"protocol_id": 10, "component_id": 1})["result"]["handle"]
    call(sock, "t", "take_interface_ownership", {"handle": handle, "if_index": 1, "next_hop": "0.0.0.0"})
    n = 2500
    for i in range(n):  # pipelined
        sock.send_multipart([b"", pack({"v": 1, "id": i, "op": "add_group_membership", "args": membership(handle, i)})])
    assert all(recv_reply(sock)["status"] == 0 for _ in range(n))

    first = call(sock, "s0", "sync", {"stream": "state"})["result"]
    assert first["more"] is True and isinstance(first["cursor"], int)
    seq, cursor = first["seq"], first["cursor"]
    assert seq == 2 + n  # registered, owned, n memberships
    # the state changes after the first page: later pages still come from the frozen copy
    assert call(sock, "x", "add_group_membership", membership(handle, n))["status"] == 0
    other = dealer(ctx, manager.api)
    assert call(other, "o", "sync", {"stream": "state", "cursor": cursor})["status"] == 87  # not its cursor
    pages = [first["state"]]
    sizes = []
    for k in itertools.count(1):
        sock.send_multipart([b"", pack({"v": 1, "id": f"s{k}", "op": "sync",
                                        "args": {"stream": "state", "cursor": cursor}})])
        frames = sock.recv_multipart()
        sizes.append(len(frames[1]))
        res = decode_reply(frames[1])["result"]
        assert res["seq"] == seq and res["epoch"] == first["epoch"]
        pages.append(res["state"])
        if not res["more"]:
            assert "cursor" not in res
            break
        assert res["cursor"] == cursor
    assert max(sizes) < MAX_FRAME
    groups = [m["group"] for p in pages for m in p["memberships"]]
    assert len(groups) == n and len(set(groups)) == n
    assert membership(handle, n)["group"] not in groups
    igmp = {"protocol_id": 10, "component_id": 1, "name": "", "questions": ["creation_alert", "rpf"]}
    assert [p["protocols"] for p in pages if p["protocols"]] == [[igmp]]
    assert call(sock, "done", "sync", {"stream": "state", "cursor": cursor})["status"] == 1168  # used up

    async def via_client() -> tuple[int, int, dict[str, Any]]:
        async with Client(manager.api, manager.events) as client:
            return await client.fetch_snapshot("state")

    seq2, _, state = asyncio.run(via_client())
    assert seq2 == seq + 1 and len(state["memberships"]) == n + 1


# --- the manager process and its endpoints ----------------------------------------------------------


def run_manager(api: str, events: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MGM, "manager", "--api", api, "--events", events], capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)


def test_a_second_manager_refuses_to_steal_a_live_ones_endpoints(manager: Any, ctx: zmq.Context[Any]) -> None:
    second = run_manager(manager.api, manager.events)
    assert second.returncode == 1
    assert "already running" in second.stderr
    assert call(dealer(ctx, manager.api), 1, "ping")["status"] == 0


def test_a_live_event_endpoint_is_refused_too(manager: Any, ipc_dir: Path) -> None:
    second = run_manager(f"ipc://{ipc_dir}/other-api", manager.events)
    assert second.returncode == 1
    assert "already running on " + manager.events in second.stderr
    assert not (ipc_dir / "other-api").exists()


def test_curve_keys_do_not_apply_to_ipc(start_manager: Callable[..., Any]) -> None:
    """ipc is trusted (RUNDIR is 0700): a client's CURVE keys are used on tcp only (tests/security)."""
    from mgm.bus.sockets import Curve

    manager = start_manager()

    async def main() -> None:
        curve = Curve(b"p" * 40, b"s" * 40, server_key=b"k" * 40)  # not even valid keys: never applied
        async with Client(manager.api, manager.events, curve=curve) as client:
            assert (await client.request("ping"))["epoch"] == client.epoch

    asyncio.run(main())


def test_a_stale_socket_file_is_removed(start_manager: Callable[..., Any], ipc_dir: Path,
                                        ctx: zmq.Context[Any]) -> None:
    first = start_manager()
    first.stop(sig=9)  # SIGKILL: the socket files stay behind
    assert (ipc_dir / "api").exists() and (ipc_dir / "events").exists()
    second = start_manager()
    assert "removing stale socket" in second.log()
    assert call(dealer(ctx, second.api), 1, "ping")["status"] == 0


def test_sigterm_stops_cleanly_and_removes_the_socket_files(manager: Any, ipc_dir: Path) -> None:
    assert (ipc_dir / "api").exists()
    assert manager.stop() == 0
    assert not (ipc_dir / "api").exists() and not (ipc_dir / "events").exists()
    assert "manager stopped" in manager.log()


def test_an_ipc_path_over_107_bytes_is_refused_clearly(ipc_dir: Path) -> None:
    long_dir = ipc_dir / ("d" * 100)
    long_dir.mkdir()
    result = run_manager(f"ipc://{long_dir}/api", f"ipc://{ipc_dir}/events")
    assert result.returncode == 1
    assert "the limit is 107" in result.stderr
    assert not os.path.exists(ipc_dir / "events")


def test_random_requests_never_stop_the_manager_and_each_gets_one_reply(manager: Any,
                                                                         ctx: zmq.Context[Any]) -> None:
    import random

    from mgm.core.types import CORE_OPS

    rng = random.Random(1234)
    ops = sorted(CORE_OPS | {"ping", "sync", "nonsense"})
    keys = ["handle", "protocol_id", "component_id", "name", "if_index", "next_hop", "source", "source_mask",
            "group", "group_mask", "flags", "type", "enum", "max_entries", "stats", "after", "upstream_neighbor",
            "entries", "question", "oil", "timeout", "stream", "cursor", "enabled", "in_packets"]
    values: list[Any] = [None, 0, 1, -1, 10, 2**32, 2**63 - 1, -(2**63), 1.5, float("nan"), True, False, "", "x",
                         "0.0.0.0", "255.255.255.255", "239.1.1.1", "10.0.0.1", "224.0.0.0", "300.1.1.1", "state",
                         "proto/10/1", "all_sources", [], [{}], [{"if_index": 1, "next_hop": "0.0.0.0"}], {},
                         {"source": "10.0.0.1", "group": "239.1.1.1"}, "y" * 5000, b"bytes", [[[]]]]
    sock = dealer(ctx, manager.api)
    handle = call(sock, "reg", "register_protocol", {"protocol_id": 10, "component_id": 1})["result"]["handle"]
    values.append(handle)
    call(sock, "own", "take_interface_ownership", {"handle": handle, "if_index": 1, "next_hop": "0.0.0.0"})
    n = 2000
    for i in range(n):
        args = {k: rng.choice(values) for k in rng.sample(keys, rng.randint(0, 8))}
        if rng.random() < 0.5:
            args["handle"] = handle
        sock.send_multipart([b"", pack({"v": 1, "id": i, "op": rng.choice(ops), "args": args})])
    replies = [recv_reply(sock) for _ in range(n)]
    assert sorted(r["id"] for r in replies) == list(range(n))
    assert all(type(r["status"]) is int and type(r["message"]) is str for r in replies)
    assert call(sock, "after", "ping")["status"] == 0  # and nothing more came: this is the next reply
    assert manager.alive()
    assert "failed inside the manager" not in manager.log()  # every refusal was a deliberate one
