"""The linux/mroute.h layouts, packed and unpacked without a kernel (no root needed)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from mroute_agent import SIOC_VIF_REQ

from mgm.plugins.forwarder import mroute


def test_struct_sizes_match_the_kernel_abi() -> None:
    long_size = struct.calcsize("@L")
    assert mroute.VIFCTL.size == 16
    assert mroute.MFCCTL.size == 60
    assert mroute.IGMPMSG.size == 20
    assert mroute.SIOC_SG_REQ.size == 8 + 3 * long_size
    assert SIOC_VIF_REQ.size == (8 if long_size == 8 else 4) + 4 * long_size


def test_vifctl_names_the_device_by_if_index() -> None:
    data = mroute.pack_vifctl(3, 17, threshold=2)
    vifi, flags, threshold, rate, ifindex, remote = mroute.VIFCTL.unpack(data)
    assert (vifi, threshold, rate, ifindex, remote) == (3, 2, 0, 17, bytes(4))
    assert flags & mroute.VIFF_USE_IFINDEX
    assert data[8:12] == struct.pack("@i", 17)  # the union with vifc_lcl_addr sits at offset 8


def test_mfcctl_has_one_ttl_per_vif_and_255_for_the_rest() -> None:
    data = mroute.pack_mfcctl("10.1.0.2", "239.1.2.3", 1, [0, 4])
    assert data[0:4] == socket.inet_aton("10.1.0.2")
    assert data[4:8] == socket.inet_aton("239.1.2.3")
    assert struct.unpack_from("@H", data, 8) == (1,)
    ttls = data[10 : 10 + mroute.MAXVIFS]
    assert ttls[0] == 1 and ttls[4] == 1
    assert all(t == mroute.TTL_NOT_FORWARDED for i, t in enumerate(ttls) if i not in (0, 4))
    assert mroute.unpack_mfcctl(data) == ("10.1.0.2", "239.1.2.3", 1, {0: 1, 4: 1})


def test_mfcctl_takes_thresholds_and_an_empty_list() -> None:
    assert mroute.unpack_mfcctl(mroute.pack_mfcctl("1.2.3.4", "232.0.0.1", 31, {2: 64}))[3] == {2: 64}
    assert mroute.unpack_mfcctl(mroute.pack_mfcctl("1.2.3.4", "232.0.0.1", 0))[3] == {}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mroute.pack_mfcctl("1.2.3.4", "239.0.0.1", 32), "VIF 32"),
        (lambda: mroute.pack_mfcctl("1.2.3.4", "239.0.0.1", 0, [40]), "VIF 40"),
        (lambda: mroute.pack_mfcctl("1.2.3.4", "239.0.0.1", 0, {1: 255}), "TTL threshold 255"),
        (lambda: mroute.pack_vifctl(-1, 3), "VIF -1"),
    ],
)
def test_out_of_range_values_are_refused_before_the_kernel_sees_them(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_upcall_round_trip_with_a_vif_above_255() -> None:
    data = mroute.pack_igmpmsg(mroute.IGMPMSG_WRONGVIF, 0x102, "10.0.0.1", "239.9.9.9")
    upcall = mroute.parse_upcall(data + b"payload")
    assert upcall == mroute.Upcall(mroute.IGMPMSG_WRONGVIF, 0x102, "10.0.0.1", "239.9.9.9")
    assert upcall.kind_name == "WRONGVIF"


def test_a_real_igmp_packet_is_not_an_upcall() -> None:
    # IPv4 header of an IGMP report: TTL 1 at offset 8, protocol 2 at offset 9.
    header = bytes([0x46, 0, 0, 32, 0, 0, 0, 0, 1, 2, 0, 0]) + socket.inet_aton("10.0.0.5")
    header += socket.inet_aton("224.0.0.22") + bytes(4)
    assert mroute.parse_upcall(header + bytes(8)) is None
    assert mroute.parse_upcall(b"short") is None


def test_sioc_requests_unpack_the_kernel_answer() -> None:
    sg = mroute.SIOC_SG_REQ.pack(socket.inet_aton("10.0.0.1"), socket.inet_aton("239.0.0.1"), 5, 700, 2)
    assert mroute.SIOC_SG_REQ.unpack(sg)[2:] == (5, 700, 2)
    vif = SIOC_VIF_REQ.pack(1, 10, 20, 1000, 2000)
    assert SIOC_VIF_REQ.unpack(vif) == (1, 10, 20, 1000, 2000)


def test_upcall_filter_accepts_only_a_zero_at_offset_9() -> None:
    # Run the four instructions by hand: the program the kernel runs on each datagram.
    def run(packet: bytes) -> int:
        pc = 0
        acc = 0
        prog = mroute.UPCALL_FILTER
        while True:
            code, jt, jf, k = prog[pc]
            if code == 0x30:
                acc = packet[k]
                pc += 1
            elif code == 0x15:
                pc += 1 + (jt if acc == k else jf)
            else:
                return k

    assert run(mroute.pack_igmpmsg(mroute.IGMPMSG_NOCACHE, 1, "10.0.0.1", "239.0.0.1")) > 0
    igmp = bytearray(20)
    igmp[9] = 2
    assert run(bytes(igmp)) == 0


def test_proc_readers_parse_kernel_lines(tmp_path: Path) -> None:
    vif = tmp_path / "ip_mr_vif"
    vif.write_text(
        "Interface      BytesIn  PktsIn  BytesOut PktsOut Flags Local    Remote\n"
        " 0 r1             1680      20         0       0 00008 00000005 00000000\n"
        " 1 r2                0       0      1680      20 00008 00000006 00000000\n"
    )
    assert [(v.vif, v.name, v.in_packets, v.out_packets, v.flags) for v in mroute.read_ip_mr_vif(vif)] == [
        (0, "r1", 20, 0, 8),
        (1, "r2", 0, 20, 8),
    ]
    cache = tmp_path / "ip_mr_cache"
    group = format(struct.unpack("=I", socket.inet_aton("239.1.2.3"))[0], "08X")
    origin = format(struct.unpack("=I", socket.inet_aton("10.1.0.2"))[0], "08X")
    cache.write_text(
        "Group    Origin   Iif     Pkts    Bytes    Wrong Oifs\n"
        f"{group} {origin} 0         20     1680        0  1:1    2:1   \n"
        f"{group} 0A0000FE -1         0        0        0\n"
    )
    resolved, unresolved = mroute.read_ip_mr_cache(cache)
    assert (resolved.group, resolved.source, resolved.parent, resolved.packets, resolved.oifs) == (
        "239.1.2.3", "10.1.0.2", 0, 20, {1: 1, 2: 1},
    )  # fmt: skip
    assert resolved.resolved and not unresolved.resolved
