"""Join latency through the whole stack: a host's IP_ADD_MEMBERSHIP to the first packet it receives.

Topology (tests/e2e/e2e_stack.py, the end-to-end tests' own): a sender
namespace sending UDP to the group every `--interval` seconds, a router
namespace running `mgm up` (manager, igmp, Linux forwarder), a receiver
host.  The sender starts before any receiver, so the router holds a
negative MFE (empty OIL) for the flow when the joins come, as in the field.

Each join: a fresh socket joins the group (the host's kernel sends an
IGMPv3 report at once), and the time to its first datagram is recorded;
then the socket closes (a leave) and the host waits until no datagram of
the group has crossed its link for `--silence` seconds (a packet socket
watches), so the next join starts from a router that has stopped
forwarding.  The report gives p50 and p99 over `--joins` joins.

Baseline, measured in the same run: the same join while another socket on
the host keeps the group joined, so the router already forwards; that is
the floor set by the send interval and the host's own stack, and the report
gives the ratio of the medians.

    sudo /work/venv/bin/python bench/join_latency.py [--joins 60] [--interval 0.001]

Needs root (network namespaces); everything it creates is removed at the end,
also on Ctrl-C or failure.  Run time: about a second per join.
"""

from __future__ import annotations

import argparse
import os
import platform
import select
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]

from e2e_stack import IGMP_FAST, S1, build  # noqa: E402
from netns import Topology, send_udp, wait_until  # noqa: E402

GROUP, PORT = "239.92.0.1", 6092
ETH_P_IP = 0x0800
RECV_TIMEOUT = 10.0
"""Seconds a join may wait for its first packet before the run is declared broken."""


# --- inside the receiver host -------------------------------------------------------------------


def _group_frames(sniffer: socket.socket, group: bytes) -> int:
    """Datagrams to `group` queued on the packet socket (drained)."""
    seen = 0
    while True:
        try:
            data = sniffer.recv(2048, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return seen
        if len(data) >= 20 and data[16:20] == group:
            seen += 1


def _wait_silence(sniffer: socket.socket, group: bytes, silence: float, timeout: float) -> None:
    """Until no datagram to `group` crossed the link for `silence` seconds (the router stopped forwarding)."""
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sniffer], [], [], 0.02)
        if ready and _group_frames(sniffer, group):
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= silence:
            return
    raise TimeoutError(f"forwarding did not stop within {timeout} s of a leave")


def _join_and_wait(group: str, port: int, if_index: int) -> tuple[float, socket.socket]:
    """Seconds from IP_ADD_MEMBERSHIP to the first datagram, and the (still joined) socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((group, port))
    sock.settimeout(RECV_TIMEOUT)
    mreq = struct.pack("=4s4si", socket.inet_aton(group), bytes(4), if_index)
    start = time.perf_counter()
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    try:
        sock.recv(2048)
    except TimeoutError:
        sock.close()
        raise TimeoutError(f"no datagram within {RECV_TIMEOUT} s of a join") from None
    return time.perf_counter() - start, sock


def measure(group: str, port: int, joins: int, baseline: int, silence: float, leave_timeout: float) -> dict[str, Any]:
    """Run in the receiver host: `joins` timed joins from a stopped router, then `baseline` joins with it on."""
    ifname = "eth0"
    if_index = socket.if_nametoindex(ifname)
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sniffer.bind((ifname, ETH_P_IP))
    packed = socket.inet_aton(group)
    cold: list[float] = []
    for _ in range(joins):
        _wait_silence(sniffer, packed, silence, leave_timeout)
        latency, sock = _join_and_wait(group, port, if_index)
        cold.append(latency)
        sock.close()  # the last socket of the group on this host: the kernel sends a leave
    keeper = _join_and_wait(group, port, if_index)[1]
    warm: list[float] = []
    for _ in range(baseline):
        latency, sock = _join_and_wait(group, port, if_index)
        warm.append(latency)
        sock.close()  # the keeper stays joined: no leave, the router goes on forwarding
    keeper.close()
    sniffer.close()
    return {"cold": cold, "warm": warm}


# --- the run ----------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def report(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{name:<36} n={len(ms):<4} p50 {percentile(ms, 50):8.2f} ms   p99 {percentile(ms, 99):8.2f} ms   "
            f"min {min(ms):7.2f}   max {max(ms):8.2f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=60, help="timed joins from a stopped router (min 50)")
    parser.add_argument("--baseline", type=int, default=60, help="joins while the router already forwards")
    parser.add_argument("--interval", type=float, default=0.001, help="seconds between two sent datagrams")
    parser.add_argument("--silence", type=float, default=0.2,
                        help="seconds without a datagram on the link that mean forwarding stopped")  # fmt: skip
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args()
    if args.joins < 50:
        parser.error("--joins: at least 50, for a p99 that means something")
    if os.geteuid() != 0:
        print("join_latency: needs root (network namespaces)", file=sys.stderr)
        return 2
    budget = 30.0 + args.joins * 3.0 + args.baseline * 0.5
    started = time.monotonic()
    with Topology(prefix="mgmbench") as topology:
        stack = build(topology, receivers=1, log_level=args.log_level)
        count = int(budget / args.interval)  # more than the run can use: the topology's end stops it
        stack.sender.spawn(send_udp, GROUP, PORT, count, interval=args.interval, source=S1, name="send")
        wait_until(lambda: stack.kernel_oil(S1, GROUP) == set(), 10, "a negative MFE before the first join")
        leave_timeout = 10.0
        result = stack.hosts[0].call(measure, GROUP, PORT, args.joins, args.baseline, args.silence, leave_timeout,
                                     timeout=budget)  # fmt: skip
        stack.alive()
    cold, warm = result["cold"], result["warm"]
    print("join latency: IP_ADD_MEMBERSHIP on a host to its first datagram through a router running `mgm up`")
    print(f"  setup: sender -> router (igmp v3 + Linux forwarder) -> host, veth links, one datagram every "
          f"{args.interval * 1000:g} ms; igmp {IGMP_FAST}; forwarder counters 0.2 s; log level {args.log_level}; "
          f"leave then {args.silence:g} s of silence between joins")  # fmt: skip
    print(f"  machine: Linux {platform.release()}, Python {platform.python_version()}, {os.cpu_count()} CPU(s); "
          f"run {time.monotonic() - started:.0f} s")  # fmt: skip
    print("  " + report("join (router not forwarding)", cold))
    print("  " + report("baseline (router already forwarding)", warm))
    print(f"  ratio of medians join/baseline: {statistics.median(cold) / statistics.median(warm):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
