"""Bus throughput: the manager against the raw ceiling of pyzmq + msgpack, in one run.

(a) ceiling: a raw ROUTER process answers pipelined DEALER requests and
    publishes one event per request, which a third (SUB) process receives.
(b) mgmbus: a real `mgm manager` subprocess; a requester process sends
    add_group_membership requests through mgm.bus.client.Client (each a new
    membership, so each causes a state event), a subscriber process follows
    the `state` stream with Client.follow.

The two alternate for `--rounds` rounds; the rate of a run is requests whose
reply came back and whose event the subscriber saw, per second of the slower
of the two.  The report gives each rate and the ratio (b)/(a) of the medians.

    .venv/bin/python bench/bus.py [--requests 30000] [--window 1000] [--rounds 3]

MGM_BENCH_PROFILE=/tmp/mgmd.prof runs the manager under cProfile (then read it with pstats).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from children import read_line, spawn, stop

HERE = os.path.abspath(__file__)


def group_of(i: int) -> str:
    return f"225.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


# --- (a) raw roles -------------------------------------------------------------


def raw_server(api: str, events: str) -> None:
    import msgpack
    import zmq

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.SNDHWM, 100_000)
    router.setsockopt(zmq.RCVHWM, 100_000)
    router.bind(api)
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.SNDHWM, 1_000_000)
    xpub.bind(events)
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(xpub, zmq.POLLIN)
    seq = 0
    print("ready", flush=True)
    while True:
        for sock, _ in poller.poll():
            if sock is xpub:
                while True:
                    try:
                        xpub.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    xpub.send_multipart([b"hb", msgpack.packb({"type": "heartbeat"})])
                continue
            while True:
                try:
                    conn, _empty, payload = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                req = msgpack.unpackb(payload, raw=False)
                if req["op"] == "stop":
                    return
                router.send_multipart([conn, b"", msgpack.packb(
                    {"v": 1, "id": req["id"], "status": 0, "error": "NO_ERROR", "message": "", "result": {}})])
                seq += 1
                event = {"v": 1, "stream": "state", "seq": seq, "epoch": 1, "type": "membership_added"}
                event.update(req["args"])
                xpub.send_multipart([b"state", msgpack.packb(event)])


def raw_subscriber(events: str, n: int) -> None:
    import msgpack
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1_000_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(events)
    sub.recv_multipart()  # the hb answering our subscription: we are live
    print("ready", flush=True)
    got = 0
    first = 0.0
    while got < n:
        sub.poll()
        while True:
            try:
                topic, payload = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if topic == b"state":
                msgpack.unpackb(payload, raw=False)
                if not got:
                    first = time.perf_counter()
                got += 1
    print(json.dumps({"events": got, "first": first, "last": time.perf_counter()}), flush=True)


def raw_requester(api: str, n: int, window: int) -> None:
    import msgpack
    import zmq

    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.SNDHWM, 100_000)
    dealer.setsockopt(zmq.RCVHWM, 100_000)
    dealer.connect(api)
    sent = done = 0
    start = time.perf_counter()
    while done < n:
        while sent < n and sent - done < window:
            args = {"handle": 1, "source": "0.0.0.0", "source_mask": "0.0.0.0", "group": group_of(sent),
                    "group_mask": "255.255.255.255", "if_index": 1, "next_hop": "0.0.0.0", "flags": 1}
            dealer.send_multipart([b"", msgpack.packb({"v": 1, "id": sent, "op": "add_group_membership",
                                                       "args": args})])
            sent += 1
        dealer.poll()
        while True:
            try:
                _, payload = dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            reply = msgpack.unpackb(payload, raw=False)
            assert reply["status"] == 0, reply
            done += 1
    end = time.perf_counter()
    dealer.send_multipart([b"", msgpack.packb({"v": 1, "id": -1, "op": "stop", "args": {}})])
    time.sleep(0.05)
    print(json.dumps({"replies": done, "start": start, "end": end}), flush=True)


# --- (b) mgmbus roles ------------------------------------------------------------


def mgm_subscriber(api: str, events: str, n: int) -> None:
    from mgm.bus.client import Client

    async def main() -> None:
        got = 0
        first = 0.0
        done = asyncio.Event()
        live = asyncio.Event()

        def on_event(ev: dict[str, Any]) -> None:
            nonlocal got, first
            if ev["type"] == "membership_added":
                if not got:
                    first = time.perf_counter()
                got += 1
                if got >= n:
                    done.set()

        client = Client(api, events)
        client.follow("state", on_event, lambda stream, state: live.set())
        await client.start()
        await live.wait()
        print("ready", flush=True)
        await done.wait()
        print(json.dumps({"events": got, "first": first, "last": time.perf_counter()}), flush=True)
        await client.close()

    asyncio.run(main())


def mgm_requester(api: str, events: str, n: int, window: int) -> None:
    from mgm.bus.client import Client

    async def main() -> None:
        client = Client(api, events)
        await client.start()
        handle = (await client.request("register_protocol", {"protocol_id": 10, "component_id": 1}))["handle"]
        client.heartbeat_handle = handle
        await client.request("take_interface_ownership", {"handle": handle, "if_index": 1, "next_hop": "0.0.0.0"})
        inflight = 0
        done = 0
        room = asyncio.Event()
        finished = asyncio.Event()
        errors: list[BaseException] = []

        def on_reply(fut: asyncio.Future[dict[str, Any]]) -> None:
            nonlocal inflight, done
            inflight -= 1
            done += 1
            if fut.exception() is not None:
                errors.append(fut.exception())  # type: ignore[arg-type]
            if inflight <= window // 2:
                room.set()
            if done >= n:
                finished.set()

        start = time.perf_counter()
        for i in range(n):
            if inflight >= window:
                room.clear()
                await room.wait()
            fut = client.request_nowait("add_group_membership", {
                "handle": handle, "source": "0.0.0.0", "source_mask": "0.0.0.0", "group": group_of(i),
                "group_mask": "255.255.255.255", "if_index": 1, "next_hop": "0.0.0.0", "flags": 1})
            inflight += 1
            fut.add_done_callback(on_reply)
        await finished.wait()
        end = time.perf_counter()
        if errors:
            raise errors[0]
        print(json.dumps({"replies": done, "start": start, "end": end}), flush=True)
        await client.close()

    asyncio.run(main())


# --- orchestration ------------------------------------------------------------------








def _rate(req: dict[str, float], sub: dict[str, float], n: int) -> float:
    if sub["events"] < n or req["replies"] < n:
        raise RuntimeError(f"lost something: {req} {sub}")
    return n / (max(req["end"], sub["last"]) - req["start"])


def run_raw(d: str, n: int, window: int) -> float:
    api, events = f"ipc://{d}/raw-api", f"ipc://{d}/raw-events"
    procs = []
    try:
        server = spawn(HERE, "--role", "raw-server", "--api", api, "--events", events)
        procs.append(server)
        read_line(server)
        sub = spawn(HERE, "--role", "raw-sub", "--events", events, "--requests", str(n))
        procs.append(sub)
        read_line(sub)
        req = spawn(HERE, "--role", "raw-req", "--api", api, "--requests", str(n), "--window", str(window))
        procs.append(req)
        r = json.loads(read_line(req))
        s = json.loads(read_line(sub))
        return _rate(r, s, n)
    finally:
        for p in reversed(procs):
            stop(p)


def run_mgm(d: str, n: int, window: int) -> float:
    api, events = f"ipc://{d}/api", f"ipc://{d}/events"
    procs = []
    try:
        out = os.environ.get("MGM_BENCH_PROFILE")
        profile = ["-m", "cProfile", "-o", out] if out else []
        manager = subprocess.Popen([sys.executable, *profile, "-m", "mgm.core.cli", "manager", "--api", api,
                                    "--events", events, "--log-level", "warning"], start_new_session=True, text=True)
        procs.append(manager)
        sub = spawn(HERE, "--role", "mgm-sub", "--api", api, "--events", events, "--requests", str(n))
        procs.append(sub)
        read_line(sub)
        req = spawn(HERE, "--role", "mgm-req", "--api", api, "--events", events, "--requests", str(n),
                     "--window", str(window))
        procs.append(req)
        r = json.loads(read_line(req))
        s = json.loads(read_line(sub))
        return _rate(r, s, n)
    finally:
        for p in reversed(procs):
            stop(p)  # type: ignore[arg-type]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--window", type=int, default=1000, help="requests in flight")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--events", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.role == "raw-server":
        raw_server(a.api, a.events)
        return 0
    if a.role == "raw-sub":
        raw_subscriber(a.events, a.requests)
        return 0
    if a.role == "raw-req":
        raw_requester(a.api, a.requests, a.window)
        return 0
    if a.role == "mgm-sub":
        mgm_subscriber(a.api, a.events, a.requests)
        return 0
    if a.role == "mgm-req":
        mgm_requester(a.api, a.events, a.requests, a.window)
        return 0
    raw_rates: list[float] = []
    mgm_rates: list[float] = []
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the run "
          "(other load lowers (a) and (b) alike; the ratio is what to compare)", flush=True)
    with tempfile.TemporaryDirectory(prefix="mgm-bench-", dir="/tmp") as d:
        for i in range(a.rounds):
            raw_rates.append(run_raw(d, a.requests, a.window))
            mgm_rates.append(run_mgm(d, a.requests, a.window))
            print(f"round {i + 1}: (a) raw {raw_rates[-1]:,.0f} req/s   (b) mgmbus {mgm_rates[-1]:,.0f} req/s",
                  flush=True)
    raw, mgm = statistics.median(raw_rates), statistics.median(mgm_rates)
    print(f"median: (a) raw pyzmq+msgpack {raw:,.0f} req/s with 1 event each; "
          f"(b) mgm manager add_group_membership {mgm:,.0f} req/s with 1 event each")
    print(f"ratio (b)/(a) = {mgm / raw:.2f}  (goal >= 0.5; {a.requests} requests, window {a.window}, "
          f"{a.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
