"""NFLOG (nfnetlink_log): how the nftables dataplane hears of new flows and wrong-interface packets.

The ruleset (`nftables`) logs, at most once per (incoming interface,
source, group) in a while and under a global rate limit, the first packet
of a flow it has no entry for (prefix ``NEW_PREFIX``) and a packet of a
known (S,G) that came in on another interface (``WRONG_IF_PREFIX``).  This
module binds one NFLOG group and turns those messages into the same
`Upcall` values the MRT socket produces (NOCACHE, WRONGVIF), the "VIF"
being the if_index the packet came in on.

pyroute2 has no nfnetlink_log messages, and the few we need are small: a
bind, a copy mode, a queue threshold of one (the kernel's default holds
messages for up to a second, which would delay every new flow), then
packet messages of which we read three attributes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct

from mgm.core.runtime.routes import NLM_F_REQUEST, NLMSG_ERROR
from mgm.plugins.forwarder.mroute import IGMPMSG_NOCACHE, IGMPMSG_WRONGVIF, Upcall

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_QTHRESH = 4
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2
NFULA_IFINDEX_INDEV = 4
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NLM_F_ACK = 4
NLA_F_NESTED = 1 << 15

NEW_PREFIX = "mgm-new"
WRONG_IF_PREFIX = "mgm-wrongif"
HEADER_RANGE = 20
"""Bytes copied of a wrong-interface packet: the IPv4 header without options, which holds source and group."""
COPY_RANGE = 0xFFFF
"""Bytes copied of the first packet of a new flow: all of it, so the forwarder can send it on once resolved."""

_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")  # family, version, res_id (big-endian group)
_NLA = struct.Struct("=HH")


class NflogError(OSError):
    """Binding the NFLOG group failed; the message says why and what to do."""


def _attr(kind: int, payload: bytes) -> bytes:
    length = _NLA.size + len(payload)
    return _NLA.pack(length, kind) + payload + bytes(-length % 4)


def _config_message(group: int, attrs: bytes, seq: int) -> bytes:
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    return _NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def parse_packets(data: bytes) -> list[Upcall]:
    """The upcalls in one datagram of NFLOG messages (anything else, or malformed, is skipped)."""
    out: list[Upcall] = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            break
        if kind == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            upcall = _parse_packet(data[offset + _NLMSG.size + _NFGEN.size : offset + length])
            if upcall is not None:
                out.append(upcall)
        offset += (length + 3) & ~3
    return out


def _parse_packet(attrs: bytes) -> Upcall | None:
    prefix = payload = None
    indev = 0
    pos = 0
    while pos + _NLA.size <= len(attrs):
        length, kind = _NLA.unpack_from(attrs, pos)
        if length < _NLA.size:
            return None
        value = attrs[pos + _NLA.size : pos + length]
        kind &= ~NLA_F_NESTED
        if kind == NFULA_PREFIX:
            prefix = value.rstrip(b"\0").decode("ascii", "replace")
        elif kind == NFULA_IFINDEX_INDEV and len(value) == 4:
            indev = struct.unpack("!I", value)[0]
        elif kind == NFULA_PAYLOAD:
            payload = value
        pos += (length + 3) & ~3
    if payload is None or len(payload) < 20 or payload[0] >> 4 != 4 or indev <= 0:
        return None
    upcall_kind = {NEW_PREFIX: IGMPMSG_NOCACHE, WRONG_IF_PREFIX: IGMPMSG_WRONGVIF}.get(prefix or "")
    if upcall_kind is None:
        return None
    source, group = socket.inet_ntoa(payload[12:16]), socket.inet_ntoa(payload[16:20])
    held = bytes(payload) if upcall_kind == IGMPMSG_NOCACHE else b""
    return Upcall(upcall_kind, indev, source, group, held)


class NflogSocket:
    """One NFLOG group, bound for this process (a second binder of the same group is refused by the kernel)."""

    def __init__(self, group: int) -> None:
        if not 0 <= group <= 0xFFFF:
            raise ValueError(f"an NFLOG group is 0..65535, not {group}")
        self.group = group
        self._seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.settimeout(2.0)
            self.sock.bind((0, 0))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._config(_attr(NFULA_CFG_CMD, struct.pack("=B3x", NFULNL_CFG_CMD_BIND)), "bind")
            self._config(_attr(NFULA_CFG_MODE, struct.pack("!IBx", COPY_RANGE, NFULNL_COPY_PACKET)), "copy mode")
            self._config(_attr(NFULA_CFG_QTHRESH, struct.pack("!I", 1)), "queue threshold")
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise
        self.closed = False

    def _config(self, attrs: bytes, what: str) -> None:
        """Send one config message and wait for its acknowledgement (packet messages before it are skipped)."""
        self._seq += 1
        self.sock.send(_config_message(self.group, attrs, self._seq))
        for _ in range(1000):
            reply = self.sock.recv(65536)
            offset = 0
            while offset + _NLMSG.size + 4 <= len(reply):
                length, kind, _flags, seq, _pid = _NLMSG.unpack_from(reply, offset)
                if kind == NLMSG_ERROR and seq == self._seq:
                    self._check(-struct.unpack_from("=i", reply, offset + _NLMSG.size)[0], what)
                    return
                if length < _NLMSG.size:
                    break
                offset += (length + 3) & ~3
        raise NflogError(errno.EPROTO, f"NFLOG group {self.group}: {what}: no acknowledgement from the kernel")

    def _check(self, code: int, what: str) -> None:
        if code == 0:
            return
        if code in (errno.EPERM, errno.EBUSY, errno.EEXIST) and what == "bind":
            raise NflogError(code, f"NFLOG group {self.group} is bound by another process (a second mgmbus "
                                   "forwarder, ulogd?): give this forwarder another nflog_group")  # fmt: skip
        if code in (errno.ENOENT, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT):
            raise NflogError(code, f"NFLOG group {self.group}: {what}: this kernel has no nfnetlink_log "
                                   "(CONFIG_NETFILTER_NETLINK_LOG)")  # fmt: skip
        raise NflogError(code, f"NFLOG group {self.group}: {what}: {os.strerror(code)}")

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_upcalls(self, limit: int = 10_000) -> list[Upcall]:
        """Every message queued now (non-blocking), as upcalls; an overrun is never fatal (those flows are logged
        again after the rule's hold time)."""
        out: list[Upcall] = []
        for _ in range(limit):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped messages: those flows are logged again
                    continue
                raise
            out.extend(parse_packets(data))
        return out

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(OSError):  # the kernel unbinds a closed socket's group anyway
            self.sock.settimeout(1.0)
            self._config(_attr(NFULA_CFG_CMD, struct.pack("=B3x", NFULNL_CFG_CMD_UNBIND)), "unbind")
        self.sock.close()
