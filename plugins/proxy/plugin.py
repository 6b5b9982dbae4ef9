"""The `proxy` plugin: an IGMP proxy (RFC 4605) as an MGM routing protocol, like igmpproxy.

How receivers downstream become traffic from upstream:

* The host takes the configured interfaces: N downstream and the upstream
  (unless it is left out of ``interfaces``: see below).  IGMP runs on the
  downstream ones too (its own ``[plugins.igmp]``), and the manager tells us
  each receiver IGMP records there as a local join (`mgm_local_join` /
  `mgm_local_leave`; after a loss on our stream the host resyncs and
  delivers the difference).
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
  first packet is forwarded), and builds the OIL from IGMP's memberships
  (downstream receivers get a group's flow wherever it enters, as RFC 4605
  section 4.2 asks for flows from other downstream interfaces).  Without
  ``forward_upstream`` the proxy is asked no question at all (`questions`
  is empty), so the MFE is made within the forwarder's one round trip to
  the manager.
* A downstream interface's allow/deny filter is its boundaries in the
  manager (`merge.boundary_ranges`, set in `mgm_start`): the manager keeps
  the interface out of every OIL of a refused group, also for receivers
  that join after the flow already forwards elsewhere, which a
  creation_alert veto (asked only when an MFE is created) could not stop.
  The proxy also never joins a group upstream for receivers whose
  interface refuses it.
* ``forward_upstream = true`` (RFC 4605 section 4.2) adds a (*,*) membership
  on the upstream interface, so flows from downstream sources also go up;
  `mgm_creation_alert`, asked only then, keeps that to flows entering on
  our downstream interfaces (whose filter permits the group).

The upstream going and coming back (PPPoE, VLANs): the process's link
watcher (`mgm.plugins.links`) tells the proxy every link event, and `links`
says what each means for the upstream (deleted, back, down or up, renamed)
and what the proxy does then.  An upstream left out of ``interfaces`` is
taken by the proxy itself whenever it exists (`settings`).

On SIGHUP the host reads the configuration file again (`mgm_reload`);
`reload` says what is applied (changed filters: the boundaries and the
upstream membership of every group whose merge changed, joins before
drops; ``forward_upstream``; ``immediate_report``) and what refuses the
whole reload.  A refused or bad file leaves the settings in force.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mgm.bus.status import MgmError
from mgm.core.runtime.config import Mistakes, PluginTable, plugin_table
from mgm.core.types import ANY, Interface
from mgm.plugins.hookspecs import hookimpl
from mgm.plugins.links import Link, LinkSubscriber, LinkWatcher, if_name, watcher
from mgm.plugins.proxy import links, merge, settings
from mgm.plugins.proxy.reload import ReloadPlan, plan_reload
from mgm.plugins.proxy.report import Reporter, has_ipv4
from mgm.plugins.proxy.upstream import UpstreamMemberships

if TYPE_CHECKING:
    from mgm.core.runtime.config import Config
    from mgm.plugins.context import PluginContext

log = logging.getLogger(__name__)

PROXY_PROTOCOL_ID = 65002
"""Outside the RRAS protocol ids (RRAS has its proxy inside IGMP, whose id 10 is taken by our IGMP router)."""
PROXY_COMPONENT_ID = 1
NO_ADDRESS = "no IPv4 address: reports leave with source 0.0.0.0"
NO_UPSTREAM = Interface(0, ANY)
"""Stands for the upstream in creation alerts while there is none (if_index 0 is never an interface)."""


def _if_index(name: settings.Name, table: PluginTable, key: str) -> int:
    if isinstance(name, int):
        return name
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise table.error(key, f"no interface named {name!r} here") from None


def _find_upstream(name: settings.Name) -> Link | None:
    """The upstream interface if it exists now (its up flag is left to the link watcher)."""
    try:
        if isinstance(name, int):
            return Link(name, socket.if_indextoname(name), True)
        return Link(socket.if_nametoindex(name), name, True)
    except OSError:
        return None


def _shown(name: settings.Name) -> str:
    return name if isinstance(name, str) else f"if_index {name}"


class ProxyPlugin(LinkSubscriber):
    """Entry point ``proxy`` (the host instantiates it without arguments)."""

    def __init__(self) -> None:
        self.settings: settings.Settings | None = None
        self.questions: frozenset[str] = frozenset({"creation_alert"})
        """The questions the host declares for us at registration (narrowed by `mgm_protocol`)."""
        self.upstream: Interface | None = None  # None: the upstream does not exist (now)
        self.up_link: Link | None = None  # the upstream as netlink last described it
        self.link_events: asyncio.Queue[tuple[str | links.Action, Link]] = asyncio.Queue()
        self.downstream: dict[Interface, settings.Name] = {}
        self.filters: dict[Interface, merge.GroupFilter] = {}
        self.members: dict[str, dict[Interface, set[str]]] = {}  # group -> downstream interface -> sources
        self.joined: dict[str, merge.Upstream] = {}  # group -> what the kernel holds upstream
        self.kernel: UpstreamMemberships | None = None
        self.reporter: Reporter | None = None  # the immediate reports upstream (None: off)
        self.errors = 0
        self.name = "proxy"
        self.stopped = False  # mgm_stop ran: a link event still in flight must not open sockets again

    # --- lifecycle ------------------------------------------------------------------------------

    @hookimpl
    def mgm_protocol(self, config: Mapping[str, Any]) -> tuple[int, int]:
        """Check the table now: a mistake stops the host at load, with the file and line."""
        self.settings = settings.read(config)
        # Without forward_upstream no creation alert could disable anything: the manager need not ask,
        # and a new flow's MFE is made in the forwarder's one round trip.  (The host reads this once,
        # at registration: a reload cannot turn forward_upstream on later.)
        self.questions = frozenset({"creation_alert"}) if self.settings.forward_upstream else frozenset()
        table = plugin_table(config, "proxy")
        self.name = table.name
        conf = self.settings
        if conf.upstream_listed and isinstance(conf.upstream, str) and _find_upstream(conf.upstream) is None:
            # the host would refuse it next, without saying that the proxy can wait for it
            raise table.error(
                "upstream",
                f"no interface named {conf.upstream!r} here, and it is in `interfaces`, which the host takes at "
                "start; to start the proxy before its upstream exists (PPPoE at boot), leave the upstream out of "
                "`interfaces`: the proxy then takes it itself whenever it appears",
            )  # fmt: skip
        return PROXY_PROTOCOL_ID, PROXY_COMPONENT_ID

    @hookimpl
    def mgm_start(self, mgm: PluginContext, config: Mapping[str, Any]) -> None:
        self.start(config, mgm)
        mgm.spawn(self.watch_links(mgm))

    def start(self, config: Mapping[str, Any], mgm: PluginContext) -> None:
        """Resolve the interfaces, open the upstream membership sockets and tell the manager what they need."""
        table = plugin_table(config, "proxy")
        conf = self.settings or settings.read(table)
        self.settings = conf
        mistakes = Mistakes()  # every interface gone since the host took them, not the first
        for i, name in enumerate(conf.downstream):
            if (index := mistakes.check(_if_index, name, table, f"downstream[{i}]")) is not None:
                self.downstream[Interface(index, ANY)] = name
                self.filters[Interface(index, ANY)] = conf.filters.get(name, merge.ALL)
        found = _find_upstream(conf.upstream)
        if found is None and conf.upstream_listed and isinstance(conf.upstream, str):
            mistakes.add(table.error("upstream", f"no interface named {conf.upstream!r} here"))
        mistakes.raise_any()
        upstream_text = f"{_shown(conf.upstream)} does not exist yet: nothing is joined upstream until it appears"
        immediate = "on" if conf.immediate_report else "off"
        if found is not None:
            immediate = self._open_upstream(found)
            address = "an IPv4 address" if has_ipv4(found.name) else NO_ADDRESS
            upstream_text = f"{found.name} (if_index {found.index}, {address})"
        log.info("proxy: upstream %s; downstream %s; forwarding upstream: %s; immediate report of joins: %s",
                 upstream_text,
                 ", ".join(f"{if_name(i.if_index)}{self._filter_text(i)}" for i in self.downstream),
                 "yes" if conf.forward_upstream else "no", immediate)  # fmt: skip
        for iface, group_filter in self.filters.items():
            ranges = merge.boundary_ranges(group_filter)
            if ranges:  # the manager keeps the interface out of these groups' OILs, later joins included
                mgm.set_boundaries(iface, ranges)
        if self.upstream is not None:
            if not conf.upstream_listed:  # the host did not take it: we do, before the (*,*) below
                mgm.spawn(self._taken(mgm, self.upstream, mgm.take_interface(self.upstream)))
            if conf.forward_upstream:
                # every flow gets the upstream in its OIL; creation_alert keeps those entering downstream
                mgm.add_membership(ANY, ANY, self.upstream)

    @hookimpl
    def mgm_stop(self, mgm: PluginContext) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopped = True
        if self.kernel is not None:
            log.info("proxy: leaving %d upstream membership(s)", len(self.kernel))
        self._close_upstream()

    # --- the upstream interface going and coming back --------------------------------------------

    async def watch_links(self, mgm: PluginContext) -> None:
        """Follow the links one event after the other (taking the upstream awaits the manager; the next event is
        judged against its outcome) until cancelled."""
        conf = self.settings
        assert conf is not None
        links_here = watcher()
        links_here.subscribe(self)
        try:
            while True:
                what, link = await self.link_events.get()
                action = what if isinstance(what, links.Action) else links.upstream_event(conf.upstream, self.up_link,
                                                                                           what, link)  # fmt: skip
                await self._on_link_logged(mgm, action, link)
        finally:
            links_here.unsubscribe(self)

    def dumped(self, watcher: LinkWatcher) -> None:
        assert self.settings is not None
        action, link = links.reconcile(self.settings.upstream, self.up_link, watcher.links)
        if link is not None:  # judged now: the dump comes first, nothing queued before it can change up_link
            self.link_events.put_nowait((action, link))

    def link_changed(self, link: Link, before: Link | None) -> None:
        self.link_events.put_nowait((links.NEWLINK, link))

    def link_removed(self, link: Link) -> None:
        self.link_events.put_nowait((links.DELLINK, link))

    async def _on_link_logged(self, mgm: PluginContext, action: links.Action, link: Link) -> None:
        """`on_link`, a failure logged: the watcher must outlive one bad event."""
        try:
            await self.on_link(mgm, action, link)
        except Exception:
            self.errors += 1
            log.exception("proxy: handling %s of %s (if_index %d) failed", action.value, link.name, link.index)

    async def on_link(self, mgm: PluginContext, action: links.Action, link: Link) -> None:
        """Apply what `links` decided about the upstream."""
        if self.stopped:
            return
        if action is links.Action.GONE:
            self.upstream_gone(mgm)
        elif action is links.Action.BACK:
            await self.upstream_back(mgm, link)
        elif action in (links.Action.DOWN, links.Action.UP):
            self.up_link = link
            count = len(self.kernel) if self.kernel is not None else 0
            if action is links.Action.DOWN:
                log.warning("proxy: upstream %s (if_index %d) is down: nothing arrives on it now; the kernel keeps "
                            "its %d upstream membership(s) and reports them again when it comes up",
                            link.name, link.index, count)  # fmt: skip
            else:
                log.info("proxy: upstream %s (if_index %d) is up: the kernel reports its %d upstream "
                         "membership(s) there again", link.name, link.index, count)  # fmt: skip
        elif action is links.Action.RENAMED:
            old = self.up_link.name if self.up_link is not None else "?"
            log.warning("proxy: upstream %s (if_index %d) was renamed %s: the proxy goes on using it by if_index "
                        "(a new interface named %s would not be taken while this one exists)",
                        old, link.index, link.name, old)  # fmt: skip
            self.up_link = link
            for holder in (self.kernel, self.reporter):
                if holder is not None:
                    holder.ifname = link.name

    def upstream_gone(self, mgm: PluginContext) -> None:
        """The upstream interface was deleted: drop what was on it, keep what the downstream wants."""
        assert self.settings is not None
        old, link = self.upstream, self.up_link
        if old is None:
            return
        name = link.name if link is not None else if_name(old.if_index)
        configured = self.settings.upstream
        if isinstance(configured, int):
            back = (f"it is configured by if_index, so only an interface with if_index {configured} can take its "
                    "place, and a re-created interface gets a new index: configure the upstream by name")  # fmt: skip
        else:
            back = f"they are joined again when an interface named {configured} appears"
        log.warning("proxy: upstream %s (if_index %d) was deleted: its %d upstream membership(s) went with it and "
                    "the flows coming in on it stop; the %d group(s) wanted downstream are kept: %s",
                    name, old.if_index, len(self.joined), len(self.members), back)  # fmt: skip
        self._close_upstream()  # the kernel dropped the memberships with the device: only the sockets are left
        mgm.release_interface(old)  # the manager deletes the MFEs coming in on it and our (*,*) there

    async def upstream_back(self, mgm: PluginContext, link: Link) -> None:
        """An interface the configuration names as the upstream appeared: take it and join everything again."""
        assert self.settings is not None
        iface = Interface(link.index, ANY)
        if not await self._taken(mgm, iface, mgm.take_interface(iface)) or self.stopped:
            return
        self._open_upstream(link)
        for group in sorted(self.members):
            self.sync(group)
        if self.settings.forward_upstream:
            mgm.add_membership(ANY, ANY, iface)
        try:
            address = "" if has_ipv4(link.name) else f" ({NO_ADDRESS} until it has one)"
        except OSError:  # gone again already: its RTM_DELLINK follows
            address = ""
        log.info("proxy: upstream %s is back (if_index %d): %d group(s) joined upstream again%s",
                 link.name, link.index, len(self.joined), address)  # fmt: skip

    async def _taken(self, mgm: PluginContext, iface: Interface, reply: Awaitable[Any]) -> bool:
        """Whether the manager gave us the upstream (the request already sent); a refusal is logged."""
        try:
            await reply
        except (MgmError, TimeoutError) as exc:
            log.error("proxy: the manager refused the upstream %s (if_index %d): %s; nothing is joined upstream "
                      "(the proxy tries again at the interface's next link change, or restart it)",
                      if_name(iface.if_index), iface.if_index, exc)  # fmt: skip
            if self.upstream == iface:
                self._close_upstream()
            return False
        return True

    def _close_upstream(self) -> None:
        """Forget the upstream: close its sockets; the downstream memberships stay for the next one."""
        if self.reporter is not None:
            self.reporter.close()
            self.reporter = None
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None
        self.joined.clear()
        self.upstream = None
        self.up_link = None

    def _open_upstream(self, link: Link) -> str:
        """Open the membership sockets and the reporter on `link`; what the start line says of immediate reports."""
        assert self.settings is not None
        self.upstream = Interface(link.index, ANY)
        self.up_link = link
        self.kernel = UpstreamMemberships(link.name, link.index)
        return self._open_reporter() if self.settings.immediate_report else "off"

    def _open_reporter(self) -> str:
        assert self.kernel is not None
        try:
            self.reporter = Reporter.open(self.kernel.ifname, self.kernel.if_index, on_error=self._count_error)
        except OSError as exc:  # e.g. no CAP_NET_RAW: the kernel's reports still go
            self.errors += 1
            log.warning("proxy: no immediate reports on %s, the raw IGMP socket was refused: %s "
                        "(the kernel reports the joins alone)", self.kernel.ifname, exc.strerror)  # fmt: skip
            return "off (refused)"
        return "on"

    # --- SIGHUP: the file the host read again ------------------------------------------------------

    @hookimpl
    def mgm_reload(self, mgm: PluginContext, whole_config: Config) -> None:
        """Apply the difference; `ConfigError` (the settings in force stay) where the file or the plan refuses."""
        old = self.settings
        assert old is not None
        new = settings.parse(whole_config, self.name)
        plan = plan_reload(old, new, self.name, creation_alerts="creation_alert" in self.questions)
        mistakes = Mistakes()
        for refusal in plan.refused:
            mistakes.add(whole_config.error(refusal.key, refusal.message))
        mistakes.raise_any()
        changed = self.apply(mgm, new, plan)
        log.info("proxy: reloaded %s: %s; %d group(s) changed upstream", whole_config.source, plan.summary(), changed)

    def apply(self, mgm: PluginContext, new: settings.Settings, plan: ReloadPlan) -> int:
        """Put `new` in force (as `plan` says it differs); the number of groups whose upstream membership changed."""
        self.settings = new
        by_name = {name: iface for iface, name in self.downstream.items()}
        for name, group_filter in plan.filters.items():
            iface = by_name[name]
            self.filters[iface] = group_filter
            mgm.set_boundaries(iface, merge.boundary_ranges(group_filter))  # an empty list lifts them
        if plan.forward_upstream is not None and self.upstream is not None:
            if plan.forward_upstream:
                mgm.add_membership(ANY, ANY, self.upstream)
                log.warning("proxy: forward_upstream on: the flows that already exist go upstream too, whatever "
                            "interface they came in on, until they expire (the manager asks no creation alert "
                            "for an existing flow); new flows go upstream only from downstream")  # fmt: skip
            else:
                mgm.delete_membership(ANY, ANY, self.upstream)
        if plan.immediate_report is not None and self.kernel is not None:
            if plan.immediate_report and self.reporter is None:
                self._open_reporter()
            elif not plan.immediate_report and self.reporter is not None:
                self.reporter.close()
                self.reporter = None
        changed = 0
        if plan.filters:
            for group in sorted(set(self.members) | set(self.joined)):
                before = self.joined.get(group)
                self.sync(group)
                changed += self.joined.get(group) != before
        return changed

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
                        "join" if join else "leave", source, group, if_name(interface.if_index))  # fmt: skip
            return
        if group == ANY:
            log.warning("proxy: a (*,*) membership on %s cannot be joined upstream: ignored",
                        if_name(interface.if_index))  # fmt: skip
            return
        by_iface = self.members.setdefault(group, {})
        if join:
            by_iface.setdefault(interface, set()).add(source)
        else:
            sources = by_iface.get(interface, set())
            sources.discard(source)
            if not sources:
                by_iface.pop(interface, None)
            if not by_iface:
                del self.members[group]
        self.sync(group)

    def sync(self, group: str) -> None:
        """Bring the kernel's upstream membership of `group` to what the downstream wants."""
        if self.kernel is None:
            return
        old = self.joined.get(group)
        new = merge.upstream_membership(group, self.members.get(group, {}), self.filters)
        for op in merge.plan(group, old, new):
            what = f"(*,{group})" if op.source is None else f"({op.source},{group})"
            try:
                if op.join:
                    self.kernel.join(op.group, op.source)
                else:
                    self.kernel.leave(op.group, op.source)
            except OSError as exc:  # UpstreamError, or the interface gone before its RTM_DELLINK reached us
                self.errors += 1
                log.error("proxy: upstream %s refused: %s", what, exc)
                continue
            log.info("proxy: upstream %s %s", "joined" if op.join else "left", what)
        held = self._held(group)
        if held is None:
            self.joined.pop(group, None)
        else:
            self.joined[group] = held
        if self.reporter is not None and held != old and (self.up_link is None or self.up_link.up):
            # what the kernel holds: a refused join is not reported; on a link down the kernel reports at link up
            self.reporter.change(group, old, held)

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
        if self.settings is None:
            return None
        verdicts = merge.creation_verdicts(
            group,
            Interface(*in_interface),
            [Interface(*i) for i in oil],
            upstream=self.upstream or NO_UPSTREAM,
            filters=self.filters,
            downstream=self.downstream,
            forward_upstream=self.settings.forward_upstream,
        )
        for iface, enabled in verdicts.items():
            if not enabled:
                log.debug("proxy: %s not forwarded out of %s", group, if_name(iface.if_index))
        return verdicts

    # --- internals ------------------------------------------------------------------------------

    def _count_error(self) -> None:
        self.errors += 1

    def _filter_text(self, iface: Interface) -> str:
        f = self.filters.get(iface, merge.ALL)
        return "" if f == merge.ALL else f" ({f.describe()})"
