"""The proxy's upstream memberships, held by the kernel as any host application's would be.

Joining through the kernel's own socket options (RFC 3678's protocol
independent ones: MCAST_JOIN_GROUP for (*,G), MCAST_JOIN_SOURCE_GROUP for
(S,G)) makes the kernel send the reports, answer the upstream querier in
whatever IGMP version it speaks, and merge the sockets' filters per RFC
3376 section 3.2.  They name the interface by if_index, so an upstream
interface without an IPv4 address works too (checked on Linux 6: the
reports leave with source 0.0.0.0, which RFC 3376 allows).

The kernel limits memberships per socket (``net.ipv4.igmp_max_memberships``,
20 by default) and sources per group per socket (``igmp_max_msf``, 10);
both answer ENOBUFS.  So the memberships are spread over a pool of UDP
sockets, bound to the upstream interface and never to a port (they carry
no traffic): a full socket is left for a new one.  (*,G) joins and source
joins live on different sockets, because one socket cannot be in both
modes for one group; the kernel merges them into EXCLUDE {} while both exist.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MCAST_JOIN_GROUP = 42
MCAST_LEAVE_GROUP = 45
MCAST_JOIN_SOURCE_GROUP = 46
MCAST_LEAVE_SOURCE_GROUP = 47
SOCKADDR_STORAGE = 128
MAX_SOCKETS = 4096
"""A bound on the pool (each socket holds a membership or more): a runaway is an error, not an fd leak."""


def _sockaddr(address: str) -> bytes:
    head = struct.pack("=H2x4s", socket.AF_INET, socket.inet_aton(address))
    return head + bytes(SOCKADDR_STORAGE - len(head))


def group_req(if_index: int, group: str) -> bytes:
    """struct group_req (64-bit layout: the interface, padding to 8, a sockaddr_storage)."""
    return struct.pack("=I4x", if_index) + _sockaddr(group)


def group_source_req(if_index: int, group: str, source: str) -> bytes:
    return struct.pack("=I4x", if_index) + _sockaddr(group) + _sockaddr(source)


@dataclass(eq=False)
class _Member:
    sock: socket.socket
    asm: bool
    groups: dict[str, set[str]] = field(default_factory=dict)  # group -> sources (empty for a (*,G) join)
    full: bool = False  # no room for another group
    full_groups: set[str] = field(default_factory=set)  # no room for another source of these groups


class UpstreamError(OSError):
    """A membership the kernel refused for another reason than a full socket."""


class UpstreamMemberships:
    """The (*,G) and (S,G) memberships on one interface, over a pool of sockets."""

    def __init__(self, ifname: str, if_index: int) -> None:
        self.ifname = ifname
        self.if_index = if_index
        self.pool: list[_Member] = []
        self.where: dict[tuple[str, str | None], _Member] = {}

    def __len__(self) -> int:
        return len(self.where)

    def join(self, group: str, source: str | None) -> None:
        """Join (*,G) (`source` None) or (S,G) on the upstream interface; UpstreamError if refused."""
        key = (group, source)
        if key in self.where:
            return
        asm = source is None
        for member in self._candidates(group, asm):
            try:
                self._setsockopt(member, True, group, source)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    self._prune_empty()
                    raise UpstreamError(exc.errno, f"joining {_what(group, source)} on {self.ifname}: "
                                                   f"{exc.strerror}") from exc  # fmt: skip
                if group in member.groups:
                    member.full_groups.add(group)
                else:
                    member.full = True
                continue
            member.groups.setdefault(group, set())
            if source is not None:
                member.groups[group].add(source)
            self.where[key] = member
            self._prune_empty()
            return
        self._prune_empty()
        raise UpstreamError(errno.ENOBUFS, f"joining {_what(group, source)} on {self.ifname}: "
                                           f"more than {MAX_SOCKETS} sockets would be needed")  # fmt: skip

    def leave(self, group: str, source: str | None) -> None:
        """Drop a membership `join` made (nothing if there is none)."""
        member = self.where.pop((group, source), None)
        if member is None:
            return
        try:
            self._setsockopt(member, False, group, source)
        except OSError as exc:  # the interface went away (and the kernel dropped the membership with it)
            log.warning("proxy: leaving %s on %s: %s", _what(group, source), self.ifname, exc.strerror)
        sources = member.groups.get(group, set())
        sources.discard(source or "")
        member.full_groups.discard(group)
        if source is None or not sources:
            member.groups.pop(group, None)
            member.full = False
        if not member.groups:
            member.sock.close()
            self.pool.remove(member)

    def close(self) -> None:
        """Close every socket: the kernel leaves the groups (and reports so upstream)."""
        for member in self.pool:
            member.sock.close()
        self.pool.clear()
        self.where.clear()

    # --- internals ---------------------------------------------------------------------------

    def _candidates(self, group: str, asm: bool) -> Iterator[_Member]:
        """Sockets that may take the membership, best first, then new ones while the pool has room."""
        same: list[_Member] = []
        other: list[_Member] = []
        for member in self.pool:
            if member.asm != asm:
                continue
            if group in member.groups:
                if not asm and group not in member.full_groups:
                    same.append(member)  # keep a group's sources together
            elif not member.full:
                other.append(member)
        yield from same
        yield from other
        while len(self.pool) < MAX_SOCKETS:
            yield self._new(asm)

    def _new(self, asm: bool) -> _Member:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.ifname.encode())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # never bound to a port: nothing arrives anyway
        except OSError:
            sock.close()
            raise
        member = _Member(sock, asm)
        self.pool.append(member)
        return member

    def _setsockopt(self, member: _Member, join: bool, group: str, source: str | None) -> None:
        if source is None:
            member.sock.setsockopt(socket.IPPROTO_IP, MCAST_JOIN_GROUP if join else MCAST_LEAVE_GROUP,
                                   group_req(self.if_index, group))  # fmt: skip
        else:
            option = MCAST_JOIN_SOURCE_GROUP if join else MCAST_LEAVE_SOURCE_GROUP
            member.sock.setsockopt(socket.IPPROTO_IP, option, group_source_req(self.if_index, group, source))

    def _prune_empty(self) -> None:
        """Close sockets that hold nothing (a new socket whose first join was refused)."""
        for member in [m for m in self.pool if not m.groups]:
            member.sock.close()
            self.pool.remove(member)


def _what(group: str, source: str | None) -> str:
    return f"(*,{group})" if source is None else f"({source},{group})"
