"""The kernel's IPv4 multicast routing API (linux/mroute.h), through socket, struct and ioctl.

One process per routing table holds the multicast routing socket: a raw
IGMP socket on which ``MRT_INIT`` succeeded.  Through it the process adds
virtual interfaces (VIFs, at most `MAXVIFS`) and forwarding cache entries
(MFC, keyed by (source, group): the incoming VIF and a TTL threshold per
outgoing VIF), and on it the kernel reports what it cannot decide alone
(upcalls: a packet of an unknown (S,G), a packet on the wrong VIF).  When
the socket closes the kernel removes every VIF and MFC entry it added.

VIFs and entries added through another raw IGMP socket of a process with
CAP_NET_ADMIN are *static* instead (VIFF_STATIC, MFC_STATIC): they outlive
the routing socket, forward nothing while no routing socket is open, and
forward again from the next MRT_INIT on, with nothing added again.  A
forwarder that crashes and is restarted therefore loses only the time
without a routing socket (`MrouteSocket` with ``static=True``).

Everything here is synchronous and small; the struct layouts are those of
the 64-bit and 32-bit Linux ABIs (native alignment, checked by the tests).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mgm.plugins.igmp.rawsocket import NOTHING, attach_filter

log = logging.getLogger(__name__)

# --- linux/mroute.h -------------------------------------------------------------------------

MRT_BASE = 200
MRT_INIT = MRT_BASE
MRT_DONE = MRT_BASE + 1
MRT_ADD_VIF = MRT_BASE + 2
MRT_DEL_VIF = MRT_BASE + 3
MRT_ADD_MFC = MRT_BASE + 4
MRT_DEL_MFC = MRT_BASE + 5
MRT_ASSERT = MRT_BASE + 7
MRT_PIM = MRT_BASE + 8
MRT_TABLE = MRT_BASE + 9

SIOCPROTOPRIVATE = 0x89E0
SIOCGETSGCNT = SIOCPROTOPRIVATE + 1

MAXVIFS = 32
VIFF_TUNNEL = 0x1
VIFF_USE_IFINDEX = 0x8
VIFF_STATIC = 0x8000
"""Set by the kernel on a VIF added from a socket other than the routing socket (shown in /proc/net/ip_mr_vif)."""
RT_TABLE_DEFAULT = 253
"""The multicast routing table of a socket without MRT_TABLE, the only one /proc/net/ip_mr_* show."""

IGMPMSG_NOCACHE = 1
IGMPMSG_WRONGVIF = 2
IGMPMSG_WHOLEPKT = 3
IGMPMSG_WRVIFWHOLE = 4
UPCALL_NAMES = {IGMPMSG_NOCACHE: "NOCACHE", IGMPMSG_WRONGVIF: "WRONGVIF", IGMPMSG_WHOLEPKT: "WHOLEPKT",
                IGMPMSG_WRVIFWHOLE: "WRVIFWHOLE"}  # fmt: skip

TTL_NOT_FORWARDED = 255
"""A VIF's TTL threshold in an MFC entry meaning "not in the output list"."""

# struct vifctl { vifi_t vifc_vifi; u8 vifc_flags; u8 vifc_threshold; u32 vifc_rate_limit;
#                 union { struct in_addr vifc_lcl_addr; int vifc_lcl_ifindex; }; struct in_addr vifc_rmt_addr; }
VIFCTL = struct.Struct("@HBBIi4s")
# struct mfcctl { struct in_addr mfcc_origin, mfcc_mcastgrp; vifi_t mfcc_parent; u8 mfcc_ttls[MAXVIFS];
#                 u32 mfcc_pkt_cnt, mfcc_byte_cnt, mfcc_wrong_if; int mfcc_expire; }
MFCCTL = struct.Struct(f"@4s4sH{MAXVIFS}sIIIi")
# struct sioc_sg_req { struct in_addr src, grp; unsigned long pktcnt, bytecnt, wrong_if; }
SIOC_SG_REQ = struct.Struct("@4s4sLLL")
# struct igmpmsg { u32 unused1, unused2; u8 im_msgtype, im_mbz, im_vif, im_vif_hi; struct in_addr im_src, im_dst; }
# laid over the IP header of the packet it reports: im_mbz sits where the header's protocol is, and
# is 0 in an upcall while a real IGMP packet (protocol 2) has 2 there.
IGMPMSG = struct.Struct("@IIBBBB4s4s")

KNOWN_DAEMONS = ("pimd", "pimd-dense", "pimbd", "smcrouted", "smcroute", "igmpproxy", "mrouted", "omcproxy",
                 "mcproxy")  # fmt: skip
"""Processes that typically hold the multicast routing socket (named in the EADDRINUSE error)."""


class MrouteError(OSError):
    """A multicast routing call failed; the message says which call, with what, and the likely cause."""


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upcall:
    """One message from the kernel on the multicast routing socket."""

    kind: int  # IGMPMSG_*
    vif: int
    source: str
    group: str
    packet: bytes = b""
    """The packet itself where the dataplane hands it over for us to forward once resolved (nftables)."""

    @property
    def kind_name(self) -> str:
        return UPCALL_NAMES.get(self.kind, f"type {self.kind}")


@dataclass(frozen=True, slots=True)
class SgCount:
    """SIOCGETSGCNT: packets and bytes that matched an MFC entry, and packets that came on a wrong VIF."""

    packets: int
    bytes: int
    wrong_if: int


# --- packing ------------------------------------------------------------------------------------


def pack_vifctl(vifi: int, if_index: int, *, threshold: int = 1, flags: int = VIFF_USE_IFINDEX) -> bytes:
    """A vifctl naming the device by if_index (VIFF_USE_IFINDEX): no address needed on the interface."""
    _check_vif(vifi)
    return VIFCTL.pack(vifi, flags | VIFF_USE_IFINDEX, threshold, 0, if_index, bytes(4))


def pack_mfcctl(source: str, group: str, parent: int, oifs: Mapping[int, int] | Iterable[int] = ()) -> bytes:
    """An mfcctl: incoming VIF `parent`, and a TTL threshold per outgoing VIF (an iterable means 1 each).

    A packet goes out of an outgoing VIF when its TTL is above that VIF's
    threshold; every other VIF gets `TTL_NOT_FORWARDED`.
    """
    _check_vif(parent)
    thresholds = dict(oifs) if isinstance(oifs, Mapping) else dict.fromkeys(oifs, 1)
    ttls = bytearray([TTL_NOT_FORWARDED] * MAXVIFS)
    for vif, ttl in thresholds.items():
        _check_vif(vif)
        if not 1 <= ttl < TTL_NOT_FORWARDED:
            raise ValueError(f"TTL threshold {ttl} of VIF {vif} is outside 1..254")
        ttls[vif] = ttl
    return MFCCTL.pack(socket.inet_aton(source), socket.inet_aton(group), parent, bytes(ttls), 0, 0, 0, 0)


def unpack_mfcctl(data: bytes) -> tuple[str, str, int, dict[int, int]]:
    """(source, group, parent, {outgoing vif: threshold}) of a packed mfcctl (tests, diagnostics)."""
    origin, group, parent, ttls, *_ = MFCCTL.unpack(data)
    oifs = {vif: ttl for vif, ttl in enumerate(ttls) if ttl not in (0, TTL_NOT_FORWARDED)}
    return socket.inet_ntoa(origin), socket.inet_ntoa(group), parent, oifs


def parse_upcall(data: bytes) -> Upcall | None:
    """The upcall in a datagram read from the routing socket, or None for anything else.

    The routing socket also receives IGMP packets (it is a raw IGMP
    socket); those carry protocol 2 where an upcall carries im_mbz = 0.
    """
    if len(data) < IGMPMSG.size:
        return None
    _u1, _u2, kind, mbz, vif, vif_hi, src, dst = IGMPMSG.unpack_from(data)
    if mbz != 0 or kind == 0:
        return None
    return Upcall(kind, vif | (vif_hi << 8), socket.inet_ntoa(src), socket.inet_ntoa(dst))


def pack_igmpmsg(kind: int, vif: int, source: str, group: str) -> bytes:
    """An upcall as the kernel lays it out (tests, and the simulated forwarder's injections)."""
    return IGMPMSG.pack(0, 0, kind, 0, vif & 0xFF, vif >> 8, socket.inet_aton(source), socket.inet_aton(group))


def _check_vif(vif: int) -> None:
    if not 0 <= vif < MAXVIFS:
        raise ValueError(f"VIF {vif} is outside 0..{MAXVIFS - 1}")


# A classic BPF program for the routing socket: accept a datagram only when the byte at offset 9
# (im_mbz of an upcall; the protocol of a real IP packet) is 0.  The kernel would otherwise also queue
# every IGMP report of every attached link here, which the forwarder reads only to throw away.
_BPF_LDB_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x30, 0x15, 0x06
UPCALL_FILTER = ((_BPF_LDB_ABS, 0, 0, 9), (_BPF_JEQ_K, 0, 1, 0), (_BPF_RET_K, 0, 0, 0xFFFF), (_BPF_RET_K, 0, 0, 0))


def _raw_igmp_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    except PermissionError as exc:
        raise MrouteError(exc.errno, "cannot open a raw IGMP socket: multicast routing needs root "
                                     "(or CAP_NET_RAW and CAP_NET_ADMIN)") from exc  # fmt: skip


# --- the socket ---------------------------------------------------------------------------------


class MrouteSocket:
    """The multicast routing socket of this network namespace (one routing table).

    ``MrouteSocket()`` opens a raw IGMP socket and calls MRT_INIT on it;
    `close` calls MRT_DONE, after which the kernel drops the VIFs and MFC
    entries this socket added.  `wrong_vif` chooses which WRONGVIF upcalls
    come: ``"all"`` (MRT_PIM: any packet on a VIF other than the entry's
    incoming one, at most one per entry every 3 s), ``"oil"`` (MRT_ASSERT:
    only packets on a VIF of the output list, the PIM assert case) or
    ``"none"``.

    With `static`, VIFs and entries are added through a second raw IGMP
    socket, so the kernel keeps them when this process goes away, however
    it goes (see the module doc): the owner removes them itself on a clean
    stop, and a successor finds them in /proc/net/ip_mr_vif and ip_mr_cache.
    """

    def __init__(self, *, table: int | None = None, wrong_vif: str = "all", upcall_filter: bool = True,
                 static: bool = False) -> None:  # fmt: skip
        if wrong_vif not in ("all", "oil", "none"):
            raise ValueError(f"wrong_vif must be all, oil or none, not {wrong_vif!r}")
        self.table = table
        self.static = static
        self.sock = _raw_igmp_socket()
        self.ctl = self.sock
        """The socket VIFs and entries are added through: the routing socket itself unless `static`."""
        try:
            if table is not None:
                self.sock.setsockopt(socket.IPPROTO_IP, MRT_TABLE, struct.pack("@I", table))
            if upcall_filter:
                attach_filter(self.sock, UPCALL_FILTER)
            self._init()
            if wrong_vif == "all":
                self.sock.setsockopt(socket.IPPROTO_IP, MRT_PIM, 1)
            elif wrong_vif == "oil":
                self.sock.setsockopt(socket.IPPROTO_IP, MRT_ASSERT, 1)
            self.sock.setblocking(False)
            if static:
                self.ctl = _raw_igmp_socket()
                attach_filter(self.ctl, NOTHING)  # it only adds static entries: what it receives is never read
                if table is not None:
                    self.ctl.setsockopt(socket.IPPROTO_IP, MRT_TABLE, struct.pack("@I", table))
        except BaseException:
            if self.ctl is not self.sock:
                self.ctl.close()
            self.sock.close()
            raise
        self.closed = False

    def _init(self) -> None:
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, MRT_INIT, 1)
        except OSError as exc:
            where = "this network namespace" + ("" if self.table is None else f" (table {self.table})")
            if exc.errno == errno.EADDRINUSE:
                suspects = running_daemons()
                named = f" Running here: {', '.join(suspects)}." if suspects else ""
                raise MrouteError(
                    errno.EADDRINUSE,
                    f"MRT_INIT failed: another process already holds the multicast routing socket of {where}; "
                    "only one multicast routing daemon can run per routing table (pimd, smcroute, igmpproxy, "
                    f"mrouted, or another mgm forwarder).{named} Stop it, then start the forwarder again.",
                ) from exc
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise MrouteError(exc.errno, "MRT_INIT refused: multicast routing needs CAP_NET_ADMIN") from exc
            if exc.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                raise MrouteError(exc.errno, "MRT_INIT: this kernel has no IPv4 multicast routing "
                                             "(CONFIG_IP_MROUTE)") from exc  # fmt: skip
            raise MrouteError(exc.errno, f"MRT_INIT failed in {where}: {exc.strerror}") from exc

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        """MRT_DONE and close: the kernel removes this socket's VIFs and MFC entries (static ones stay)."""
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, MRT_DONE, 1)
        except OSError as exc:
            log.warning("MRT_DONE failed (the socket closes anyway): %s", exc)
        self.sock.close()
        if self.ctl is not self.sock:
            self.ctl.close()

    def __enter__(self) -> MrouteSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- VIFs and MFC entries ---------------------------------------------------------------

    def add_vif(self, vifi: int, if_index: int, *, threshold: int = 1) -> None:
        self._setsockopt(MRT_ADD_VIF, pack_vifctl(vifi, if_index, threshold=threshold),
                         f"MRT_ADD_VIF vif {vifi} if_index {if_index}")  # fmt: skip

    def del_vif(self, vifi: int) -> None:
        self._setsockopt(MRT_DEL_VIF, pack_vifctl(vifi, 0), f"MRT_DEL_VIF vif {vifi}")

    def add_mfc(self, source: str, group: str, parent: int, oifs: Mapping[int, int] | Iterable[int] = ()) -> None:
        """Add or replace the entry for (source, group); its counters survive a replacement."""
        data = pack_mfcctl(source, group, parent, oifs)
        self._setsockopt(MRT_ADD_MFC, data, f"MRT_ADD_MFC ({source}, {group}) in vif {parent}")

    def del_mfc(self, source: str, group: str) -> None:
        self._setsockopt(MRT_DEL_MFC, pack_mfcctl(source, group, 0), f"MRT_DEL_MFC ({source}, {group})")

    def _setsockopt(self, option: int, data: bytes, what: str) -> None:
        try:
            self.ctl.setsockopt(socket.IPPROTO_IP, option, data)
        except OSError as exc:
            raise MrouteError(exc.errno, f"{what}: {exc.strerror}") from exc

    # --- counters -----------------------------------------------------------------------------

    def sg_count(self, source: str, group: str) -> SgCount | None:
        """SIOCGETSGCNT for (source, group); None when the kernel has no such entry."""
        buf = bytearray(SIOC_SG_REQ.pack(socket.inet_aton(source), socket.inet_aton(group), 0, 0, 0))
        try:
            fcntl.ioctl(self.sock.fileno(), SIOCGETSGCNT, buf, True)
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return None
            raise MrouteError(exc.errno, f"SIOCGETSGCNT ({source}, {group}): {exc.strerror}") from exc
        _s, _g, packets, nbytes, wrong_if = SIOC_SG_REQ.unpack(buf)
        return SgCount(packets, nbytes, wrong_if)

    # --- upcalls --------------------------------------------------------------------------------

    def read_upcalls(self, limit: int = 10_000) -> list[Upcall]:
        """Every upcall queued now (non-blocking; at most `limit`), WHOLEPKT and non-upcalls dropped."""
        out: list[Upcall] = []
        for _ in range(limit):
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            upcall = parse_upcall(data)
            if upcall is None or upcall.kind in (IGMPMSG_WHOLEPKT, IGMPMSG_WRVIFWHOLE):
                continue
            out.append(upcall)
        return out


# --- /proc readers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcVif:
    """One line of /proc/net/ip_mr_vif; `local` is the if_index for a VIFF_USE_IFINDEX VIF (else an address)."""

    vif: int
    name: str
    in_bytes: int
    in_packets: int
    out_bytes: int
    out_packets: int
    flags: int
    local: int = 0


@dataclass(frozen=True, slots=True)
class ProcMfc:
    """One line of /proc/net/ip_mr_cache; `parent` is -1 for an unresolved entry."""

    group: str
    source: str
    parent: int
    packets: int
    bytes: int
    wrong_if: int
    oifs: dict[int, int]

    @property
    def resolved(self) -> bool:
        return self.parent >= 0


def _proc_addr(hexword: str) -> str:
    """/proc prints a network-order address as a host-order hex word."""
    return socket.inet_ntoa(struct.pack("=I", int(hexword, 16)))


def read_ip_mr_vif(path: str | Path = "/proc/net/ip_mr_vif") -> list[ProcVif]:
    return parse_ip_mr_vif(Path(path).read_text())


def parse_ip_mr_vif(text: str) -> list[ProcVif]:
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        local = int(f[7], 16) if len(f) > 7 else 0
        out.append(ProcVif(int(f[0]), f[1], int(f[2]), int(f[3]), int(f[4]), int(f[5]), int(f[6], 16), local))
    return out


def read_ip_mr_cache(path: str | Path = "/proc/net/ip_mr_cache") -> list[ProcMfc]:
    return parse_ip_mr_cache(Path(path).read_text())


def parse_ip_mr_cache(text: str) -> list[ProcMfc]:
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        oifs = {int(v): int(t) for v, t in (o.split(":") for o in f[6:])}
        out.append(ProcMfc(_proc_addr(f[0]), _proc_addr(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[5]), oifs))
    return out


def running_daemons() -> list[str]:
    """Known multicast routing daemons running in this network namespace, as ``name[pid]``."""
    try:
        own = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm not in KNOWN_DAEMONS or os.stat(entry / "ns" / "net").st_ino != own:
                continue
        except OSError:
            continue
        found.append(f"{comm}[{entry.name}]")
    return sorted(found)
