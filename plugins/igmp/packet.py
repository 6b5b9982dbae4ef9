"""IGMP messages on the wire: parse what hosts and other routers send, build what we send.

Covers IGMPv1/v2 reports, v2 leaves, v1/v2/v3 queries (RFC 2236, RFC 3376
section 4) and v3 reports with group records, plus the IPv4 header around
them: received datagrams are split into header fields and payload, and the
header we send carries TTL 1 and the Router Alert option (RFC 2113), which
routers need to see IGMP for groups they have not joined.

Nothing here does I/O.  Anything that is not a well-formed message raises
`MalformedPacket`, which the caller counts and drops: a packet from the
network must never crash the router.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

IGMP_PROTOCOL = 2
"""IPPROTO_IGMP."""

MEMBERSHIP_QUERY = 0x11
V1_REPORT = 0x12
V2_REPORT = 0x16
V2_LEAVE = 0x17
V3_REPORT = 0x22

ALL_SYSTEMS = "224.0.0.1"
"""Where general queries go."""
ALL_ROUTERS = "224.0.0.2"
"""Where v2 leaves go."""
ALL_IGMPV3_ROUTERS = "224.0.0.22"
"""Where v3 reports go."""

# v3 group record types (RFC 3376 section 4.2.12)
MODE_IS_INCLUDE = 1
MODE_IS_EXCLUDE = 2
CHANGE_TO_INCLUDE_MODE = 3
CHANGE_TO_EXCLUDE_MODE = 4
ALLOW_NEW_SOURCES = 5
BLOCK_OLD_SOURCES = 6
RECORD_TYPES = frozenset(range(MODE_IS_INCLUDE, BLOCK_OLD_SOURCES + 1))
RECORD_NAMES = {1: "IS_IN", 2: "IS_EX", 3: "TO_IN", 4: "TO_EX", 5: "ALLOW", 6: "BLOCK"}

ROUTER_ALERT_OPTION = b"\x94\x04\x00\x00"
"""IP option 148 (copied flag set), length 4, value 0: "every router examines this packet"."""

MAX_CODE_VALUE = 31744
"""The largest value the v3 8-bit floating-point code can carry (mantissa 0xf, exponent 7)."""

_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_QUERY_V3 = struct.Struct("!BBH4sBBH")
_V3_REPORT_HEADER = struct.Struct("!BBHHH")
_RECORD_HEADER = struct.Struct("!BBH4s")


class MalformedPacket(ValueError):
    """A datagram that is not a valid IGMP message (the reason is the text)."""


# --- the 8-bit codes of RFC 3376 section 4.1.1 and 4.1.7 ------------------------------------


def decode_code(code: int) -> int:
    """Max Resp Code or QQIC to its value (tenths of a second for the first, seconds for the second)."""
    if not 0 <= code <= 0xFF:
        raise ValueError(f"an 8-bit code is 0..255, not {code}")
    if code < 0x80:
        return code
    exp = (code >> 4) & 0x7
    mant = code & 0xF
    return (mant | 0x10) << (exp + 3)


def encode_code(value: int) -> int:
    """The code of the largest representable value not above `value` (never longer than asked).

    Rounding down keeps a response window or an interval within what was
    configured; values above `MAX_CODE_VALUE` cannot be sent.
    """
    if value < 0 or value > MAX_CODE_VALUE:
        raise ValueError(f"{value} cannot be carried by an 8-bit IGMPv3 code (0..{MAX_CODE_VALUE})")
    if value < 0x80:
        return value
    for exp in range(7, -1, -1):
        mant = (value >> (exp + 3)) - 0x10
        if 0 <= mant <= 0xF:
            return 0x80 | (exp << 4) | mant
    raise AssertionError(f"unreachable: no code for {value}")  # pragma: no cover


# --- checksums and addresses ------------------------------------------------------------------


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _addr(raw: bytes) -> str:
    return str(ipaddress.IPv4Address(raw))


def _raw(address: str) -> bytes:
    return ipaddress.IPv4Address(address).packed


def _with_checksum(message: bytearray) -> bytes:
    message[2:4] = b"\x00\x00"
    message[2:4] = struct.pack("!H", checksum(bytes(message)))
    return bytes(message)


# --- messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """A membership query of any version.

    `max_response` is in tenths of a second; `version` is told by length and
    code (RFC 3376 section 7.1): 8 octets with code 0 is v1, 8 octets with a
    code is v2, 12 or more is v3.  `suppress` (S flag), `qrv`, `qqi` and
    `sources` exist in v3 only (False/0/0/() otherwise).
    """

    version: int
    group: str
    max_response: int
    suppress: bool = False
    qrv: int = 0
    qqi: int = 0
    sources: tuple[str, ...] = ()

    @property
    def is_general(self) -> bool:
        return self.group == "0.0.0.0"


@dataclass(frozen=True, slots=True)
class Report:
    """A v1 or v2 membership report for one group."""

    version: int
    group: str


@dataclass(frozen=True, slots=True)
class Leave:
    """A v2 leave group message."""

    group: str


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """One record of a v3 report: a record type (1..6) for `group` with its source list."""

    type: int
    group: str
    sources: tuple[str, ...] = ()
    aux: bytes = b""

    @property
    def name(self) -> str:
        return RECORD_NAMES.get(self.type, f"type {self.type}")


@dataclass(frozen=True, slots=True)
class V3Report:
    """A v3 membership report: group records, each applied on its own."""

    records: tuple[GroupRecord, ...]


@dataclass(frozen=True, slots=True)
class Unknown:
    """A checksummed message of a type a router does not process (silently ignored, RFC 3376 section 4)."""

    type: int


Message = Query | Report | Leave | V3Report | Unknown


def parse(data: bytes) -> Message:
    """One IGMP message (the IP payload); `MalformedPacket` when it is not well formed."""
    if len(data) < 8:
        raise MalformedPacket(f"{len(data)} octets: an IGMP message has at least 8")
    if checksum(data) != 0:
        raise MalformedPacket("bad checksum")
    kind = data[0]
    if kind == MEMBERSHIP_QUERY:
        return _parse_query(data)
    if kind in (V1_REPORT, V2_REPORT, V2_LEAVE):
        group = _addr(data[4:8])
        return Leave(group) if kind == V2_LEAVE else Report(1 if kind == V1_REPORT else 2, group)
    if kind == V3_REPORT:
        return _parse_v3_report(data)
    return Unknown(kind)


def _parse_query(data: bytes) -> Query:
    code = data[1]
    group = _addr(data[4:8])
    if len(data) == 8:
        return Query(1 if code == 0 else 2, group, code)
    if len(data) < 12:
        raise MalformedPacket(f"query of {len(data)} octets: neither v2 (8) nor v3 (12 or more)")
    _, _, _, _, flags, qqic, count = _QUERY_V3.unpack_from(data)
    end = 12 + 4 * count
    if len(data) < end:
        raise MalformedPacket(f"v3 query announces {count} sources but has room for {(len(data) - 12) // 4}")
    sources = tuple(_addr(data[i : i + 4]) for i in range(12, end, 4))
    return Query(3, group, decode_code(code), bool(flags & 0x08), flags & 0x07, decode_code(qqic), sources)


def _parse_v3_report(data: bytes) -> V3Report:
    _, _, _, _, count = _V3_REPORT_HEADER.unpack_from(data)
    offset = 8
    records = []
    for index in range(count):
        if len(data) < offset + 8:
            raise MalformedPacket(f"v3 report truncated in the header of group record {index} of {count}")
        rtype, aux_words, nsources, group = _RECORD_HEADER.unpack_from(data, offset)
        offset += 8
        end = offset + 4 * nsources
        aux_end = end + 4 * aux_words
        if len(data) < aux_end:
            raise MalformedPacket(f"v3 report truncated in group record {index} of {count}")
        sources = tuple(_addr(data[i : i + 4]) for i in range(offset, end, 4))
        records.append(GroupRecord(rtype, _addr(group), sources, bytes(data[end:aux_end])))
        offset = aux_end
    return V3Report(tuple(records))


# --- building -----------------------------------------------------------------------------------


def build_query(
    version: int,
    group: str,
    max_response: int,
    *,
    suppress: bool = False,
    qrv: int = 0,
    qqi: int = 0,
    sources: tuple[str, ...] | list[str] = (),
) -> bytes:
    """A query; `max_response` in tenths of a second.  v2 carries it in one octet (up to 25.5 s), and no `qrv` or
    `qqi` (ignored)."""
    if version == 2:
        if not 0 < max_response <= 0xFF:
            raise ValueError(f"a v2 query's max response time is 1..255 tenths, not {max_response}")
        if sources or suppress:
            raise ValueError("a v2 query carries no sources and no S flag")
        return _with_checksum(bytearray(struct.pack("!BBH4s", MEMBERSHIP_QUERY, max_response, 0, _raw(group))))
    if version != 3:
        raise ValueError(f"we send v2 or v3 queries, not v{version}")
    if not 0 <= qrv <= 7:
        raise ValueError(f"QRV is 3 bits: 0..7, not {qrv}")
    flags = (0x08 if suppress else 0) | qrv
    head = _QUERY_V3.pack(
        MEMBERSHIP_QUERY, encode_code(max_response), 0, _raw(group), flags, encode_code(qqi), len(sources)
    )
    return _with_checksum(bytearray(head + b"".join(_raw(s) for s in sources)))


def build_report(version: int, group: str) -> bytes:
    """A v1 or v2 report (tests and tools play hosts with it)."""
    kind = {1: V1_REPORT, 2: V2_REPORT}[version]
    return _with_checksum(bytearray(struct.pack("!BBH4s", kind, 0, 0, _raw(group))))


def build_leave(group: str) -> bytes:
    return _with_checksum(bytearray(struct.pack("!BBH4s", V2_LEAVE, 0, 0, _raw(group))))


def build_v3_report(records: list[GroupRecord] | tuple[GroupRecord, ...]) -> bytes:
    body = bytearray(_V3_REPORT_HEADER.pack(V3_REPORT, 0, 0, 0, len(records)))
    for record in records:
        if len(record.aux) % 4:
            raise ValueError("auxiliary data is a whole number of 32-bit words")
        body += _RECORD_HEADER.pack(record.type, len(record.aux) // 4, len(record.sources), _raw(record.group))
        body += b"".join(_raw(s) for s in record.sources) + record.aux
    return _with_checksum(body)


# --- IPv4 ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IPv4Header:
    """What the router needs of a received datagram's IP header."""

    source: str
    destination: str
    ttl: int
    router_alert: bool
    header_length: int
    total_length: int


def parse_ipv4(datagram: bytes) -> tuple[IPv4Header, bytes]:
    """Split a raw-socket datagram into its header and the IGMP payload; `MalformedPacket` if it does not add up."""
    if len(datagram) < 20:
        raise MalformedPacket(f"{len(datagram)} octets: shorter than an IPv4 header")
    ver_ihl, _, total, _, _, ttl, proto, _, src, dst = _IPV4_HEADER.unpack_from(datagram)
    if ver_ihl >> 4 != 4:
        raise MalformedPacket(f"IP version {ver_ihl >> 4}, not 4")
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < 20 or len(datagram) < ihl:
        raise MalformedPacket(f"IP header length {ihl} does not fit a {len(datagram)}-octet datagram")
    if proto != IGMP_PROTOCOL:
        raise MalformedPacket(f"IP protocol {proto}, not IGMP")
    if not ihl <= total <= len(datagram):
        raise MalformedPacket(f"IP total length {total} does not fit a {len(datagram)}-octet datagram")
    header = IPv4Header(_addr(src), _addr(dst), ttl, _has_router_alert(datagram[20:ihl]), ihl, total)
    return header, bytes(datagram[ihl:total])


def _has_router_alert(options: bytes) -> bool:
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # end of options
            return False
        if kind == 1:  # no-op
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            return False  # a broken option list: no alert we can trust
        if kind == ROUTER_ALERT_OPTION[0]:
            return True
        i += options[i + 1]
    return False


def build_ipv4(source: str, destination: str, payload: bytes, *, ttl: int = 1, identification: int = 0) -> bytes:
    """An IPv4 header with the Router Alert option, TTL 1 and precedence Internetwork Control, then `payload`.

    For a raw socket with IP_HDRINCL: what RFC 2236/3376 require of every IGMP message we send.
    """
    ihl = (20 + len(ROUTER_ALERT_OPTION)) // 4
    total = ihl * 4 + len(payload)
    header = bytearray(
        _IPV4_HEADER.pack(
            0x40 | ihl, 0xC0, total, identification & 0xFFFF, 0, ttl, IGMP_PROTOCOL, 0, _raw(source), _raw(destination)
        )
        + ROUTER_ALERT_OPTION
    )
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    return bytes(header) + payload
