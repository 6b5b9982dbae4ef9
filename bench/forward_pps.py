"""Packets per second the router forwards: multicast through `mgm up`, against plain unicast IP forwarding.

Topology (tests/e2e/e2e_stack.py): a sender namespace, a router namespace
running `mgm up` (manager, igmp, the Linux forwarder on `--backend`), one
receiver host joined to the group.  The router's kernel also forwards
unicast (net.ipv4.ip_forward=1 in its namespace), which is the baseline.

Alternating `--rounds` times, for `--seconds` each, the sender blasts
small UDP datagrams (`--size` bytes of payload; sendmmsg, 256 a call, as
fast as it can) either to the group (forwarded by the backend: MRT's
multicast routing table, or nftables' dup) or to the host's own address
(forwarded by the kernel's unicast routing); the same socket options and
payload.  Counted: packets received on the host's interface (its rx
counter) per second, once the blast has run for half a second; also
what the sender offered.  The host has one UDP socket bound to the port
and joined to the group that never reads, so both kinds end alike.  The
report: median pps of each, and the ratio multicast/unicast.

On veth links a packet crosses all three namespaces in the sending CPU's
softirq, so the sender, the router and the host share the machine's
CPUs; the ratio compares the two forwarding paths under the same load.

    sudo .venv/bin/python bench/forward_pps.py [--backend auto|mrt|nft] [--rounds 3] [--seconds 3] [--size 32]

Needs root; everything it creates (namespaces, processes) is removed at the
end, also on Ctrl-C or failure.  About 40 s.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e"), str(ROOT / "bench")]

from e2e_stack import S1, Stack, build  # noqa: E402
from join_latency import resolve_backend  # noqa: E402
from netns import Namespace, NsProcess, Topology, wait_until  # noqa: E402

GROUP, PORT = "239.93.0.1", 6093
HOST = "10.90.2.2"
"""The receiving host's address (e2e_stack: host n has 10.90.(n+2).2)."""
BATCH = 256
WARMUP = 0.5


# --- inside the sender ---------------------------------------------------------------------------


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]  # fmt: skip


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def blast(dst: str, port: int, size: int, ttl: int = 8, source: str = S1) -> None:
    """Send datagrams to (dst, port) as fast as sendmmsg goes, until killed; print the count every 0.1 s."""
    libc = ctypes.CDLL(None, use_errno=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    sock.bind((source, 0))
    sock.connect((dst, port))
    payload = ctypes.create_string_buffer(b"m" * size, size)
    iov = _Iovec(ctypes.cast(payload, ctypes.c_void_p), size)
    msgs = (_Mmsghdr * BATCH)()
    for m in msgs:
        m.hdr.iov = ctypes.pointer(iov)
        m.hdr.iovlen = 1
    sent, report = 0, time.monotonic()
    while True:
        n = libc.sendmmsg(sock.fileno(), msgs, BATCH, 0)
        if n > 0:
            sent += n
        now = time.monotonic()
        if now >= report:
            print(json.dumps({"sent": sent, "t": now}), flush=True)
            report = now + 0.1


# --- the run ---------------------------------------------------------------------------------------


def rx_packets(ns: Namespace, ifname: str) -> int:
    stats = json.loads(ns.ip("-s", "-j", "link", "show", "dev", ifname))[0]["stats64"]
    return int(stats["rx"]["packets"])


def last_sent(proc: NsProcess) -> int:
    lines = [line for line in proc.log().splitlines() if line.startswith("{")]
    return int(json.loads(lines[-1])["sent"]) if lines else 0


def one_run(stack: Stack, dst: str, size: int, seconds: float) -> tuple[float, float]:
    """(received pps at the host, offered pps at the sender) over `seconds` of a blast to `dst`."""
    sender, host = stack.sender, stack.hosts[0]
    proc = sender.spawn(blast, dst, PORT, size, name=f"blast-{dst}")
    try:
        wait_until(lambda: last_sent(proc) > 0, 10, "the blaster to start")
        time.sleep(WARMUP)
        rx0, tx0, t0 = rx_packets(host, "eth0"), last_sent(proc), time.monotonic()
        time.sleep(seconds)
        rx1, tx1, t1 = rx_packets(host, "eth0"), last_sent(proc), time.monotonic()
    finally:
        proc.stop()
    return (rx1 - rx0) / (t1 - t0), (tx1 - tx0) / (t1 - t0)


def hold(group: str, port: int) -> None:
    """In the host: one socket bound to `port`, joined to `group`, never reading; until killed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.bind(("0.0.0.0", port))
    mreq = socket.inet_aton(group) + bytes(4) + socket.if_nametoindex("eth0").to_bytes(4, sys.byteorder)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    print(json.dumps({"event": "joined"}), flush=True)
    while True:
        time.sleep(3600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto", choices=("auto", "mrt", "nft"),
                        help="the forwarder's backend (auto: MRT where the kernel has it, else nftables)")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="blasts of each kind, alternating")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds counted per blast")
    parser.add_argument("--size", type=int, default=32, help="UDP payload bytes")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("forward_pps: needs root (network namespaces)", file=sys.stderr)
        return 2
    backend = resolve_backend(args.backend)
    started = time.monotonic()
    mcast: list[tuple[float, float]] = []
    ucast: list[tuple[float, float]] = []
    with Topology(prefix="mgmbench") as topology:
        stack = build(topology, receivers=1, backend=backend, log_level="info")
        stack.router.sysctl("net.ipv4.ip_forward", 1)
        stack.sender.ip("route", "replace", "10.90.0.0/16", "via", "10.90.1.1")
        holder = stack.hosts[0].spawn(hold, GROUP, PORT, name="hold")
        wait_until(lambda: "joined" in holder.log(), 10, "the host's socket to join")
        # The group's entry exists once the first multicast packet made it: a short blast first, not counted.
        one_run(stack, GROUP, args.size, 0.5)
        wait_until(lambda: stack.kernel_oil(S1, GROUP) == {"r2"}, 10, "the router forwarding the group to the host")
        for _ in range(args.rounds):
            ucast.append(one_run(stack, HOST, args.size, args.seconds))
            mcast.append(one_run(stack, GROUP, args.size, args.seconds))
        stack.alive()
        assert stack.kernel_oil(S1, GROUP) == {"r2"}, "the multicast entry changed during the run"
    print(f"forwarding rate: {args.size}-byte UDP payloads blasted through one router, received pps at one host")
    print(f"  backend {backend} (multicast, through `mgm up`) against unicast IP forwarding by the same router "
          f"namespace; {args.rounds} alternating blast(s) of {args.seconds:g} s each")  # fmt: skip
    if backend == "nft" and not Path("/proc/net/ip_mr_vif").exists():
        print("  MRT: this kernel has no IP_MROUTE (no /proc/net/ip_mr_vif), so its rate cannot be measured here")
    print(f"  machine: Linux {platform.release()}, Python {platform.python_version()}, {os.cpu_count()} CPU(s); "
          f"run {time.monotonic() - started:.0f} s")  # fmt: skip
    for label, runs in ((f"multicast ({backend})", mcast), ("unicast (baseline)", ucast)):
        rx = statistics.median(r[0] for r in runs)
        tx = statistics.median(r[1] for r in runs)
        every = ", ".join(f"{r[0] / 1000:.0f}k" for r in runs)
        print(f"  {label:<20} received {rx:10,.0f} pps (rounds: {every}); sender offered {tx:10,.0f} pps")
    ratio = statistics.median(r[0] for r in mcast) / statistics.median(r[0] for r in ucast)
    print(f"  ratio of medians multicast/unicast: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
