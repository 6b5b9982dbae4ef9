"""The nftables dataplane without a kernel: what it writes for each change, and how it reads NFLOG.

`FakeNft` stands in for libnftables: it records every command buffer and
answers reads with what a test gives it.  The kernel's side is covered by
the namespace tests (tests/forwarder/test_forwarder_linux.py and
tests/e2e, which run on both backends).
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from typing import Any

import pytest

from mgm.core.runtime.config import ConfigError, PluginTable
from mgm.plugins.forwarder.mirror import Entry, Mirror
from mgm.plugins.forwarder.mroute import IGMPMSG_NOCACHE, IGMPMSG_WRONGVIF, SgCount, Upcall
from mgm.plugins.forwarder.nflog import (
    NEW_PREFIX,
    NFNL_SUBSYS_ULOG,
    NFULA_IFINDEX_INDEV,
    NFULA_PAYLOAD,
    NFULA_PREFIX,
    WRONG_IF_PREFIX,
    parse_packets,
)
from mgm.plugins.forwarder.nftables import (
    BatchResult,
    HeldPackets,
    NftDataplane,
    NftError,
    fix_udp_checksum,
    oil_chain,
)
from mgm.plugins.forwarder.plugin import read_settings

S1, S2, G = "10.1.0.2", "10.1.0.3", "239.1.1.1"


class FakeNft:
    """Records command buffers; `fail` makes the next write fail; reads answer from `outputs`."""

    def __init__(self) -> None:
        self.buffers: list[str] = []
        self.outputs: dict[str, str] = {}
        self.fail: str | None = None

    def run(self, commands: str, *, json_output: bool = False) -> str:
        for prefix, out in self.outputs.items():
            if commands.startswith(prefix):
                return out
        if commands.startswith(("get ", "list ")):
            raise NftError(2, "No such file or directory")
        self.buffers.append(commands)
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise NftError(22, error)
        return ""

    def close(self) -> None:
        pass


@pytest.fixture
def nft() -> FakeNft:
    return FakeNft()


@pytest.fixture
def plane(nft: FakeNft) -> NftDataplane:
    return NftDataplane(nft=nft)  # type: ignore[arg-type]


def lines(buffer: str) -> list[str]:
    return [line for line in buffer.splitlines() if line]


def test_a_burst_of_changes_is_one_transaction_and_entries_with_one_oil_share_its_chain(
    plane: NftDataplane, nft: FakeNft
) -> None:
    for if_index in (2, 3, 4):
        plane.add_vif(if_index, if_index)
    plane.add_mfc(S1, G, 2, [3, 4])
    plane.add_mfc(S2, G, 2, [4, 3])
    assert plane.flush() == {}
    assert len(nft.buffers) == 1
    chain = oil_chain([3, 4])
    assert lines(nft.buffers[0]) == [
        "add element ip mgmbus ifs { 2, 3, 4 }",
        f"add chain ip mgmbus {chain}",
        f"flush chain ip mgmbus {chain}",
        f"add rule ip mgmbus {chain} counter dup to ip daddr device 3",
        f"add rule ip mgmbus {chain} counter dup to ip daddr device 4",
        f"add element ip mgmbus sg {{ 2 . {S1} . {G} : goto {chain}, 2 . {S2} . {G} : goto {chain} }}",
        f"add element ip mgmbus known {{ {S1} . {G} : goto wrong_if, {S2} . {G} : goto wrong_if }}",
    ]
    assert plane.chains == {frozenset({3, 4}): 2}


def test_a_negative_entry_accepts_and_needs_no_chain(plane: NftDataplane, nft: FakeNft) -> None:
    plane.add_mfc(S1, G, 2, [])
    plane.flush()
    assert f"add element ip mgmbus sg {{ 2 . {S1} . {G} : accept }}" in lines(nft.buffers[0])
    assert not any("chain" in line for line in lines(nft.buffers[0]))


def test_changes_that_cancel_out_before_a_batch_write_nothing(plane: NftDataplane, nft: FakeNft) -> None:
    plane.add_mfc(S1, G, 2, [3])
    plane.del_mfc(S1, G)
    plane.add_vif(5, 5)
    plane.del_vif(5)
    assert plane.take_batch() is None
    assert nft.buffers == []


def test_an_oil_change_replaces_the_element_keeping_its_counters_and_drops_the_unused_chain(
    plane: NftDataplane, nft: FakeNft
) -> None:
    plane.add_mfc(S1, G, 2, [3])
    plane.flush()
    nft.outputs["get element"] = f'elements = {{ "r1" . {S1} . {G} counter packets 40 bytes 4000 : goto x }}'
    plane.add_mfc(S1, G, 2, [3, 4])
    plane.flush()
    new = oil_chain([3, 4])
    assert lines(nft.buffers[1]) == [
        f"add chain ip mgmbus {new}",
        f"flush chain ip mgmbus {new}",
        f"add rule ip mgmbus {new} counter dup to ip daddr device 3",
        f"add rule ip mgmbus {new} counter dup to ip daddr device 4",
        f"delete element ip mgmbus sg {{ 2 . {S1} . {G} }}",
        f"add element ip mgmbus sg {{ 2 . {S1} . {G} counter packets 40 bytes 4000 : goto {new} }}",
        f"delete chain ip mgmbus {oil_chain([3])}",
    ]
    assert plane.entries == {(S1, G): Entry(2, frozenset({3, 4}))}
    assert plane.chains == {frozenset({3, 4}): 1}
    assert plane.sg_count(S1, G) == SgCount(40, 4000, 0)  # what the old element had counted: settled by the owner


def test_deleting_an_entry_removes_its_known_pair_and_its_last_chain(plane: NftDataplane, nft: FakeNft) -> None:
    plane.add_mfc(S1, G, 2, [3])
    plane.flush()
    plane.del_mfc(S1, G)
    plane.flush()
    assert lines(nft.buffers[1]) == [
        f"delete element ip mgmbus sg {{ 2 . {S1} . {G} }}",
        f"delete element ip mgmbus known {{ {S1} . {G} }}",
        f"delete chain ip mgmbus {oil_chain([3])}",
    ]
    assert plane.entries == {} and plane.chains == {}


def test_wrong_if_oil_keeps_the_members_set_of_each_entrys_outgoing_interfaces(nft: FakeNft) -> None:
    plane = NftDataplane(nft=nft, wrong_if="oil")  # type: ignore[arg-type]
    plane.add_mfc(S1, G, 2, [3, 4])
    plane.flush()
    assert f"add element ip mgmbus members {{ 3 . {S1} . {G}, 4 . {S1} . {G} }}" in lines(nft.buffers[0])
    plane.add_mfc(S1, G, 2, [4])
    plane.flush()
    assert f"delete element ip mgmbus members {{ 3 . {S1} . {G} }}" in lines(nft.buffers[1])
    assert "!= @members accept" in plane.ruleset()
    assert "@members" not in NftDataplane(nft=nft).ruleset()  # type: ignore[arg-type]


def table_json(elements: list[Any], chains: dict[str, list[int]], ifs: list[int]) -> str:
    items: list[dict[str, Any]] = [{"set": {"name": "ifs", "elem": ifs}}, {"map": {"name": "sg", "elem": elements}}]
    for chain, devices in chains.items():
        items += [{"rule": {"chain": chain, "expr": [{"counter": {}}, {"dup": {"dev": str(d)}}]}} for d in devices]
    return json.dumps({"nftables": items})


def test_a_refused_batch_is_followed_by_what_the_kernel_really_holds(plane: NftDataplane, nft: FakeNft) -> None:
    plane.add_mfc(S1, G, 2, [3])
    plane.flush()
    nft.fail = "Error: Could not process rule: No space left on device"
    nft.outputs["list table"] = table_json(
        [[{"elem": {"val": {"concat": ["2", S1, G]}}}, {"goto": {"target": oil_chain([3])}}]],
        {oil_chain([3]): [3]},
        [2, 3],
    )
    plane.add_mfc(S1, G, 2, [3, 4])
    plane.add_mfc(S2, G, 2, [3])
    failed = plane.flush()
    assert failed == {(S1, G): Entry(2, frozenset({3})), (S2, G): None}
    assert plane.entries == {(S1, G): Entry(2, frozenset({3}))} and plane.ifs == {2, 3}
    mirror = Mirror(plane, logging.getLogger("test.nft"), max_vifs=None)
    for key, have in failed.items():
        mirror.dataplane_failed(key, have)
    assert mirror.installed == {(S1, G): Entry(2, frozenset({3}))}


def test_a_predecessors_table_is_read_back_as_interfaces_and_entries(plane: NftDataplane, nft: FakeNft) -> None:
    nft.outputs["list table"] = table_json(
        [
            [{"elem": {"val": {"concat": ["2", S1, G]}, "counter": {"packets": 5}}}, {"goto": {"target": "oil_a"}}],
            [{"elem": {"val": {"concat": ["3", S2, G]}}}, {"accept": None}],
        ],
        {"oil_a": [3, 4]},
        [2, 3, 4],
    )
    assert plane.read_installed() == (
        {2, 3, 4},
        {(S1, G): Entry(2, frozenset({3, 4})), (S2, G): Entry(3, frozenset())},
    )


def test_a_table_of_our_name_that_is_not_ours_is_left_alone(plane: NftDataplane, nft: FakeNft) -> None:
    nft.outputs["list tables"] = json.dumps({"nftables": [{"table": {"family": "ip", "name": "mgmbus"}}]})
    nft.outputs["list chains"] = json.dumps({"nftables": [{"chain": {"table": "mgmbus", "name": "input"}}]})
    with pytest.raises(NftError, match="exists and is not mgmbus's"):
        plane.open()
    nft.outputs["list chains"] = json.dumps({"nftables": [{"chain": {"table": "mgmbus", "name": "mgmbus_nflog_7"}}]})
    with pytest.raises(NftError, match="another mgmbus forwarder's"):
        plane.open()
    assert nft.buffers == []  # nothing written to a table that is not ours


def test_counters_come_from_one_read_of_the_maps(plane: NftDataplane, nft: FakeNft) -> None:
    nft.outputs["list map ip mgmbus sg"] = (
        f'elements = {{ "r1" . {S1} . {G} counter packets 7 bytes 700 : goto oil_a,\n'
        f"   3 . {S2} . {G} counter packets 0 bytes 0 : accept }}"
    )
    nft.outputs["list map ip mgmbus known"] = f"elements = {{ {S1} . {G} counter packets 2 bytes 200 : goto wrong_if }}"
    plane.read_counters()
    assert plane.sg_count(S1, G) == SgCount(7, 700, 2)
    assert plane.sg_count(S2, G) == SgCount(0, 0, 0)


def test_a_batch_result_error_is_logged_not_raised(plane: NftDataplane, nft: FakeNft) -> None:
    plane.add_mfc(S1, G, 2, [3])
    batch = plane.take_batch()
    assert batch is not None
    nft.outputs["list table"] = table_json([], {}, [])
    assert plane.commit(batch, BatchResult("refused")) == {(S1, G): None}


def test_the_mirror_uses_if_indexes_as_vifs_with_no_ceiling(plane: NftDataplane) -> None:
    from test_forwarder_mirror import state

    mirror = Mirror(plane, logging.getLogger("test.nft"), max_vifs=None)
    owned = list(range(2, 102))  # 100 interfaces: past MRT's 32
    mirror.resync(state(owned))
    assert mirror.vifs == {i: i for i in owned}
    plane.flush()
    assert plane.ifs == set(owned)


# --- NFLOG ------------------------------------------------------------------------------------------


def nflog_message(prefix: str, indev: int, source: str, group: str) -> bytes:
    def attr(kind: int, value: bytes) -> bytes:
        return struct.pack("=HH", 4 + len(value), kind) + value + bytes(-len(value) % 4)

    header = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 8, 17, 0, 0]) + socket.inet_aton(source) + socket.inet_aton(group)
    attrs = attr(NFULA_PREFIX, prefix.encode() + b"\0")
    attrs += attr(NFULA_IFINDEX_INDEV, struct.pack("!I", indev)) + attr(NFULA_PAYLOAD, header)
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(7)) + attrs
    return struct.pack("=IHHII", 16 + len(body), NFNL_SUBSYS_ULOG << 8, 0, 0, 0) + body


def test_nflog_messages_become_the_upcalls_mrt_would_give_a_new_flow_with_its_packet() -> None:
    data = nflog_message(NEW_PREFIX, 3, S1, G) + nflog_message(WRONG_IF_PREFIX, 4, S2, G)
    new, wrong_if = parse_packets(data)
    assert (new.kind, new.vif, new.source, new.group) == (IGMPMSG_NOCACHE, 3, S1, G)
    assert new.packet[12:20] == socket.inet_aton(S1) + socket.inet_aton(G)  # kept, to be sent on once resolved
    assert wrong_if == Upcall(IGMPMSG_WRONGVIF, 4, S2, G)


def test_nflog_messages_of_other_rules_and_truncated_ones_are_skipped() -> None:
    assert parse_packets(nflog_message("someone-else", 3, S1, G)) == []
    assert parse_packets(nflog_message(NEW_PREFIX, 3, S1, G)[:-8]) == []
    assert parse_packets(b"\x01\x02") == []


# --- settings -------------------------------------------------------------------------------------


def test_the_backend_and_its_keys_are_checked() -> None:
    settings = read_settings(PluginTable({"backend": "nft", "nft_table": "mgm2", "nflog_group": 9}))
    assert (settings.backend, settings.nft_table, settings.nflog_group) == ("nft", "mgm2", 9)
    assert read_settings(PluginTable({})).backend == "auto"
    for bad in ({"backend": "ebpf"}, {"nft_table": "1bad"}, {"nflog_group": 70000}, {"backend": "nft", "table": 5}):
        with pytest.raises(ConfigError):
            read_settings(PluginTable(bad))


# --- the first packet of a flow --------------------------------------------------------------------


def udp_packet(payload: bytes, checksum: int | None = None) -> bytearray:
    """An IPv4/UDP packet S1 -> G; its UDP checksum right unless `checksum` says otherwise."""
    length = 8 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0, 8, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(S1), socket.inet_aton(G))  # fmt: skip
    pseudo = socket.inet_aton(S1) + socket.inet_aton(G) + struct.pack("!BBH", 0, 17, length)
    udp = struct.pack("!HHHH", 5000, 7000, length, 0) + payload
    data = pseudo + udp + b"\0" * (len(udp) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    right = ~total & 0xFFFF or 0xFFFF
    return bytearray(header + udp[:6] + struct.pack("!H", right if checksum is None else checksum) + udp[8:])


def test_a_udp_checksum_left_to_the_hardware_is_made_whole_and_a_right_one_stays() -> None:
    right = udp_packet(b"hello, odd")
    partial = udp_packet(b"hello, odd", checksum=0x1234)  # what a veth sender leaves (CHECKSUM_PARTIAL)
    fix_udp_checksum(partial)
    assert partial == right
    fix_udp_checksum(right)
    assert right == udp_packet(b"hello, odd")
    none = udp_packet(b"x", checksum=0)  # "no checksum" is a choice of the sender's, kept
    fix_udp_checksum(none)
    assert none == udp_packet(b"x", checksum=0)


def test_a_held_packet_counts_in_its_new_entry_and_goes_only_where_there_is_an_oil(plane: NftDataplane) -> None:
    held = HeldPackets(hold=10.0, most=2)
    held.hold((S1, G), bytes(udp_packet(b"first")), now=0.0)
    held.hold((S1, G), bytes(udp_packet(b"second")), now=0.1)  # the first stays the one held
    plane.add_mfc(S1, G, 2, [3])
    plane.add_mfc(S2, G, 2, [])
    batch = plane.take_batch()
    assert batch is not None
    held.count(batch)
    assert batch.counters == {(S1, G): SgCount(1, len(udp_packet(b"first")), 0)}
    assert f"2 . {S1} . {G} counter packets 1 bytes 33 : goto" in plane.render(batch)
    assert held.release((S1, G), [3], now=11.0) == 0  # held too long: dropped, as the kernel drops it
    assert held.packets == {}


def test_at_most_so_many_flows_are_held() -> None:
    held = HeldPackets(hold=10.0, most=2)
    for n in range(4):
        held.hold((f"10.9.0.{n}", G), bytes(udp_packet(b"x")), now=float(n))
    assert len(held.packets) == 2
    held.hold(("10.9.0.9", G), bytes(udp_packet(b"x")), now=20.0)  # the old ones expired: room again
    assert list(held.packets) == [("10.9.0.9", G)]
