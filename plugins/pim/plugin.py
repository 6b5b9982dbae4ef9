"""The `pim` plugin: PIM-SM (RFC 7761) for IPv4, as a routing protocol that owns its interfaces in the MGM.

What runs in this version, on every interface of ``[plugins.pim]
interfaces``:

* neighbour discovery (Hellos with holdtime, DR priority, generation ID
  and LAN prune delay; triggered Hellos; neighbour expiry and goodbyes)
  and DR election, logged as they change and counted per message type;
* the last-hop router's upstream joins: receivers of a group (IGMP's
  members on our interfaces, `local_join`, and the other protocols'
  receivers, the manager's join alerts, and at start and after a manager
  restart the groups a group enumeration lists, for the alerts a plugin
  that was not running missed) make a (*,G) join towards the
  group's RP from the static RP map, source-specific receivers an (S,G)
  join towards S, each to the RPF neighbour the kernel's unicast routes
  give (re-checked every few seconds and whenever a neighbour comes or
  goes); the first packet of a flow on the shared tree (the manager's
  rpf question for the new MFE) makes an (S,G) join, the switch to the
  shortest-path tree, unless ``spt_switchover = "never"``;
* the downstream state of an upstream router or RP: the Joins and Prunes
  our neighbours address to us make per-interface (*,G) and (S,G) state
  (mgm.plugins.pim.downstream), which becomes our MGM membership on that
  interface (the manager adds it to the outgoing lists of the group's
  MFEs, and alerts the other protocols) and a reason for our own join
  upstream; an RP (an ``rp`` address that is ours) joins no further;
* join suppression and prune override on LANs, from the Joins and Prunes
  other routers send to our upstream neighbours;
* the RP's side of Register (4.4.2): a DR's Register (or null-Register)
  of (S,G) makes the RP, when G has receivers, join (S,G) towards S and
  keep it joined while Registers keep coming (Keepalive, 210 s), and
  forward the packet inside down the outgoing list of the manager's MFE
  for (S,G) (created with new_packet when there is none, so every
  protocol's receivers are in it; read again every RELAY_REFRESH) from a
  raw IP socket, TTL less one; it answers Register-Stop when G has none,
  once S's packets arrive natively (the manager's rpf question for an MFE
  the forwarder created, or a packet count above 0 in the one we read),
  and to a Register for a group whose RP we are not;
* the DR's side of Register (4.4.1, mgm.plugins.pim.register): a new
  flow (the manager's rpf question) from a source on a link where we
  are DR, for a group whose RP is another router, is registered: its
  packets go whole, in Registers, to the RP until its Register-Stop;
  when the Register-Stop timer ends, a null-Register probes; the entry
  ends when we stop being DR or the manager deletes the flow's MFE.  The
  packets are read in user space, on both forwarder backends: a packet
  socket on the source's link whose kernel filter keeps exactly the
  flows in the Join state, open only while there are some.  The kernel's
  register VIF is not used: the multicast routing socket is the
  forwarder's, in another process.

* (S,G) Assert (4.6.1, mgm.plugins.pim.asserts): a packet of (S,G) that
  comes in on an interface we forward it onto (the manager's wrong_if;
  whether we forward there is read from the MFE) makes us Assert; the
  preferred metric keeps forwarding, and where we lose, that interface
  leaves the MFE's outgoing list (set_mfe_oil) until the winner cancels,
  goes, or stops asserting (Assert_Time); on stop a winner sends
  AssertCancel.  Our metric is (preference 0, metric 0): a Linux kernel
  route, as FRR rates one, so equal routes are decided by the higher
  address.

Not yet: downstream (S,G,rpt) state, (*,G) Asserts (counted and
ignored), the assert winner as the RPF neighbour of our own joins, the
DR's exclusive right to forward for IGMP members on a LAN (both routers
forward until the Assert).  The start-up log says so.

Theory of operation: one `PimLink` per interface holds the rules
(mgm.plugins.pim.neighbors, no I/O); this module is the shell: one raw
PIM socket for every interface (joined to ALL-PIM-ROUTERS on each,
IP_PKTINFO for the arrival interface), the interfaces' primary addresses
from the process's link watcher, and one timer for the links' earliest
deadline, on the host's loop.

Configuration (``[plugins.pim]``, seconds unless said): ``interfaces``,
``hello_period`` (30), ``hello_holdtime`` (3.5 x hello_period),
``dr_priority`` (1), ``propagation_delay`` (0.5), ``override_interval``
(2.5), ``triggered_hello_delay`` (5), ``join_prune_interval`` (60),
``rp`` (a list of ``{address = "RP", groups = ["224.0.0.0/4"]}``, the
longest prefix wins), ``spt_switchover`` ("immediate" or "never"),
``register_suppression_time`` (60) and ``register_probe_time`` (5).  Any
other key is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
import struct
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mgm.bus.status import MgmError, Status
from mgm.core.runtime.config import PLUGIN_COMMON_KEYS, Mistakes, multicast_prefix, plugin_table
from mgm.core.runtime.routes import KernelRoutes
from mgm.core.types import ANY, Interface
from mgm.plugins import links
from mgm.plugins.hookspecs import hookimpl
from mgm.plugins.igmp.rawsocket import LinkListener, attach_filter, flows_only, interface_addresses, ip_mreqn
from mgm.plugins.pim import packet
from mgm.plugins.pim.asserts import Asserts, Metric
from mgm.plugins.pim.downstream import Downstream
from mgm.plugins.pim.neighbors import PimLink
from mgm.plugins.pim.register import JOIN, Registers
from mgm.plugins.pim.upstream import Key, Rpf, Upstream

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
REGISTER_KEEPALIVE = 210.0
"""RFC 7761's Keepalive_Period: how long a registered source stays joined without a Register."""
STATUS_INTERVAL = 1.0
"""The most often the plugin tells the manager its status (`mgm show pim`), and only after a change."""
RELAY_REFRESH = 1.0
"""How long the RP forwards what Registers carry down an outgoing list read from the manager before reading
it again (receivers come and go; the packet count says when the flow comes natively)."""
RELAY_QUEUE = 256
"""Packets Registers carried that wait for the outgoing list to be read, at most, per (S,G)."""
RPF_CHECK_INTERVAL = 5.0
"""How often the RPF neighbour of every upstream entry is looked up again (a route change moves the join)."""


@dataclass(frozen=True, slots=True)
class Settings:
    hello_period: float = 30.0
    hello_holdtime: float | None = None
    dr_priority: int = 1
    propagation_delay: float = 0.5
    override_interval: float = 2.5
    triggered_hello_delay: float = 5.0
    join_prune_interval: float = 60.0
    rp: tuple[tuple[ipaddress.IPv4Network, str], ...] = field(default=())
    """(group range, RP address), longest prefix first."""
    spt_switchover: str = "immediate"
    register_suppression_time: float = 60.0
    register_probe_time: float = 5.0

    def rp_for(self, group: str) -> str | None:
        address = ipaddress.IPv4Address(group)
        return next((rp for prefix, rp in self.rp if address in prefix), None)



LIMITS = {"hello_period": (1.0, 18724.0), "hello_holdtime": (1.0, 65534.0), "propagation_delay": (0.0, 32.767),
          "override_interval": (0.0, 65.535), "triggered_hello_delay": (0.0, 60.0),
          "join_prune_interval": (1.0, 18724.0), "register_suppression_time": (2.0, 3600.0),
          "register_probe_time": (0.5, 60.0)}  # fmt: skip
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
        elif key == "spt_switchover":
            if value not in ("immediate", "never"):
                mistakes.add(error(key, f'must be "immediate" or "never", not {value!r}'))
            else:
                values[key] = value
        elif key == "rp":
            rp = mistakes.check(_rp_map, error, value)
            if rp is not None:
                values[key] = rp
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
    if settings.register_probe_time >= settings.register_suppression_time / 2:
        raise error("register_probe_time", f"{settings.register_probe_time:g} s is not under half of "
                    f"register_suppression_time ({settings.register_suppression_time:g} s): the null-Register "
                    "would come before the Register-Stop timer starts")  # fmt: skip
    return settings


def _rp_map(error: Any, value: Any) -> tuple[tuple[ipaddress.IPv4Network, str], ...]:
    """``rp = [{address = "10.0.0.1", groups = ["239.0.0.0/8"]}, ...]``, checked; longest prefixes first."""
    if not isinstance(value, list):
        raise error("rp", 'must be a list of {address = "RP", groups = ["224.0.0.0/4", ...]}')
    found: dict[ipaddress.IPv4Network, str] = {}
    for i, entry in enumerate(value):
        where = f"rp[{i}]"
        if not isinstance(entry, Mapping) or "address" not in entry or set(entry) - {"address", "groups"}:
            raise error(where, 'must be {address = "RP", groups = [...]} (groups default to 224.0.0.0/4)')
        try:
            address = ipaddress.IPv4Address(entry["address"])
        except ValueError:
            raise error(f"{where}.address", f"must be an IPv4 unicast address, not {entry['address']!r}") from None
        if address.is_multicast or address.is_unspecified:
            raise error(f"{where}.address", f"{address} cannot be an RP (a unicast address is)")
        for prefix_text in entry.get("groups", ["224.0.0.0/4"]):
            try:
                prefix = multicast_prefix(prefix_text)
            except ValueError as exc:
                raise error(f"{where}.groups", str(exc)) from None
            if prefix in found and found[prefix] != str(address):
                raise error(f"{where}.groups", f"{prefix} already has the RP {found[prefix]}")
            found[prefix] = str(address)
    return tuple(sorted(found.items(), key=lambda kv: -kv[0].prefixlen))


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
        self.upstream: Upstream | None = None
        self.downstream = Downstream()
        self.mgm: PluginContext | None = None
        self.routes: KernelRoutes | None = None
        self.wanted: dict[Key, set[str]] = {}
        """Why each upstream entry is joined: "local N" (IGMP's members on our interface N), "alert" (other
        protocols' receivers), "downstream N" (a neighbour's join on our interface N), "spt" (a flow of a
        group with receivers here, on the shortest-path tree)."""
        self._next_rpf_check = 0.0
        self._status_timer: asyncio.TimerHandle | None = None
        self.registered: dict[Key, float] = {}
        """(S,G) a DR registered to us as RP, joined towards S ("register"), and when its last Register came."""
        self.native: set[Key] = set()
        """Registered (S,G) whose packets reached us natively (the manager's rpf question, or the MFE's packet
        count): Register-Stop them."""
        self.relays: dict[Key, Relay] = {}
        """Registered (S,G): where the packets Registers carry go, as last read from the manager's MFE."""
        self._creating: set[Key] = set()
        self.relay_sock: socket.socket | None = None
        self.asserts = Asserts()
        """(S,G) Assert state per interface (4.6.1): where we won, where we lost and stopped forwarding."""
        self._vetoed: set[tuple[str, str, int]] = set()
        """(S,G,I) we took out of the MFE's outgoing list (set_mfe_oil) because we lost the Assert on I."""
        self._assert_checks: set[tuple[str, str, int]] = set()
        self.registers = Registers()
        """(S,G) of our directly connected sources that we register to their RP as their DR (4.4.1)."""
        self.captures: dict[int, tuple[LinkListener, list[tuple[str, str]]]] = {}
        """Per source interface: the packet socket that reads the flows we encapsulate, and which they are."""
        self._next_liveness_check = math.inf
        self._no_rp_said: set[str] = set()
        self._malformed_from: set[tuple[int, str]] = set()

    @hookimpl
    def mgm_protocol(self, config: Mapping[str, Any]) -> tuple[int, int]:
        self.settings = read_settings(config)
        return PIM_PROTOCOL_ID, PIM_COMPONENT_ID

    @hookimpl
    def mgm_start(self, mgm: PluginContext, config: Mapping[str, Any]) -> None:
        settings = self.settings or read_settings(config)
        self.mgm = mgm
        mgm.spawn(self.start(settings, mgm.interfaces))

    @hookimpl
    def mgm_stop(self, mgm: PluginContext) -> None:
        self.stop()

    @hookimpl
    def mgm_local_join(self, mgm: PluginContext, source: str, source_mask: str, group: str, group_mask: str,
                       interface: Interface) -> None:  # fmt: skip
        self._reason(_key(source, group), f"local {interface.if_index}", True)

    @hookimpl
    def mgm_local_leave(self, mgm: PluginContext, source: str, source_mask: str, group: str, group_mask: str,
                        interface: Interface) -> None:  # fmt: skip
        self._reason(_key(source, group), f"local {interface.if_index}", False)

    @hookimpl
    def mgm_join_alert(self, mgm: PluginContext, source: str, source_mask: str, group: str, group_mask: str,
                       member_update: bool) -> None:  # fmt: skip
        if member_update:  # receivers of another protocol
            self._reason(_key(source, group), "alert", True)

    @hookimpl
    def mgm_prune_alert(self, mgm: PluginContext, source: str, source_mask: str, group: str, group_mask: str,
                        interface: Interface, member_delete: bool, question: int | None) -> None:  # fmt: skip
        if member_delete:
            self._reason(_key(source, group), "alert", False)

    @hookimpl
    def mgm_wrong_if(self, mgm: PluginContext, source: str, group: str, interface: Interface) -> None:
        """A packet of (S,G) came in on one of our interfaces that is not the MFE's incoming one: where we
        forward (S,G) onto that interface too, another router does as well: Assert (4.6.1)."""
        if interface.if_index in self.links and self._loop is not None:
            self._check_assert((source, group, interface.if_index), None)

    @hookimpl
    def mgm_rpf(self, mgm: PluginContext, source: str, group: str, interface: Interface, upstream_neighbor: str,
                question: int) -> None:  # fmt: skip
        """A new flow arrives on one of our interfaces: on the shared tree of a group with receivers on this
        router (not only downstream routers: theirs is the switch), switch to the shortest-path tree (the
        manager's choice of incoming interface stands)."""
        if (source, group) in self.registered and (source, group) not in self._creating:  # natively: Register-Stop
            self.native.add((source, group))
        if self._switches_to_spt(group):
            self._reason((source, group), "spt", True)
        self._may_register((source, group), interface.if_index)

    def _switches_to_spt(self, group: str) -> bool:
        """Whether a flow of `group` on the shared tree moves to the shortest-path tree: a last-hop decision,
        made for receivers on this router, never for downstream routers' joins alone."""
        reasons = self.wanted.get((None, group), set())
        return (self.settings is not None and self.settings.spt_switchover == "immediate"
                and any(not reason.startswith("downstream") for reason in reasons))  # fmt: skip

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
            log.info("pim: %s: the DR is now %s (us, until a neighbour outranks us)", self.names[if_index], link.dr)
        self.upstream = Upstream(settings.join_prune_interval)
        self.registers = Registers(settings.register_suppression_time, settings.register_probe_time)
        self._next_liveness_check = now + settings.register_suppression_time
        try:
            self.routes = KernelRoutes()
        except OSError as exc:
            log.error("pim: cannot open a netlink socket for route lookups: %s; no upstream joins", exc)
        for prefix, rp in settings.rp:
            log.info("pim: RP %s for %s", rp, prefix)
        log.warning("pim: this version keeps no downstream (S,G,rpt) state and has (S,G) Asserts only")
        for key in self.wanted:
            self._evaluate(key, now)
        self._after()
        await self.learn_receivers()

    @hookimpl
    def mgm_replay(self, mgm: PluginContext) -> None:
        mgm.spawn(self.learn_receivers())

    async def learn_receivers(self) -> None:
        """Receivers that other protocols had before we registered: the manager alerts a protocol only when a
        group gets its first or second client, so a PIM that (re)starts later asks for the groups joined now
        (group enumeration, MgmGroupEnumerationStart) and treats each as the join alert it missed."""
        mgm = self.mgm
        if mgm is None or self.upstream is None:
            return
        ours = {(key[0], key[2]) for key in mgm.memberships}  # our downstream routers' joins are not an alert
        learned = 0
        # through the client, not mgm.request: its refusals are expected here (an exhausted enumeration is
        # 259; a handle the manager dropped is 87, and the replay after our new registration asks again)
        request, handle = mgm.client.request, mgm.handle
        try:
            enum = (await request("group_enumeration_start", {"handle": handle, "type": "all_sources"}))["enum"]
        except (MgmError, TimeoutError) as exc:
            log.info("pim: cannot list the joined groups now (%s); we will when registered again", exc)
            return
        try:
            more = True
            while more and not self.stopped:
                try:
                    page = await request("group_enumeration_next", {"handle": handle, "enum": enum,
                                                                    "max_entries": 1000})  # fmt: skip
                except MgmError as exc:
                    if exc.status != Status.ERROR_NO_MORE_ITEMS:
                        raise
                    break
                more = bool(page.get("more"))
                for entry in page["entries"]:
                    source, group = entry["source"], entry["group"]
                    if (source, group) in ours or not self._alerts_us(source):
                        continue
                    self._reason(_key(source, group), "alert", True, settle=False)
                    learned += 1
        except (MgmError, TimeoutError) as exc:
            log.warning("pim: listing the joined groups failed after %d: %s; the next registration asks again",
                        learned, exc)  # fmt: skip
        finally:
            with contextlib.suppress(MgmError, TimeoutError):
                await request("group_enumeration_end", {"handle": handle, "enum": enum})
        log.info("pim: %d joined (source, group) pair(s) of other protocols found at start", learned)
        await self._learn_flows(request)
        self._after()

    async def _learn_flows(self, request: Callable[..., Awaitable[dict[str, Any]]]) -> None:
        """The flows already coming in on our interfaces, whose rpf question (our switch to the shortest-path
        tree) went to us before we knew their group's receivers, or to the instance before a restart."""
        args: dict[str, Any] = {"max_entries": 500}
        try:
            while not self.stopped:
                page = await request("list_mfes", args)
                entries = page.get("entries") or []
                for mfe in entries:
                    if mfe["in_if_index"] in self.links and self._switches_to_spt(mfe["group"]):
                        self._reason((mfe["source"], mfe["group"]), "spt", True, settle=False)
                if not page.get("more") or not entries:
                    return
                args["after"] = {"source": entries[-1]["source"], "group": entries[-1]["group"]}
        except (MgmError, TimeoutError) as exc:
            log.warning("pim: listing the flows failed: %s; their next rpf question decides", exc)

    def _alerts_us(self, source: str) -> bool:
        """Whether the manager would alert us of (source, G) joins: always for (*,G); for (S,G) only where our
        interface is the one towards S."""
        if source == ANY:
            return True
        route = self.routes.route(source) if self.routes is not None else None
        return route is not None and route.if_index in self.links

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.watcher is not None:
            self.watcher.unsubscribe(self)
        if self._timer is not None:
            self._timer.cancel()
        for won in [k for k in self.asserts.entries if not self.asserts.losing(k)]:
            self.asserts.could_assert_ended(won)  # AssertCancel: the losers forward now, not after Assert_Time
        self._send_asserts()
        for if_index, link in self.links.items():
            if link.running:
                self._send(if_index, link.stop())  # goodbye: neighbours drop us now, not after our holdtime
        self._log_events()
        if self.upstream is not None:  # prune what we joined: upstream stops at once, not after the holdtime
            for key in list(self.upstream.entries):
                self.upstream.unwant(key)
            for (if_index, _neighbor), message in self.upstream.tick(0.0):
                self._send(if_index, message)
        for if_index in list(self.captures):
            self._capture(if_index, [])
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.routes is not None:
            self.routes.close()
        if self.relay_sock is not None:
            self.relay_sock.close()
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

    # --- upstream joins ---------------------------------------------------------------------------

    def _reason(self, key: Key, reason: str, present: bool, *, settle: bool = True) -> None:
        """`reason` for joining `key` upstream appears or goes; `settle=False` from inside `_after`, which sends
        what is due once its events are all in."""
        reasons = self.wanted.setdefault(key, set())
        before = bool(reasons)
        (reasons.add if present else reasons.discard)(reason)
        if not reasons:
            del self.wanted[key]
            if key[0] is None:  # the group's receivers are gone: its shortest-path trees go too
                for spt in [k for k, why in self.wanted.items() if k[1] == key[1] and why <= {"spt", "register"}]:
                    del self.wanted[spt]
                    self.registered.pop(spt, None)
                    self.native.discard(spt)
                    self.relays.pop(spt, None)
                    self._evaluate(spt)
        self._evaluate(key)
        if settle:
            self._after()  # the triggered Join or Prune goes out here (4.5.7), before the line below
        if before != bool(reasons):
            log.info("pim: (%s,%s) %s (%s)", key[0] or "*", key[1], "wanted" if reasons else "no longer wanted",
                     reason)  # fmt: skip

    def _evaluate(self, key: Key, now: float | None = None) -> None:
        """Tell the upstream state whether `key` is wanted and through which neighbour."""
        if self.upstream is None or self._loop is None:
            return  # not started: `start` evaluates every wanted key
        now = self._loop.time() if now is None else now
        if key not in self.wanted:
            self.upstream.unwant(key)
            return
        source, group = key
        target = source
        if target is None:
            target = self.settings.rp_for(group) if self.settings is not None else None
            if target is None:
                if group not in self._no_rp_said:
                    self._no_rp_said.add(group)
                    log.warning("pim: no RP for %s in the rp map: no (*,G) join", group)
                return
        self.upstream.want(key, target, self._rpf(target), now)

    def _rpf(self, target: str) -> Rpf | None:
        """RPF'(target): our interface towards it and the PIM neighbour there (the gateway, else the target)."""
        if self.routes is None:
            return None
        route = self.routes.route(target)
        link = self.links.get(route.if_index) if route is not None else None
        if route is None or link is None or target == link.address:
            return None  # no route, not through PIM, or we are the RP
        neighbor = route.gateway or target
        return (route.if_index, neighbor) if neighbor in link.neighbors else None

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
            link = None if if_index is None else self.links.get(if_index)
            ihl = (data[0] & 0x0F) * 4 if data else 0
            unicast = len(data) > ihl and data[ihl] & 0x0F in (packet.REGISTER, packet.REGISTER_STOP)
            if if_index is None or (link is None and not unicast):
                continue  # an interface we do not run on; a Register or Register-Stop (unicast) may come in anywhere
            try:
                message = packet.parse(data[ihl:])
            except packet.MalformedPacket as exc:
                self._count("malformed")
                first = (if_index, source) not in self._malformed_from
                self._malformed_from.add((if_index, source))
                log.log(logging.WARNING if first else logging.DEBUG, "pim: %s: malformed message from %s dropped: "
                        "%s%s", self.names.get(if_index, if_index), source, exc,
                        " (later ones at debug level)" if first else "")  # fmt: skip
                continue
            self._count(f"{packet.TYPE_NAMES.get(_type_of(message), 'unknown')}_received")
            if isinstance(message, packet.Register):
                self._receive_register(source, if_index, message, now)
            elif isinstance(message, packet.RegisterStop):
                self._receive_register_stop(source, message, now)
            elif link is None:
                continue
            elif isinstance(message, packet.Hello):
                link.receive_hello(source, message, now)
            elif isinstance(message, packet.JoinPrune):
                self._receive_join_prune(if_index, link, source, message, now)
            elif isinstance(message, packet.Assert):
                self._receive_assert(if_index, link, source, message)
        self._after()

    # --- the RP's side of Register (4.4.2), without decapsulation ---------------------------------

    def _receive_register(self, dr: str, if_index: int, message: packet.Register, now: float) -> None:
        """A DR registers a source: where we are the group's RP and have receivers, join towards the source
        and send the packet inside down the flow's outgoing interfaces (`_relay`); answer Register-Stop when
        there are none, or once the source's packets come natively."""
        inner = message.packet
        if len(inner) < 20 or inner[0] >> 4 != 4:
            self._count("register_malformed")
            return
        source, group = socket.inet_ntoa(inner[12:16]), socket.inet_ntoa(inner[16:20])
        rp = self.settings.rp_for(group) if self.settings is not None else None
        if rp is None or rp not in {link.address for link in self.links.values()}:
            self._count("register_not_rp")  # 4.4.2: a Register-Stop tells the DR it has the wrong RP
            self._register_stop(dr, source, group, None)
            return
        key = (source, group)
        receivers = bool(self.wanted.get((None, group)))
        if receivers:
            if key not in self.registered:
                log.info("pim: (%s,%s) registered by %s%s: joining towards the source", source, group, dr,
                         " (null-Register)" if message.null else "")  # fmt: skip
            self.registered[key] = now
            self._reason(key, "register", True, settle=False)
            if key not in self.native:
                self._relay(key, None if message.null else inner, dr, rp, if_index, now)
        if not receivers or key in self.native:
            self._register_stop(dr, source, group, rp)

    def _relay(self, key: Key, data: bytes | None, dr: str, rp: str, if_index: int, now: float) -> None:
        """The RP forwards what a Register carries (4.4.2) down the flow's outgoing interfaces: those of the
        manager's MFE for (S,G), which it creates (new_packet, as a forwarder would) when there is none, so the
        outgoing list is the manager's, every protocol's receivers in it.  It is read again at most every
        RELAY_REFRESH; its packet count tells when the source's packets come natively (then Register-Stop).
        Packets that come while it is read wait, up to RELAY_QUEUE."""
        assert key[0] is not None
        relay = self.relays.setdefault(key, Relay())
        if data is not None and relay.oil is not None and now - relay.fetched < RELAY_REFRESH:
            self._send_down(relay.oil, key[1], data)
            return
        if data is not None:
            if len(relay.queue) < RELAY_QUEUE:
                relay.queue.append(data)
            else:
                self._count("register_relay_dropped")
        if now - relay.fetched >= RELAY_REFRESH and not relay.busy and self.mgm is not None:
            relay.busy = True
            self.mgm.spawn(self._read_relay(key, dr, rp, if_index))

    async def _read_relay(self, key: Key, dr: str, rp: str, if_index: int) -> None:
        mgm, relay, (source, group) = self.mgm, self.relays[key], key
        assert mgm is not None and source is not None and self._loop is not None
        try:
            try:
                mfe = (await mgm.client.request("get_mfe", {"source": source, "group": group, "stats": 0}))["mfe"]
            except MgmError as exc:
                if exc.status != Status.ERROR_NOT_FOUND:
                    raise
                self._creating.add(key)  # its rpf question is ours, not a sign of native packets
                try:
                    mfe = (await mgm.client.request("new_packet", {"handle": mgm.handle, "source": source,
                           "group": group, "if_index": if_index, "next_hop": ANY}))["mfe"]  # fmt: skip
                finally:
                    self._creating.discard(key)
        except (MgmError, TimeoutError) as exc:
            log.warning("pim: (%s,%s) cannot read its MFE to forward what Registers carry: %s", source, group, exc)
            relay.queue.clear()
            return
        finally:
            relay.busy = False
        relay.oil = tuple(o["if_index"] for o in mfe["oil"] if o["if_index"] != mfe["in_if_index"])
        relay.fetched = self._loop.time()
        queued, relay.queue = relay.queue, []
        if mfe.get("in_packets", 0) > 0 and key in self.registered:  # the forwarder counted native packets
            self.native.add(key)
            self._register_stop(dr, source, group, rp)
        for data in [] if key in self.native else queued:
            self._send_down(relay.oil, group, data)

    def _send_down(self, oil: tuple[int, ...], group: str, data: bytes) -> None:
        """One packet a Register carried, out of each of `oil` as we would forward it: TTL less one."""
        if data[8] <= 1 or not oil:
            self._count("register_relay_ttl_expired" if oil else "register_relay_no_receivers")
            return
        if self.relay_sock is None:
            try:
                self.relay_sock = open_relay_socket()
            except OSError as exc:
                log.error("pim: cannot open a raw IP socket to forward what Registers carry: %s", exc)
                return
        forwarded = bytearray(data)
        forwarded[8] -= 1  # the kernel fills in the header checksum (IP_HDRINCL)
        for if_index in oil:
            try:
                self.relay_sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_IF, ip_mreqn("0.0.0.0", if_index))
                self.relay_sock.sendto(forwarded, (group, 0))
                self._count("register_relayed")
            except OSError as exc:
                self._count("register_relay_failed")
                log.debug("pim: forwarding a registered packet to %s out of %d: %s", group, if_index, exc)

    def _register_stop(self, dr: str, source: str, group: str, rp: str | None) -> None:
        """A unicast Register-Stop to the DR, from the RP address when we are the RP (the DR checks it)."""
        self._unicast(packet.RegisterStop(packet.EncodedGroup(group), source), dr, rp)

    def _unicast(self, message: packet.Message, to: str, source: str | None) -> bool:
        """A Register or Register-Stop to `to`, from our address `source` (None: the route's, which is what a
        DR's Registers come from: the address of our interface towards the RP, as FRR's do)."""
        if self.sock is None:
            return False
        pktinfo = None if source is None else struct.pack("@i4s4s", 0, socket.inet_aton(source), bytes(4))
        ancillary = [] if pktinfo is None else [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)]
        try:
            self.sock.sendmsg([packet.build(message)], ancillary, 0, (to, 0))
        except OSError as exc:
            self._count("send_failed")
            log.log(logging.DEBUG if self.counters.get("send_failed", 0) > 1 else logging.WARNING,
                    "pim: cannot send a %s to %s: %s", packet.TYPE_NAMES[_type_of(message)], to, exc)  # fmt: skip
            return False
        self._count(f"{packet.TYPE_NAMES[_type_of(message)]}_sent")
        return True

    # --- the DR's side of Register (4.4.1): the packets of our sources reach the RP in Registers ---

    def _may_register(self, flow: tuple[str, str], if_index: int) -> None:
        """CouldRegister(S,G): the flow arrives on a link of ours where we are DR, from a source on that link
        (no gateway towards it), and its group's RP is another router."""
        link = self.links.get(if_index)
        rp = self.settings.rp_for(flow[1]) if self.settings is not None else None
        if link is None or not link.is_dr or rp is None or rp in {k.address for k in self.links.values()}:
            return
        route = self.routes.route(flow[0]) if self.routes is not None else None
        if route is None or route.if_index != if_index or route.gateway:
            return
        if self.registers.could_register(flow, rp, if_index):
            log.info("pim: (%s,%s) registering to the RP %s: we are the DR of the source's link %s", *flow, rp,
                     self.names[if_index])  # fmt: skip

    def _receive_register_stop(self, rp: str, message: packet.RegisterStop, now: float) -> None:
        """The RP has the flow natively (or no receivers, or is not the RP): stop encapsulating until the probe.
        A source 0.0.0.0 stops every source of the group (4.4.1)."""
        group = message.group.address
        flows = [f for f in self.registers.entries if f[1] == group and message.source in (f[0], "0.0.0.0")]
        for flow in flows:
            entry = self.registers.entries[flow]
            if self.registers.stopped(flow, now) and entry.stops == 1:
                log.info("pim: (%s,%s) Register-Stop from %s: no more Registers, a null-Register in %.0f s",
                         *flow, rp, entry.timer - now)  # fmt: skip
        if not flows:
            self._count("register_stop_unexpected")

    def _encapsulate(self, if_index: int) -> None:
        """The packets the capture on `if_index` read: each, whole, in a Register to its flow's RP."""
        listener, _flows = self.captures[if_index]
        for data in listener.receive():
            entry = self.registers.entries.get((socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])))
            if entry is not None and entry.state == JOIN:  # not one the filter kept before it changed
                self._unicast(packet.Register(border=False, null=False, packet=data), entry.rp, None)

    def _capture(self, if_index: int, flows: list[tuple[str, str]]) -> None:
        """Read exactly `flows` on `if_index` (none: close the socket).  A filter, not a socket, per change."""
        current = self.captures.get(if_index)
        if self._loop is None or (current[1] if current is not None else []) == flows:
            return
        if current is not None and not flows:
            self._loop.remove_reader(current[0].fileno())
            current[0].close()
            del self.captures[if_index]
        elif current is not None:
            attach_filter(current[0].sock, flows_only(flows))
            self.captures[if_index] = (current[0], flows)
        else:
            try:
                listener = LinkListener(if_index, flows_only(flows))
            except OSError as exc:
                log.error("pim: cannot read the flows to register on %s: %s; the RP gets null-Registers only",
                          self.names[if_index], exc)  # fmt: skip
                return
            self.captures[if_index] = (listener, flows)
            self._loop.add_reader(listener.fileno(), self._encapsulate, if_index)

    def _registers_due(self, now: float) -> None:
        """What the DR's Register state asks now: null-Registers, the captures to match, and every
        register_suppression_time a check that each flow still exists (CouldRegister ends with its MFE)."""
        for flow in [f for f, e in self.registers.entries.items() if not self.links[e.if_index].is_dr]:
            self.registers.cannot_register(flow)
            log.info("pim: (%s,%s) no longer registered: we are not the DR of its link", *flow)
        for flow in self.registers.tick(now):
            entry = self.registers.entries[flow]
            null = packet.Register(border=False, null=True, packet=packet.dummy_header(*flow))
            self._unicast(null, entry.rp, None)
        for if_index in {*self.captures, *(e.if_index for e in self.registers.entries.values())}:
            self._capture(if_index, self.registers.encapsulating(if_index))
        if now >= self._next_liveness_check and self.mgm is not None and self.settings is not None:
            self._next_liveness_check = now + self.settings.register_suppression_time
            if self.registers.entries:
                self.mgm.spawn(self._flows_alive(list(self.registers.entries)))

    async def _flows_alive(self, flows: list[tuple[str, str]]) -> None:
        """Forget the registered flows whose MFE the manager deleted (the source went quiet)."""
        assert self.mgm is not None
        for source, group in flows:
            try:
                await self.mgm.client.request("get_mfe", {"source": source, "group": group})
            except MgmError as exc:
                if exc.status == Status.ERROR_NOT_FOUND and self.registers.cannot_register((source, group)):
                    log.info("pim: (%s,%s) no longer registered: the flow stopped", source, group)
            except TimeoutError:
                return
        self._after()

    def _registers_expired(self, now: float) -> None:
        """A source whose DR has sent no Register (null ones included) for REGISTER_KEEPALIVE: stop joining it."""
        for key in [k for k, at in self.registered.items() if now - at > REGISTER_KEEPALIVE]:
            del self.registered[key]
            self.native.discard(key)
            self.relays.pop(key, None)
            self._reason(key, "register", False, settle=False)

    def _receive_join_prune(self, if_index: int, link: PimLink, source: str, message: packet.JoinPrune,
                            now: float) -> None:  # fmt: skip
        if source not in link.neighbors:  # 4.3.1: nothing but Hellos from a router that has sent none
            self._count("join_prune_from_non_neighbor")
            return
        if message.upstream_neighbor == link.address:
            self.downstream.receive(if_index, message, now, override_interval=link.prune_override_interval(source))
        elif self.upstream is not None:
            self.upstream.overheard((if_index, message.upstream_neighbor), message, now,
                                    link.effective_override_interval())  # fmt: skip

    # --- Assert (4.6.1): one forwarder per LAN --------------------------------------------------

    def _receive_assert(self, if_index: int, link: PimLink, source: str, message: packet.Assert) -> None:
        if source not in link.neighbors:
            self._count("assert_from_non_neighbor")
            return
        if message.source == "0.0.0.0":  # (*,G) Asserts are not implemented: counted
            self._count("assert_star_g_ignored")
            return
        theirs = Metric(message.rpt, message.preference, message.metric, source)
        self._check_assert((message.source, message.group.address, if_index), theirs)

    def _check_assert(self, key: tuple[str, str, int], theirs: Metric | None) -> None:
        """Whether we forward (S,G) onto I (CouldAssert) is the manager's MFE: read it, then feed the state
        machine a data packet (`theirs` None) or an Assert.  One read per (S,G,I) at a time for packets."""
        if self.mgm is None or (theirs is None and key in self._assert_checks):
            return
        self._assert_checks.add(key)
        self.mgm.spawn(self._assert_with_mfe(key, theirs))

    async def _assert_with_mfe(self, key: tuple[str, str, int], theirs: Metric | None) -> None:
        source, group, if_index = key
        assert self.mgm is not None and self._loop is not None
        try:
            mfe = (await self.mgm.client.request("get_mfe", {"source": source, "group": group}))["mfe"]
            forwarding = any(o["if_index"] == if_index for o in mfe["oil"]) or key in self._vetoed
        except MgmError:
            forwarding = False  # no MFE: we do not forward it anywhere
        except TimeoutError:
            return
        finally:
            self._assert_checks.discard(key)
        link = self.links.get(if_index)
        if link is None or self.stopped:
            return
        ours = Metric(False, 0, 0, link.address) if forwarding else None  # a kernel route, as FRR rates one
        log.debug("pim: (%s,%s) %s on %s, where we %s", source, group, "an Assert" if theirs else "a packet",
                  self.names.get(if_index), "forward it" if forwarding else "do not forward it")  # fmt: skip
        now = self._loop.time()
        if theirs is None:
            if ours is not None:
                self.asserts.data_arrived(key, ours, now)
        else:
            self.asserts.received(key, theirs, ours, now)
        self._after()

    def _send_asserts(self) -> None:
        for (source, group, if_index), metric in self.asserts.send:
            self._send(if_index, packet.Assert(packet.EncodedGroup(group), source, metric.rpt, metric.preference,
                                               metric.metric))  # fmt: skip
        self.asserts.send.clear()

    def _apply_asserts(self, now: float) -> None:
        """Send the Asserts due, and keep the interfaces where we lost out of the MFE's outgoing list."""
        self.asserts.tick(now)
        self._send_asserts()
        losing = {key for key in self.asserts.entries if self.asserts.losing(key)}
        for key in losing ^ self._vetoed:
            lost = key in losing
            (self._vetoed.add if lost else self._vetoed.discard)(key)
            log.info("pim: (%s,%s) %s: %s", key[0], key[1], self.names.get(key[2], key[2]),
                     f"Assert lost to {self.asserts.entries[key].winner.address}, not forwarding" if lost
                     else "no Assert loser any more, forwarding")  # fmt: skip
            if self.mgm is not None:
                self.mgm.spawn(self._set_oil(key, not lost))

    async def _set_oil(self, key: tuple[str, str, int], enabled: bool) -> None:
        assert self.mgm is not None
        source, group, if_index = key
        oil = [{"if_index": if_index, "next_hop": ANY, "enabled": enabled}]
        try:
            await self.mgm.client.request("set_mfe_oil", {"handle": self.mgm.handle, "source": source,
                                                          "group": group, "oil": oil})  # fmt: skip
        except (MgmError, TimeoutError) as exc:
            log.info("pim: (%s,%s): cannot %s %s in its MFE: %s", source, group, "enable" if enabled else "disable",
                     self.names.get(if_index, if_index), exc)  # fmt: skip

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
        self.downstream.tick(now)
        self._downstream_events()
        if self._status_timer is None and self.mgm is not None:  # what changed, shown within STATUS_INTERVAL
            self._status_timer = self._loop.call_later(STATUS_INTERVAL, self._push_status)
        if self.upstream is None:
            return
        if now >= self._next_rpf_check:
            self._next_rpf_check = now + RPF_CHECK_INTERVAL
            self._registers_expired(now)
            for key in list(self.wanted):
                self._evaluate(key, now)
        for (if_index, _neighbor), message in self.upstream.tick(now):
            self._send(if_index, message)
        self._registers_due(now)
        self._apply_asserts(now)
        deadline = min([self._next_rpf_check, self.upstream.next_deadline(), self.downstream.next_deadline(),
                        self.registers.next_deadline(), self._next_liveness_check, self.asserts.next_deadline(),
                        *(link.next_deadline() for link in self.links.values())])  # fmt: skip
        if deadline != float("inf"):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _push_status(self) -> None:
        self._status_timer = None
        mgm = self.mgm
        if mgm is None or self._loop is None or self.stopped:
            return
        # through the client: a refusal (a handle the manager dropped, until we register again) is no news, and
        # the context would log the whole status with it
        sent = mgm.client.request_nowait("set_protocol_status",
                                         {"handle": mgm.handle, "status": self.status(self._loop.time())})  # fmt: skip
        sent.add_done_callback(_status_sent)

    def status(self, now: float) -> dict[str, Any]:
        """What `mgm show pim` shows and the manager's metrics export (the ``metrics`` map): interfaces,
        neighbours, the RP map, upstream and downstream join state, packet counters.  Times are seconds
        from `now` (None: never)."""
        names = self.names

        def left(at: float) -> float | None:
            return None if at == math.inf else round(max(0.0, at - now), 1)

        def gen_id(value: int | None) -> str | None:
            return None if value is None else f"{value:08x}"

        interfaces = [{"interface": names[i], "if_index": i, "address": link.address, "dr": link.dr,
                       "dr_priority": link.dr_priority, "generation_id": gen_id(link.generation_id),
                       "neighbors": len(link.neighbors)} for i, link in self.links.items()]  # fmt: skip
        neighbors = [{"interface": names[i], "address": n.address, "dr_priority": n.dr_priority,
                      "generation_id": gen_id(n.generation_id), "up_for": round(now - n.since, 1),
                      "expires_in": left(n.expires)}
                     for i, link in self.links.items() for n in link.neighbors.values()]  # fmt: skip
        entries = self.upstream.entries if self.upstream is not None else {}
        rpt_pruned = self.upstream.rpt_pruned if self.upstream is not None else {}
        upstream = []
        for key in sorted(self.wanted, key=lambda k: (k[1], k[0] or "")):
            entry = entries.get(key)
            rpf = entry.rpf if entry is not None else None
            upstream.append({"source": key[0] or "*", "group": key[1], "towards": entry.target if entry else None,
                             "interface": names.get(rpf[0]) if rpf else None, "neighbor": rpf[1] if rpf else None,
                             "why": sorted(self.wanted[key]), "rpt_pruned": key in rpt_pruned,
                             "next_join_in": left(entry.next_join) if entry else None})  # fmt: skip
        downstream = [{"interface": names.get(i, str(i)), "source": key[0] or "*", "group": key[1],
                       "state": e.state, "expires_in": left(e.expires)}
                      for (i, key), e in sorted(self.downstream.entries.items(),
                                                key=lambda kv: (kv[0][1][1], kv[0][1][0] or "", kv[0][0]))]  # fmt: skip
        registers = [{"source": flow[0], "group": flow[1], "rp": e.rp, "interface": names.get(e.if_index),
                      "state": e.state, "timer_in": left(e.timer), "register_stops": e.stops}
                     for flow, e in sorted(self.registers.entries.items(), key=lambda kv: kv[0][::-1])]  # fmt: skip
        asserts = [{"source": k[0], "group": k[1], "interface": names.get(k[2]), "state": e.state,
                    "winner": e.winner.address, "timer_in": left(e.timer)}
                   for k, e in sorted(self.asserts.entries.items(), key=lambda kv: kv[0][1::-1])]  # fmt: skip
        settings = self.settings
        counters = {**self.counters, **{f"ignored_{k}": v for k, v in self.downstream.ignored.items()}}
        metrics = {"interfaces": len(interfaces), "neighbors": len(neighbors), "upstream_entries": len(upstream),
                   "upstream_joined": sum(1 for u in upstream if u["neighbor"] is not None),
                   "downstream_entries": len(downstream), "registering": sum(r["state"] == JOIN for r in registers),
                   "assert_lost": sum(a["state"] == "loser" for a in asserts),
                   **counters}  # fmt: skip
        return {"interfaces": interfaces, "neighbors": neighbors,
                "rp": [{"groups": str(prefix), "rp": rp} for prefix, rp in (settings.rp if settings else ())],
                "upstream": upstream, "downstream": downstream, "registers": registers, "asserts": asserts,
                "counters": counters,
                "metrics": metrics}

    def _downstream_events(self) -> None:
        """A neighbour's join on one of our interfaces is our membership there, and a reason to join upstream."""
        for kind, if_index, key in self.downstream.take_events():
            source, group = key
            joined = kind == "joined"
            log.info("pim: %s: (%s,%s) %s downstream", self.names.get(if_index, if_index), source or "*", group,
                     kind)  # fmt: skip
            if self.mgm is not None:
                change = self.mgm.add_membership if joined else self.mgm.delete_membership
                change(source or ANY, group, Interface(if_index, ANY))
            self._reason(key, f"downstream {if_index}", joined, settle=False)

    def _log_events(self) -> None:
        for if_index, link in self.links.items():
            name = self.names[if_index]
            for event in link.take_events():
                if event.kind in ("up", "down"):
                    self._next_rpf_check = 0.0  # a neighbour came or went: look at every RPF' again
                elif event.kind == "restarted" and self.upstream is not None and self._loop is not None:
                    self.upstream.neighbor_restarted((if_index, event.address), self._loop.time())
                if event.kind in ("down", "restarted"):
                    self.asserts.neighbor_gone(if_index, event.address)
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


@dataclass(slots=True)
class Relay:
    """Where the RP sends what Registers of one (S,G) carry."""

    oil: tuple[int, ...] | None = None
    fetched: float = -math.inf
    queue: list[bytes] = field(default_factory=list)
    busy: bool = False


def _status_sent(done: asyncio.Future[dict[str, Any]]) -> None:
    exc = None if done.cancelled() else done.exception()
    if exc is not None:
        log.debug("pim: the manager did not take our status: %s", exc)


def _key(source: str, group: str) -> Key:
    return (None if source == ANY else source, group)


_TYPES: dict[type, int] = {packet.Hello: packet.HELLO, packet.JoinPrune: packet.JOIN_PRUNE,
                           packet.Assert: packet.ASSERT, packet.Register: packet.REGISTER,
                           packet.RegisterStop: packet.REGISTER_STOP}  # fmt: skip


def _type_of(message: packet.Message) -> int:
    return message.type if isinstance(message, packet.Unknown) else _TYPES[type(message)]


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


def open_relay_socket() -> socket.socket:
    """A raw IP socket that sends whole datagrams (IPPROTO_RAW: IP_HDRINCL, and it receives nothing): the
    packets Registers carried, with the source's address; not looped back to this machine."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_LOOP, 0)
    except OSError:
        sock.close()
        raise
    return sock


def arrival_interface(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The if_index of IP_PKTINFO (struct in_pktinfo: ifindex, spec_dst, addr)."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 4:
            return int(struct.unpack_from("@i", data)[0])
    return None
