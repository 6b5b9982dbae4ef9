"""An immediate unsolicited report upstream when the proxy joins, ahead of the kernel's own.

Linux delays a host's first unsolicited report after a join by a couple of
jiffies (8-12 ms at HZ=250), although RFC 2236 section 3 and RFC 3376
section 5.1 ask for it at once; for IPTV channel change that delay adds to
every hop's join-to-first-packet time.  So when the proxy's upstream
membership of a group grows, it also sends one report itself, from a raw
IGMP socket on the upstream interface.  The kernel's report and its
retransmissions still follow: a lost report of ours costs nothing, and a
duplicate is harmless to routers and snooping switches.  Leaves are the
kernel's alone.

What is sent mirrors the kernel's first report for the same change, in
the IGMP version the kernel speaks on the interface at that moment (its
compatibility mode, from /proc/net/igmp, which follows the upstream
querier and ``force_igmp_version``):

* v3: a (*,G) join is CHANGE_TO_EXCLUDE_MODE {} (also when G had sources
  before); new sources of an include-mode group are ALLOW_NEW_SOURCES.
  The changes of one event-loop turn go in as few reports as the
  interface MTU allows, to 224.0.0.22.
* v2 and v1: a membership report of that version to the group, when the
  group becomes joined (the kernel reports only then in those modes: a
  new source of a joined group, or sources becoming (*,G), changes nothing
  a v1/v2 router can hear).

A change that only takes something away (fewer sources; (*,G) becoming a
source list, which the upstream keeps forwarding) gets no report: the
kernel sends those.

Everything that decides what to send is a pure function here; `Reporter`
only adds the socket, the batching over one loop turn and the logging.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from mgm.core.types import ANY, is_link_local
from mgm.plugins.igmp.packet import (
    ALL_IGMPV3_ROUTERS,
    ALLOW_NEW_SOURCES,
    BLOCK_OLD_SOURCES,
    CHANGE_TO_EXCLUDE_MODE,
    IGMP_PROTOCOL,
    ROUTER_ALERT_OPTION,
    GroupRecord,
    build_ipv4,
    build_report,
    build_v3_report,
)
from mgm.plugins.igmp.rawsocket import ETH_P_IP, NOTHING, attach_filter, ip_mreqn
from mgm.plugins.proxy.merge import ASM, Upstream

log = logging.getLogger(__name__)

PROC_IGMP = "/proc/net/igmp"
IP_HEADER = 20 + len(ROUTER_ALERT_OPTION)
"""The IPv4 header of our reports: 20 octets and the Router Alert option."""
V3_REPORT_HEADER = 8
RECORD_HEADER = 8
SIOCGIFMTU = 0x8921
SIOCGIFADDR = 0x8915
SIOCGIFHWADDR = 0x8927
ARPHRD_ETHER = 1
TOS_INTERNETWORK_CONTROL = 0xC0
"""The precedence the kernel gives its own IGMP messages."""
MIN_MTU = 68
"""RFC 791's minimum; below it not even one group record would fit."""


class Change(NamedTuple):
    """One group's upstream membership before and after (None: not joined)."""

    old: Upstream | None
    new: Upstream | None


# --- what to send (no I/O) -----------------------------------------------------------------------


def v3_records(group: str, old: Upstream | None, new: Upstream | None) -> list[GroupRecord]:
    """The v3 records announcing what `new` adds to `old` (nothing for a change that only takes away)."""
    if new is None or new == old:
        return []
    if new == ASM:
        return [GroupRecord(CHANGE_TO_EXCLUDE_MODE, group)]
    if old == ASM:
        return []  # (*,G) -> sources: the upstream already sends every source
    assert isinstance(new, frozenset)
    added = new - (old if isinstance(old, frozenset) else frozenset())
    if not added:
        return []
    return [GroupRecord(ALLOW_NEW_SOURCES, group, tuple(sorted(added, key=ipaddress.IPv4Address)))]


def pack_v3(records: Iterable[GroupRecord], mtu: int) -> list[bytes]:
    """v3 reports carrying `records`, each fitting in `mtu` with our IP header; as few as greedy packing gives.

    A record whose source list alone is too long is split into records of
    the same type (for ALLOW and BLOCK that means the same; no other type
    carries sources here).
    """
    if mtu < MIN_MTU:
        raise ValueError(f"an MTU of {mtu} is below IPv4's minimum {MIN_MTU}")
    room = mtu - IP_HEADER - V3_REPORT_HEADER
    max_sources = (room - RECORD_HEADER) // 4
    reports: list[list[GroupRecord]] = []
    used = room  # no open report yet
    for record in records:
        for piece in _split(record, max_sources):
            size = RECORD_HEADER + 4 * len(piece.sources) + len(piece.aux)
            if used + size > room or len(reports[-1]) == 0xFFFF:
                reports.append([])
                used = 0
            reports[-1].append(piece)
            used += size
    return [build_v3_report(r) for r in reports]


def _split(record: GroupRecord, max_sources: int) -> list[GroupRecord]:
    if len(record.sources) <= max_sources:
        return [record]
    if record.type not in (ALLOW_NEW_SOURCES, BLOCK_OLD_SOURCES):
        raise ValueError(f"a {record.name} record with {len(record.sources)} sources cannot be split")
    return [GroupRecord(record.type, record.group, record.sources[i : i + max_sources])
            for i in range(0, len(record.sources), max_sources)]  # fmt: skip


def packets(changes: Mapping[str, Change], version: int, mtu: int) -> list[tuple[str, bytes]]:
    """(destination, IGMP message) pairs announcing `changes` in IGMP `version` (1, 2 or 3).

    Link-local groups are left out (merge never joins them; no report may name them either).
    """
    changes = {group: c for group, c in changes.items() if not is_link_local(group)}
    if version == 3:
        records = [r for group, c in changes.items() for r in v3_records(group, c.old, c.new)]
        return [(ALL_IGMPV3_ROUTERS, p) for p in pack_v3(records, mtu)]
    if version in (1, 2):
        joined = [group for group, c in changes.items() if c.old is None and c.new is not None]  # all v1/v2 say
        return [(group, build_report(version, group)) for group in joined]
    raise ValueError(f"IGMP version {version}? (1, 2 or 3)")


def igmp_version(text: str, if_index: int) -> int | None:
    """The IGMP version the kernel speaks on `if_index`, from /proc/net/igmp's text; None if it is not listed.

    The device lines read ``IDX<TAB>NAME      :  COUNT  V3`` (V1, V2 or V3:
    the querier version the kernel is compatible with, or the forced one);
    group lines start with a tab.
    """
    for line in text.splitlines()[1:]:
        if not line or line[0] == "\t":
            continue
        head, _, tail = line.partition(":")
        fields, values = head.split(), tail.split()
        if len(fields) < 2 or len(values) < 2 or not fields[0].isdigit() or int(fields[0]) != if_index:
            continue
        mode = values[1]
        if mode not in ("V1", "V2", "V3"):
            raise ValueError(f"{PROC_IGMP}: unexpected querier version {mode!r} in {line!r}")
        return int(mode[1])
    return None


# --- sending ---------------------------------------------------------------------------------------


class Reporter:
    """The raw IGMP socket on the upstream interface and the changes waiting for this loop turn's flush.

    On an upstream without an IPv4 address the raw socket cannot be used:
    the kernel would take another interface's address as the source (a
    downstream one, say), where its own reports say 0.0.0.0.  There the
    report goes out as a whole IP datagram with source 0.0.0.0 through a
    packet socket, which no routing touches.  Which way is decided at each
    flush, so an address added or removed later is followed.
    """

    def __init__(self, ifname: str, if_index: int, sock: socket.socket,
                 on_error: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.ifname = ifname
        self.if_index = if_index
        self.sock: socket.socket | None = sock
        self.link: socket.socket | None = None  # the packet socket, opened when first needed
        self.on_error = on_error
        self.pending: dict[str, Change] = {}
        self.scheduled = False
        self.sent = 0
        """Reports sent so far."""
        self._ident = 0

    @classmethod
    def open(cls, ifname: str, if_index: int, on_error: Callable[[], None] | None = None) -> Reporter:
        """A raw IGMP socket sending out of `if_index` with TTL 1, Router Alert and no loopback; OSError if refused.

        `on_error` is called once per failure (which is logged, never raised).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IGMP_PROTOCOL)
        try:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, ip_mreqn(ANY, if_index))  # by index only
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, ROUTER_ALERT_OPTION)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_INTERNETWORK_CONTROL)
            attach_filter(sock, NOTHING)  # a raw IGMP socket gets a copy of every IGMP packet; we only send
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return cls(ifname, if_index, sock, on_error)

    def change(self, group: str, old: Upstream | None, new: Upstream | None) -> None:
        """The kernel now holds `new` for `group` upstream, where it held `old`; reported at this turn's end.

        Changes to one group within a turn add up (first old, last new).
        Without a running event loop (a direct call) the flush is at once.
        """
        if old == new or self.sock is None:
            return
        earlier = self.pending.get(group)
        self.pending[group] = Change(old if earlier is None else earlier.old, new)
        if self.scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        loop.call_soon(self.flush)
        self.scheduled = True

    def flush(self) -> int:
        """Send the reports for the changes waiting; how many were sent.  Failures are logged, never raised."""
        self.scheduled = False
        changes, self.pending = self.pending, {}
        if self.sock is None or not any(c.new is not None and c.new != c.old for c in changes.values()):
            return 0
        try:
            with open(PROC_IGMP) as f:
                version = igmp_version(f.read(), self.if_index)
            if version is None:
                raise OSError(errno.ENODEV, f"{self.ifname} (if_index {self.if_index}) is not in {PROC_IGMP}")
            out = packets(changes, version, self._mtu() if version == 3 else MIN_MTU)
            addressed = has_ipv4(self.ifname)
        except (OSError, ValueError) as exc:
            self._failed(f"cannot tell what to report for {len(changes)} group(s): {_reason(exc)}")
            return 0
        sent = 0
        for destination, message in out:
            try:
                if addressed:
                    self.sock.sendto(message, (destination, 0))
                else:
                    self._send_unaddressed(destination, message)
            except OSError as exc:
                self._failed(f"sending an IGMPv{version} report to {destination}: {_reason(exc)}")
                continue
            sent += 1
        self.sent += sent
        if sent:
            log.debug("proxy: immediate IGMPv%d report(s) on %s%s: %d for %d group(s)", version, self.ifname,
                      "" if addressed else " from 0.0.0.0", sent, len(changes))  # fmt: skip
        return sent

    def close(self) -> None:
        self.pending.clear()
        for sock in (self.sock, self.link):
            if sock is not None:
                sock.close()
        self.sock = self.link = None

    # --- internals ---------------------------------------------------------------------------

    def _send_unaddressed(self, destination: str, message: bytes) -> None:
        """`message` in an IP datagram from 0.0.0.0 (TTL 1, Router Alert), framed for the link by the kernel."""
        if self.link is None:
            self.link = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)  # protocol 0: receives nothing
            self.link.setblocking(False)
        self._ident = (self._ident + 1) & 0xFFFF
        datagram = build_ipv4("0.0.0.0", destination, message, identification=self._ident)
        hatype = _hardware_type(self.link, self.ifname)
        address = multicast_mac(destination) if hatype == ARPHRD_ETHER else b""
        self.link.sendto(datagram, (self.ifname, ETH_P_IP, 0, hatype, address))

    def _mtu(self) -> int:
        assert self.sock is not None
        ifreq = fcntl.ioctl(self.sock.fileno(), SIOCGIFMTU, struct.pack("16si12x", self.ifname.encode()[:15], 0))
        mtu: int = struct.unpack_from("16si", ifreq)[1]
        return mtu

    def _failed(self, what: str) -> None:
        log.warning("proxy: immediate report on %s: %s (the kernel's own report follows)", self.ifname, what)
        if self.on_error is not None:
            self.on_error()


def multicast_mac(group: str) -> bytes:
    """The Ethernet address of an IPv4 multicast group (RFC 1112 section 6.4): 01:00:5e and the low 23 bits."""
    low = int(ipaddress.IPv4Address(group)) & 0x7FFFFF
    return b"\x01\x00\x5e" + low.to_bytes(3, "big")


def has_ipv4(ifname: str) -> bool:
    """Whether `ifname` has an IPv4 address (SIOCGIFADDR); OSError for another failure (no such interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", ifname.encode()[:15]))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def _hardware_type(sock: socket.socket, ifname: str) -> int:
    """The interface's ARPHRD_* type (SIOCGIFHWADDR's sa_family)."""
    ifreq = fcntl.ioctl(sock.fileno(), SIOCGIFHWADDR, struct.pack("16s16x", ifname.encode()[:15]))
    hatype: int = struct.unpack_from("=16sH", ifreq)[1]
    return hatype


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)} ({exc.strerror})"
    return str(exc)
