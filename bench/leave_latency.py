"""Leave latency through the whole stack at IGMP's default intervals: a host's leave to the last forwarded packet.

Topology (tests/e2e/e2e_stack.py): a sender namespace sending UDP to the
group every `--interval` seconds, a router namespace running `mgm up`
(manager, igmp, the Linux forwarder on `--backend`), one receiver host.
Unlike the end-to-end tests, igmp runs with its defaults (RFC 3376: last
member query interval 1 s, count 2, query response interval 10 s), the
values of mgm.plugins.igmp.router.Parameters.

Each leave: a socket joins the group, the host waits for the first
datagram and then `--settle` seconds (so the join's repeated reports are
over), closes the socket (the kernel sends an IGMPv3 leave, a TO_IN{}
report) and watches its link with a packet socket (kernel timestamps)
until no datagram of the group has come for `--silence` seconds.
Measured: the socket's close to the last datagram that crossed the link,
split at the host's leave report into the host kernel's delay and the
router's part.

The floor in the same run: after a leave the querier must keep forwarding
for the last member query time, LMQT = interval x count = 2 s at the
defaults (RFC 3376 6.4.2), from the report's arrival; the report gives the
router's part against it (router part / LMQT) and the time beyond it,
which is ours (the group timer's expiry, the bus, the forwarder's update).

    sudo .venv/bin/python bench/leave_latency.py [--leaves 12] [--backend auto|mrt|nft]

Needs root; everything it creates is removed at the end, also on Ctrl-C or
failure.  About 4 s a leave.
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
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e"), str(ROOT / "bench")]

from e2e_stack import IGMP_FAST, S1, build  # noqa: E402
from join_latency import (  # noqa: E402
    ETH_P_ALL,
    ETH_P_IP,
    SO_TIMESTAMPNS,
    igmpv3_records,
    percentile,
    resolve_backend,
)
from netns import Topology, send_udp, wait_until  # noqa: E402

from mgm.plugins.igmp import packet as igmp_packet  # noqa: E402
from mgm.plugins.igmp.router import Parameters  # noqa: E402

GROUP, PORT = "239.94.0.1", 6094
IPPROTO_UDP = 17
RECV_TIMEOUT = 10.0


# --- inside the receiver host -------------------------------------------------------------------


def _is_leave_report(data: bytes, group: bytes) -> bool:
    """An IGMPv3 report with an include-mode record for `group` and no sources (a leave)."""
    leaves = (igmp_packet.MODE_IS_INCLUDE, igmp_packet.CHANGE_TO_INCLUDE_MODE)
    return any(r.group == socket.inet_ntoa(group) and r.type in leaves and not r.sources
               for r in igmpv3_records(data))  # fmt: skip


def _frames(sniffer: socket.socket) -> list[tuple[int, bool, bytes]]:
    """(kernel timestamp ns, outgoing, IP packet) of every IPv4 frame queued on the packet socket (drained)."""
    out = []
    while True:
        try:
            data, ancillary, _flags, address = sniffer.recvmsg(2048, 256, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return out
        stamp = next((struct.unpack("=qq", d[:16]) for lvl, kind, d in ancillary
                      if lvl == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS), None)  # fmt: skip
        if stamp is not None and address[1] == ETH_P_IP and len(data) >= 20:
            out.append((stamp[0] * 1_000_000_000 + stamp[1], address[2] == socket.PACKET_OUTGOING, data))


def measure(group: str, port: int, leaves: int, settle: float, silence: float, timeout: float) -> dict[str, Any]:
    """Run in the receiver host: `leaves` timed leaves; seconds from close to the last datagram, split."""
    if_index = socket.if_nametoindex("eth0")
    sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sniffer.bind(("eth0", ETH_P_ALL))
    sniffer.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    packed = socket.inet_aton(group)
    total: list[float] = []
    host: list[float] = []
    router: list[float] = []
    for _ in range(leaves):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((group, port))
        sock.settimeout(RECV_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, struct.pack("=4s4si", packed, bytes(4), if_index))
        sock.recv(2048)
        time.sleep(settle)
        _frames(sniffer)
        closed = time.time_ns()
        sock.close()  # the host's last socket of the group: the kernel sends a leave
        last = report = None
        quiet_since = time.monotonic()
        deadline = quiet_since + timeout
        while time.monotonic() - quiet_since < silence:
            if time.monotonic() > deadline:
                raise TimeoutError(f"forwarding did not stop within {timeout} s of a leave")
            select.select([sniffer], [], [], 0.05)
            for at, outgoing, data in _frames(sniffer):
                if at < closed:
                    continue
                if outgoing and report is None and _is_leave_report(data, packed):
                    report = at
                elif not outgoing and data[9] == IPPROTO_UDP and data[16:20] == packed:
                    last = at
                    quiet_since = time.monotonic()
        if last is None or report is None:
            raise RuntimeError(f"a leave without {'a datagram after it' if last is None else 'a leave report'}")
        total.append((last - closed) / 1e9)
        host.append((report - closed) / 1e9)
        router.append((last - report) / 1e9)
    sniffer.close()
    return {"total": total, "host": host, "router": router}


# --- the run ----------------------------------------------------------------------------------------


def line(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{name:<40} n={len(ms):<3} p50 {percentile(ms, 50):8.1f} ms   max {max(ms):8.1f} ms   "
            f"min {min(ms):8.1f} ms")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--leaves", type=int, default=12, help="timed leaves")
    parser.add_argument("--interval", type=float, default=0.001, help="seconds between two sent datagrams")
    parser.add_argument("--settle", type=float, default=1.2,
                        help="seconds joined before the leave (the join report is repeated within 1 s)")  # fmt: skip
    parser.add_argument("--silence", type=float, default=0.5,
                        help="seconds without a datagram on the link that mean forwarding stopped")  # fmt: skip
    parser.add_argument("--backend", default="auto", choices=("auto", "mrt", "nft"),
                        help="the forwarder's backend (auto: MRT where the kernel has it, else nftables)")  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("leave_latency: needs root (network namespaces)", file=sys.stderr)
        return 2
    backend = resolve_backend(args.backend)
    defaults = Parameters()
    igmp = {key: getattr(defaults, key) for key in IGMP_FAST}  # the e2e stack's fast intervals back to the defaults
    lmqt = defaults.last_member_query_interval * defaults.last_member_query_count
    budget = 30.0 + args.leaves * (args.settle + args.silence + 10.0)
    started = time.monotonic()
    with Topology(prefix="mgmbench") as topology:
        stack = build(topology, receivers=1, backend=backend, igmp=igmp, log_level="info")
        count = int(budget / args.interval)  # more than the run can use: the topology's end stops it
        stack.sender.spawn(send_udp, GROUP, PORT, count, interval=args.interval, source=S1, name="send")
        wait_until(lambda: stack.kernel_oil(S1, GROUP) == set(), 10, "a negative MFE before the first join")
        result = stack.hosts[0].call(measure, GROUP, PORT, args.leaves, args.settle, args.silence, 10.0,
                                     timeout=budget)  # fmt: skip
        stack.alive()
    print("leave latency: a host's leave (its socket's close) to the last datagram forwarded onto its link")
    print(f"  setup: sender -> router (igmp v3 at its defaults {igmp}, Linux forwarder, backend {backend}) -> host; "
          f"one datagram every {args.interval * 1000:g} ms; LMQT {lmqt:g} s")  # fmt: skip
    print(f"  machine: Linux {platform.release()}, Python {platform.python_version()}, {os.cpu_count()} CPU(s); "
          f"run {time.monotonic() - started:.0f} s")  # fmt: skip
    print("  " + line("close -> last datagram (goal <= 2.5 s)", result["total"]))
    print("  " + line("close -> host's leave report", result["host"]))
    print("  " + line("leave report -> last datagram (router)", result["router"]))
    beyond = [r - lmqt for r in result["router"]]
    print("  " + line("router beyond LMQT (ours)", beyond))
    print(f"  ratio of medians router part / LMQT: {statistics.median(result['router']) / lmqt:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
