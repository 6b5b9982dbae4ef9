"""A restarted forwarder adopts what its crashed predecessor left in the kernel (no root needed).

The kernel of these tests is a `Recording` simulated plane holding what
the predecessor installed, and /proc/net/ip_mr_vif and ip_mr_cache files
written the way the kernel prints that state.
"""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

import pytest
from test_forwarder_mirror import Recording, mfe, state

from mgm.plugins.forwarder.linux import adopt_from_proc
from mgm.plugins.forwarder.mirror import Entry, Mirror
from mgm.plugins.forwarder.mroute import VIFF_STATIC, VIFF_TUNNEL, VIFF_USE_IFINDEX, parse_ip_mr_vif
from mgm.plugins.forwarder.sim import SimEntry, SimVif
from mgm.plugins.links import Link

S = "10.1.0.2"
G1, G2, G3, G4, G5 = (f"239.1.1.{i}" for i in range(1, 6))
R1, R2, R3, R4 = 3, 4, 5, 6
"""if_indexes of the router's interfaces."""


def hexaddr(address: str) -> str:
    """An address as /proc prints it: the network-order word read in host order."""
    return format(struct.unpack("=I", socket.inet_aton(address))[0], "08X")


VIF_HEADER = "Interface      BytesIn  PktsIn  BytesOut PktsOut Flags Local    Remote\n"
MFC_HEADER = "Group    Origin   Iif     Pkts    Bytes    Wrong Oifs\n"
PROC_VIF = VIF_HEADER + (
    " 0 r1             1680      20         0       0 08008 00000003 00000000\n"
    " 1 r2                0       0      1680      20 08008 00000004 00000000\n"
    f" 2 tun0               0       0         0       0 08001 {hexaddr('10.9.0.1')} {hexaddr('10.9.0.2')}\n"
    " 3 r3                0       0       700       7 08008 00000005 00000000\n"
)
PROC_MFC = MFC_HEADER + (
    f"{hexaddr(G1)} {hexaddr(S)} 0         20     1680        0  1:1  \n"
    f"{hexaddr(G2)} {hexaddr(S)} 0          7      700        0  1:1    3:1  \n"
    f"{hexaddr(G3)} {hexaddr(S)} 2          5      500        0  0:1  \n"
    f"{hexaddr(G4)} {hexaddr(S)} 0          0        0        0\n"
    f"{hexaddr(G5)} {hexaddr(S)} -1         0        0        0\n"
)


def _link(name: str) -> Link:
    return Link(0, name, True)  # the mirror keys its links by if_index


@pytest.fixture
def kernel() -> Recording:
    """What the crashed forwarder left (G3 is another process's entry on its tunnel VIF; G5 is unresolved)."""
    plane = Recording()
    plane.vifs = {0: SimVif(R1), 1: SimVif(R2), 2: SimVif(99), 3: SimVif(R3)}
    plane.mfc = {
        (S, G1): SimEntry(0, frozenset({1}), packets=20, bytes=1680),
        (S, G2): SimEntry(0, frozenset({1, 3}), packets=7, bytes=700),
        (S, G3): SimEntry(2, frozenset({0}), packets=5, bytes=500),
        (S, G4): SimEntry(0, frozenset()),
    }
    return plane


@pytest.fixture
def proc(tmp_path: Path) -> tuple[Path, Path]:
    vif, mfc = tmp_path / "ip_mr_vif", tmp_path / "ip_mr_cache"
    vif.write_text(PROC_VIF)
    mfc.write_text(PROC_MFC)
    return vif, mfc


@pytest.fixture
def adopted(kernel: Recording, proc: tuple[Path, Path]) -> Mirror:
    mirror = Mirror(kernel, logging.getLogger("test.adopt"))
    assert adopt_from_proc(mirror, *proc)
    return mirror


def test_ip_mr_vif_gives_flags_and_the_if_index_of_an_if_index_vif() -> None:
    vifs = parse_ip_mr_vif(PROC_VIF)
    assert [(v.vif, v.name, v.flags, v.local) for v in vifs] == [
        (0, "r1", VIFF_USE_IFINDEX | VIFF_STATIC, R1),
        (1, "r2", VIFF_USE_IFINDEX | VIFF_STATIC, R2),
        (2, "tun0", VIFF_TUNNEL | VIFF_STATIC, struct.unpack("=I", socket.inet_aton("10.9.0.1"))[0]),
        (3, "r3", VIFF_USE_IFINDEX | VIFF_STATIC, R3),
    ]
    assert (vifs[3].out_packets, vifs[3].out_bytes) == (7, 700)


def test_our_static_vifs_and_the_resolved_entries_on_them_are_adopted_as_installed(
    adopted: Mirror, kernel: Recording
) -> None:
    assert adopted.vifs == {R1: 0, R2: 1, R3: 3}
    assert adopted.foreign_vifs == {2}  # the tunnel: another process's, only its number is avoided
    assert adopted.installed == {
        (S, G1): Entry(0, frozenset({1})),
        (S, G2): Entry(0, frozenset({1, 3})),
        (S, G4): Entry(0, frozenset()),
    }  # G3 uses the tunnel VIF, G5 is unresolved: neither is ours
    assert kernel.calls == []  # adopting changes nothing in the kernel


def test_before_the_first_resync_nothing_adopted_is_touched(adopted: Mirror, kernel: Recording) -> None:
    # Netlink's dump comes before the manager's picture: the VIFs of interfaces nobody owns yet stay.
    adopted.set_links({1: _link("lo"), R1: _link("r1"), R2: _link("r2"), R3: _link("r3"), R4: _link("r4")})
    adopted.link_changed(7, _link("r5"))
    kernel.vifs.pop(3)  # r3 is deleted, and the kernel removes its VIF with it
    adopted.link_removed(R3)
    assert kernel.calls == []
    assert set(kernel.mfc) == {(S, G1), (S, G2), (S, G3), (S, G4)}
    assert adopted.vifs == {R1: 0, R2: 1}


def test_the_first_resync_keeps_what_is_right_and_reconciles_the_rest(adopted: Mirror, kernel: Recording) -> None:
    adopted.set_links({R1: _link("r1"), R2: _link("r2"), R3: _link("r3"), R4: _link("r4")})
    # The manager's picture: r3 is nobody's any more, r4 is owned now; G2 no longer goes out of r3;
    # the negative G4 is gone from its table.
    adopted.resync(state([R1, R2, R4], [mfe(S, G1, R1, [R2]), mfe(S, G2, R1, [R2])]))
    assert sorted(kernel.calls, key=repr) == sorted(
        [
            ("del_vif", 3),  # r3
            ("add_vif", 3, R4),  # the lowest number that is neither ours nor the tunnel's
            ("add_mfc", S, G2, 0, [1]),
            ("del_mfc", S, G4),
        ],
        key=repr,
    )  # and G1, right as it is, untouched
    assert adopted.vifs == {R1: 0, R2: 1, R4: 3}
    assert (S, G3) in kernel.mfc and 2 in kernel.vifs  # another process's stay
    kernel.calls.clear()
    adopted.resync(state([R1, R2, R4], [mfe(S, G1, R1, [R2]), mfe(S, G2, R1, [R2])]))
    assert kernel.calls == []


def test_an_event_before_the_first_resync_is_the_managers_word_for_that_entry(
    adopted: Mirror, kernel: Recording
) -> None:
    adopted.apply({"type": "mfe_deleted", "mfe": mfe(S, G4, R1, [])})
    adopted.apply({"type": "mfe_updated", "mfe": mfe(S, G2, R1, [R2])})
    assert kernel.calls == [("del_mfc", S, G4), ("add_mfc", S, G2, 0, [1])]
    assert adopted.installed[(S, G1)] == Entry(0, frozenset({1}))  # the others wait for the resync


def test_an_adopted_entry_counts_its_packets_to_its_output_list(adopted: Mirror, kernel: Recording) -> None:
    adopted.resync(state([R1, R2, R3], [mfe(S, G1, R1, [R2])]))
    kernel.packet(S, G1, R1)
    (entry,) = adopted.counters()
    assert (entry["in_packets"], entry["oil"]) == (21, [{"if_index": R2, "next_hop": "0.0.0.0", "out_packets": 21}])


def test_nothing_left_behind_adopts_nothing(kernel: Recording, tmp_path: Path) -> None:
    (tmp_path / "vif").write_text(VIF_HEADER)
    (tmp_path / "mfc").write_text(MFC_HEADER)
    mirror = Mirror(Recording(), logging.getLogger("test.adopt"))
    assert adopt_from_proc(mirror, tmp_path / "vif", tmp_path / "mfc")
    assert (mirror.vifs, mirror.installed, mirror.foreign_vifs) == ({}, {}, set())
    mirror.resync(state([R1], []))
    assert mirror.vifs == {R1: 0}


def test_an_unreadable_proc_is_an_error_that_says_what_follows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mirror = Mirror(Recording(), logging.getLogger("test.adopt"))
    with caplog.at_level(logging.ERROR):
        assert not adopt_from_proc(mirror, tmp_path / "missing", tmp_path / "missing-too")
    assert "not adopted" in caplog.text and "missing" in caplog.text
    assert mirror.vifs == {} and mirror.installed == {}


def test_withdraw_removes_ours_and_leaves_another_process_s(adopted: Mirror, kernel: Recording) -> None:
    adopted.resync(state([R1, R2, R3], [mfe(S, G1, R1, [R2])]))
    adopted.withdraw()
    assert kernel.vifs == {2: kernel.vifs[2]} and set(kernel.mfc) == {(S, G3)}
    assert (adopted.vifs, adopted.installed) == ({}, {})
