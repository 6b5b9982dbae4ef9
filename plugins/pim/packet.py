"""PIM-SM messages on the wire (RFC 7761 section 4.9): parse what neighbours send, build what we send.

IPv4 only.  Covered: the common header and its checksum, the encoded
unicast, group and source addresses (4.9.1), Hello and its options
(4.9.2: holdtime, LAN prune delay, DR priority, generation ID, address
list; unknown options are kept as they came and otherwise ignored),
Join/Prune (4.9.5), Assert (4.9.6), Register (4.9.3: its flags and the
inner packet) and Register-Stop (4.9.4).  Other types (Bootstrap,
Candidate-RP-Advertisement, ...) parse as `Unknown`.

Nothing here does I/O.  Anything that is not a well-formed message raises
`MalformedPacket`, which the caller counts and drops: a packet from the
network must never crash the router.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from mgm.plugins.igmp.packet import checksum

PIM_PROTOCOL = 103
"""IPPROTO_PIM."""
ALL_PIM_ROUTERS = "224.0.0.13"
VERSION = 2

HELLO, REGISTER, REGISTER_STOP, JOIN_PRUNE, BOOTSTRAP, ASSERT = 0, 1, 2, 3, 4, 5
TYPE_NAMES = {HELLO: "hello", REGISTER: "register", REGISTER_STOP: "register_stop", JOIN_PRUNE: "join_prune",
              BOOTSTRAP: "bootstrap", ASSERT: "assert", 8: "candidate_rp_advertisement"}  # fmt: skip

# Hello option types (4.9.2)
OPT_HOLDTIME, OPT_LAN_PRUNE_DELAY, OPT_DR_PRIORITY, OPT_GENERATION_ID, OPT_ADDRESS_LIST = 1, 2, 19, 20, 24
HOLDTIME_FOREVER = 0xFFFF
"""A neighbour that sends this holdtime never times out (4.3.1)."""

FAMILY_IPV4 = 1
FAMILY_IPV6 = 2
NATIVE_ENCODING = 0
GROUP_FLAG_BIDIR, GROUP_FLAG_ZONE = 0x80, 0x01
SOURCE_FLAG_SPARSE, SOURCE_FLAG_WILDCARD, SOURCE_FLAG_RPT = 0x04, 0x02, 0x01
REGISTER_FLAG_BORDER, REGISTER_FLAG_NULL = 0x80000000, 0x40000000
ASSERT_FLAG_RPT = 0x80000000

_HEADER = struct.Struct("!BBH")
_OPTION = struct.Struct("!HH")
_UNICAST = struct.Struct("!BB4s")
_GROUP = struct.Struct("!BBBB4s")
_SOURCE = struct.Struct("!BBBB4s")
_JP_HEAD = struct.Struct("!xBH")  # reserved, number of groups, holdtime (after the upstream neighbour)
_JP_COUNTS = struct.Struct("!HH")
_ASSERT_METRIC = struct.Struct("!II")


class MalformedPacket(ValueError):
    """Bytes that are not a valid PIM message (the reason is the text)."""


# --- encoded addresses (4.9.1) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodedGroup:
    address: str
    mask_len: int = 32
    bidir: bool = False
    zone: bool = False


@dataclass(frozen=True, slots=True)
class EncodedSource:
    """A source in a Join/Prune: S (sparse, always set by PIM-SM), W (wildcard: the RP of a (*,G)), R (RPT)."""

    address: str
    mask_len: int = 32
    sparse: bool = True
    wildcard: bool = False
    rpt: bool = False


def _raw(address: str) -> bytes:
    # inet_pton, not ipaddress: a periodic round of 10,000 joins spent most of its time parsing addresses
    try:
        return socket.inet_pton(socket.AF_INET, address)
    except (OSError, TypeError) as exc:
        raise ValueError(f"not an IPv4 address: {address!r}") from exc


def _text(raw: bytes) -> str:
    return socket.inet_ntoa(raw)


def _family(family: int, encoding: int, what: str) -> None:
    if family != FAMILY_IPV4:
        raise MalformedPacket(f"{what}: address family {family}, not IPv4 (1)")
    if encoding != NATIVE_ENCODING:
        raise MalformedPacket(f"{what}: encoding type {encoding}, not native (0)")


def _mask(mask_len: int, what: str) -> int:
    if not 0 <= mask_len <= 32:
        raise MalformedPacket(f"{what}: mask length {mask_len} (at most 32)")
    return mask_len


def encode_unicast(address: str) -> bytes:
    return _UNICAST.pack(FAMILY_IPV4, NATIVE_ENCODING, _raw(address))


def decode_unicast(data: bytes, at: int, what: str = "encoded unicast address") -> tuple[str, int]:
    if len(data) < at + _UNICAST.size:
        raise MalformedPacket(f"{what}: truncated")
    family, encoding, raw = _UNICAST.unpack_from(data, at)
    _family(family, encoding, what)
    return _text(raw), at + _UNICAST.size


def encode_group(group: EncodedGroup) -> bytes:
    flags = (GROUP_FLAG_BIDIR if group.bidir else 0) | (GROUP_FLAG_ZONE if group.zone else 0)
    return _GROUP.pack(FAMILY_IPV4, NATIVE_ENCODING, flags, group.mask_len, _raw(group.address))


def decode_group(data: bytes, at: int) -> tuple[EncodedGroup, int]:
    if len(data) < at + _GROUP.size:
        raise MalformedPacket("encoded group address: truncated")
    family, encoding, flags, mask_len, raw = _GROUP.unpack_from(data, at)
    _family(family, encoding, "encoded group address")
    group = EncodedGroup(_text(raw), _mask(mask_len, "encoded group address"), bool(flags & GROUP_FLAG_BIDIR),
                         bool(flags & GROUP_FLAG_ZONE))  # fmt: skip
    return group, at + _GROUP.size


def encode_source(source: EncodedSource) -> bytes:
    flags = ((SOURCE_FLAG_SPARSE if source.sparse else 0) | (SOURCE_FLAG_WILDCARD if source.wildcard else 0)
             | (SOURCE_FLAG_RPT if source.rpt else 0))  # fmt: skip
    return _SOURCE.pack(FAMILY_IPV4, NATIVE_ENCODING, flags, source.mask_len, _raw(source.address))


def decode_source(data: bytes, at: int) -> tuple[EncodedSource, int]:
    if len(data) < at + _SOURCE.size:
        raise MalformedPacket("encoded source address: truncated")
    family, encoding, flags, mask_len, raw = _SOURCE.unpack_from(data, at)
    _family(family, encoding, "encoded source address")
    source = EncodedSource(_text(raw), _mask(mask_len, "encoded source address"), bool(flags & SOURCE_FLAG_SPARSE),
                           bool(flags & SOURCE_FLAG_WILDCARD), bool(flags & SOURCE_FLAG_RPT))  # fmt: skip
    return source, at + _SOURCE.size


# --- messages --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """A Hello; an option the sender left out is None (LAN prune delay: both of its values and `tracking`)."""

    holdtime: int | None = None
    dr_priority: int | None = None
    generation_id: int | None = None
    propagation_delay: int | None = None
    """LAN prune delay option, milliseconds (15 bits)."""
    override_interval: int | None = None
    """LAN prune delay option, milliseconds."""
    tracking: bool = False
    """The T bit of the LAN prune delay option: the sender can disable join suppression."""
    secondary: tuple[str, ...] = ()
    unknown: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class JoinPruneGroup:
    group: EncodedGroup
    joins: tuple[EncodedSource, ...] = ()
    prunes: tuple[EncodedSource, ...] = ()


@dataclass(frozen=True, slots=True)
class JoinPrune:
    upstream_neighbor: str
    holdtime: int
    groups: tuple[JoinPruneGroup, ...] = ()


@dataclass(frozen=True, slots=True)
class Assert:
    group: EncodedGroup
    source: str
    rpt: bool
    preference: int
    metric: int


@dataclass(frozen=True, slots=True)
class Register:
    border: bool
    null: bool
    packet: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class RegisterStop:
    group: EncodedGroup
    source: str


@dataclass(frozen=True, slots=True)
class Unknown:
    type: int
    body: bytes = field(repr=False)


Message = Hello | JoinPrune | Assert | Register | RegisterStop | Unknown


def parse(data: bytes) -> Message:
    """The PIM message in `data` (the IP payload); `MalformedPacket` if it is not one."""
    if len(data) < _HEADER.size:
        raise MalformedPacket(f"{len(data)} octets: shorter than a PIM header")
    ver_type, _reserved, _checksum = _HEADER.unpack_from(data)
    version, kind = ver_type >> 4, ver_type & 0x0F
    if version != VERSION:
        raise MalformedPacket(f"PIM version {version}, not 2")
    covered = data[:8] if kind == REGISTER else data  # 4.9: a Register's checksum leaves out the data packet
    if checksum(covered) != 0 and not (kind == REGISTER and checksum(data) == 0):
        raise MalformedPacket(f"bad checksum in a {TYPE_NAMES.get(kind, f'type {kind}')} message")
    body = bytes(data[_HEADER.size :])
    try:
        if kind == HELLO:
            return _parse_hello(body)
        if kind == JOIN_PRUNE:
            return _parse_join_prune(body)
        if kind == ASSERT:
            return _parse_assert(body)
        if kind == REGISTER:
            return _parse_register(body)
        if kind == REGISTER_STOP:
            group, at = decode_group(body, 0)
            source, _ = decode_unicast(body, at, "Register-Stop source")
            return RegisterStop(group, source)
    except struct.error as exc:  # pragma: no cover - every read above checks its length first
        raise MalformedPacket(f"truncated: {exc}") from None
    return Unknown(kind, body)


def _parse_hello(body: bytes) -> Hello:
    values: dict[str, object] = {}
    unknown: list[tuple[int, bytes]] = []
    at = 0
    while at < len(body):
        if len(body) < at + _OPTION.size:
            raise MalformedPacket("Hello: a truncated option header")
        kind, length = _OPTION.unpack_from(body, at)
        at += _OPTION.size
        value = body[at : at + length]
        if len(value) != length:
            raise MalformedPacket(f"Hello: option {kind} says {length} octets, {len(value)} remain")
        at += length
        if kind == OPT_HOLDTIME and length == 2:
            values["holdtime"] = struct.unpack("!H", value)[0]
        elif kind == OPT_DR_PRIORITY and length == 4:
            values["dr_priority"] = struct.unpack("!I", value)[0]
        elif kind == OPT_GENERATION_ID and length == 4:
            values["generation_id"] = struct.unpack("!I", value)[0]
        elif kind == OPT_LAN_PRUNE_DELAY and length == 4:
            delay, override = struct.unpack("!HH", value)
            values.update(propagation_delay=delay & 0x7FFF, override_interval=override, tracking=bool(delay & 0x8000))
        elif kind == OPT_ADDRESS_LIST:
            values["secondary"] = _address_list(value)
        elif kind in (OPT_HOLDTIME, OPT_DR_PRIORITY, OPT_GENERATION_ID, OPT_LAN_PRUNE_DELAY):
            raise MalformedPacket(f"Hello: option {kind} with length {length}")
        else:
            unknown.append((kind, bytes(value)))
    return Hello(unknown=tuple(unknown), **values)  # type: ignore[arg-type]


def _address_list(value: bytes) -> tuple[str, ...]:
    """The IPv4 addresses of a Hello's address list; other families are skipped (FRR lists its IPv6 link-local
    addresses here too), and a family we cannot size ends the list, not the Hello."""
    addresses, pos = [], 0
    while pos + 2 <= len(value):
        family = value[pos]
        if family == FAMILY_IPV4:
            address, pos = decode_unicast(value, pos, "Hello address list")
            addresses.append(address)
        elif family == FAMILY_IPV6:
            pos += 2 + 16
        else:
            break
    return tuple(addresses)


def _parse_join_prune(body: bytes) -> JoinPrune:
    upstream, at = decode_unicast(body, 0, "Join/Prune upstream neighbour")
    if len(body) < at + _JP_HEAD.size:
        raise MalformedPacket("Join/Prune: truncated after the upstream neighbour")
    count, holdtime = _JP_HEAD.unpack_from(body, at)
    at += _JP_HEAD.size
    groups = []
    for _ in range(count):
        group, at = decode_group(body, at)
        if len(body) < at + _JP_COUNTS.size:
            raise MalformedPacket("Join/Prune: a group without its source counts")
        joined, pruned = _JP_COUNTS.unpack_from(body, at)
        at += _JP_COUNTS.size
        sources = []
        for _ in range(joined + pruned):
            source, at = decode_source(body, at)
            sources.append(source)
        groups.append(JoinPruneGroup(group, tuple(sources[:joined]), tuple(sources[joined:])))
    if at != len(body):
        raise MalformedPacket(f"Join/Prune: {len(body) - at} octets after the last group")
    return JoinPrune(upstream, holdtime, tuple(groups))


def _parse_assert(body: bytes) -> Assert:
    group, at = decode_group(body, 0)
    source, at = decode_unicast(body, at, "Assert source")
    if len(body) < at + _ASSERT_METRIC.size:
        raise MalformedPacket("Assert: truncated metric")
    preference, metric = _ASSERT_METRIC.unpack_from(body, at)
    return Assert(group, source, bool(preference & ASSERT_FLAG_RPT), preference & ~ASSERT_FLAG_RPT, metric)


def _parse_register(body: bytes) -> Register:
    if len(body) < 4:
        raise MalformedPacket("Register: truncated flags")
    (flags,) = struct.unpack_from("!I", body)
    return Register(bool(flags & REGISTER_FLAG_BORDER), bool(flags & REGISTER_FLAG_NULL), bytes(body[4:]))


# --- building ---------------------------------------------------------------------------------


def _message(kind: int, body: bytes) -> bytes:
    message = bytearray(_HEADER.pack(VERSION << 4 | kind, 0, 0) + body)
    covered = message[:8] if kind == REGISTER else message
    message[2:4] = struct.pack("!H", checksum(bytes(covered)))
    return bytes(message)


def dummy_header(source: str, group: str) -> bytes:
    """What a null-Register carries (4.4.1): an IPv4 header of (source, group) with no payload."""
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 64, 17, 0, socket.inet_aton(source),
                                   socket.inet_aton(group)))  # fmt: skip
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    return bytes(header)


def build(message: Message) -> bytes:
    """The bytes of `message`, header and checksum included."""
    if isinstance(message, Hello):
        return _message(HELLO, _hello_body(message))
    if isinstance(message, JoinPrune):
        body = bytearray(encode_unicast(message.upstream_neighbor))
        body += _JP_HEAD.pack(len(message.groups), message.holdtime)
        for entry in message.groups:
            body += encode_group(entry.group) + _JP_COUNTS.pack(len(entry.joins), len(entry.prunes))
            for source in (*entry.joins, *entry.prunes):
                body += encode_source(source)
        return _message(JOIN_PRUNE, bytes(body))
    if isinstance(message, Assert):
        preference = message.preference | (ASSERT_FLAG_RPT if message.rpt else 0)
        return _message(ASSERT, encode_group(message.group) + encode_unicast(message.source)
                        + _ASSERT_METRIC.pack(preference, message.metric))  # fmt: skip
    if isinstance(message, Register):
        flags = (REGISTER_FLAG_BORDER if message.border else 0) | (REGISTER_FLAG_NULL if message.null else 0)
        return _message(REGISTER, struct.pack("!I", flags) + message.packet)
    if isinstance(message, RegisterStop):
        return _message(REGISTER_STOP, encode_group(message.group) + encode_unicast(message.source))
    return _message(message.type, message.body)


def _hello_body(hello: Hello) -> bytes:
    body = bytearray()

    def option(kind: int, value: bytes) -> None:
        body.extend(_OPTION.pack(kind, len(value)) + value)

    if hello.holdtime is not None:
        option(OPT_HOLDTIME, struct.pack("!H", hello.holdtime))
    if hello.propagation_delay is not None and hello.override_interval is not None:
        delay = (hello.propagation_delay & 0x7FFF) | (0x8000 if hello.tracking else 0)
        option(OPT_LAN_PRUNE_DELAY, struct.pack("!HH", delay, hello.override_interval))
    if hello.dr_priority is not None:
        option(OPT_DR_PRIORITY, struct.pack("!I", hello.dr_priority))
    if hello.generation_id is not None:
        option(OPT_GENERATION_ID, struct.pack("!I", hello.generation_id))
    if hello.secondary:
        option(OPT_ADDRESS_LIST, b"".join(encode_unicast(a) for a in hello.secondary))
    for kind, value in hello.unknown:
        option(kind, value)
    return bytes(body)
