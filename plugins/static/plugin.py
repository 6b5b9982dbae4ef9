"""The `static` plugin: configured (S,G) and (*,G) routes applied through the MGM.

How a route becomes forwarding:

* At start (and after each reload) every route adds a membership for its
  (source, group) on each of its `to` interfaces (``MGM_JOIN_STATE_FLAG``,
  through the context, which replays them after a manager restart).  The
  manager puts those interfaces in the OIL of every matching MFE.
* When the forwarder reports the first packet of a flow, the manager asks
  the owner of the interface towards the source for the RPF check; where
  that is us, `mgm_rpf` answers with the route's `from` interface, so the
  MFE's incoming interface is the configured one even where the unicast
  route disagrees.  The (S,G) route wins over the (*,G) route of the group.
* Creation alerts and negative MFEs keep the manager's defaults (every OIL
  interface enabled; the default timeout), so this plugin does not
  implement those hooks.

The routes are checked when the host loads the plugin (`mgm_protocol`): a
bad table stops the host with the file and line before it registers.  On
SIGHUP the host reads the file again (`mgm_reload`); a bad new table is
refused with its file and line and the routes in force stay.  Otherwise
the difference is applied: new interfaces taken, removed memberships
deleted, interfaces no longer listed released, new memberships added, and
existing MFEs whose route now names another incoming interface moved to it
(``set_mfe``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mgm.bus.status import MgmError
from mgm.core.runtime.config import InterfaceRef, Mistakes, plugin_table
from mgm.core.types import Interface
from mgm.plugins.context import PluginContext, quiet
from mgm.plugins.hookspecs import hookimpl
from mgm.plugins.static.routes import Membership, RouteTable, memberships, parse, plan_reload, rpf

if TYPE_CHECKING:
    from mgm.core.runtime.config import Config

log = logging.getLogger(__name__)

STATIC_PROTOCOL_ID = 10006
"""RRAS PROTO_IP_NT_STATIC."""
STATIC_COMPONENT_ID = 1
MFE_PAGE = 256


class Applied:
    """A checked route table with its interfaces resolved on this machine: what is in force."""

    def __init__(self, table: RouteTable, interfaces: list[Interface]) -> None:
        self.table = table
        self.interfaces = interfaces
        self.by_ref: dict[InterfaceRef, Interface] = dict(zip(table.interfaces, interfaces, strict=True))
        self.memberships: list[Membership] = memberships(table, self.by_ref.__getitem__)

    def rpf(self, source: str, group: str, interface: Interface) -> tuple[Interface, str] | None:
        return rpf(self.table, self.by_ref.__getitem__, source, group, interface)


def read(config: Config, name: str) -> Applied:
    """Check the routes of ``[plugins.NAME]`` and resolve its interfaces; one `ConfigError` names every mistake."""
    from mgm.plugins.host import resolve_interfaces

    mistakes = Mistakes()
    table = mistakes.check(parse, config, name)
    interfaces = mistakes.check(resolve_interfaces, config.plugin(name), config)
    mistakes.raise_any()
    assert table is not None and interfaces is not None
    return Applied(table, interfaces)


class StaticPlugin:
    """Entry point ``static`` (the host instantiates it without arguments)."""

    def __init__(self) -> None:
        self.applied: Applied | None = None
        self.name = "static"
        self.source: str | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    @hookimpl
    def mgm_protocol(self, config: Mapping[str, Any]) -> tuple[int, int]:
        """Check the routes now (the host checks the interfaces): a mistake stops the host at load, with its line."""
        table = plugin_table(config, "static")
        parse(table.config(), table.name)
        return STATIC_PROTOCOL_ID, STATIC_COMPONENT_ID

    @hookimpl
    def mgm_start(self, mgm: PluginContext, config: Mapping[str, Any]) -> None:
        self._check(config)
        applied = self.applied
        assert applied is not None
        for source, group, interface in applied.memberships:
            mgm.add_membership(source, group, interface)
        log.info(
            "static: %d route(s) from %s, %d membership(s) added",
            len(applied.table.routes),
            self.source,
            len(applied.memberships),
        )
        for route in applied.table.routes:
            log.debug("static: route %s", route.describe())
        # flows created before we owned their incoming interface: move them to the interface their route names
        mgm.spawn(self.realign_mfes(mgm))

    @hookimpl
    def mgm_rpf(
        self, mgm: PluginContext, source: str, group: str, interface: Interface
    ) -> tuple[Interface, str] | None:
        if self.applied is None:
            return None
        answer = self.applied.rpf(source, group, interface)
        if answer is not None:
            log.debug(
                "static: rpf (%s, %s): incoming interface %d/%s by route, not %d/%s",
                source, group, answer[0].if_index, answer[0].next_hop, interface.if_index, interface.next_hop,
            )  # fmt: skip
        return answer

    # --- reload ---------------------------------------------------------------------------------

    @hookimpl
    async def mgm_reload(self, mgm: PluginContext, whole_config: Config) -> None:
        """Apply the difference; the routes in force stay where the table (`ConfigError`) or an interface is refused."""
        old = self.applied
        assert old is not None
        new = read(whole_config, self.name)
        plan = plan_reload(old.interfaces, old.memberships, new.interfaces, new.memberships)
        taken: list[Interface] = []
        for interface in plan.take:
            try:
                await mgm.take_interface(interface)
            except (MgmError, TimeoutError) as exc:
                log.error(
                    "static: reload refused, the %d route(s) in force stay: cannot take interface %d/%s: %s",
                    len(old.table.routes), interface.if_index, interface.next_hop, exc,
                )  # fmt: skip
                for back in taken:
                    await quiet(mgm.release_interface(back))
                return
            taken.append(interface)
        replies = [mgm.delete_membership(s, g, i) for s, g, i in plan.delete]
        replies += [mgm.release_interface(i) for i in plan.release]
        replies += [mgm.add_membership(s, g, i) for s, g, i in plan.add]
        self.applied, self.source = new, whole_config.source
        for reply in replies:
            await quiet(reply)  # a refusal is logged by the context
        log.info("static: reloaded %s: %d route(s); %s", self.source, len(new.table.routes), plan.summary())
        moved = await self.realign_mfes(mgm)
        if moved:
            log.info("static: %d MFE(s) moved to the incoming interface their route names", moved)

    async def realign_mfes(self, mgm: PluginContext) -> int:
        """Move MFEs whose incoming interface (ours) the routes name differently; the number moved.

        At start this fixes flows created before we owned the interface; after
        a reload, flows whose route now names another incoming interface.
        """
        applied = self.applied
        assert applied is not None
        owned = set(applied.interfaces)
        moved = 0
        after: dict[str, str] | None = None
        while True:
            page = await mgm.client.request("list_mfes", {"after": after, "max_entries": MFE_PAGE})
            for mfe in page["entries"]:
                current = Interface(int(mfe["in_if_index"]), str(mfe["in_next_hop"]))
                if current not in owned:
                    continue  # the RPF question for it went to another protocol
                answer = applied.rpf(mfe["source"], mfe["group"], current)
                if answer is None:
                    continue
                incoming, upstream = answer
                args = {"source": mfe["source"], "group": mfe["group"], "upstream_neighbor": upstream,
                        "if_index": incoming.if_index, "next_hop": incoming.next_hop}  # fmt: skip
                with contextlib.suppress(MgmError, TimeoutError):  # logged by the context
                    await mgm.request("set_mfe", args)
                    moved += 1
            if not page.get("more") or not page["entries"]:
                return moved
            last = page["entries"][-1]
            after = {"source": last["source"], "group": last["group"]}

    # --- internals ------------------------------------------------------------------------------

    def _check(self, config: Mapping[str, Any]) -> None:
        table = plugin_table(config, "static")
        self.name = table.name
        self.source = table.source
        self.applied = read(table.config(), table.name)
