"""The sockets of the igmp plugin, and the interfaces' addresses: the only I/O of IGMP.

Receiving: one packet socket per interface (``AF_PACKET``, ``SOCK_DGRAM``,
IPv4) with a kernel filter that passes IGMP only, and the interface in
all-multicast mode.  Why not a raw IGMP socket with ``IP_ROUTER_ALERT``:
the kernel hands a v2 report (sent to the group itself, which this machine
has not joined) to router-alert sockets only on the multicast forwarding
path, that is only while a multicast routing socket (``MRT_INIT``) has a
VIF on the interface; checked in namespaces, a v2 report never reached such
a socket without one.  IGMP must work whether or not the forwarder runs, so
it reads the link itself: every IGMP message that arrives on the interface,
whatever its destination, with the arrival interface known by construction.
All-multicast (``PACKET_MR_ALLMULTI``, dropped by the kernel when the
socket closes) keeps a real NIC from filtering out reports for groups
nobody on this machine joined.

Sending: one raw IGMP socket with ``IP_HDRINCL``: we write the IP header
ourselves (`packet.build_ipv4`) with TTL 1, the Router Alert option and the
interface's address as source, the address the querier election compares;
``IP_MULTICAST_IF`` (by if_index, set before each send) picks the
interface.  A filter that rejects everything keeps that socket from
queueing what it would otherwise receive.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

from mgm.plugins.igmp import packet
from mgm.plugins.links import Address

log = logging.getLogger(__name__)

# Linux values the socket module does not export.
IP_MULTICAST_IF = 32
IP_MULTICAST_LOOP = 34
SO_ATTACH_FILTER = 26
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_ALLMULTI = 2
PACKET_OUTGOING = 4
ETH_P_IP = 0x0800

RECV_SIZE = 65535

# Classic BPF over the IP header (a SOCK_DGRAM packet socket starts at the network header).
_BPF_LD_B_ABS = 0x30
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06
IGMP_ONLY = ((_BPF_LD_B_ABS, 0, 0, 9), (_BPF_JEQ_K, 0, 1, packet.IGMP_PROTOCOL), (_BPF_RET_K, 0, 0, RECV_SIZE),
             (_BPF_RET_K, 0, 0, 0))  # fmt: skip
"""Load the protocol octet; IGMP: keep the whole datagram; else drop."""
NOTHING = ((_BPF_RET_K, 0, 0, 0),)
_BPF_LD_W_ABS = 0x20


def flows_only(flows: Iterable[tuple[str, str]]) -> tuple[tuple[int, int, int, int], ...]:
    """A program that keeps the datagrams of the (source, group) `flows`, whole, and drops the rest: per flow,
    load the source address and compare, then the destination (short jumps only, any number of flows)."""
    program: list[tuple[int, int, int, int]] = []
    for source, group in flows:
        program += [(_BPF_LD_W_ABS, 0, 0, 12), (_BPF_JEQ_K, 0, 3, int(ipaddress.IPv4Address(source))),
                    (_BPF_LD_W_ABS, 0, 0, 16), (_BPF_JEQ_K, 0, 1, int(ipaddress.IPv4Address(group))),
                    (_BPF_RET_K, 0, 0, RECV_SIZE)]  # fmt: skip
    return (*program, *NOTHING)


def attach_filter(sock: socket.socket, program: tuple[tuple[int, int, int, int], ...]) -> None:
    """SO_ATTACH_FILTER with a classic BPF program of (code, jt, jf, k) instructions."""
    code = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HL", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def ip_mreqn(group: str, if_index: int) -> bytes:
    """struct ip_mreqn: the group (or 0.0.0.0), no local address, the interface by index."""
    return socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("@i", if_index)


def _drain(sock: socket.socket) -> None:
    """Discard what was queued before the filter was attached."""
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while True:
            sock.recv(RECV_SIZE)


class LinkListener:
    """Every IGMP datagram that arrives on one interface (not what this machine sends), or what another
    `program` keeps (pim's DR reads the packets it registers through one)."""

    def __init__(self, if_index: int, program: tuple[tuple[int, int, int, int], ...] = IGMP_ONLY) -> None:
        self.if_index = if_index
        # Protocol 0 at creation, the protocol at bind: a packet socket created with a protocol is hooked
        # into every device at once, and bind() then unhooks it, waiting for an RCU grace period (14 ms
        # each here: igmp on 1,000 interfaces took 17 s to start).  With 0 nothing arrives before bind.
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        try:
            self.sock.setblocking(False)
            attach_filter(self.sock, program)
            self.sock.bind((socket.if_indextoname(if_index), ETH_P_IP))
            _drain(self.sock)
            mreq = struct.pack("@iHH8s", if_index, PACKET_MR_ALLMULTI, 0, b"")
            self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self) -> Iterator[bytes]:
        """Every datagram waiting now (whole IP datagrams); stops when none is left."""
        while True:
            try:
                data, address = self.sock.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            if address[2] == PACKET_OUTGOING:
                continue  # our own queries and this machine's own reports
            yield data

    def close(self) -> None:
        self.sock.close()


class IgmpSocket:
    """Receive on `if_indexes` (a `LinkListener` each) and send out of a chosen one."""

    def __init__(self, if_indexes: Iterable[int]) -> None:
        self.listeners: dict[int, LinkListener] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
        try:
            attach_filter(self.sock, NOTHING)
            self.sock.setblocking(False)
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            self.sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_LOOP, 0)
            for if_index in if_indexes:
                self.listeners[if_index] = LinkListener(if_index)
        except BaseException:
            self.close()
            raise

    def send(self, if_index: int, source: str, destination: str, payload: bytes) -> None:
        """One IGMP message out of `if_index` with our IP header; OSError is the caller's to count."""
        self.sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_IF, ip_mreqn("0.0.0.0", if_index))
        self.sock.sendto(packet.build_ipv4(source, destination, payload), (destination, 0))

    def close(self) -> None:
        for listener in self.listeners.values():
            listener.close()
        self.listeners.clear()
        self.sock.close()


class Addresses(NamedTuple):
    """This machine's IPv4 addresses as the routers need them."""

    primary: dict[int, str]
    """{if_index: primary address}: the address a router queries from."""
    every: set[str]
    """Every address of this machine: messages from them are our own."""
    subnets: dict[int, tuple[ipaddress.IPv4Network, ...]]
    """{if_index: the subnets of its addresses (and of their peers)}: where hosts on the link send from."""


def interface_addresses(addresses: Mapping[int, Mapping[tuple[str, int], Address]]) -> Addresses:
    """What the routers need of every interface's addresses (`LinkWatcher.addresses`: the primary first)."""
    primary: dict[int, str] = {}
    every: set[str] = set()
    subnets: dict[int, set[ipaddress.IPv4Network]] = {}
    for index, held in addresses.items():
        for address in held.values():
            every.add(address.local)
            if not address.secondary:
                primary.setdefault(index, address.local)
            # The peer differs from the local address on a point-to-point address: its subnet is the peer's.
            for end in {address.local, address.peer}:
                subnets.setdefault(index, set()).add(ipaddress.IPv4Network(f"{end}/{address.prefixlen}", strict=False))
    return Addresses(primary, every, {i: tuple(sorted(nets)) for i, nets in subnets.items()})
