"""plugins/igmp/packet.py: every message round-trips, and nothing malformed gets past the parser."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgm.plugins.igmp import packet
from mgm.plugins.igmp.packet import (
    GroupRecord,
    Leave,
    MalformedPacket,
    Query,
    Report,
    Unknown,
    V3Report,
    build_ipv4,
    build_leave,
    build_query,
    build_report,
    build_v3_report,
    checksum,
    decode_code,
    encode_code,
    parse,
    parse_ipv4,
)

G = "239.1.2.3"
S1, S2 = "10.0.0.1", "10.0.0.2"


def refresh_checksum(data: bytes) -> bytes:
    """`data` with its IGMP checksum recomputed (to build well-checksummed but malformed messages)."""
    raw = bytearray(data)
    raw[2:4] = b"\x00\x00"
    raw[2:4] = struct.pack("!H", checksum(bytes(raw)))
    return bytes(raw)


# --- checksum and codes -----------------------------------------------------------------------


def test_checksum_of_the_rfc1071_example() -> None:
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_checksum_of_odd_length_pads_with_zero() -> None:
    assert checksum(b"\x12\x34\x56") == checksum(b"\x12\x34\x56\x00")


def test_small_codes_are_the_value_itself() -> None:
    assert [encode_code(v) for v in (0, 1, 100, 127)] == [0, 1, 100, 127]
    assert [decode_code(c) for c in (0, 1, 100, 127)] == [0, 1, 100, 127]


def test_floating_point_codes_decode_as_rfc3376_says() -> None:
    assert decode_code(0x80) == 128  # mantissa 0, exponent 0: 0x10 << 3
    assert decode_code(0xFF) == 31744  # mantissa 15, exponent 7
    assert decode_code(0x8F) == (0x1F << 3)


def test_encoding_rounds_down_within_one_sixteenth() -> None:
    for value in range(0, 31745, 13):
        decoded = decode_code(encode_code(value))
        assert decoded <= value
        assert value - decoded <= value / 16


def test_exactly_representable_values_survive() -> None:
    for code in range(256):
        assert encode_code(decode_code(code)) == code


def test_values_beyond_the_code_are_refused() -> None:
    with pytest.raises(ValueError, match="31744"):
        encode_code(31745)
    with pytest.raises(ValueError):
        decode_code(256)


# --- round trips -----------------------------------------------------------------------------------


def test_v3_query_round_trip() -> None:
    data = build_query(3, G, 100, suppress=True, qrv=2, qqi=125, sources=[S1, S2])
    assert len(data) == 12 + 8
    assert parse(data) == Query(3, G, 100, True, 2, 125, (S1, S2))


def test_v3_general_query_round_trip_with_a_floating_point_interval() -> None:
    q = parse(build_query(3, "0.0.0.0", 1000, qrv=7, qqi=300))
    assert isinstance(q, Query) and q.is_general
    assert (q.version, q.max_response, q.qrv, q.suppress) == (3, decode_code(encode_code(1000)), 7, False)
    assert q.qqi == decode_code(encode_code(300))


def test_v2_query_round_trip() -> None:
    data = build_query(2, G, 10)
    assert len(data) == 8
    assert parse(data) == Query(2, G, 10)


def test_an_eight_octet_query_with_code_zero_is_v1() -> None:
    data = refresh_checksum(struct.pack("!BBH4s", 0x11, 0, 0, bytes(4)))
    assert parse(data) == Query(1, "0.0.0.0", 0)


def test_v2_query_limits() -> None:
    with pytest.raises(ValueError):
        build_query(2, G, 256)
    with pytest.raises(ValueError):
        build_query(2, G, 10, sources=[S1])


def test_reports_and_leave_round_trip() -> None:
    assert parse(build_report(1, G)) == Report(1, G)
    assert parse(build_report(2, G)) == Report(2, G)
    assert parse(build_leave(G)) == Leave(G)


def test_v3_report_with_records_and_aux_data_round_trip() -> None:
    records = (
        GroupRecord(packet.MODE_IS_INCLUDE, G, (S1, S2)),
        GroupRecord(packet.CHANGE_TO_EXCLUDE_MODE, "239.9.9.9", (), b"\x01\x02\x03\x04"),
        GroupRecord(packet.BLOCK_OLD_SOURCES, "232.1.1.1", (S2,)),
    )
    report = parse(build_v3_report(records))
    assert report == V3Report(records)
    assert [r.name for r in records] == ["IS_IN", "TO_EX", "BLOCK"]


def test_unknown_type_is_reported_as_such() -> None:
    data = refresh_checksum(struct.pack("!BBH4s", 0x13, 0, 0, bytes(4)))  # DVMRP
    assert parse(data) == Unknown(0x13)


# --- malformed input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 7])
def test_shorter_than_eight_octets(length: int) -> None:
    with pytest.raises(MalformedPacket, match="at least 8"):
        parse(build_report(2, G)[:length])


def test_bad_checksum() -> None:
    data = bytearray(build_report(2, G))
    data[7] ^= 0x01
    with pytest.raises(MalformedPacket, match="checksum"):
        parse(bytes(data))


def counted(data: bytes, at: int, count: int) -> bytes:
    """`data` with the 16-bit count at `at` set to `count`, its checksum made right again."""
    return refresh_checksum(data[:at] + struct.pack("!H", count) + data[at + 2 :])


ONE_SOURCE_QUERY = build_query(3, G, 10, sources=[S1])
ONE_RECORD_REPORT = build_v3_report([GroupRecord(1, G, (S1,))])
WITH_AUX = build_v3_report([GroupRecord(1, G, (S1, S2), b"\x00" * 4)])  # 28 octets


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        *[(refresh_checksum(ONE_SOURCE_QUERY[:length]), "neither v2") for length in (9, 10, 11)],
        (counted(ONE_SOURCE_QUERY, 10, 2), "announces 2 sources"),
        (refresh_checksum(ONE_RECORD_REPORT[:12]), "header of group record 0"),
        *[(refresh_checksum(WITH_AUX[:cut]), "truncated in group record 0") for cut in (20, 24, 27)],
        (counted(ONE_RECORD_REPORT, 6, 2), "record 1 of 2"),
    ],
)
def test_truncated_queries_and_reports_and_counts_beyond_the_end(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        parse(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_never_raises_anything_but_malformed(data: bytes) -> None:
    for candidate in (data, refresh_checksum(data) if len(data) >= 4 else data):
        with contextlib.suppress(MalformedPacket):
            parse(candidate)


# --- IPv4 ------------------------------------------------------------------------------------------------


def test_our_ip_header_has_router_alert_ttl_one_and_a_valid_checksum() -> None:
    payload = build_query(3, "0.0.0.0", 100)
    datagram = build_ipv4("10.0.0.1", "224.0.0.1", payload)
    header, body = parse_ipv4(datagram)
    assert body == payload
    assert (header.source, header.destination, header.ttl, header.router_alert) == ("10.0.0.1", "224.0.0.1", 1, True)
    assert header.header_length == 24 and header.total_length == len(datagram)
    assert checksum(datagram[:24]) == 0
    assert datagram[1] == 0xC0  # precedence: internetwork control


def test_ip_header_without_options_has_no_router_alert() -> None:
    datagram = bytearray(build_ipv4("10.0.0.1", "224.0.0.1", b"x" * 8))
    plain = bytes([0x45]) + bytes(datagram[1:20]) + bytes(datagram[24:])
    plain = plain[:2] + struct.pack("!H", len(plain)) + plain[4:]
    header, body = parse_ipv4(plain)
    assert not header.router_alert and body == b"x" * 8


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d[:19], "shorter than an IPv4 header"),
        (lambda d: bytes([0x65]) + d[1:], "IP version 6"),
        (lambda d: bytes([0x4F]) + d[1:], "does not fit"),
        (lambda d: d[:9] + bytes([17]) + d[10:], "protocol 17"),
        (lambda d: d[:2] + struct.pack("!H", len(d) + 1) + d[4:], "total length"),
    ],
)
def test_bad_ip_headers(mutate: object, reason: str) -> None:
    datagram = build_ipv4("10.0.0.1", "224.0.0.1", build_report(2, G))
    assert callable(mutate)
    with pytest.raises(MalformedPacket, match=reason):
        parse_ipv4(mutate(datagram))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_ip_garbage_never_raises_anything_but_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        parse_ipv4(data)
