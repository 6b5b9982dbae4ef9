"""Join latency through the whole stack: a host's IP_ADD_MEMBERSHIP to the first packet it receives.

Topology (tests/e2e/e2e_stack.py, the end-to-end tests' own): a sender
namespace sending UDP to the group every `--interval` seconds, a router
namespace running `mgm up` (manager, igmp, Linux forwarder on the backend
`--backend` names: auto takes MRT where the kernel has IP_MROUTE, else
nftables, as the forwarder's own "auto" does), a receiver host.  The
sender starts before any receiver, so the router holds a negative MFE
(empty OIL) for the flow when the joins come, as in the field.

Each join: a fresh socket joins the group (the host's kernel sends an
IGMPv3 report at once), and the time to its first datagram is recorded;
then the socket closes (a leave) and the host waits until no datagram of
the group has crossed its link for `--silence` seconds (a packet socket
watches), so the next join starts from a router that has stopped
forwarding.  The report gives p50 and p99 over `--joins` joins.

Where a join's time goes: a packet socket on the host's link (ETH_P_ALL,
kernel timestamps) sees the host's IGMPv3 join report leave and the first
datagram come in, so the report splits each join into the host kernel's
delay before it reports (Linux arms its report timer two jiffies ahead,
8 ms at HZ=250; with timer latency 8-17 ms seen here) and the router's
reaction, report on the wire to the first datagram on the wire, which is
what `mgm up` controls.  `--keep-log FILE --log-level debug` keeps the log
of `mgm up` for a timeline inside the router.

Baseline, measured in the same run: the same join while another socket on
the host keeps the group joined, so the router already forwards; that is
the floor set by the send interval and the host's own stack, and the report
gives the ratio of the medians.

    sudo .venv/bin/python bench/join_latency.py [--joins 60] [--interval 0.001] [--backend auto|mrt|nft]

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

from mgm.plugins.igmp import packet as igmp_packet  # noqa: E402
from mgm.plugins.igmp.packet import GroupRecord  # noqa: E402

GROUP, PORT = "239.92.0.1", 6092
ETH_P_IP, ETH_P_ALL = 0x0800, 0x0003
SO_TIMESTAMPNS = 35  # Linux; not in Python's socket module
IPPROTO_IGMP = 2
RECV_TIMEOUT = 10.0
"""Seconds a join may wait for its first packet before the run is declared broken."""


# --- inside the receiver host -------------------------------------------------------------------


def _group_frames(sniffer: socket.socket, group: bytes) -> int:
    """Datagrams to `group` queued on the packet socket (drained)."""
    seen = 0
    while True:
        try:
            data, address = sniffer.recvfrom(2048, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return seen
        if address[1] == ETH_P_IP and len(data) >= 20 and data[16:20] == group:
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


def _join_and_wait(group: str, port: int, if_index: int) -> tuple[float, socket.socket, int]:
    """Seconds from IP_ADD_MEMBERSHIP to the first datagram, the (still joined) socket, and the join's
    CLOCK_REALTIME in ns (the clock of the packet socket's timestamps)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((group, port))
    sock.settimeout(RECV_TIMEOUT)
    mreq = struct.pack("=4s4si", socket.inet_aton(group), bytes(4), if_index)
    wall = time.time_ns()
    start = time.perf_counter()
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    try:
        sock.recv(2048)
    except TimeoutError:
        sock.close()
        raise TimeoutError(f"no datagram within {RECV_TIMEOUT} s of a join") from None
    return time.perf_counter() - start, sock, wall


def igmpv3_records(data: bytes) -> tuple[GroupRecord, ...]:
    """The group records of an IPv4 packet carrying an IGMPv3 report, read by igmp's own decoder; () otherwise."""
    ihl = (data[0] & 0x0F) * 4
    if len(data) < ihl + 8 or data[9] != IPPROTO_IGMP:
        return ()
    try:
        message = igmp_packet.parse(data[ihl : struct.unpack("!H", data[2:4])[0]])
    except igmp_packet.MalformedPacket:
        return ()
    return message.records if isinstance(message, igmp_packet.V3Report) else ()


def _is_join_report(data: bytes, group: bytes) -> bool:
    """An IGMPv3 report with an exclude-mode record (a join) for `group`."""
    joins = (igmp_packet.MODE_IS_EXCLUDE, igmp_packet.CHANGE_TO_EXCLUDE_MODE)
    return any(r.group == socket.inet_ntoa(group) and r.type in joins for r in igmpv3_records(data))


def _split(sniffer: socket.socket, group: bytes, joined_ns: int) -> tuple[float, float] | None:
    """(join -> the host's report on the wire, that report -> the first datagram back on the wire) in seconds,
    from the packet socket's kernel timestamps; None when either frame is missing."""
    report = first = None
    while True:
        try:
            data, ancillary, _flags, address = sniffer.recvmsg(2048, 256, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        stamp = next((struct.unpack("=qq", d[:16]) for lvl, kind, d in ancillary
                      if lvl == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS), None)  # fmt: skip
        if stamp is None or address[1] != ETH_P_IP or len(data) < 20:
            continue
        at = stamp[0] * 1_000_000_000 + stamp[1]
        if at < joined_ns:
            continue
        if report is None and address[2] == socket.PACKET_OUTGOING and _is_join_report(data, group):
            report = at
        elif first is None and address[2] != socket.PACKET_OUTGOING and data[16:20] == group:
            first = at
    if report is None or first is None:
        return None
    return (report - joined_ns) / 1e9, (first - report) / 1e9


def measure(group: str, port: int, joins: int, baseline: int, silence: float, leave_timeout: float) -> dict[str, Any]:
    """Run in the receiver host: `joins` timed joins from a stopped router, then `baseline` joins with it on."""
    ifname = "eth0"
    if_index = socket.if_nametoindex(ifname)
    # ETH_P_ALL: only such packet sockets see the frames the host sends (its reports) as well
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sniffer.bind((ifname, ETH_P_ALL))
    sniffer.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    packed = socket.inet_aton(group)
    cold: list[float] = []
    host_report: list[float] = []  # join -> the host's report leaves (the host kernel's delay)
    router: list[float] = []  # the report leaves -> the first datagram arrives (the router's reaction)
    for _ in range(joins):
        _wait_silence(sniffer, packed, silence, leave_timeout)
        latency, sock, joined_ns = _join_and_wait(group, port, if_index)
        cold.append(latency)
        split = _split(sniffer, packed, joined_ns)
        if split is not None:
            host_report.append(split[0])
            router.append(split[1])
        sock.close()  # the last socket of the group on this host: the kernel sends a leave
    keeper = _join_and_wait(group, port, if_index)[1]
    warm: list[float] = []
    for _ in range(baseline):
        latency, sock, _ = _join_and_wait(group, port, if_index)
        warm.append(latency)
        sock.close()  # the keeper stays joined: no leave, the router goes on forwarding
    keeper.close()
    sniffer.close()
    return {"cold": cold, "warm": warm, "host_report": host_report, "router": router}


# --- the run ----------------------------------------------------------------------------------


def resolve_backend(backend: str) -> str:
    """The backend ("mrt" or "nft") for `backend`: auto is MRT where the kernel has it, else nft."""
    if backend != "auto":
        return backend
    return "mrt" if Path("/proc/net/ip_mr_vif").exists() else "nft"


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
    parser.add_argument("--backend", default="auto", choices=("auto", "mrt", "nft"),
                        help="the forwarder's backend (auto: MRT where the kernel has it, else nftables)")  # fmt: skip
    parser.add_argument("--keep-log", type=Path, default=None, metavar="FILE",
                        help="copy the log of `mgm up` here before the namespaces go (with --log-level debug: "
                             "a timeline of each join)")  # fmt: skip
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args()
    if args.joins < 50:
        parser.error("--joins: at least 50, for a p99 that means something")
    if os.geteuid() != 0:
        print("join_latency: needs root (network namespaces)", file=sys.stderr)
        return 2
    backend = resolve_backend(args.backend)
    budget = 30.0 + args.joins * 3.0 + args.baseline * 0.5
    started = time.monotonic()
    with Topology(prefix="mgmbench") as topology:
        stack = build(topology, receivers=1, backend=backend, log_level=args.log_level)
        count = int(budget / args.interval)  # more than the run can use: the topology's end stops it
        stack.sender.spawn(send_udp, GROUP, PORT, count, interval=args.interval, source=S1, name="send")
        wait_until(lambda: stack.kernel_oil(S1, GROUP) == set(), 10, "a negative MFE before the first join")
        leave_timeout = 10.0
        result = stack.hosts[0].call(measure, GROUP, PORT, args.joins, args.baseline, args.silence, leave_timeout,
                                     timeout=budget)  # fmt: skip
        stack.alive()
        if args.keep_log is not None:
            args.keep_log.write_text(stack.up.log())
    cold, warm = result["cold"], result["warm"]
    print("join latency: IP_ADD_MEMBERSHIP on a host to its first datagram through a router running `mgm up`")
    print(f"  setup: sender -> router (igmp v3 + Linux forwarder, backend {backend}) -> host, veth links, "
          f"one datagram every {args.interval * 1000:g} ms; igmp {IGMP_FAST}; forwarder counters 0.2 s; "
          f"log level {args.log_level}; leave then {args.silence:g} s of silence between joins")  # fmt: skip
    print(f"  machine: Linux {platform.release()}, Python {platform.python_version()}, {os.cpu_count()} CPU(s); "
          f"run {time.monotonic() - started:.0f} s")  # fmt: skip
    print("  " + report("join (router not forwarding)", cold))
    print("  " + report("baseline (router already forwarding)", warm))
    if result["router"]:
        print("  where a join's time goes, from the host's packet socket (kernel timestamps):")
        print("    " + report("join -> host's report leaves", result["host_report"]))
        print("    " + report("report leaves -> first datagram in", result["router"]))
    print(f"  ratio of medians join/baseline: {statistics.median(cold) / statistics.median(warm):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
