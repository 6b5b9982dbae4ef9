"""Latency of one bus hop through our code, against raw pyzmq + msgpack, in one run.

A new flow's first packet waits for several hops over the bus (forwarder ->
manager -> protocol plugin -> manager -> forwarder), each idle before it
starts, so what counts is the latency of a lone message, not throughput.  Three
shapes, requests spaced by --gap (1 ms: the processes sleep in between):

(a) round trip: `ping` (answered by the bus layer) and `get_protocol_on_interface`
    (a cheap op through the core) from a `mgm.bus.client.Client` to a real
    `mgm manager` subprocess, until the reply resolves the awaited future;
(b) one way: client A (this process, registered as IGMP, protocol 10) adds a
    membership on an interface that client B (another process, a routing
    protocol) owns; the manager replies to A and publishes local_join on B's
    proto stream; the time is from A's send to B's on_event callback
    (time.perf_counter in both processes, which is CLOCK_MONOTONIC on Linux);
(c) the baseline for both: a blocking pyzmq DEALER against a relay process
    (ROUTER in, PUB out) that echoes a reply, and for the one-way shape also
    publishes an event that a blocking SUB in another process receives.

The kinds alternate in blocks for --rounds rounds, so a change of load hits
all of them.  The report gives p50/p90/p99 of each and the ratios ours/raw
(goal: as close to 1 as the design allows), then a pipelined throughput
sanity line (ping with --window in flight, against the raw echo).  About 20 s.

    .venv/bin/python bench/hop_latency.py [--samples 2500] [--rounds 5] [--gap 0.001]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from children import has_line, read_line, spawn, stop

HERE = os.path.abspath(__file__)
ROUTING = (2, 1)
"""The routing protocol client B registers as (any id but IGMP's)."""
IGMP = (10, 1)
IFACE = {"if_index": 1, "next_hop": "0.0.0.0"}
STOP_GROUP = "239.255.255.255"
"""The membership whose event tells B (ours or raw) to report and exit."""
START_TIMEOUT = 20.0


def group_of(i: int) -> str:
    return f"225.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def membership(handle: int | None, group: str) -> dict[str, Any]:
    args: dict[str, Any] = {"source": "0.0.0.0", "source_mask": "0.0.0.0", "group": group,
                            "group_mask": "255.255.255.255", **IFACE, "flags": 1}
    if handle is not None:
        args["handle"] = handle
    return args


# --- roles in other processes -------------------------------------------------------


def raw_relay(api: str, events: str) -> None:
    """ROUTER in, PUB out: op "publish" publishes an event before its reply, every op gets a reply."""
    import msgpack
    import zmq

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(api)
    pub = ctx.socket(zmq.PUB)
    pub.bind(events)
    seq = 0
    print("ready", flush=True)
    while True:
        conn, empty, payload = router.recv_multipart()
        req = msgpack.unpackb(payload, raw=False)
        if req["op"] == "publish":
            seq += 1
            event = {"v": 1, "stream": "proto/2/1", "seq": seq, "epoch": 1, "type": "local_join", **req["args"]}
            pub.send_multipart([b"proto/2/1", msgpack.packb(event)])
        router.send_multipart([conn, empty, msgpack.packb(
            {"v": 1, "id": req["id"], "status": 0, "error": "NO_ERROR", "message": "", "result": {}})])
        if req["op"] == "stop":
            return


def raw_receiver(events: str) -> None:
    """A blocking SUB: the receipt time of every event by group; says ready at the first one."""
    import msgpack
    import zmq

    sub = zmq.Context().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"proto/2/1")
    sub.connect(events)
    got: dict[str, float] = {}
    while True:
        _topic, payload = sub.recv_multipart()
        now = time.perf_counter()
        group = msgpack.unpackb(payload, raw=False)["group"]
        if not got:
            print("ready", flush=True)
        got[group] = now
        if group == STOP_GROUP:
            print(json.dumps(got), flush=True)
            return


def mgm_receiver(api: str, events: str) -> None:
    """Client B: a routing protocol owning the interface; the receipt time of every local_join by group."""
    from mgm.bus.client import Client

    async def main() -> None:
        got: dict[str, float] = {}
        live = asyncio.Event()
        done = asyncio.Event()

        def on_event(ev: dict[str, Any]) -> None:
            now = time.perf_counter()
            if ev["type"] == "local_join":
                got[ev["group"]] = now
                if ev["group"] == STOP_GROUP:
                    done.set()

        client = Client(api, events)
        client.follow(f"proto/{ROUTING[0]}/{ROUTING[1]}", on_event, lambda stream, state: live.set())
        await client.start()
        res = await client.request("register_protocol", {"protocol_id": ROUTING[0], "component_id": ROUTING[1]})
        client.heartbeat_handle = res["handle"]
        await client.request("take_interface_ownership", {"handle": res["handle"], **IFACE})
        await asyncio.wait_for(live.wait(), START_TIMEOUT)
        print("ready", flush=True)
        await done.wait()
        print(json.dumps(got), flush=True)
        client.heartbeat_handle = None
        await client.close()

    asyncio.run(main())


# --- process handling -----------------------------------------------------------------










# --- the measuring side (this process) ------------------------------------------------


class Raw:
    """Blocking DEALER to the relay, as a raw pyzmq + msgpack client would be."""

    def __init__(self, api: str) -> None:
        import msgpack
        import zmq

        self.pack, self.unpack = msgpack.packb, msgpack.unpackb
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(api)
        self.next_id = 0

    def send(self, op: str, args: dict[str, Any]) -> None:
        self.next_id += 1
        self.sock.send_multipart([b"", self.pack({"v": 1, "id": self.next_id, "op": op, "args": args})])

    def recv(self) -> dict[str, Any]:
        if not self.sock.poll(int(START_TIMEOUT * 1000)):
            raise TimeoutError("the raw relay did not answer")
        _, payload = self.sock.recv_multipart()
        reply: dict[str, Any] = self.unpack(payload, raw=False)
        return reply

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.send(op, args)
        return self.recv()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def measure(a: argparse.Namespace, d: str) -> dict[str, list[float]]:
    from mgm.bus.client import Client

    api, events = f"ipc://{d}/api", f"ipc://{d}/events"
    raw_api, raw_events = f"ipc://{d}/raw-api", f"ipc://{d}/raw-events"
    procs: list[subprocess.Popen[str]] = []
    client: Client | None = None
    try:
        manager = subprocess.Popen([sys.executable, "-m", "mgm.core.cli", "manager", "--api", api, "--events", events,
                                    "--log-level", "warning"], start_new_session=True, text=True)
        procs.append(manager)  # type: ignore[arg-type]
        relay = spawn(HERE, "--role", "raw-relay", "--api", raw_api, "--events", raw_events)
        procs.append(relay)
        read_line(relay)
        b_mgm = spawn(HERE, "--role", "mgm-recv", "--api", api, "--events", events)
        procs.append(b_mgm)
        read_line(b_mgm)
        b_raw = spawn(HERE, "--role", "raw-recv", "--events", raw_events)
        procs.append(b_raw)

        raw = Raw(raw_api)
        deadline = time.monotonic() + START_TIMEOUT
        while not has_line(b_raw):  # PUB drops until the SUB's subscription arrived: send until one gets through
            if time.monotonic() > deadline:
                raise RuntimeError("the raw receiver never got an event")
            raw.call("publish", membership(None, "239.0.0.1"))
            time.sleep(0.02)
        read_line(b_raw)

        client = Client(api, events)
        await client.start()
        handle = (await client.request("register_protocol",
                                       {"protocol_id": IGMP[0], "component_id": IGMP[1]}))["handle"]
        client.heartbeat_handle = handle
        await client.request("take_interface_ownership", {"handle": handle, **IFACE})

        out: dict[str, list[float]] = {k: [] for k in ("ping", "gpoi", "raw_rtt", "oneway", "raw_oneway")}
        sent_mgm: dict[str, float] = {}
        sent_raw: dict[str, float] = {}
        per = max(1, a.samples // a.rounds)
        gap = a.gap
        g = 0
        for _ in range(a.rounds):
            for i in range(per):  # (a) ours: ping and a core op, interleaved
                op, args, key = ("ping", {}, "ping") if i % 2 == 0 else ("get_protocol_on_interface", IFACE, "gpoi")
                t = time.perf_counter()
                await client.request(op, args)
                out[key].append(time.perf_counter() - t)
                await asyncio.sleep(gap)
            for _ in range(per // 2):  # (c) raw round trip
                t = time.perf_counter()
                raw.call("echo", {})
                out["raw_rtt"].append(time.perf_counter() - t)
                time.sleep(gap)
            for _ in range(per):  # (b) ours one way
                group = group_of(g)
                g += 1
                sent_mgm[group] = time.perf_counter()
                await client.request("add_group_membership", membership(handle, group))
                await asyncio.sleep(gap)
            for _ in range(per):  # (c) raw one way
                group = group_of(g)
                g += 1
                sent_raw[group] = time.perf_counter()
                raw.call("publish", membership(None, group))
                time.sleep(gap)
        await client.request("add_group_membership", membership(handle, STOP_GROUP))
        raw.call("publish", membership(None, STOP_GROUP))
        got_mgm = json.loads(read_line(b_mgm))
        got_raw = json.loads(read_line(b_raw))
        for sent, got, key in ((sent_mgm, got_mgm, "oneway"), (sent_raw, got_raw, "raw_oneway")):
            missing = [grp for grp in sent if grp not in got]
            if missing:
                raise RuntimeError(f"{key}: {len(missing)} events never arrived (first: {missing[0]})")
            out[key] = [got[grp] - t for grp, t in sent.items()]

        if a.window:
            out["tput_mgm"] = [await throughput_mgm(client, a.window, a.pipelined)]
            out["tput_raw"] = [throughput_raw(raw, a.window, a.pipelined)]
        raw.call("stop", {})
        return out
    finally:
        if client is not None:
            client.heartbeat_handle = None  # no heartbeat in flight when it closes (it would be logged as failed)
            await client.close()
        for p in reversed(procs):
            stop(p)


async def throughput_mgm(client: Any, window: int, n: int) -> float:
    done = asyncio.Event()
    left = n
    room = asyncio.Event()
    inflight = 0

    def on_reply(_: asyncio.Future[dict[str, Any]]) -> None:
        nonlocal left, inflight
        left -= 1
        inflight -= 1
        if inflight <= window // 2:
            room.set()
        if not left:
            done.set()

    t = time.perf_counter()
    for _ in range(n):
        if inflight >= window:
            room.clear()
            await room.wait()
        inflight += 1
        client.request_nowait("ping").add_done_callback(on_reply)
    await done.wait()
    return n / (time.perf_counter() - t)


def throughput_raw(raw: Raw, window: int, n: int) -> float:
    sent = done = 0
    t = time.perf_counter()
    while done < n:
        while sent < n and sent - done < window:
            raw.send("echo", {})
            sent += 1
        raw.recv()
        done += 1
    return n / (time.perf_counter() - t)


def report(out: dict[str, list[float]], a: argparse.Namespace) -> None:
    def row(name: str, xs: list[float]) -> tuple[float, float, float]:
        p = (pct(xs, 0.5) * 1e6, pct(xs, 0.9) * 1e6, pct(xs, 0.99) * 1e6)
        print(f"  {name:<44} p50 {p[0]:7.0f} us  p90 {p[1]:7.0f} us  p99 {p[2]:7.0f} us  (n={len(xs)})")
        return p

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; gap {a.gap * 1e3:g} ms between requests")
    print("round trip (request -> reply resolved):")
    ping = row("ours: ping (bus layer)", out["ping"])
    gpoi = row("ours: get_protocol_on_interface (core)", out["gpoi"])
    raw = row("raw: pyzmq DEALER/ROUTER echo", out["raw_rtt"])
    print("one way (A's request -> B's event, another process):")
    one = row("ours: add_group_membership -> local_join", out["oneway"])
    raw1 = row("raw: ROUTER -> PUB relay -> SUB", out["raw_oneway"])
    print("ratios ours/raw (p50 / p90 / p99):")
    for name, ours, base in (("ping", ping, raw), ("get_protocol_on_interface", gpoi, raw), ("one way", one, raw1)):
        print(f"  {name:<44} {ours[0] / base[0]:5.2f} / {ours[1] / base[1]:5.2f} / {ours[2] / base[2]:5.2f}")
    if "tput_mgm" in out:
        m, r = out["tput_mgm"][0], out["tput_raw"][0]
        print(f"pipelined ping, window {a.window}: ours {m:,.0f} req/s, raw echo {r:,.0f} req/s, "
              f"ratio {m / r:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2500, help="samples of each kind (split over the rounds)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gap", type=float, default=0.001, help="seconds between requests")
    parser.add_argument("--window", type=int, default=100, help="pipelined sanity line: requests in flight (0: skip)")
    parser.add_argument("--pipelined", type=int, default=20_000, help="requests of the pipelined sanity line")
    parser.add_argument("--json", default=None, help="also write the raw samples here")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--events", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.role == "raw-relay":
        raw_relay(a.api, a.events)
        return 0
    if a.role == "raw-recv":
        raw_receiver(a.events)
        return 0
    if a.role == "mgm-recv":
        mgm_receiver(a.api, a.events)
        return 0
    with tempfile.TemporaryDirectory(prefix="mgm-hop-", dir="/tmp") as d:
        out = asyncio.run(measure(a, d))
    report(out, a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
