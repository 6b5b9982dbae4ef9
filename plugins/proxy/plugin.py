"""The `proxy` plugin: an IGMP proxy (RFC 4605) as an MGM routing protocol, like igmpproxy.

How receivers downstream become traffic from upstream:

* The host takes the configured interfaces: one upstream, N downstream.
  IGMP runs on the downstream ones too (its own ``[plugins.igmp]``), and the
  manager tells us each receiver IGMP records there as a local join
  (`mgm_local_join` / `mgm_local_leave`; after a loss on our stream the host
  resyncs and delivers the difference).
* Per group, the downstream memberships the interfaces' filters allow are
  merged (`merge.upstream_membership`): (*,G) anywhere wins, else the union
  of the sources; never a link-local group.  The result is joined on the
  upstream interface through the kernel's membership socket options
  (`upstream.UpstreamMemberships`), so the kernel reports it and answers the
  upstream querier, as for any application on a host.  Because Linux
  delays a host's first report by a few milliseconds, the proxy also sends
  one report of its own at once for every join (`report.Reporter`,
  ``immediate_report``); leaves are the kernel's alone.
* Traffic arriving upstream reaches the forwarder as a new flow; its
  incoming interface is the upstream, whatever the source's subnet (no
  subnet filter): the plugin has no `mgm_rpf`, so the manager keeps the
  interface it proposes without asking (one round trip less before the
  first packet is forwarded), and builds the OIL from
  IGMP's memberships; in `mgm_creation_alert` we disable downstream
  interfaces for flows entering on another protocol's interface (the
  proxy's receivers get their traffic through the upstream, RFC 4605
  section 4.2), and the upstream interface unless ``forward_upstream`` is
  set.
* A downstream interface's allow/deny filter is its boundaries in the
  manager (`merge.boundary_ranges`, set in `mgm_start`): the manager keeps
  the interface out of every OIL of a refused group, also for receivers
  that join after the flow already forwards elsewhere, which a
  creation_alert veto (asked only when an MFE is created) could not stop.
  The proxy also never joins a group upstream for receivers whose
  interface refuses it.
* ``forward_upstream = true`` (RFC 4605 section 4.2) adds a (*,*) membership
  on the upstream interface, so flows from downstream sources also go up;
  `mgm_creation_alert` keeps that to flows entering on our downstream
  interfaces.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mgm.core.types import ANY, Interface
from mgm.plugins.hookspecs import hookimpl
from mgm.plugins.proxy import merge, settings
from mgm.plugins.proxy.report import Reporter, has_ipv4
from mgm.plugins.proxy.upstream import UpstreamError, UpstreamMemberships

if TYPE_CHECKING:
    from mgm.plugins.context import PluginContext

log = logging.getLogger(__name__)

PROXY_PROTOCOL_ID = 65002
"""Outside the RRAS protocol ids (RRAS has its proxy inside IGMP, whose id 10 is taken by our IGMP router)."""
PROXY_COMPONENT_ID = 1


def _if_index(name: settings.Name, table: Mapping[str, Any], key: str) -> int:
    if isinstance(name, int):
        return name
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise settings.as_error(table, key, f"no interface named {name!r} here") from None


def _if_name(if_index: int) -> str:
    try:
        return socket.if_indextoname(if_index)
    except OSError:
        return f"if{if_index}"


class ProxyPlugin:
    """Entry point ``proxy`` (the host instantiates it without arguments)."""

    def __init__(self) -> None:
        self.settings: settings.Settings | None = None
        self.upstream: Interface | None = None
        self.downstream: dict[Interface, settings.Name] = {}
        self.filters: dict[Interface, merge.GroupFilter] = {}
        self.members: dict[str, dict[Interface, set[str]]] = {}  # group -> downstream interface -> sources
        self.joined: dict[str, merge.Upstream] = {}  # group -> what the kernel holds upstream
        self.kernel: UpstreamMemberships | None = None
        self.reporter: Reporter | None = None  # the immediate reports upstream (None: off)
        self.errors = 0

    # --- lifecycle ------------------------------------------------------------------------------

    @hookimpl
    def mgm_protocol(self, config: Mapping[str, Any]) -> tuple[int, int]:
        """Check the table now: a mistake stops the host at load, with the file and line."""
        self.settings = settings.read(config)
        return PROXY_PROTOCOL_ID, PROXY_COMPONENT_ID

    @hookimpl
    def mgm_start(self, mgm: PluginContext, config: Mapping[str, Any]) -> None:
        self.start(config, mgm)

    def start(self, config: Mapping[str, Any], mgm: PluginContext | None = None) -> None:
        """Resolve the interfaces and open the upstream membership sockets (`mgm` None: without the bus)."""
        conf = self.settings or settings.read(config)
        self.settings = conf
        up_index = _if_index(conf.upstream, config, "upstream")
        self.upstream = Interface(up_index, ANY)
        for i, name in enumerate(conf.downstream):
            iface = Interface(_if_index(name, config, f"downstream[{i}]"), ANY)
            self.downstream[iface] = name
            self.filters[iface] = conf.filters.get(name, merge.ALL)
        up_name = _if_name(up_index)
        self.kernel = UpstreamMemberships(up_name, up_index)
        address = "an IPv4 address" if has_ipv4(up_name) else "no IPv4 address: reports leave with source 0.0.0.0"
        immediate = "off"
        if conf.immediate_report:
            try:
                self.reporter = Reporter.open(up_name, up_index, on_error=self._count_error)
                immediate = "on"
            except OSError as exc:  # e.g. no CAP_NET_RAW: the kernel's reports still go
                self.errors += 1
                log.warning("proxy: no immediate reports on %s, the raw IGMP socket was refused: %s "
                            "(the kernel reports the joins alone)", up_name, exc.strerror)  # fmt: skip
                immediate = "off (refused)"
        log.info("proxy: upstream %s (if_index %d, %s); downstream %s; forwarding upstream: %s; "
                 "immediate report of joins: %s",
                 up_name, up_index, address,
                 ", ".join(f"{_if_name(i.if_index)}{self._filter_text(i)}" for i in self.downstream),
                 "yes" if conf.forward_upstream else "no", immediate)  # fmt: skip
        if mgm is not None:
            for iface, group_filter in self.filters.items():
                ranges = merge.boundary_ranges(group_filter)
                if ranges:  # the manager keeps the interface out of these groups' OILs, later joins included
                    mgm.set_boundaries(iface, ranges)
        if mgm is not None and conf.forward_upstream:
            # every flow gets the upstream in its OIL; creation_alert keeps those entering downstream
            mgm.add_membership(ANY, ANY, self.upstream)

    @hookimpl
    def mgm_stop(self, mgm: PluginContext) -> None:
        self.stop()

    def stop(self) -> None:
        if self.reporter is not None:
            self.reporter.close()
            self.reporter = None
        if self.kernel is not None:
            log.info("proxy: leaving %d upstream membership(s)", len(self.kernel))
            self.kernel.close()
            self.kernel = None
        self.joined.clear()

    # --- downstream memberships -----------------------------------------------------------------

    @hookimpl
    def mgm_local_join(self, source: str, group: str, interface: Interface) -> None:
        self.local(True, source, group, Interface(*interface))

    @hookimpl
    def mgm_local_leave(self, source: str, group: str, interface: Interface) -> None:
        self.local(False, source, group, Interface(*interface))

    def local(self, join: bool, source: str, group: str, interface: Interface) -> None:
        """A receiver came or went on a downstream interface: update the group's upstream membership."""
        if interface not in self.downstream:
            log.warning("proxy: local %s (%s, %s) on %s, which is not downstream: ignored",
                        "join" if join else "leave", source, group, _if_name(interface.if_index))  # fmt: skip
            return
        if group == ANY:
            log.warning("proxy: a (*,*) membership on %s cannot be joined upstream: ignored",
                        _if_name(interface.if_index))  # fmt: skip
            return
        by_iface = self.members.setdefault(group, {})
        if join:
            by_iface.setdefault(interface, set()).add(source)
        else:
            sources = by_iface.get(interface)
            if sources is not None:
                sources.discard(source)
                if not sources:
                    del by_iface[interface]
            if not by_iface:
                del self.members[group]
        self.sync(group)

    def wanted(self, group: str) -> merge.Upstream | None:
        return merge.upstream_membership(group, self.members.get(group, {}), self.filters)

    def sync(self, group: str) -> None:
        """Bring the kernel's upstream membership of `group` to what the downstream wants."""
        if self.kernel is None:
            return
        old = self.joined.get(group)
        new = self.wanted(group)
        for op in merge.plan(group, old, new):
            what = f"(*,{group})" if op.source is None else f"({op.source},{group})"
            try:
                if op.join:
                    self.kernel.join(op.group, op.source)
                else:
                    self.kernel.leave(op.group, op.source)
            except UpstreamError as exc:
                self.errors += 1
                log.error("proxy: upstream %s refused: %s", what, exc)
                continue
            log.info("proxy: upstream %s %s", "joined" if op.join else "left", what)
        held = self._held(group)
        if held is None:
            self.joined.pop(group, None)
        else:
            self.joined[group] = held
        if self.reporter is not None and held != old:
            self.reporter.change(group, old, held)  # what the kernel holds: a refused join is not reported

    def _held(self, group: str) -> merge.Upstream | None:
        """What the kernel sockets hold for `group` now (a refused join is not held)."""
        assert self.kernel is not None
        if (group, None) in self.kernel.where:
            return merge.ASM
        sources = frozenset(s for g, s in self.kernel.where if g == group and s is not None)
        return sources or None

    # --- questions ------------------------------------------------------------------------------

    @hookimpl
    def mgm_creation_alert(
        self, group: str, in_interface: Interface, oil: Sequence[Interface]
    ) -> Mapping[Interface, bool] | None:
        if self.settings is None or self.upstream is None:
            return None
        verdicts = merge.creation_verdicts(
            group,
            Interface(*in_interface),
            [Interface(*i) for i in oil],
            upstream=self.upstream,
            filters=self.filters,
            downstream=self.downstream,
            forward_upstream=self.settings.forward_upstream,
        )
        for iface, enabled in verdicts.items():
            if not enabled:
                log.debug("proxy: %s not forwarded out of %s", group, _if_name(iface.if_index))
        return verdicts

    # --- internals ------------------------------------------------------------------------------

    def _count_error(self) -> None:
        self.errors += 1

    def _filter_text(self, iface: Interface) -> str:
        f = self.filters.get(iface, merge.ALL)
        parts = []
        if f.allow:
            parts.append("allow " + " ".join(map(str, f.allow)))
        if f.deny:
            parts.append("deny " + " ".join(map(str, f.deny)))
        return f" ({'; '.join(parts)})" if parts else ""
