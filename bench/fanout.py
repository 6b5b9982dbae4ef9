"""One router forwarding one group to 1,000 downstream interfaces, each receiver getting every packet.

Topology: a sender namespace, a router namespace running `mgm up`
(manager, igmp on every router interface, the Linux forwarder on
`--backend`), and `--interfaces` veth pairs from the router into
`--namespaces` receiver namespaces (creating 1,000 namespaces would take
long: each receiver namespace holds a share of the far ends).  Every far
end is an interface of its own, on its own /30 subnet with the router's
end, with its own UDP socket (SO_BINDTODEVICE, joined to the group on
that interface), so each of the 1,000 is a receiver as a host on its own
link would be.  The links are made with `ip -batch` (one per namespace).

The run:

1. setup: the namespaces and links (timed), then `mgm up` until igmp runs
   on every interface and the forwarder has installed them all (timed);
2. a flow starts (one datagram every `--interval` s) before any join, so
   the router holds a negative entry;
3. every receiver joins at once (a signal to each receiver process); the
   time from the first join to the first datagram on each interface
   (kernel timestamps), and so to all of them forwarding;
4. that flow stops, the sockets are emptied, and `--packets` datagrams go
   out at `--rate` per second; then each socket is read: did every one of
   the receivers get every one of them (by sequence number)?

The baseline in the same run is the router's own join latency for one
interface: the median of the 1,000 first arrivals against the last
(all forwarding / median).  For the kernel's side it also reports the
softnet drops of the run (/proc/net/softnet_stat: a packet duplicated to
1,000 interfaces puts 1,000 packets on one CPU's backlog at once, and the
backlog holds net.core.netdev_max_backlog, 1,000 by default).

    sudo .venv/bin/python bench/fanout.py [--interfaces 1000] [--namespaces 4] [--packets 200] [--rate 50]

Needs root; everything it creates is removed at the end, also on Ctrl-C or
failure.  About a minute for 1,000 interfaces.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e"), str(ROOT / "bench")]

from e2e_stack import MGM, ROUTER_UP, S1, router_config  # noqa: E402
from join_latency import SO_TIMESTAMPNS, resolve_backend  # noqa: E402
from kernel_view import KernelView  # noqa: E402
from mgm_testplugins.processes import toml_config  # noqa: E402
from netns import Namespace, NsProcess, Topology, send_udp, wait_until  # noqa: E402

GROUP, PORT = "239.95.0.1", 6095
NET = ipaddress.IPv4Address("10.200.0.0")
"""The links' /30 subnets: link n is NET + 4n, the router's end .1, the receiver's .2."""
FLOW_PAYLOAD, BURST_PAYLOAD = 32, 64
"""Payload sizes of the join-phase flow and of the counted burst, so the receivers tell them apart."""
SO_RCVBUFFORCE = 33
START_WAIT = 180.0


# --- inside a receiver namespace ----------------------------------------------------------------------


def listen(group: str, port: int, ifnames: list[str], burst_payload: int) -> None:
    """A socket per interface; SIGUSR1: join on all (first time), then empty them; SIGUSR2: count and exit.

    Prints JSON lines: ``ready``; ``joined`` (first and last join, epoch
    seconds); ``forwarding`` once each interface had a datagram (first
    arrival per interface, kernel timestamps); ``emptied``; and at the end
    ``counts``: per interface, how many distinct burst datagrams came.
    """
    socks: dict[int, tuple[str, socket.socket, bytes]] = {}
    for name in ifnames:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, name.encode())
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind((group, port))
        sock.setblocking(False)
        mreq = struct.pack("=4s4si", socket.inet_aton(group), bytes(4), socket.if_nametoindex(name))
        socks[sock.fileno()] = (name, sock, mreq)
    asked: list[int] = []
    signal.signal(signal.SIGUSR1, lambda *_: asked.append(signal.SIGUSR1))
    signal.signal(signal.SIGUSR2, lambda *_: asked.append(signal.SIGUSR2))
    print(json.dumps({"event": "ready"}), flush=True)
    while not asked:
        time.sleep(0.01)
    asked.clear()
    first_join = time.time()
    for _name, sock, mreq in socks.values():
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    print(json.dumps({"event": "joined", "first": first_join, "last": time.time()}), flush=True)
    poller = select.epoll()
    for fd in socks:
        poller.register(fd, select.EPOLLIN)
    arrived: dict[str, float] = {}
    while len(arrived) < len(socks) and not asked:
        for fd, _ev in poller.poll(0.05):
            name, sock, _ = socks[fd]
            try:
                _data, ancillary, _flags, _addr = sock.recvmsg(2048, 256)
            except BlockingIOError:
                continue
            stamp = next((struct.unpack("=qq", d[:16]) for lvl, kind, d in ancillary
                          if lvl == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS), (0, 0))  # fmt: skip
            arrived[name] = stamp[0] + stamp[1] / 1e9
            poller.unregister(fd)  # one datagram per interface is all this phase reads
    poller.close()
    print(json.dumps({"event": "forwarding", "arrived": arrived}), flush=True)
    while not asked:
        time.sleep(0.01)
    asked.clear()
    for _name, sock, _ in socks.values():
        _drain(sock)
    print(json.dumps({"event": "emptied"}), flush=True)
    while not asked:
        time.sleep(0.01)
    counts = {}
    for name, sock, _ in socks.values():
        seqs = {struct.unpack("!I", d[:4])[0] for d in _drain(sock) if len(d) == burst_payload}
        counts[name] = len(seqs)
    print(json.dumps({"event": "counts", "counts": counts}), flush=True)


def send_stamped(group: str, port: int, count: int, **kwargs: Any) -> int:
    """`send_udp`, saying first when it starts (epoch seconds) on stdout."""
    print(json.dumps({"event": "sending", "at": time.time()}), flush=True)
    return send_udp(group, port, count, **kwargs)


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(2048))
        except BlockingIOError:
            return out


# --- the run -----------------------------------------------------------------------------------------


def events(proc: NsProcess, kind: str) -> list[dict[str, Any]]:
    out = []
    for line in proc.log().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == kind:
                out.append(event)
    return out


def wait_event(procs: list[NsProcess], kind: str, timeout: float) -> list[dict[str, Any]]:
    def every() -> list[dict[str, Any]] | None:
        for proc in procs:
            if not proc.alive() and not events(proc, kind):
                raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-2000:]}")
        found = [events(proc, kind) for proc in procs]
        return [f[0] for f in found] if all(found) else None

    result: list[dict[str, Any]] = wait_until(every, timeout, f"every receiver process to say {kind}")
    return result


def softnet_dropped() -> int:
    """Packets dropped because a CPU's backlog was full, since boot (the second column of softnet_stat)."""
    lines = Path("/proc/net/softnet_stat").read_text().split("\n")
    return sum(int(line.split()[1], 16) for line in lines if line.strip())


def make_links(topology: Topology, router: Namespace, receivers: list[Namespace], count: int) -> list[str]:
    """`count` veth pairs router dN <-> receiver eN, with /30 addresses, up; the router's names."""
    batches: dict[str, list[str]] = {ns.name: [] for ns in [router, *receivers]}
    names = []
    for n in range(count):
        ns = receivers[n % len(receivers)]
        base = NET + 4 * n
        batches[router.name] += [f"link add d{n} type veth peer name e{n} netns {ns.name}",
                                 f"addr add {base + 1}/30 dev d{n}", f"link set d{n} up"]  # fmt: skip
        batches[ns.name] += [f"addr add {base + 2}/30 dev e{n}", f"link set e{n} up"]
        names.append(f"d{n}")
    for name, lines in batches.items():
        path = topology.workdir / f"{name}.batch"
        path.write_text("\n".join(lines) + "\n")
        proc = subprocess.run(["ip", "-n", name, "-batch", str(path)], capture_output=True, text=True, timeout=600,
                              check=False)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"ip -n {name} -batch: {proc.stderr.strip()[:2000]}")
    return names


@contextlib.contextmanager
def _keep_log(path: Path | None, proc: Callable[[], NsProcess | None]) -> Iterator[None]:
    """Copy the log of `proc()` to `path` when the block ends, however it ends (before the topology goes)."""
    try:
        yield
    finally:
        running = proc()
        if path is not None and running is not None:
            path.write_text(running.log())


def progress(what: str) -> None:
    print(f"fanout: {what}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interfaces", type=int, default=1000, help="downstream interfaces (one receiver each)")
    parser.add_argument("--namespaces", type=int, default=4, help="receiver namespaces holding their far ends")
    parser.add_argument("--packets", type=int, default=200, help="datagrams each receiver must get")
    parser.add_argument("--rate", type=float, default=50.0, help="datagrams per second of that burst")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between datagrams while joining")
    parser.add_argument("--backend", default="auto", choices=("auto", "mrt", "nft"),
                        help="the forwarder's backend (auto: MRT where the kernel has it, else nftables)")  # fmt: skip
    parser.add_argument("--routing", default="static", choices=("static", "igmp"),
                        help="what puts the 1,000 interfaces in the OIL: one static (*,G) route, or igmp on every "
                             "interface and the receivers' joins (igmp: see the docstring)")  # fmt: skip
    parser.add_argument("--keep-log", type=Path, default=None, metavar="FILE",
                        help="copy the log of `mgm up` here before the namespaces go (also on failure)")  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("fanout: needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.interfaces > 4096:
        parser.error("--interfaces: at most 4096 (/30 subnets of 10.200.0.0/16)")
    backend = resolve_backend(args.backend)
    started = time.monotonic()
    dropped_before = softnet_dropped()
    up: NsProcess | None = None
    with Topology(prefix="mgmbench") as topology, _keep_log(args.keep_log, lambda: up):
        sender, router = topology.namespaces("snd", "rtr")
        receivers = topology.namespaces(*(f"rx{k + 1}" for k in range(args.namespaces)))
        for ns in (router, *receivers):  # no IPv6 autoconfiguration chatter on thousands of links
            ns.sh("echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; "
                  "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6")  # fmt: skip
        up_link = topology.link(sender, router, f"{S1}/24", f"{ROUTER_UP}/24")
        sender.multicast_route(up_link.a_if)
        t0 = time.monotonic()
        downs = make_links(topology, router, receivers, args.interfaces)
        links_s = time.monotonic() - t0
        progress(f"{args.interfaces} links in {links_s:.1f} s; starting mgm up")
        router_ifs = [up_link.b_if, *downs]
        workdir = str(topology.workdir)
        config = topology.workdir / "router.toml"
        if args.routing == "igmp":
            text = router_config(workdir, router_ifs, forwarder={"backend": backend}, log_level="info")
        else:
            route = {"group": GROUP, "from": up_link.b_if, "to": downs}
            text = toml_config({"static": {"interfaces": router_ifs, "routes": [route]},
                                "forwarder": {"counters_interval": 1.0, "backend": backend}},
                               {"api": f"ipc://{workdir}/api", "events": f"ipc://{workdir}/events",
                                "log_level": "info"})  # fmt: skip
        config.write_text(text)
        t1 = time.monotonic()
        up = router.popen([*MGM, "up", "--config", str(config)], "mgm-up")
        kernel = KernelView(router, backend)

        def plugin_running() -> bool:
            assert up.alive(), f"mgm up exited:\n{up.log()[-3000:]}"
            if args.routing == "igmp":
                return up.log().count("igmp: running IGMPv") >= len(router_ifs)
            return "plugin static registered" in up.log()

        wait_until(plugin_running, START_WAIT, f"{args.routing} running on every router interface")
        plugin_s = time.monotonic() - t1
        progress(f"{args.routing} running on every interface after {plugin_s:.1f} s")

        def installed() -> bool:
            have = kernel.interfaces()
            progress(f"{len(have & set(router_ifs))} of {len(router_ifs)} interfaces installed")
            return have == set(router_ifs)

        wait_until(installed, START_WAIT, "every router interface installed")
        up_s = time.monotonic() - t1
        progress(f"every interface installed after {up_s:.1f} s")
        count = int(600 / args.interval)  # more than the run uses: stopped below
        procs = []
        for k, ns in enumerate(receivers):
            mine = [f"e{n}" for n in range(k, args.interfaces, len(receivers))]  # as make_links spread them
            procs.append(ns.spawn(listen, GROUP, PORT, mine, BURST_PAYLOAD, name=f"listen-{ns.role}"))
        wait_event(procs, "ready", 60)
        if args.routing == "igmp":  # the flow first (a negative entry), then the joins: from the first join
            flow = sender.spawn(send_udp, GROUP, PORT, count, interval=args.interval, source=S1,
                                payload_size=FLOW_PAYLOAD, name="flow")  # fmt: skip
            wait_until(lambda: kernel.oil(S1, GROUP) == set(), 30, "a negative entry for the flow")
            for proc in procs:
                proc.signal(signal.SIGUSR1)
            joined = wait_event(procs, "joined", 30)
            origin = min(j["first"] for j in joined)
        else:  # the route forwards to all: the receivers join, then the flow starts: from its first datagram
            for proc in procs:
                proc.signal(signal.SIGUSR1)
            joined = wait_event(procs, "joined", 30)
            time.sleep(0.5)
            flow = sender.spawn(send_stamped, GROUP, PORT, count, interval=args.interval, source=S1,
                                payload_size=FLOW_PAYLOAD, name="flow")  # fmt: skip
            origin = wait_event([flow], "sending", 30)[0]["at"]
        forwarding = wait_event(procs, "forwarding", 120)
        flow.stop()
        oil = kernel.oil(S1, GROUP) or set()
        time.sleep(0.5)
        for proc in procs:
            proc.signal(signal.SIGUSR1)
        wait_event(procs, "emptied", 30)
        dropped_burst = softnet_dropped()
        sender.call(send_udp, GROUP, PORT, args.packets, interval=1 / args.rate, source=S1,
                    payload_size=BURST_PAYLOAD, timeout=args.packets / args.rate + 60)  # fmt: skip
        time.sleep(1.0)
        dropped_burst = softnet_dropped() - dropped_burst
        for proc in procs:
            proc.signal(signal.SIGUSR2)
        counted = wait_event(procs, "counts", 60)
        assert up.alive(), f"mgm up exited:\n{up.log()[-3000:]}"
        t2 = time.monotonic()
    teardown_s = time.monotonic() - t2
    first_join = min(j["first"] for j in joined)
    last_join = max(j["last"] for j in joined)
    arrivals = {name: at for f in forwarding for name, at in f["arrived"].items()}
    counts = {name: c for c in counted for name, c in c["counts"].items()}
    since = sorted(at - origin for at in arrivals.values())
    complete = sum(1 for c in counts.values() if c == args.packets)
    print(f"fan-out: one group forwarded by one router to {args.interfaces:,} downstream interfaces "
          f"(veth pairs into {args.namespaces} receiver namespaces, a socket per interface)")  # fmt: skip
    how = (f"igmp on all {len(router_ifs):,} router interfaces" if args.routing == "igmp"
           else f"one static (*,G) route to all {args.interfaces:,} (plugins/static)")  # fmt: skip
    print(f"  backend {backend}; `mgm up` with {how}")
    print(f"  machine: Linux {platform.release()}, Python {platform.python_version()}, {os.cpu_count()} CPU(s); "
          f"run {time.monotonic() - started:.0f} s")  # fmt: skip
    print(f"  setup: {args.interfaces:,} links {links_s:.1f} s; mgm up to {args.routing} running on every interface "
          f"{plugin_s:.1f} s, to every interface installed {up_s:.1f} s; teardown {teardown_s:.1f} s")  # fmt: skip
    median = statistics.median(since)
    start = "first join" if args.routing == "igmp" else "the flow's first datagram sent"
    print(f"  joins: {len(arrivals):,} of {args.interfaces:,} interfaces got the flow; the joins took "
          f"{(last_join - first_join) * 1000:.0f} ms; {start} -> first datagram: first {since[0] * 1000:.0f} ms, "
          f"median {median * 1000:.0f} ms, all {since[-1] * 1000:.0f} ms (ratio all/median {since[-1] / median:.2f}); "
          f"kernel OIL then {len(oil):,} interfaces")  # fmt: skip
    print(f"  every packet: {complete:,} of {len(counts):,} receivers got all {args.packets} datagrams "
          f"({args.rate:g}/s); fewest {min(counts.values())}, median {statistics.median(counts.values()):.0f}; "
          f"softnet backlog drops during the burst {dropped_burst:,}, during the run "
          f"{softnet_dropped() - dropped_before:,}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
