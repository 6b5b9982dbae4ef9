"""The kernel's unicast routes: the interface (and gateway) towards an address, by one RTM_GETROUTE each.

The manager's route resolver (the incoming interface of a new flow) and PIM's RPF (the neighbour
towards a source or an RP) both ask it.

The core asks it synchronously, in the middle of a transition, for a new
(S,G) and for a source-specific alert (mgm.core.state `_towards`).  pyroute2's
IPRoute cannot answer there: it runs an asyncio loop of its own, which cannot
run inside the manager's (pyroute2 0.9: "Cannot run the event loop while
another loop is running"), so every lookup failed and fell back to the
arrival interface.  So this is one RTM_GETROUTE (rtnetlink(7)) on a blocking
netlink socket of its own.  The kernel answers within the send: a lookup
holds the manager's loop about 10 us (pyroute2's message classes alone cost
150 us), and TIMEOUT bounds it should the answer not come.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import NamedTuple

from mgm.core.types import ANY, Interface

log = logging.getLogger(__name__)

NLMSG_ERROR = 2
NLM_F_REQUEST = 1
RTM_NEWROUTE = 24
RTM_GETROUTE = 26
RTN_UNICAST = 1
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
_NLMSG = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_RTA = struct.Struct("=HH")  # rtattr: length, type
_INT = struct.Struct("=i")
_REQUEST_LEN = _NLMSG.size + _RTMSG.size + _RTA.size + 4

class Route(NamedTuple):
    """A unicast route: its interface, and its gateway (None: the destination is on that link)."""

    if_index: int
    gateway: str | None


NO_ROUTE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EINVAL})
"""The kernel's answers for no route, an unreachable, a prohibit and a blackhole route: no interface towards S."""
TIMEOUT = 0.05
WARN_INTERVAL = 60.0
"""Lookup failures are warnings, at most one this often (a failing socket fails every new flow)."""


class KernelRoutes:
    """`resolve(source)`: the interface of the unicast route towards `source`, or None.

    Only unicast routes count: no route, or a local source (our own address),
    is None, and the core falls back to the arrival interface.  The next hop
    is "0.0.0.0": Linux interfaces are broadcast or point-to-point.  The
    socket opens at once, so a process that may not use netlink says so at
    start, not at its first flow.
    """

    def __init__(self, timeout: float = TIMEOUT, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._seq = 0
        self._warned_at = -math.inf
        self._unsaid = 0
        self._sock: socket.socket | None = _open()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __call__(self, source: str) -> Interface | None:
        """The interface towards `source` as the manager's core wants it (next hop 0.0.0.0), or None."""
        found = self.route(source)
        return None if found is None else Interface(found.if_index, ANY)

    def route(self, destination: str) -> Route | None:
        """The unicast route towards `destination` (its interface and gateway), or None: no route, a local
        address, or a lookup that failed (warned about at most once a minute)."""
        try:
            return self._lookup(destination)
        except (OSError, ValueError, struct.error) as exc:  # the last two: an answer we cannot read
            if isinstance(exc, OSError) and exc.errno in NO_ROUTE:
                log.debug("no route towards %s: %s", destination, os.strerror(exc.errno))
            else:
                self.close()  # the next lookup starts on a fresh socket, with no late answer queued
                self._warn(destination, exc)
            return None

    def _lookup(self, source: str) -> Route | None:
        if self._sock is None:
            self._sock = _open()
        sock = self._sock
        self._seq = self._seq % 0xFFFFFFFF + 1
        seq = self._seq
        sock.send(
            _NLMSG.pack(_REQUEST_LEN, RTM_GETROUTE, NLM_F_REQUEST, seq, 0)
            + _RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0)
            + _RTA.pack(_RTA.size + 4, RTA_DST)
            + socket.inet_aton(source)
        )
        deadline = self._clock() + self.timeout
        while True:
            left = deadline - self._clock()
            if left <= 0:
                raise TimeoutError(f"no answer from the kernel within {self.timeout} s")
            sock.settimeout(left)
            data = sock.recv(65536)
            length, kind, _, got, _ = _NLMSG.unpack_from(data)
            if got != seq:
                continue  # not ours (none is expected: a failed lookup closes the socket)
            if kind == NLMSG_ERROR:
                code = -_INT.unpack_from(data, _NLMSG.size)[0]
                raise OSError(code, os.strerror(code))
            if kind != RTM_NEWROUTE:
                raise ValueError(f"netlink message type {kind} in answer to RTM_GETROUTE")
            return _route(data[:length])

    def _warn(self, source: str, exc: Exception) -> None:
        now = self._clock()
        if now < self._warned_at + WARN_INTERVAL:
            self._unsaid += 1
            return
        more = f"; {self._unsaid} more since the last such warning" if self._unsaid else ""
        self._warned_at, self._unsaid = now, 0
        log.warning(
            "route lookup towards %s failed (%s: %s): taken as no route, so the incoming interface is the arrival "
            "interface and (S,G) alerts are not sent%s; such warnings at most once a minute",
            source, type(exc).__name__, exc, more,
        )  # fmt: skip


def _open() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
    except OSError:
        sock.close()
        raise
    return sock


def _route(msg: bytes) -> Route | None:
    """RTA_OIF and RTA_GATEWAY of an RTM_NEWROUTE answer, if the route is unicast (not local, broadcast...)."""
    if _RTMSG.unpack_from(msg, _NLMSG.size)[7] != RTN_UNICAST:
        return None
    if_index: int | None = None
    gateway: str | None = None
    pos = _NLMSG.size + _RTMSG.size
    while pos + _RTA.size <= len(msg):
        rta_len, rta_type = _RTA.unpack_from(msg, pos)
        if rta_len < _RTA.size:
            break
        if rta_type == RTA_OIF and rta_len >= _RTA.size + 4:
            if_index = _INT.unpack_from(msg, pos + _RTA.size)[0]
        elif rta_type == RTA_GATEWAY and rta_len >= _RTA.size + 4:
            gateway = socket.inet_ntoa(msg[pos + _RTA.size : pos + _RTA.size + 4])
        pos += (rta_len + 3) & ~3
    return None if if_index is None else Route(if_index, gateway)
