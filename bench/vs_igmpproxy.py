"""Our IGMP proxy against Debian's igmpproxy on the same namespaces, alternating runs.

    up (eth0) --- (r1) rtr (r2) --- (eth0) rcv
    sender and an         router: igmpproxy, or
    emulated upstream     `mgm up` with forwarder + igmp (r2) + proxy (r1 -> r2)
    router

The upstream namespace plays the upstream network: it sends a group's
traffic only while it has seen the router report the group there (as an
upstream router would forward it only then), one datagram per group every
tick.  So a receiver's join must travel the whole proxy path before its
first datagram: the host's report, the proxy joining upstream, the traffic
starting, the router's forwarding entry.  One driver process measures both
ends on one clock, with sockets opened inside each namespace (setns).

Reported, each as ours / igmpproxy (medians over the rounds):

* join-to-first-packet latency, p50 and p99, over ``--joins`` joins of fresh
  groups one after the other (goal: <= 1.0);
* the time from 1,000 groups joined at once on one host to every one of
  them forwarding (goal: <= 1.5).

Each run gets a new receiving host (a host remembers an IGMPv2 querier for
400 s).  By default it speaks what its kernel speaks: IGMPv3, falling back
to v2 where the querier is v2, as igmpproxy's is; so with igmpproxy the
1,000 joins are 1,000 v2 reports, with ours a few v3 reports.
``--igmp-version 2`` forces v2 hosts for both, which compares the proxies on
equal reports.  A burst of v2 reports loses some on the way (kernel queues),
and a v2 host repeats its report only within 10 s, which is then what both
proxies' 1,000-group times measure.  The router namespace allows 2,048
memberships per socket (igmpproxy joins every group upstream on one socket;
ours spreads them over a pool anyway).  Needs root; installs igmpproxy with
apt-get when it is missing.  Run time is bounded: every wait has a deadline,
and a round takes well under a minute.

Our proxy sends its own report upstream at once on a join, besides the
kernel's (which Linux delays by 8-12 ms); ``--no-immediate-report`` writes
``immediate_report = false`` into our router's configuration, to measure
what that report is worth.

    .venv/bin/python bench/vs_igmpproxy.py [--rounds 2] [--joins 60] [--groups 1000] [--igmp-version 2]
                                                [--no-immediate-report]

Debugging: BENCH_DEBUG=1 prints each trial and the 1,000-group quantiles;
BENCH_LOG=debug sets our router's log level, BENCH_KEEP_LOG=PREFIX keeps each
router's log as PREFIX-igmpproxy / PREFIX-ours.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from netns import Namespace, NsProcess, Topology, wait_until  # noqa: E402

CLONE_NEWNET = 0x40000000
SO_ATTACH_FILTER = 26
PORT = 5800
TICK = 0.001
"""Seconds between two datagrams of an active group in the latency trials."""
BURST_TICK = 0.05
"""... and in the 1,000-group run (20 datagrams per second per group)."""
TRIAL_TIMEOUT = 5.0
BURST_TIMEOUT = 60.0
READY_TIMEOUT = 30.0
IGMPPROXY = "/usr/sbin/igmpproxy"

_libc = ctypes.CDLL(None, use_errno=True)


# --- sockets inside namespaces ------------------------------------------------------------------


@contextlib.contextmanager
def inside(ns: Namespace) -> Iterator[None]:
    """Run the block in `ns`'s network namespace (this process is single-threaded); sockets stay there."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{ns.name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns.name}")
        yield
    finally:
        if _libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back home")
        os.close(target)
        os.close(home)


class _Bpf:
    """A classic BPF program kept alive with its sock_fprog (the kernel copies it at attach)."""

    def __init__(self, *insns: tuple[int, int, int, int]) -> None:
        self.code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in insns))
        self.count = len(insns)

    def program(self) -> bytes:
        return struct.pack("HP", self.count, ctypes.addressof(self.code))  # native: padded to the pointer


IGMP_ONLY = _Bpf(
    (0x30, 0, 0, 9),  # ldb [9]: the IP protocol (a SOCK_DGRAM packet socket filters from the IP header)
    (0x15, 0, 1, 2),  # jeq #2 (IGMP)
    (0x06, 0, 0, 0xFFFF),  # ret: keep
    (0x06, 0, 0, 0),  # ret: drop (the traffic we send ourselves, above all)
)


class Upstream:
    """The upstream network: sees the router's reports, sends traffic for the groups reported."""

    def __init__(self, ns: Namespace, ifname: str) -> None:
        with inside(ns):
            self.sniff = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
            self.sniff.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, IGMP_ONLY.program())
            self.sniff.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.sniff.bind((ifname, 0x0003))
            self.sniff.setblocking(False)
            self.send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            index = socket.if_nametoindex(ifname)
            self.send.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, struct.pack("=4s4si", bytes(4), bytes(4), index)
            )
            self.send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 8)
            self.send.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            self.send.setblocking(False)
        self.active: dict[str, None] = {}
        self.next_send = 0.0
        self.blocked = 0
        self.seen: dict[str, float] = {}  # group -> when its first report was seen

    def read_reports(self) -> None:
        while True:
            try:
                data, address = self.sniff.recvfrom(65535)
            except BlockingIOError:
                return
            if address[1] != 0x0800 or len(data) < 24 or data[9] != 2 or address[2] == socket.PACKET_OUTGOING:
                continue
            igmp = data[(data[0] & 0x0F) * 4 :]
            kind = igmp[0]
            if kind in (0x12, 0x16):
                self._activate(socket.inet_ntoa(igmp[4:8]))
            elif kind == 0x17:
                self.active.pop(socket.inet_ntoa(igmp[4:8]), None)
            elif kind == 0x22:
                at = 8
                for _ in range(struct.unpack("!H", igmp[6:8])[0]):
                    rtype, aux, nsrc = igmp[at], igmp[at + 1], struct.unpack("!H", igmp[at + 2 : at + 4])[0]
                    group = socket.inet_ntoa(igmp[at + 4 : at + 8])
                    if rtype in (2, 4) or (rtype in (1, 3, 5) and nsrc):
                        self._activate(group)
                    elif rtype in (1, 3) and not nsrc:
                        self.active.pop(group, None)
                    at += 8 + 4 * nsrc + 4 * aux

    def _activate(self, group: str) -> None:
        if group not in self.active:
            self.active[group] = None
            self.seen[group] = time.monotonic()

    def tick(self, now: float, interval: float) -> None:
        if now < self.next_send:
            return
        self.next_send = now + interval
        for group in self.active:
            try:
                self.send.sendto(group.encode(), (group, PORT))
            except BlockingIOError:
                self.blocked += 1

    def close(self) -> None:
        self.sniff.close()
        self.send.close()


class Receiver:
    """The receiving host's socket: joins and drops groups on its interface, reads the datagrams."""

    def __init__(self, ns: Namespace, ifname: str) -> None:
        with inside(ns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.sock.bind(("0.0.0.0", PORT))
            self.sock.setblocking(False)
            self.index = socket.if_nametoindex(ifname)

    def fileno(self) -> int:
        return self.sock.fileno()

    def join(self, group: str) -> None:
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn(group, self.index))

    def drop(self, group: str) -> None:
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreqn(group, self.index))

    def close(self) -> None:
        self.sock.close()


def mreqn(group: str, index: int) -> bytes:
    return struct.pack("=4s4si", socket.inet_aton(group), bytes(4), index)


def pump(up: Upstream, rx: Receiver, interval: float, until: float) -> list[tuple[float, str]]:
    """Serve the upstream and read the receiver until `until` or the first datagrams; (time, group) arrivals."""
    got: list[tuple[float, str]] = []
    while True:
        now = time.monotonic()
        up.tick(now, interval)
        wait = max(0.0, min(up.next_send, until) - now)
        readable: list[Any] = [up.sniff, rx]
        ready, _, _ = select.select(readable, [], [], wait)
        if up.sniff in ready:
            up.read_reports()
        if rx in ready:
            while True:
                try:
                    data = rx.sock.recv(2048)
                except BlockingIOError:
                    break
                got.append((time.monotonic(), data.decode(errors="replace")))
        if got or time.monotonic() >= until:
            return got


# --- one run ------------------------------------------------------------------------------------


def latencies(up: Upstream, rx: Receiver, base: int, joins: int) -> list[float]:
    out: list[float] = []
    for i in range(joins):
        group = f"239.{80 + base // 250}.{base % 250}.{i + 1}"
        t0 = time.monotonic()
        rx.join(group)
        deadline = t0 + TRIAL_TIMEOUT
        first = None
        while first is None and time.monotonic() < deadline:
            for when, g in pump(up, rx, TICK, deadline):
                if g == group:
                    first = when
                    break
        rx.drop(group)
        if first is None:
            raise RuntimeError(f"no packet of {group} within {TRIAL_TIMEOUT} s of the join")
        out.append(first - t0)
        if os.environ.get("BENCH_DEBUG"):
            print(f"trial {group}: joined at {time.time() - (time.monotonic() - t0):.6f}, "
                  f"first packet after {(first - t0) * 1e3:.2f} ms", file=sys.stderr)  # fmt: skip
        settle = time.monotonic() + 0.02
        while time.monotonic() < settle:
            pump(up, rx, TICK, settle)
    return out


def burst(up: Upstream, rx: Receiver, base: int, count: int) -> float:
    """Join `count` groups at once; seconds until each has had a datagram."""
    groups = {f"239.{90 + base}.{i // 250}.{i % 250 + 1}" for i in range(count)}
    t0 = time.monotonic()
    for group in sorted(groups):
        rx.join(group)
    waiting = set(groups)
    deadline = t0 + BURST_TIMEOUT
    last = t0
    firsts = []
    while waiting and time.monotonic() < deadline:
        for when, g in pump(up, rx, BURST_TICK, min(deadline, time.monotonic() + BURST_TICK)):
            if g in waiting:
                waiting.discard(g)
                last = when
                firsts.append(when - t0)
    if os.environ.get("BENCH_DEBUG"):
        print(
            "burst quantiles",
            [round(percentile(firsts, q), 3) for q in (0.1, 0.5, 0.9, 0.95, 0.99, 1.0)],
            "upstream active",
            len(up.active),
            "blocked sends",
            up.blocked,
            file=sys.stderr,
        )
        seen = [up.seen[g] - t0 for g in groups if g in up.seen]
        print("upstream report quantiles", [round(percentile(seen, q), 3) for q in (0.1, 0.5, 0.9, 0.99, 1.0)],
              file=sys.stderr)  # fmt: skip  # fmt: skip
    for group in sorted(groups):
        rx.drop(group)
    if waiting:
        raise RuntimeError(f"{len(waiting)} of {count} groups never forwarded within {BURST_TIMEOUT} s")
    return last - t0


def start_igmpproxy(topo: Topology, rtr: Namespace) -> NsProcess:
    conf = topo.workdir / "igmpproxy.conf"
    conf.write_text(
        "quickleave\n"
        "phyint r1 upstream ratelimit 0 threshold 1\n"
        "  altnet 0.0.0.0/0\n"
        "phyint r2 downstream ratelimit 0 threshold 1\n"
        "phyint lo disabled\n"
    )
    return rtr.popen([IGMPPROXY, "-n", str(conf)], "igmpproxy")


def start_ours(topo: Topology, rtr: Namespace, immediate_report: bool = True) -> NsProcess:
    work = topo.workdir
    immediate = "" if immediate_report else "immediate_report = false\n"
    conf = work / "router.toml"
    conf.write_text(f"""\
[manager]
api = "ipc://{work}/api"
events = "ipc://{work}/events"
log_level = "{os.environ.get("BENCH_LOG", "info")}"

[plugins.forwarder]

[plugins.igmp]
interfaces = ["r2"]

[plugins.proxy]
interfaces = ["r1", "r2"]
upstream = "r1"
downstream = ["r2"]
{immediate}""")
    return rtr.popen([sys.executable, "-m", "mgm.core.cli", "up", "--config", str(conf)], "mgm-up")


def vifs(rtr: Namespace) -> set[str]:
    lines = rtr.sh("cat /proc/net/ip_mr_vif").splitlines()[1:]
    return {line.split()[1] for line in lines if len(line.split()) > 1}


def run_once(kind: str, topo: Topology, rtr: Namespace, up: Upstream, rx: Receiver, base: int,
             joins: int, groups: int, immediate_report: bool = True) -> dict[str, Any]:  # fmt: skip
    proc = start_igmpproxy(topo, rtr) if kind == "igmpproxy" else start_ours(topo, rtr, immediate_report)
    try:

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{kind} exited:\n{proc.log()}")
            if not {"r1", "r2"} <= vifs(rtr):
                return False
            if kind == "igmpproxy":
                return True
            log = proc.log()  # IGMP's listeners open after registration: a report before that would be lost
            return "igmp: running IGMPv" in log and "proxy: upstream" in log and _ours_ready(topo)

        wait_until(ready, READY_TIMEOUT, f"{kind} to run")
        print(f"{kind} runs", file=sys.stderr, flush=True)
        lat = latencies(up, rx, base, joins)
        time_all = burst(up, rx, base, groups)
        return {"kind": kind, "latencies": lat, "burst": time_all}
    finally:
        proc.stop()
        if os.environ.get("BENCH_KEEP_LOG"):
            shutil.copy(proc.log_path, os.environ["BENCH_KEEP_LOG"] + "-" + kind)
        quiet = time.monotonic() + 0.5  # let the leaves pass before the next run
        while time.monotonic() < quiet:
            pump(up, rx, TICK, quiet)
        up.active.clear()


def _ours_ready(topo: Topology) -> bool:
    """The proxy owns its interfaces and IGMP runs: ask the manager who owns the downstream interface."""
    from mgm_testplugins.processes import ManagerProc

    work = topo.workdir
    manager = ManagerProc("probe", [], work / "probe.log", api=f"ipc://{work}/api")
    try:
        state = manager.request("sync", {"stream": "state"}, timeout=0.5)["state"]
    except Exception:
        return False
    names = {p.get("protocol_id") for p in state.get("protocols", [])}
    return {10, 65001, 65002} <= names


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def ensure_igmpproxy() -> None:
    if shutil.which("igmpproxy") or Path(IGMPPROXY).exists():
        return
    print("igmpproxy is missing: apt-get install -y igmpproxy", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "igmpproxy"], env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", "igmpproxy"], env=env, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each runs igmpproxy, then ours (default 2)")
    parser.add_argument("--joins", type=int, default=60, help="joins per run for the latency (default 60)")
    parser.add_argument("--groups", type=int, default=1000, help="groups joined at once (default 1000)")
    parser.add_argument("--igmp-version", type=int, choices=(0, 2, 3), default=0,
                        help="force the receiving host's IGMP version (default 0: the kernel's own, v3, falling back "
                             "to v2 where the querier speaks v2, as igmpproxy's does)")  # fmt: skip
    parser.add_argument("--no-immediate-report", dest="immediate_report", action="store_false",
                        help="write immediate_report = false into our router's configuration: the kernel's "
                             "(delayed) reports only, as igmpproxy")  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    ensure_igmpproxy()
    results: list[dict[str, Any]] = []
    with Topology(prefix="mgmbench") as topo:
        up_ns, rtr = topo.namespaces("up", "rtr")
        up_link = topo.link(up_ns, rtr, "10.71.0.2/24", "10.71.0.1/24")
        rtr.sysctl("net.ipv4.igmp_max_memberships", 2048)
        up = Upstream(up_ns, up_link.a_if)
        base = 0
        try:
            for r in range(args.rounds):
                for kind in ("igmpproxy", "ours"):
                    base += 1
                    # a new receiving host each run: a host remembers an IGMPv2 querier for 400 s
                    rcv = topo.namespace(f"rcv{base}")
                    down = topo.link(rtr, rcv, "10.71.1.1/24", "10.71.1.2/24", a_if="r2", b_if="eth0")
                    rcv.sysctl("net.ipv4.igmp_max_memberships", 2048)
                    if args.igmp_version:
                        rcv.sysctl(f"net.ipv4.conf.{down.b_if}.force_igmp_version", args.igmp_version)
                    rx = Receiver(rcv, down.b_if)
                    try:
                        result = run_once(kind, topo, rtr, up, rx, base, args.joins, args.groups,
                                          args.immediate_report)  # fmt: skip
                    finally:
                        rx.close()
                        topo.namespaces_.remove(rcv)
                        rcv.topology.links.remove(down)
                        subprocess.run(["ip", "netns", "del", rcv.name], check=False)
                        wait_until(lambda: "r2" not in rtr.ip("-o", "link", "show"), 10, "r2 to go")
                    lat = result["latencies"]
                    print(f"round {r + 1} {kind:9}: join->first packet p50 {percentile(lat, 0.5) * 1e3:7.2f} ms, "
                          f"p99 {percentile(lat, 0.99) * 1e3:7.2f} ms; {args.groups} groups all forwarding after "
                          f"{result['burst']:.3f} s", flush=True)  # fmt: skip
                    results.append(result)
        finally:
            up.close()
    summary: dict[str, Any] = {}
    for metric, pick in (("p50", lambda r: percentile(r["latencies"], 0.5)),
                         ("p99", lambda r: percentile(r["latencies"], 0.99)),
                         ("burst", lambda r: r["burst"])):  # fmt: skip
        ours = statistics.median(pick(r) for r in results if r["kind"] == "ours")
        theirs = statistics.median(pick(r) for r in results if r["kind"] == "igmpproxy")
        summary[metric] = {"ours": ours, "igmpproxy": theirs, "ratio": ours / theirs}
    print(json.dumps(summary, indent=2))
    print(f"ratios ours/igmpproxy: latency p50 {summary['p50']['ratio']:.2f}, p99 {summary['p99']['ratio']:.2f} "
          f"(goal <= 1.0); {args.groups} groups {summary['burst']['ratio']:.2f} (goal <= 1.5)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
