"""The `igmp` plugin: one `Router` per interface, its sockets, memberships through the MGM.

Theory of operation:

* The host registers us as protocol 10 (IGMP) and takes the interfaces of
  ``[plugins.igmp] interfaces``; `mgm_start` builds a `Router` for each
  (its addresses from the process's link watcher, `mgm.plugins.links`,
  followed as they change), opens the `IgmpSocket` (a listener per
  interface, one raw socket to send), and starts every router (startup
  queries).
* Everything runs on the host's loop: ``add_reader`` feeds datagrams to
  the router of the arrival interface, one ``call_at`` handle wakes the
  routers at their earliest deadline.  After each input the plugin sends
  the routers' queries and turns their membership changes into
  ``mgm.add_membership`` / ``mgm.delete_membership`` (asynchronous: the
  hook or callback never waits for the manager).
* disable/enable IGMP (a routing protocol takes or releases an interface
  we share): while disabled the router keeps tracking hosts but nothing is
  sent to the manager for that interface; on enable every membership the
  router wants there is added again (the new owner learns its receivers
  from the local joins that follows) and those that went away meanwhile
  are deleted.
* Counters per interface (`counters()`) are logged at stop and every
  ``COUNTER_LOG_INTERVAL`` at debug level.

Configuration (``[plugins.igmp]``): ``interfaces`` and the fields of
`router.Parameters` (seconds; RFC 3376's defaults; docs/configuration.md
has the table).  Any other key is an error.

What is received is checked before it touches any state, each drop
counted under its reason (`router.Counters` says which drop is which) and
logged at info at most once a minute per interface, the rest at debug.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mgm.core.runtime.config import PLUGIN_COMMON_KEYS, Mistakes, plugin_table
from mgm.core.types import ANY, IGMP_PROTOCOL_ID, Interface
from mgm.plugins import links
from mgm.plugins.hookspecs import hookimpl
from mgm.plugins.igmp.packet import MalformedPacket, parse_ipv4
from mgm.plugins.igmp.rawsocket import IgmpSocket, interface_addresses
from mgm.plugins.igmp.router import Change, ParameterError, Parameters, Router

if TYPE_CHECKING:
    from mgm.plugins.context import PluginContext

log = logging.getLogger(__name__)

IGMP_COMPONENT_ID = 1
COUNTER_LOG_INTERVAL = 60.0


def read_parameters(config: Mapping[str, Any]) -> Parameters:
    """Check ``[plugins.igmp]``: unknown keys and bad values are a `ConfigError` naming file, key and line."""
    known = {f.name for f in dataclasses.fields(Parameters)} | PLUGIN_COMMON_KEYS
    error = plugin_table(config, "igmp").error
    mistakes = Mistakes()
    params: Parameters | None = None
    for key in config:
        if key not in known:
            mistakes.add(error(key, f"unknown key for the igmp plugin (known: {', '.join(sorted(known))})"))
    try:
        params = Parameters.from_config(config)
    except ParameterError as exc:
        for each in (exc, *exc.also):
            mistakes.add(error(each.key, each.message))
    mistakes.raise_any()
    assert params is not None
    return params


class IgmpPlugin(links.LinkSubscriber):
    """Entry point ``igmp`` (the host instantiates it without arguments)."""

    def __init__(self) -> None:
        self.params: Parameters | None = None
        self.routers: dict[int, Router] = {}
        self.io: IgmpSocket | None = None
        self.ctx: PluginContext | None = None
        self.disabled: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_counter_log = 0.0
        self.stopped = False
        self.links: links.LinkWatcher | None = None

    # --- hooks -----------------------------------------------------------------------------

    @hookimpl
    def mgm_protocol(self, config: Mapping[str, Any]) -> tuple[int, int]:
        """Check the configuration now, so a mistake stops the host before it registers."""
        self.params = read_parameters(config)
        return IGMP_PROTOCOL_ID, IGMP_COMPONENT_ID

    @hookimpl
    def mgm_start(self, mgm: PluginContext, config: Mapping[str, Any]) -> None:
        params = self.params or read_parameters(config)
        mgm.spawn(self.start(mgm, params, mgm.interfaces))

    @hookimpl
    def mgm_stop(self, mgm: PluginContext) -> None:
        self.stop()

    @hookimpl
    def mgm_disable_igmp(self, mgm: PluginContext, interface: Interface) -> None:
        self.disabled.add(interface.if_index)  # also before `start` has built the routers
        log.info("igmp: %s disabled: tracking hosts, not telling the manager", self._name(interface.if_index))

    @hookimpl
    def mgm_enable_igmp(self, mgm: PluginContext, interface: Interface) -> None:
        self.disabled.discard(interface.if_index)
        router = self.routers.get(interface.if_index)
        if router is None:
            return  # not started yet: the routers begin with nothing to add
        wanted = router.memberships()
        held = {(key[0], key[2]) for key in mgm.memberships if key[4] == router.interface}  # the context's ledger
        for source, group in sorted(wanted):
            mgm.add_membership(source, group, router.interface)
        gone = sorted(held - wanted)
        for source, group in gone:
            mgm.delete_membership(source, group, router.interface)
        log.info("igmp: %s enabled: %d membership(s) added again, %d deleted that went away meanwhile",
                 router.name, len(wanted), len(gone))  # fmt: skip

    # --- the I/O shell ------------------------------------------------------------------------

    async def start(self, mgm: PluginContext, params: Parameters, interfaces: tuple[Interface, ...]) -> None:
        """Routers for `interfaces`, the socket, the reader and the first timers, on the running loop."""
        self.ctx = mgm
        self.params = params
        loop = self._loop = asyncio.get_running_loop()
        self.links = links.watcher()
        self.links.subscribe(self)  # an address that comes or goes counts at once (the subnet check, the querier)
        await self.links.settled.wait()
        if self.stopped:
            return
        primary, every, subnets = interface_addresses(self.links.addresses)
        for interface in interfaces:
            if interface.next_hop != ANY:
                log.error("igmp: interface %d/%s: IGMP runs on whole interfaces (next_hop 0.0.0.0); skipped",
                          interface.if_index, interface.next_hop)  # fmt: skip
                continue
            name = links.if_name(interface.if_index)
            self.routers[interface.if_index] = Router(
                interface, params, primary.get(interface.if_index), every, name=name,
                subnets=subnets.get(interface.if_index, ()),
            )  # fmt: skip
        if not self.routers:
            log.warning("igmp: no interface to run on (configure [plugins.igmp] interfaces)")
            return
        try:
            self.io = IgmpSocket(self.routers)
        except OSError as exc:
            log.error("igmp: cannot open the IGMP sockets on %s (raw and packet sockets need root or CAP_NET_RAW): "
                      "%s; IGMP is NOT running", ", ".join(r.name for r in self.routers.values()), exc)  # fmt: skip
            return
        for if_index, listener in self.io.listeners.items():
            loop.add_reader(listener.fileno(), self._on_readable, if_index)
        now = loop.time()
        self._last_counter_log = now
        for router in self.routers.values():
            router.start(now)
            log.info("igmp: running IGMPv%d on %s (if_index %d, address %s)", params.version, router.name,
                     router.interface.if_index, router.address or "none")  # fmt: skip
        log.info("igmp: SSM range %s (any-source joins there are ignored); reports and leaves %s",
                 ", ".join(map(str, params.ssm_range)) or "none",
                 "only from the interfaces' subnets" if params.require_local_source
                 else "from any source (require_local_source = false)")  # fmt: skip
        self._flush()

    def stop(self) -> None:
        self.stopped = True
        if self.links is not None:
            self.links.unsubscribe(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.io is not None:
            if self._loop is not None:
                for listener in self.io.listeners.values():
                    self._loop.remove_reader(listener.fileno())
            self.io.close()
            self.io = None
        for router in self.routers.values():
            log.info("igmp: %s counters: %s", router.name, router.counters.as_dict())

    def counters(self) -> dict[int, dict[str, int]]:
        """{if_index: counters} of every interface we run on."""
        return {i: r.counters.as_dict() for i, r in self.routers.items()}

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _on_readable(self, if_index: int) -> None:
        router = self.routers.get(if_index)
        if self.io is None or router is None:
            return
        listener = self.io.listeners[if_index]
        now = self._now()
        for datagram in listener.receive():
            try:
                header, payload = parse_ipv4(datagram)
            except MalformedPacket as exc:
                router.counters.malformed_dropped += 1
                log.debug("igmp: %s: malformed datagram dropped: %s", router.name, exc)
                continue
            router.receive(
                now, header.source, header.destination, payload, ttl=header.ttl, router_alert=header.router_alert
            )
        self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        now = self._now()
        for router in self.routers.values():
            deadline = router.next_deadline()
            if deadline is not None and deadline <= now:
                router.tick(now)
        if now - self._last_counter_log >= COUNTER_LOG_INTERVAL:
            self._last_counter_log = now
            for router in self.routers.values():
                log.debug("igmp: %s counters: %s", router.name, router.counters.as_dict())
        self._flush()

    def _flush(self) -> None:
        """Send what the routers decided, tell the manager, and set the next wake-up."""
        for router in self.routers.values():
            for out in router.take_packets():
                self._send(router, out.destination, out.payload)
            for change in router.take_changes():
                self._apply(router, change)
        if self._loop is None or self.io is None:
            return
        deadlines = [d for d in (r.next_deadline() for r in self.routers.values()) if d is not None]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadlines:
            self._timer = self._loop.call_at(min(deadlines), self._on_timer)

    def _send(self, router: Router, destination: str, payload: bytes) -> None:
        if self.io is None or router.address is None:
            return
        try:
            self.io.send(router.interface.if_index, router.address, destination, payload)
        except OSError as exc:
            router.counters.send_errors += 1
            log.warning("igmp: %s: cannot send to %s: %s", router.name, destination, exc)

    def _apply(self, router: Router, change: Change) -> None:
        if_index = router.interface.if_index
        what = f"(*,{change.group})" if change.source == ANY else f"({change.source},{change.group})"
        if if_index in self.disabled:
            log.info("igmp: %s: %s %s while disabled: the manager hears of it on enable",
                     router.name, what, "joined" if change.added else "left")  # fmt: skip
            return
        assert self.ctx is not None
        # the request first, the line after: the manager (and the routing protocol after it) need not wait for it
        if change.added:
            self.ctx.add_membership(change.source, change.group, router.interface)
            log.info("igmp: %s: %s joined: adding the membership", router.name, what)
        else:
            self.ctx.delete_membership(change.source, change.group, router.interface)
            log.info("igmp: %s: %s left: deleting the membership", router.name, what)

    def address_added(self, address: links.Address) -> None:
        """Follow the interfaces' addresses: a router without one cannot query; ours must be ignored."""
        assert self.links is not None
        primary, every, subnets = interface_addresses(self.links.addresses)
        now = self._now()
        for if_index, router in self.routers.items():
            router.own_addresses = every
            router.set_subnets(subnets.get(if_index, ()))
            router.set_address(now, primary.get(if_index))
        self._flush()

    address_removed = address_added

    def _name(self, if_index: int) -> str:
        router = self.routers.get(if_index)
        return router.name if router is not None else links.if_name(if_index)
