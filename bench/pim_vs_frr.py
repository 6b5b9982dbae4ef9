"""mgmbus as PIM last-hop router against FRR's pimd as last-hop router in the same lab (issue 12's benchmark).

Two labs, built alike in namespace sets of their own (the topology of
tests/interop/test_interop_pim.py's `last_hop_behind_frr`)::

    src 10.81.0.2 -- 10.81.0.1 FRR (RP 10.80.0.1, first hop) 10.80.0.1 -- 10.80.0.2 LHR 10.82.0.1 -- 10.82.0.2 host

The last-hop router (LHR) is `mgm up` (igmp on the host link, pim on the
transit link with FRR's RP, forwarder backend mrt) in one lab and FRR
(zebra + pimd: ``ip pim`` on both links, ``ip igmp`` on the host link, the
same RP) in the other; the source, the RP and the host are identical.  Both
labs run the whole time (each source sends a datagram every `--interval`
seconds, continuously, from before the first join), and the rounds
alternate between them, the first lab of a round alternating too, so a
change of load on the machine hits both variants.

Both LHRs stay on the shared tree (mgmbus ``spt_switchover = "never"``,
FRR ``ip pim spt-switchover infinity-and-beyond``): with the RP on the
first-hop router the shortest-path tree takes the same links, and FRR 8.4
as LHR after a switchover keeps the (*,G) joined with an (S,G,rpt) prune
for the join holdtime after the last leave (seen in our FRR lab), so no
prune of G would come to time.  Same PIM timers on both LHRs (hello 2 s,
holdtime 7 s, join/prune interval 5 s), and the same IGMPv3 querier
values on the host link: query interval 125 s, query response interval
1 s, last member query interval `--lmqi` (0.2 s) and count 2 (FRR takes
deciseconds).  The host is forced to IGMPv3.

Each round, in the lab's host (one long-running agent process there, so no
Python start-up is inside a measurement):

- join: a socket joins G (IP_ADD_MEMBERSHIP; the host kernel sends its
  IGMPv3 report) and the time to its first datagram is taken from the
  clock before the join to the datagram's kernel receive timestamp
  (SO_TIMESTAMPNS);
- the group stays joined `--settle` seconds and until the LHR's (*,G) Join
  has reached the RP;
- leave: the socket closes (the kernel sends an IGMPv3 TO_IN{} report), and
  the time to the LHR's Join/Prune carrying a prune of G is taken at the
  RP: a packet socket on the RP's transit interface (inside FRR's
  namespace) timestamps every PIM Join/Prune from the LHR as it arrives
  (SO_TIMESTAMPNS, before IP even sees it);
- the round ends once the RP holds no join of G (``show ip pim join``),
  so the next join starts from a router that does not forward.

Also reported: join -> the LHR's (*,G) Join at the RP (the upstream half of a
join).  The report gives p50 and p99 (nearest rank; with few rounds p99 is
the largest) per variant, and the ratios mgmbus/FRR of the p50s and p99s;
issue 12's goals: join -> first packet <= 1.0, leave -> prune <= 1.0.  An
untimed warm-up round per lab comes first.

The kernel must have IP_MROUTE (FRR's pimd and the mrt backend need it); on
this project's development machine it has not, so run it in QEMU, where
absolute times mean little (a software CPU, about 10x slower) and the
ratios are what counts::

    scripts/qemu env MGM_TEST_TIME_SCALE=10 .venv/bin/python bench/pim_vs_frr.py [--rounds 5] \\
        [--interval 0.001] [--settle 2] [--lmqi 0.2]

Needs root and FRR (scripts/system-packages installs it); everything it
creates (namespaces, processes) is removed at the end, also on Ctrl-C or
failure.  In QEMU: about 1.5 min of set-up, then about 1 min a round (both
variants, the warm-up included): 5-6 min for ``--rounds 4``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "interop"), str(ROOT / "tests" / "plugins"),
                str(ROOT / "bench")]  # fmt: skip

from frr import FrrRouter, frr_missing, pimd_config  # noqa: E402
from join_latency import ETH_P_IP, SO_TIMESTAMPNS, percentile  # noqa: E402
from netns import Namespace, NsProcess, Topology, send_udp, wait_until  # noqa: E402
from test_interop_pim import FAST_PIM, WAIT, frr_joined, routed_hosts, start_mgm  # noqa: E402

from mgm.plugins.pim import packet as pim_packet  # noqa: E402
from mgm.plugins.testing import scaled  # noqa: E402

GROUP, PORT = "239.80.1.1", 5080
SOURCE, RP, LHR_TRANSIT = "10.81.0.2", "10.80.0.1", "10.80.0.2"
RP_RANGE = "239.0.0.0/8"
IPPROTO_PIM = 103
RECV_TIMEOUT = 20.0
"""Seconds (real, inside the host) a join may wait for its first datagram."""
ROUND_WAIT = 30.0
"""Seconds (times MGM_TEST_TIME_SCALE) for each step of a round."""
HELLO, HOLDTIME, JOIN_PRUNE_INTERVAL = 2, 7, 5
"""The PIM timers both last-hop routers get (FAST_PIM's: mgmbus's hello holdtime is 3.5 x the period)."""
QUERY_INTERVAL, QUERY_RESPONSE_INTERVAL, LAST_MEMBER_QUERY_COUNT = 125, 1.0, 2
"""The IGMP querier values both last-hop routers get (with `--lmqi`)."""
VARIANTS = ("mgmbus", "frr")


# --- inside the namespaces ------------------------------------------------------------------------


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The SO_TIMESTAMPNS of a received packet (CLOCK_REALTIME, ns), None if the kernel gave none."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = struct.unpack("=qq", data[:16])
            return seconds * 1_000_000_000 + nanoseconds
    return None


def host_agent(commands: str, group: str, port: int, ifname: str) -> None:
    """In the host: read ``join`` and ``leave`` lines from the FIFO `commands`, print one JSON line per step.

    join: ``{"event": "joined", "joined_ns", "first_ns"}`` (the clock right before IP_ADD_MEMBERSHIP, the first
    datagram's kernel timestamp) or ``{"event": "error"}``; leave: ``{"event": "left", "left_ns"}`` (the clock
    right before the socket's close, which makes the kernel send the leave)."""
    if_index = socket.if_nametoindex(ifname)
    mreq = struct.pack("=4s4si", socket.inet_aton(group), bytes(4), if_index)
    sock: socket.socket | None = None
    print(json.dumps({"event": "ready"}), flush=True)
    with open(commands) as lines:
        for line in lines:
            command = line.strip()
            if command == "join" and sock is None:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                sock.bind((group, port))
                sock.settimeout(RECV_TIMEOUT)
                joined = time.time_ns()
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
                try:
                    _data, ancillary, _flags, _address = sock.recvmsg(2048, 256)
                except TimeoutError:
                    print(json.dumps({"event": "error", "why": f"no datagram within {RECV_TIMEOUT} s"}), flush=True)
                    continue
                first = _stamp(ancillary)
                print(json.dumps({"event": "joined", "joined_ns": joined, "first_ns": first}), flush=True)
            elif command == "leave" and sock is not None:
                left = time.time_ns()
                sock.close()  # the host's only member of the group: the kernel sends an IGMPv3 leave
                sock = None
                print(json.dumps({"event": "left", "left_ns": left}), flush=True)
            else:
                print(json.dumps({"event": "error", "why": f"unexpected command {command!r}"}), flush=True)


def capture_join_prunes(ifname: str, sender: str, group: str) -> None:
    """In the RP: print one JSON line per Join/Prune from `sender` arriving on `ifname` that names `group`:
    ``{"at": kernel receive timestamp ns, "joins": [...], "prunes": [...]}`` (sources as "*" or addresses)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.bind((ifname, ETH_P_IP))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sender_raw = socket.inet_aton(sender)
    print(json.dumps({"event": "ready"}), flush=True)
    while True:
        data, ancillary, _flags, address = sock.recvmsg(65535, 256)
        if address[2] == socket.PACKET_OUTGOING or len(data) < 20 or data[9] != IPPROTO_PIM:
            continue
        if data[12:16] != sender_raw:
            continue
        header_len = (data[0] & 0x0F) * 4
        try:
            message = pim_packet.parse(data[header_len : struct.unpack("!H", data[2:4])[0]])
        except pim_packet.MalformedPacket:
            continue
        if not isinstance(message, pim_packet.JoinPrune):
            continue
        for entry in message.groups:
            if entry.group.address == group:
                joins = ["*" if s.wildcard else s.address for s in entry.joins]
                prunes = ["*" if s.wildcard else s.address for s in entry.prunes]
                print(json.dumps({"event": "jp", "at": _stamp(ancillary), "joins": joins, "prunes": prunes}),
                      flush=True)  # fmt: skip


# --- the labs -------------------------------------------------------------------------------------


def open_fifo(path: Path, reader: NsProcess) -> IO[str]:
    """The write end of the FIFO `path` once `reader` has opened it (a blocking open could wait forever)."""

    def opened() -> int | None:
        if not reader.alive():
            raise RuntimeError(f"{reader.name} exited:\n{reader.log()}")
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            return None

    fd = wait_until(opened, WAIT, f"{reader.name} to open {path}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "w")


def lhr_frr_config(transit_if: str, host_if: str, lmqi: float) -> str:
    """pimd.conf of FRR as last-hop router: the RP comes later (`Lab.build`), once FRR has a PIM neighbour
    towards it (pimd 8.4 keeps an RP it cannot RPF to unreachable)."""
    pim = f" ip pim\n ip pim hello {HELLO} {HOLDTIME}\n"
    return (
        "ip pim spt-switchover infinity-and-beyond\n"
        f"ip pim join-prune-interval {JOIN_PRUNE_INTERVAL}\n"
        f"interface {transit_if}\n{pim}exit\n"
        f"interface {host_if}\n{pim}"
        " ip igmp\n ip igmp version 3\n"
        f" ip igmp query-interval {QUERY_INTERVAL}\n"
        f" ip igmp query-max-response-time {round(QUERY_RESPONSE_INTERVAL * 10)}\n"
        f" ip igmp last-member-query-interval {round(lmqi * 10)}\n"
        f" ip igmp last-member-query-count {LAST_MEMBER_QUERY_COUNT}\n"
        "exit\n"
    )


def mgm_plugins(transit_if: str, host_if: str, lmqi: float) -> dict[str, Any]:
    """`mgm up`'s plugin tables for mgmbus as last-hop router: the values `lhr_frr_config` gives FRR."""
    return {
        "igmp": {"interfaces": [host_if], "version": 3, "robustness": 2, "query_interval": QUERY_INTERVAL,
                 "query_response_interval": QUERY_RESPONSE_INTERVAL, "last_member_query_interval": lmqi,
                 "last_member_query_count": LAST_MEMBER_QUERY_COUNT},
        "pim": {"interfaces": [transit_if], "rp": [{"address": RP, "groups": [RP_RANGE]}],
                **FAST_PIM, "hello_period": HELLO, "hello_holdtime": HOLDTIME,
                "join_prune_interval": JOIN_PRUNE_INTERVAL, "spt_switchover": "never"},
        "forwarder": {"backend": "mrt", "counters_interval": 1},
    }  # fmt: skip


@dataclass
class Lab:
    """One namespace set: the source, FRR as RP, the variant's last-hop router, the host and its agents."""

    variant: str
    topology: Topology
    rp: FrrRouter
    lhr: NsProcess | FrrRouter
    host: Namespace
    agent: NsProcess
    capture: NsProcess
    commands: IO[str]
    """The write end of the host agent's FIFO."""
    host_if: str

    @classmethod
    def build(cls, topology: Topology, variant: str, interval: float, lmqi: float) -> Lab:
        src, rp_ns, rtr, host = topology.namespaces("src", "frr", "rtr", "host")
        source_link = topology.link(src, rp_ns, f"{SOURCE}/24", "10.81.0.1/24")
        transit = topology.link(rp_ns, rtr, f"{RP}/24", f"{LHR_TRANSIT}/24")
        down = topology.link(rtr, host, "10.82.0.1/24", "10.82.0.2/24")
        routed_hosts(src, source_link.a_if, "10.81.0.1", host, "10.82.0.1")
        rtr.ip("route", "add", "10.81.0.0/24", "via", RP)
        rtr.sysctl("net.ipv4.conf.all.rp_filter", 0)
        host.sysctl(f"net.ipv4.conf.{down.b_if}.force_igmp_version", 3)
        rp = FrrRouter(rp_ns, pimd_config(pim=[source_link.b_if, transit.a_if], rp=RP, rp_range=RP_RANGE)).start()
        lhr: NsProcess | FrrRouter
        if variant == "mgmbus":
            lhr = start_mgm(rtr, topology.workdir, mgm_plugins(transit.b_if, down.a_if, lmqi), "mgm")
            wait_until(lambda: LHR_TRANSIT in rp.pim_neighbors(transit.a_if), WAIT, "the RP to list mgmbus")
        else:
            lhr = FrrRouter(rtr, lhr_frr_config(transit.b_if, down.a_if, lmqi)).start()
            wait_until(lambda: LHR_TRANSIT in rp.pim_neighbors(transit.a_if), WAIT, "the RP to list FRR's LHR")
            wait_until(lambda: RP in lhr.pim_neighbors(transit.b_if), WAIT, "FRR's LHR to list the RP")
            lhr.configure(f"ip pim rp {RP} {RP_RANGE}")
        count = 10**9  # more than any run sends: the topology's end stops the sender
        src.spawn(send_udp, GROUP, PORT, count, interval=interval, source=SOURCE, name="send")
        capture = rp_ns.spawn(capture_join_prunes, transit.a_if, LHR_TRANSIT, GROUP, name="capture")
        fifo = topology.workdir / "host-commands"
        os.mkfifo(fifo)
        agent = host.spawn(host_agent, str(fifo), GROUP, PORT, down.b_if, name="agent")
        commands = open_fifo(fifo, agent)
        lab = cls(variant, topology, rp, lhr, host, agent, capture, commands, down.a_if)
        for proc in (agent, capture):
            wait_until(lambda p=proc: any(e["event"] == "ready" for e in p.events()), WAIT, f"{proc.name} ready")
        return lab

    def alive(self) -> None:
        lhr_alive = self.lhr.alive()
        for name, ok in (("the RP", self.rp.alive()), ("the last-hop router", lhr_alive),
                         ("the host agent", self.agent.alive()), ("the capture", self.capture.alive())):  # fmt: skip
            if not ok:
                raise RuntimeError(f"{self.variant} lab: {name} is gone:\n{self.topology.logs()}")

    def _command(self, command: str, event: str) -> dict[str, Any]:
        before = len(self.agent.events())
        self.commands.write(command + "\n")
        self.commands.flush()

        def answered() -> dict[str, Any] | None:
            new = self.agent.events()[before:]
            if new and new[0]["event"] == "error":
                raise RuntimeError(f"{self.variant} lab, {command}: {new[0]['why']}")
            return new[0] if new and new[0]["event"] == event else None

        return wait_until(answered, ROUND_WAIT, f"{self.variant} host agent: {command}")

    def _join_prune(self, since: int, kind: str) -> dict[str, Any]:
        """The first Join/Prune the RP received at or after `since` (ns) with a join ("joins") or a prune
        ("prunes") of G."""

        def seen() -> dict[str, Any] | None:
            return next((e for e in self.capture.events() if e["event"] == "jp" and e["at"] >= since and e[kind]),
                        None)  # fmt: skip

        return wait_until(seen, ROUND_WAIT, f"{self.variant} lab: the LHR's {kind[:-1]} of {GROUP} at the RP")

    def round(self, settle: float) -> dict[str, float]:
        """One join and leave; seconds: join -> first datagram, join -> the Join at the RP, leave -> the Prune
        at the RP."""
        self.alive()
        joined = self._command("join", "joined")
        upstream_join = self._join_prune(joined["joined_ns"], "joins")
        time.sleep(settle)
        left = self._command("leave", "left")
        prune = self._join_prune(left["left_ns"], "prunes")
        wait_until(lambda: not frr_joined(self.rp, GROUP), ROUND_WAIT, f"{self.variant} lab: the RP's join gone")
        self.alive()
        return {"join": (joined["first_ns"] - joined["joined_ns"]) / 1e9,
                "upstream_join": (upstream_join["at"] - joined["joined_ns"]) / 1e9,
                "prune": (prune["at"] - left["left_ns"]) / 1e9}  # fmt: skip

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.commands.close()


def igmp_settings_seen(lab: Lab) -> str:
    """FRR's own view of its host-link IGMP values (what it took from the config), for the report."""
    if not isinstance(lab.lhr, FrrRouter):
        return ""
    shown = lab.lhr.json(f"show ip igmp interface {lab.host_if}")
    row = shown.get(lab.host_if, shown) if isinstance(shown, dict) else {}
    keys = ("version", "timerQueryIntervalMsec", "timerQueryResponseIntervalMsec",
            "lastMemberQueryCount", "timerLastMemberQueryIntervalMsec", "timerLastMemberQueryMsec")  # fmt: skip
    return ", ".join(f"{k} {row[k]}" for k in keys if isinstance(row, dict) and k in row)


# --- the run --------------------------------------------------------------------------------------


def report(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"{name:<40} n={len(ms):<3} p50 {percentile(ms, 50):9.1f} ms   p99 {percentile(ms, 99):9.1f} ms   "
            f"min {min(ms):9.1f}   max {max(ms):9.1f}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per variant (after one warm-up each)")
    parser.add_argument("--interval", type=float, default=0.001, help="seconds between two datagrams of a source")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds joined before the leave (the host repeats its report within 1 s)")  # fmt: skip
    parser.add_argument("--lmqi", type=float, default=0.2,
                        help="the last member query interval both LHRs get, seconds (a multiple of 0.1)")  # fmt: skip
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("pim_vs_frr: needs root (network namespaces)", file=sys.stderr)
        return 2
    if not Path("/proc/net/ip_mr_vif").exists():
        print("pim_vs_frr: this kernel has no IP_MROUTE: run it under scripts/qemu (see the docstring)",
              file=sys.stderr)  # fmt: skip
        return 2
    if (why := frr_missing()) is not None:
        print(f"pim_vs_frr: {why}", file=sys.stderr)
        return 2
    started = time.monotonic()
    results: dict[str, dict[str, list[float]]] = {v: {"join": [], "upstream_join": [], "prune": []} for v in VARIANTS}
    with contextlib.ExitStack() as stack:
        labs: dict[str, Lab] = {}
        for variant in VARIANTS:
            topology = stack.enter_context(Topology(prefix="mgmbench"))
            try:
                labs[variant] = Lab.build(topology, variant, args.interval, args.lmqi)
            except BaseException:
                print(topology.logs(), file=sys.stderr)
                raise
            stack.callback(labs[variant].close)
        frr_igmp = igmp_settings_seen(labs["frr"])
        set_up = time.monotonic() - started
        print(f"set up in {set_up:.0f} s", file=sys.stderr, flush=True)
        try:
            for variant in VARIANTS:
                labs[variant].round(args.settle)  # warm-up, untimed
            for n in range(args.rounds):
                order = VARIANTS if n % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    measured = labs[variant].round(args.settle)
                    for key, value in measured.items():
                        results[variant][key].append(value)
                    shown = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in measured.items())
                    print(f"round {n + 1} {variant}: {shown}", file=sys.stderr, flush=True)
        except BaseException:
            for lab in labs.values():
                print(lab.topology.logs()[-20000:], file=sys.stderr)
            raise
    print("PIM last-hop router: mgmbus (`mgm up`: igmp, pim, forwarder mrt) against FRR pimd, same lab, "
          "alternating rounds")  # fmt: skip
    print(f"  setup: src -> FRR (RP + first hop) -> LHR -> host, veth links; one datagram every "
          f"{args.interval * 1000:g} ms; both LHRs on the shared tree; PIM hello {HELLO} s / holdtime {HOLDTIME} s, "
          f"join/prune interval {JOIN_PRUNE_INTERVAL} s; IGMPv3 query interval {QUERY_INTERVAL} s, "
          f"query response {QUERY_RESPONSE_INTERVAL:g} s, last member query {args.lmqi:g} s x "
          f"{LAST_MEMBER_QUERY_COUNT}; settle {args.settle:g} s")  # fmt: skip
    if frr_igmp:
        print(f"  FRR's LHR shows: {frr_igmp}")
    print(f"  machine: Linux {platform.release()}, Python {platform.python_version()}, {os.cpu_count()} CPU(s); "
          f"set-up {set_up:.0f} s, run {time.monotonic() - started:.0f} s; "
          f"MGM_TEST_TIME_SCALE {scaled(1.0):g}")  # fmt: skip
    labels = {"join": "join -> first datagram",
              "upstream_join": "join -> (*,G) Join at the RP",
              "prune": "leave -> Prune of G at the RP"}  # fmt: skip
    for key, label in labels.items():
        for variant in VARIANTS:
            print("  " + report(f"{label} ({variant})", results[variant][key]))
    for key, goal in (("join", "goal <= 1.0"), ("prune", "goal <= 1.0"), ("upstream_join", "")):
        ours, theirs = results["mgmbus"][key], results["frr"][key]
        p50 = percentile(ours, 50) / percentile(theirs, 50)
        p99 = percentile(ours, 99) / percentile(theirs, 99)
        print(f"  ratio mgmbus/FRR, {labels[key]}: p50 {p50:.2f}, p99 {p99:.2f}" + (f" ({goal})" if goal else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
