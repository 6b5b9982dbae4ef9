"""plugins/igmp/plugin.py hands the IP header's TTL, Router Alert and source to the router (no sockets: a fake link)."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import Iterator

import pytest
from test_igmp_plugin import RecordingContext

from mgm.core.types import Interface
from mgm.plugins.igmp import packet
from mgm.plugins.igmp.plugin import IgmpPlugin
from mgm.plugins.igmp.router import Parameters, Router

IF = Interface(5)
ME = "10.0.0.5"
HOST = "10.0.0.100"
ANY = "0.0.0.0"
G = "239.1.1.1"


class FakeListener:
    """What `LinkListener.receive` yields: whole IP datagrams, queued by the test."""

    def __init__(self) -> None:
        self.queue: list[bytes] = []

    def receive(self) -> Iterator[bytes]:
        out, self.queue = self.queue, []
        yield from out


class FakeIo:
    def __init__(self) -> None:
        self.listeners = {IF.if_index: FakeListener()}
        self.sent: list[tuple[int, str, str, bytes]] = []

    def send(self, if_index: int, source: str, destination: str, payload: bytes) -> None:
        self.sent.append((if_index, source, destination, payload))


@pytest.fixture
def rig() -> Iterator[tuple[IgmpPlugin, FakeIo, RecordingContext]]:
    loop = asyncio.new_event_loop()
    plugin = IgmpPlugin()
    ctx = RecordingContext()
    io = FakeIo()
    plugin.ctx = ctx  # type: ignore[assignment]
    plugin.io = io  # type: ignore[assignment]
    plugin._loop = loop
    router = Router(IF, Parameters(), ME, {ME}, name="veth0", subnets=[ipaddress.IPv4Network("10.0.0.0/24")])
    router.start(loop.time())
    plugin.routers[IF.if_index] = router
    try:
        yield plugin, io, ctx
    finally:
        plugin.io = None  # nothing to close: stop only cancels the wake-up and logs the counters
        plugin.stop()
        loop.close()


def without_router_alert(datagram: bytes) -> bytes:
    """The same datagram with its 4-octet Router Alert option removed (header checksum left alone: unchecked)."""
    header = bytearray(datagram[:20])
    header[0] = 0x45
    header[2:4] = struct.pack("!H", len(datagram) - 4)
    return bytes(header) + datagram[24:]


def deliver(plugin: IgmpPlugin, io: FakeIo, *datagrams: bytes) -> None:
    io.listeners[IF.if_index].queue.extend(datagrams)
    plugin._on_readable(IF.if_index)


def test_the_ip_header_reaches_the_router_checks(rig: tuple[IgmpPlugin, FakeIo, RecordingContext]) -> None:
    plugin, io, ctx = rig
    report = packet.build_report(2, G)
    v3 = packet.build_v3_report([packet.GroupRecord(packet.CHANGE_TO_EXCLUDE_MODE, "239.2.2.2")])
    deliver(plugin, io, packet.build_ipv4(HOST, G, report, ttl=2),
            without_router_alert(packet.build_ipv4(HOST, packet.ALL_IGMPV3_ROUTERS, v3)),
            packet.build_ipv4("192.168.1.1", G, report),
            packet.build_ipv4(HOST, "232.1.1.1", packet.build_report(2, "232.1.1.1")))  # fmt: skip
    counters = plugin.counters()[IF.if_index]
    assert {k: counters[k] for k in ("bad_ttl", "no_router_alert", "foreign_source", "ignored_ssm_asm")} == {
        "bad_ttl": 1, "no_router_alert": 1, "foreign_source": 1, "ignored_ssm_asm": 1,
    }  # fmt: skip
    assert ctx.calls == [] and counters["reports_received"] == 4

    deliver(plugin, io, without_router_alert(packet.build_ipv4(HOST, G, report)),
            packet.build_ipv4(HOST, packet.ALL_IGMPV3_ROUTERS, v3))  # fmt: skip
    assert ctx.calls == [("add", ANY, G, IF), ("add", ANY, "239.2.2.2", IF)]
    assert plugin.counters()[IF.if_index]["no_router_alert_accepted"] == 1
