"""PIM messages against an independent implementation: scapy's contrib PIM layer decodes what we build and
builds what we decode (Hello, Join/Prune); the types scapy lacks are checked against the RFC 7761 layout
written out by hand."""

from __future__ import annotations

import struct

import pytest
from scapy.contrib.pim import (
    PIMv2GroupAddrs,
    PIMv2Hdr,
    PIMv2Hello,
    PIMv2HelloDRPriority,
    PIMv2HelloGenerationID,
    PIMv2HelloHoldtime,
    PIMv2HelloLANPruneDelay,
    PIMv2HelloLANPruneDelayValue,
    PIMv2JoinAddrs,
    PIMv2JoinPrune,
    PIMv2PruneAddrs,
)
from scapy.packet import raw

from mgm.plugins.igmp.packet import checksum
from mgm.plugins.pim import packet
from mgm.plugins.pim.packet import (
    Assert,
    EncodedGroup,
    EncodedSource,
    Hello,
    JoinPrune,
    JoinPruneGroup,
    MalformedPacket,
    Register,
    RegisterStop,
    Unknown,
    build,
    parse,
)

HELLO = Hello(holdtime=105, dr_priority=7, generation_id=0x12345678, propagation_delay=500, override_interval=2500,
              tracking=True, secondary=("10.0.0.9", "10.0.1.9"))  # fmt: skip
JOIN_PRUNE = JoinPrune("10.0.0.1", 210, (
    JoinPruneGroup(EncodedGroup("239.1.1.1"), joins=(EncodedSource("10.9.0.1", wildcard=True, rpt=True),),
                   prunes=(EncodedSource("10.2.0.2", rpt=True),)),
    JoinPruneGroup(EncodedGroup("239.1.1.2"), joins=(EncodedSource("10.2.0.2"),)),
))  # fmt: skip


def test_a_hello_we_build_is_what_scapy_reads() -> None:
    data = build(HELLO)
    assert checksum(data) == 0
    decoded = PIMv2Hdr(data)
    assert (decoded.version, decoded.type) == (2, 0)
    options = {type(o).__name__: o for o in decoded[PIMv2Hello].option}
    assert options["PIMv2HelloHoldtime"].holdtime == 105
    assert options["PIMv2HelloDRPriority"].dr_priority == 7
    assert options["PIMv2HelloGenerationID"].generation_id == 0x12345678
    (delay,) = options["PIMv2HelloLANPruneDelay"].value
    assert (delay.t, delay.propagation_delay, delay.override_interval) == (1, 500, 2500)
    # scapy's address list reads IPv6 prefixes only: the option's bytes, as RFC 7761 4.9.1 encodes them
    assert raw(options["PIMv2HelloAddrList"])[4:] == bytes([1, 0, 10, 0, 0, 9, 1, 0, 10, 0, 1, 9])


def test_a_hello_scapy_builds_is_what_we_read() -> None:
    built = PIMv2Hdr(type=0) / PIMv2Hello(option=[
        PIMv2HelloHoldtime(holdtime=0xFFFF), PIMv2HelloDRPriority(dr_priority=0),
        PIMv2HelloGenerationID(generation_id=1),
        PIMv2HelloLANPruneDelay(value=[PIMv2HelloLANPruneDelayValue(t=0, propagation_delay=1, override_interval=2)]),
    ])  # fmt: skip
    data = bytearray(raw(built))
    data[2:4] = struct.pack("!H", checksum(bytes(data[:2] + b"\0\0" + data[4:])))
    assert parse(bytes(data)) == Hello(holdtime=0xFFFF, dr_priority=0, generation_id=1, propagation_delay=1,
                                       override_interval=2, tracking=False)  # fmt: skip


def test_a_join_prune_we_build_is_what_scapy_reads() -> None:
    data = build(JOIN_PRUNE)
    assert checksum(data) == 0
    jp = PIMv2Hdr(data)[PIMv2JoinPrune]
    assert (jp.up_neighbor_ip, jp.num_group, jp.holdtime) == ("10.0.0.1", 2, 210)
    first, second = jp.jp_ips
    assert (first.gaddr, first.mask_len, first.num_joins, first.num_prunes) == ("239.1.1.1", 32, 1, 1)
    (join,) = first.join_ips
    (prune,) = first.prune_ips
    assert (join.src_ip, join.sparse, join.wildcard, join.rpt) == ("10.9.0.1", 1, 1, 1)
    assert (prune.src_ip, prune.sparse, prune.wildcard, prune.rpt) == ("10.2.0.2", 1, 0, 1)
    assert (second.gaddr, second.num_joins, second.num_prunes, second.join_ips[0].src_ip) == ("239.1.1.2", 1, 0,
                                                                                              "10.2.0.2")  # fmt: skip


def test_a_join_prune_scapy_builds_is_what_we_read() -> None:
    built = PIMv2Hdr(type=3) / PIMv2JoinPrune(up_neighbor_ip="10.0.0.1", num_group=1, holdtime=210, jp_ips=[
        PIMv2GroupAddrs(gaddr="239.1.1.1", num_joins=1, num_prunes=1,
                        join_ips=[PIMv2JoinAddrs(src_ip="10.9.0.1", sparse=1, wildcard=1, rpt=1)],
                        prune_ips=[PIMv2PruneAddrs(src_ip="10.2.0.2", sparse=1, wildcard=0, rpt=1)]),
    ])  # fmt: skip
    data = bytearray(raw(built))
    data[2:4] = struct.pack("!H", checksum(bytes(data[:2] + b"\0\0" + data[4:])))
    assert parse(bytes(data)) == JoinPrune("10.0.0.1", 210, JOIN_PRUNE.groups[:1])


def test_assert_and_register_stop_have_the_rfc_layout() -> None:
    group = bytes([1, 0, 0, 32, 239, 1, 1, 1])  # family IPv4, native encoding, flags, mask length, address
    source = bytes([1, 0, 10, 2, 0, 2])
    data = build(Assert(EncodedGroup("239.1.1.1"), "10.2.0.2", rpt=True, preference=110, metric=20))
    assert data[0] == 0x25 and checksum(data) == 0
    assert data[4:] == group + source + struct.pack("!II", 0x80000000 | 110, 20)
    assert parse(data) == Assert(EncodedGroup("239.1.1.1"), "10.2.0.2", True, 110, 20)
    stop = build(RegisterStop(EncodedGroup("239.1.1.1"), "10.2.0.2"))
    assert stop[0] == 0x22 and stop[4:] == group + source
    assert parse(stop) == RegisterStop(EncodedGroup("239.1.1.1"), "10.2.0.2")


def test_a_registers_checksum_covers_its_header_only() -> None:
    inner = bytes(range(40))
    data = build(Register(border=False, null=True, packet=inner))
    assert checksum(data[:8]) == 0 and data[4:8] == struct.pack("!I", 0x40000000)
    assert parse(data) == Register(False, True, inner)
    whole = bytearray(data)  # some routers sum the whole message: accepted too
    whole[2:4] = b"\0\0"
    whole[2:4] = struct.pack("!H", checksum(bytes(whole)))
    assert parse(bytes(whole)) == Register(False, True, inner)


def test_an_unknown_type_and_unknown_hello_options_are_kept() -> None:
    assert parse(build(Unknown(4, b"\x01\x02"))) == Unknown(4, b"\x01\x02")
    hello = Hello(holdtime=10, unknown=((21, b"\x00\x00\x00\x01"),))
    assert parse(build(hello)) == hello


@pytest.mark.parametrize(("data", "words"), [
    (b"\x20\x00", "shorter than a PIM header"),
    (b"\x10\x00\xef\xff", "version 1"),
    (bytes.fromhex("20000000"), "bad checksum"),
])  # fmt: skip
def test_what_is_not_a_pim_message_is_malformed(data: bytes, words: str) -> None:
    with pytest.raises(MalformedPacket, match=words):
        parse(data)


def test_every_truncation_of_every_message_is_malformed_never_a_crash() -> None:
    for message in (HELLO, JOIN_PRUNE, Assert(EncodedGroup("239.1.1.1"), "10.2.0.2", False, 1, 2),
                    RegisterStop(EncodedGroup("239.1.1.1"), "10.2.0.2")):  # fmt: skip
        data = build(message)
        for cut in range(packet._HEADER.size, len(data)):
            body = bytearray(data[:cut])
            body[2:4] = b"\0\0"
            body[2:4] = struct.pack("!H", checksum(bytes(body)))
            try:
                parsed = parse(bytes(body))
            except MalformedPacket:
                continue
            assert isinstance(parsed, Hello), f"{type(message).__name__} cut at {cut} parsed as {parsed}"


def test_a_wrong_address_family_is_malformed() -> None:
    data = bytearray(build(RegisterStop(EncodedGroup("239.1.1.1"), "10.2.0.2")))
    data[4] = 2  # IPv6
    data[2:4] = b"\0\0"
    data[2:4] = struct.pack("!H", checksum(bytes(data)))
    with pytest.raises(MalformedPacket, match="address family 2"):
        parse(bytes(data))


def test_ipv6_addresses_in_a_hellos_address_list_are_skipped_not_the_hello() -> None:
    """FRR lists its IPv6 link-local addresses in the address list of its IPv4 Hellos (seen in the interop test)."""
    ipv6 = bytes([2, 0]) + bytes.fromhex("fe800000000000000000000000000001")
    ipv4 = bytes([1, 0, 10, 0, 0, 9])
    data = bytearray(build(Hello(holdtime=105, unknown=((packet.OPT_ADDRESS_LIST, ipv6 + ipv4 + bytes([7, 0])),))))
    data[2:4] = b"\0\0"
    data[2:4] = struct.pack("!H", checksum(bytes(data)))
    assert parse(bytes(data)) == Hello(holdtime=105, secondary=("10.0.0.9",))
