"""Every PIM message the plugin sends, read by Wireshark's dissector (tshark, from Debian): an implementation
independent of ours, which also knows the types scapy's contrib layer lacks (Assert, Register, Register-Stop).

Each message goes into a pcap inside the IPv4 header it travels in; tshark must decode it with no malformed
field and no warning, a good checksum, and the values we put in."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mgm.plugins.pim import packet as p

GROUP = p.EncodedGroup("239.1.1.1")
UDP_INSIDE = struct.pack("!HHHH", 1000, 5000, 11, 0) + b"abc"


def ipv4(source: str, destination: str, payload: bytes, *, protocol: int = p.PIM_PROTOCOL, ttl: int = 1) -> bytes:
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, ttl, protocol, 0,
                                   socket.inet_aton(source), socket.inet_aton(destination)))  # fmt: skip
    header[10:12] = struct.pack("!H", p.checksum(bytes(header)))
    return bytes(header) + payload


MESSAGES: dict[str, bytes] = {
    "hello": ipv4("10.0.0.1", p.ALL_PIM_ROUTERS, p.build(p.Hello(
        holdtime=105, dr_priority=7, generation_id=0x1234, propagation_delay=500, override_interval=2500,
        secondary=("10.0.1.1",))),
    ),
    "join_prune": ipv4("10.0.0.1", p.ALL_PIM_ROUTERS, p.build(p.JoinPrune("10.0.0.2", 210, (p.JoinPruneGroup(
        GROUP, joins=(p.EncodedSource("10.9.9.9", wildcard=True, rpt=True), p.EncodedSource("10.1.1.2")),
        prunes=(p.EncodedSource("10.1.1.3", rpt=True),)),)))),
    "assert": ipv4("10.0.0.1", p.ALL_PIM_ROUTERS, p.build(p.Assert(GROUP, "10.1.1.2", False, 110, 20))),
    "register": ipv4("10.0.0.1", "10.9.9.9", p.build(p.Register(False, False, ipv4(
        "10.1.1.2", "239.1.1.1", UDP_INSIDE, protocol=17, ttl=16))), ttl=64),
    "null_register": ipv4("10.0.0.1", "10.9.9.9",
                          p.build(p.Register(False, True, p.dummy_header("10.1.1.2", "239.1.1.1"))), ttl=64),
    "register_stop": ipv4("10.9.9.9", "10.0.0.1", p.build(p.RegisterStop(GROUP, "10.1.1.2")), ttl=64),
}  # fmt: skip


def pairs(tree: Any) -> Iterator[tuple[str, str]]:
    """Every (field, value) of tshark's JSON tree, depth first."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        if isinstance(value, (dict, list)):
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                yield from ((str(key), v) for v in value)
            else:
                yield from pairs(value)
        else:
            yield str(key), str(value)


@pytest.fixture(scope="module")
def dissected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[str, str]]]:
    if shutil.which("tshark") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tshark is not installed (scripts/test installs it); CI=true forbids skipping")
        pytest.skip("tshark is not installed (Debian: apt-get install tshark)")
    pcap = Path(tmp_path_factory.mktemp("pim")) / "pim.pcap"
    with pcap.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))  # LINKTYPE_RAW: IP, no link
        for data in MESSAGES.values():
            out.write(struct.pack("<IIII", 0, 0, len(data), len(data)) + data)
    shown = subprocess.run(["tshark", "-r", str(pcap), "-T", "json", "--no-duplicate-keys"], capture_output=True,
                           text=True, timeout=120, check=True)  # fmt: skip
    frames = json.loads(shown.stdout)
    assert len(frames) == len(MESSAGES)
    return {name: list(pairs(frame["_source"]["layers"])) for name, frame in zip(MESSAGES, frames, strict=True)}


@pytest.mark.parametrize("name", list(MESSAGES))
def test_tshark_reads_every_message_we_send_with_no_malformed_field_and_a_good_checksum(
    dissected: dict[str, list[tuple[str, str]]], name: str
) -> None:
    fields = dissected[name]
    problems = [(k, v) for k, v in fields if k.startswith("_ws.malformed") or k == "_ws.expert.severity"]
    assert problems == [], problems
    assert ("pim.cksum.status", "1") in fields  # 1: good
    assert ("pim.type", str(getattr(p, name.upper().removeprefix("NULL_")))) in fields


EXPECTED: dict[str, list[tuple[str, str]]] = {
    "hello": [("pim.holdtime", "105"), ("pim.dr_priority", "7"), ("pim.generation_id", str(0x1234)),
              ("pim.propagation_delay", "500"), ("pim.override_interval", "2500"), ("pim.address_list", "10.0.1.1")],
    "join_prune": [("pim.upstream_neighbor", "10.0.0.2"), ("pim.holdtime", "210"), ("pim.group", "239.1.1.1"),
                   ("pim.numjoins", "2"), ("pim.join_ip", "10.9.9.9"), ("pim.join_ip", "10.1.1.2"),
                   ("pim.numprunes", "1"), ("pim.prune_ip", "10.1.1.3")],
    "assert": [("pim.group", "239.1.1.1"), ("pim.source", "10.1.1.2"), ("pim.rpt", "0"), ("pim.metric_pref", "110"),
               ("pim.metric", "20")],
    "register": [("pim.register_flag.null_register", "0"), ("ip.src", "10.1.1.2"), ("ip.dst", "239.1.1.1"),
                 ("udp.dstport", "5000")],
    "null_register": [("pim.register_flag.null_register", "1"), ("ip.src", "10.1.1.2"), ("ip.dst", "239.1.1.1")],
    "register_stop": [("pim.group", "239.1.1.1"), ("pim.source", "10.1.1.2")],
}  # fmt: skip


@pytest.mark.parametrize("name", list(EXPECTED))
def test_tshark_reads_the_values_we_put_in(dissected: dict[str, list[tuple[str, str]]], name: str) -> None:
    fields = dissected[name]
    assert [wanted for wanted in EXPECTED[name] if wanted not in fields] == [], fields


def test_tshark_reads_the_wildcard_and_rpt_bits_of_each_join_prune_source(
    dissected: dict[str, list[tuple[str, str]]],
) -> None:
    bits = [v for k, v in dissected["join_prune"] if k in ("pim.source_addr.flags.w", "pim.source_addr.flags.r")]
    assert bits == ["1", "1", "0", "0", "0", "1"]  # (*,G) join: W R; (S,G) join: none; (S,G,rpt) prune: R
