"""The `pim` plugin: PIM-SM (RFC 7761) for IPv4, as a routing protocol that owns its interfaces in the MGM.

What runs in this version: on every interface of ``[plugins.pim]
interfaces``, neighbour discovery (Hellos with holdtime, DR priority,
generation ID and LAN prune delay; triggered Hellos; neighbour expiry and
goodbyes) and DR election, logged as they change and counted per message
type.  Not yet: Join/Prune, Register, Assert, RPF and the static RP map, so
PIM forwards nothing on its own yet; IGMP's receivers on its interfaces
are forwarded as on any interface IGMP shares.  The start-up log says so.

Theory of operation: one `PimLink` per interface holds the rules
(mgm.plugins.pim.neighbors, no I/O); this module is the shell: one raw
PIM socket for every interface (joined to ALL-PIM-ROUTERS on each,
IP_PKTINFO for the arrival interface), the interfaces' primary addresses
from the process's link watcher, and one timer for the links' earliest
deadline, on the host's loop.

Configuration (``[plugins.pim]``, seconds unless said): ``interfaces``,
``hello_period`` (30), ``hello_holdtime`` (3.5 x hello_period),
``dr_priority`` (1), ``propagation_delay`` (0.5), ``override_interval``
(2.5), ``triggered_hello_delay`` (5).  Any other key is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mgm.core.runtime.config import PLUGIN_COMMON_KEYS, Mistakes, plugin_table
from mgm.core.types import ANY, Interface
from mgm.plugins import links
from mgm.plugins.hookspecs import hookimpl
from mgm.plugins.igmp.rawsocket import interface_addresses, ip_mreqn
from mgm.plugins.pim import packet
from mgm.plugins.pim.neighbors import PimLink

if TYPE_CHECKING:
    from mgm.plugins.context import PluginContext

log = logging.getLogger(__name__)

PIM_PROTOCOL_ID = 8
"""pimSparseMode in IANA's ipMRouteProtocol numbers (RFC 2932), whose igmpOnly(10) is RRAS's IGMP id too."""
PIM_COMPONENT_ID = 1

IP_PKTINFO = 8
IP_MULTICAST_IF = 32
IP_MULTICAST_TTL = 33
IP_MULTICAST_LOOP = 34
IP_ADD_MEMBERSHIP = 35
RECV_SIZE = 65535
TOS_INTERNETWORK_CONTROL = 0xC0


@dataclass(frozen=True, slots=True)
class Settings:
    hello_period: float = 30.0
    hello_holdtime: float | None = None
    dr_priority: int = 1
    propagation_delay: float = 0.5
    override_interval: float = 2.5
    triggered_hello_delay: float = 5.0



LIMITS = {"hello_period": (1.0, 18724.0), "hello_holdtime": (1.0, 65534.0), "propagation_delay": (0.0, 32.767),
          "override_interval": (0.0, 65.535), "triggered_hello_delay": (0.0, 60.0)}  # fmt: skip
"""Each setting's range: what its field on the wire carries (a 16-bit holdtime, 0xFFFF meaning forever)."""


def read_settings(config: Mapping[str, Any]) -> Settings:
    """Check ``[plugins.pim]``: every mistake at once, each naming file, key and line."""
    error = plugin_table(config, "pim").error
    known = set(Settings.__dataclass_fields__) | PLUGIN_COMMON_KEYS
    mistakes = Mistakes()
    values: dict[str, Any] = {}
    for key, value in config.items():
        if key not in known:
            mistakes.add(error(key, f"unknown key for the pim plugin (known: {', '.join(sorted(known))})"))
        elif key == "dr_priority":
            if type(value) is not int or not 0 <= value <= 0xFFFFFFFF:
                mistakes.add(error(key, f"must be an integer from 0 to 4294967295, not {value!r}"))
            else:
                values[key] = value
        elif key in LIMITS:
            low, high = LIMITS[key]
            if type(value) not in (int, float) or not low <= value <= high:
                mistakes.add(error(key, f"must be a number of seconds from {low:g} to {high:g}, not {value!r}"))
            else:
                values[key] = float(value)
    mistakes.raise_any()
    settings = Settings(**values)
    if settings.hello_holdtime is not None and settings.hello_holdtime < settings.hello_period:
        raise error("hello_holdtime", f"{settings.hello_holdtime:g} s is shorter than hello_period "
                    f"({settings.hello_period:g} s): neighbours would expire between Hellos")
    return settings


class PimPlugin(links.LinkSubscriber):
    """Entry point ``pim``."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.links: dict[int, PimLink] = {}
        self.names: dict[int, str] = {}
        self.counters: dict[str, int] = {}
        self.sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.watcher: links.LinkWatcher | None = None
        self.stopped = False

    @hookimpl
    def mgm_protocol(self, config: Mapping[str, Any]) -> tuple[int, int]:
        self.settings = read_settings(config)
        return PIM_PROTOCOL_ID, PIM_COMPONENT_ID

    @hookimpl
    def mgm_start(self, mgm: PluginContext, config: Mapping[str, Any]) -> None:
        settings = self.settings or read_settings(config)
        mgm.spawn(self.start(settings, mgm.interfaces))

    @hookimpl
    def mgm_stop(self, mgm: PluginContext) -> None:
        self.stop()

    # --- the shell ----------------------------------------------------------------------------

    async def start(self, settings: Settings, interfaces: tuple[Interface, ...]) -> None:
        self.settings = settings
        loop = self._loop = asyncio.get_running_loop()
        self.watcher = links.watcher()
        self.watcher.subscribe(self)
        await self.watcher.settled.wait()
        if self.stopped:
            return
        primary = interface_addresses(self.watcher.addresses).primary
        for interface in interfaces:
            name = links.if_name(interface.if_index)
            if interface.next_hop != ANY:
                log.error("pim: interface %s next hop %s: PIM runs on whole interfaces; skipped", name,
                          interface.next_hop)  # fmt: skip
                continue
            address = primary.get(interface.if_index)
            if address is None:
                log.error("pim: %s has no IPv4 address: PIM cannot run there (Hellos are sent from it)", name)
                continue
            self.names[interface.if_index] = name
            self.links[interface.if_index] = PimLink(
                address, hello_period=settings.hello_period, holdtime=settings.hello_holdtime,
                dr_priority=settings.dr_priority, propagation_delay=settings.propagation_delay,
                override_interval=settings.override_interval, triggered_hello_delay=settings.triggered_hello_delay,
            )  # fmt: skip
        if not self.links:
            log.warning("pim: no interface to run on (configure [plugins.pim] interfaces)")
            return
        try:
            self.sock = open_socket(self.links)
        except OSError as exc:
            log.error("pim: cannot open the raw PIM socket (needs root or CAP_NET_RAW): %s; PIM is NOT running", exc)
            return
        loop.add_reader(self.sock.fileno(), self._on_readable)
        now = loop.time()
        for if_index, link in self.links.items():
            link.start(now)
            log.info("pim: running on %s (if_index %d, address %s, DR priority %d, generation id %08x)",
                     self.names[if_index], if_index, link.address, link.dr_priority, link.generation_id)  # fmt: skip
        log.warning("pim: this version runs neighbour discovery and DR election only: no Join/Prune, Register or "
                    "Assert yet, so PIM itself forwards nothing")  # fmt: skip
        self._after()

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.watcher is not None:
            self.watcher.unsubscribe(self)
        if self._timer is not None:
            self._timer.cancel()
        for if_index, link in self.links.items():
            if link.running:
                self._send(if_index, link.stop())  # goodbye: neighbours drop us now, not after our holdtime
        self._log_events()
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        log.info("pim: counters: %s", self.counters or "none")

    # --- addresses: Hellos go from the primary one, and the DR election compares it ---------------

    def address_added(self, address: links.Address) -> None:
        self._readdress()

    def address_removed(self, address: links.Address) -> None:
        self._readdress()

    def _readdress(self) -> None:
        if self.watcher is None:
            return
        primary = interface_addresses(self.watcher.addresses).primary
        for if_index, link in self.links.items():
            new = primary.get(if_index)
            if new is not None and new != link.address:
                log.info("pim: %s: primary address %s -> %s", self.names[if_index], link.address, new)
                link.readdress(new)
        self._after()

    def neighbors(self) -> dict[str, list[dict[str, object]]]:
        """{interface name: its neighbours}, for logs and tests."""
        now = self._loop.time() if self._loop is not None else 0.0
        return {self.names[i]: [n.as_dict(now) for n in link.neighbors.values()] for i, link in self.links.items()}

    def _count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1

    def _on_readable(self) -> None:
        if self.sock is None or self._loop is None:
            return
        now = self._loop.time()
        for _ in range(64):  # drain what is queued, then let the loop run
            try:
                data, ancillary, _flags, (source, _port) = self.sock.recvmsg(RECV_SIZE, socket.CMSG_SPACE(12))
            except (BlockingIOError, InterruptedError):
                break
            if_index = arrival_interface(ancillary)
            link = self.links.get(if_index) if if_index is not None else None
            if link is None:
                continue  # an interface we do not run on
            ihl = (data[0] & 0x0F) * 4 if data else 0
            try:
                message = packet.parse(data[ihl:])
            except packet.MalformedPacket as exc:
                self._count("malformed")
                log.debug("pim: %s: malformed message from %s dropped: %s", self.names[if_index], source, exc)
                continue
            self._count(f"{packet.TYPE_NAMES.get(_type_of(message), 'unknown')}_received")
            if isinstance(message, packet.Hello):
                link.receive_hello(source, message, now)
        self._after()

    def _on_timer(self) -> None:
        self._timer = None
        self._after()

    def _after(self) -> None:
        """Send what is due, log what changed, and set the timer for the next deadline."""
        if self._loop is None or self.stopped:
            return
        now = self._loop.time()
        for if_index, link in self.links.items():
            for hello in link.tick(now):
                self._send(if_index, hello)
        self._log_events()
        deadline = min((link.next_deadline() for link in self.links.values()), default=float("inf"))
        if deadline != float("inf"):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _log_events(self) -> None:
        for if_index, link in self.links.items():
            name = self.names[if_index]
            for event in link.take_events():
                if event.kind == "up":
                    n = link.neighbors.get(event.address)
                    log.info("pim: %s: neighbour %s up (DR priority %s, generation id %s)", name, event.address,
                             None if n is None else n.dr_priority,
                             None if n is None or n.generation_id is None else f"{n.generation_id:08x}")  # fmt: skip
                elif event.kind == "down":
                    log.info("pim: %s: neighbour %s down (%s)", name, event.address, event.why)
                elif event.kind == "restarted":
                    log.info("pim: %s: neighbour %s restarted (new generation id)", name, event.address)
                elif event.kind == "dr":
                    log.info("pim: %s: the DR is now %s%s", name, event.address, " (us)" if link.is_dr else "")

    def _send(self, if_index: int, message: packet.Message) -> None:
        if self.sock is None:
            return
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_IF, ip_mreqn(ANY, if_index))
            self.sock.sendto(packet.build(message), (packet.ALL_PIM_ROUTERS, 0))
            self._count(f"{packet.TYPE_NAMES[_type_of(message)]}_sent")
        except OSError as exc:
            self._count("send_failed")
            log.warning("pim: %s: cannot send a %s: %s", self.names.get(if_index, if_index),
                        type(message).__name__, exc)  # fmt: skip


def _type_of(message: packet.Message) -> int:
    types = {packet.Hello: packet.HELLO, packet.JoinPrune: packet.JOIN_PRUNE, packet.Assert: packet.ASSERT,
             packet.Register: packet.REGISTER, packet.RegisterStop: packet.REGISTER_STOP}  # fmt: skip
    return message.type if isinstance(message, packet.Unknown) else types[type(message)]


def open_socket(interfaces: Mapping[int, object]) -> socket.socket:
    """One raw PIM socket: joined to ALL-PIM-ROUTERS on every interface, TTL 1, our own Hellos not looped back."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, packet.PIM_PROTOCOL)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_LOOP, 0)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_INTERNETWORK_CONTROL)
        for if_index in interfaces:
            sock.setsockopt(socket.IPPROTO_IP, IP_ADD_MEMBERSHIP, ip_mreqn(packet.ALL_PIM_ROUTERS, if_index))
    except OSError:
        with contextlib.suppress(OSError):
            sock.close()
        raise
    return sock


def arrival_interface(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The if_index of IP_PKTINFO (struct in_pktinfo: ifindex, spec_dst, addr)."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 4:
            return int(struct.unpack_from("@i", data)[0])
    return None
