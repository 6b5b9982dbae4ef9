"""Static multicast routes: parsing, checking, lookup and the SIGHUP diff, without any I/O.

A route says: traffic for (source, group) comes in on `from` and goes out of
every interface in `to`; without `source` the route is (*,G), for every
source of the group.  What smcroute writes as ``mroute from eth0 source S
group G to eth1 eth2`` is here::

    [plugins.static]
    interfaces = ["eth0", "eth1", "eth2"]
    routes = [
      { source = "10.0.0.1", group = "239.1.1.1", from = "eth0", to = ["eth1", "eth2"] },
      { group = "239.2.2.2", from = "eth0", to = ["eth1"] },
    ]

(``[[plugins.static.routes]]`` tables say the same.)  Every mistake is a
`ConfigError` naming the file, the key path and the line.  The kernel keys
its forwarding cache by (S,G), so one (S,G) has one incoming interface: two
routes for the same (S,G) are refused with the lines of both, rather than
one of them losing silently as in smcroute.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mgm.core.runtime.config import PLUGIN_COMMON_KEYS, Config, ConfigError, InterfaceRef, Mistakes, find_line
from mgm.core.types import ANY, Interface, is_link_local

ROUTE_KEYS = ("source", "group", "from", "to")
NOT_A_SOURCE = (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv4Network("224.0.0.0/3"))
"""Loopback, and multicast, reserved and broadcast (224.0.0.0/3): never the source of multicast traffic."""

Membership = tuple[str, str, Interface]
"""(source, group, interface) of a membership a route adds; source 0.0.0.0 for (*,G)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One checked route; `incoming` and `outgoing` are the owned interfaces of the config."""

    index: int
    line: int | None
    source: str  # ANY for (*,G)
    group: str
    incoming: InterfaceRef
    outgoing: tuple[InterfaceRef, ...]

    @property
    def sg(self) -> tuple[str, str]:
        return self.source, self.group

    def describe(self) -> str:
        source = "*" if self.source == ANY else self.source
        to = ", ".join(_ref_name(r) for r in self.outgoing)
        return f"({source}, {self.group}) from {_ref_name(self.incoming)} to {to}"


@dataclass(frozen=True, slots=True)
class RouteTable:
    """The checked routes of one plugin table, and the interfaces it owns (config order)."""

    source: str
    interfaces: tuple[InterfaceRef, ...]
    routes: tuple[Route, ...]
    _by_sg: Mapping[tuple[str, str], Route] = field(default_factory=dict, repr=False)

    def lookup(self, source: str, group: str) -> Route | None:
        """The route for a packet of (source, group): the (S,G) route, else the (*,G) route, else None."""
        return self._by_sg.get((source, group)) or self._by_sg.get((ANY, group))


def _ref_name(ref: InterfaceRef) -> str:
    name = str(ref.name_or_index)
    return name if ref.next_hop == ANY else f"{name} (next hop {ref.next_hop})"


# --- parsing ------------------------------------------------------------------------------------


def parse(config: Config, name: str) -> RouteTable:
    """Check the ``routes`` of ``[plugins.NAME]``; one `ConfigError` names every mistake."""
    plugin = config.plugin(name)
    table = plugin.table
    prefix = f"plugins.{name}"
    known = PLUGIN_COMMON_KEYS | {"routes"}
    mistakes = Mistakes()
    for key in table:
        if key not in known:
            known_list = ", ".join(sorted(known))
            mistakes.add(config.error(f"{prefix}.{key}", f"unknown key for the static plugin (known: {known_list})"))
    raw = table.get("routes", [])
    if not isinstance(raw, list):
        mistakes.add(config.error(f"{prefix}.routes", "must be a list of route tables {group, from, to[, source]}"))
        raw = []
    routes: list[Route] = []
    seen: dict[tuple[str, str], Route] = {}
    for index, item in enumerate(raw):
        route = mistakes.check(_route, config, f"{prefix}.routes[{index}]", index, item, plugin.interfaces)
        if route is None:
            continue
        earlier = seen.get(route.sg)
        if earlier is not None:
            mistakes.add(_conflict(config, f"{prefix}.routes", earlier, route))
            continue
        seen[route.sg] = route
        routes.append(route)
    mistakes.raise_any()
    return RouteTable(config.source, plugin.interfaces, tuple(routes), dict(seen))


def _conflict(config: Config, key: str, earlier: Route, route: Route) -> ConfigError:
    source = "*" if route.source == ANY else route.source
    where = f"line {earlier.line}" if earlier.line is not None else "an earlier line"
    if earlier.incoming == route.incoming:
        message = (
            f"a second route for ({source}, {route.group}) (the first is {key}[{earlier.index}] at {where}): "
            f"list all its outgoing interfaces in one route"
        )
    else:
        message = (
            f"route for ({source}, {route.group}) from {_ref_name(route.incoming)} conflicts with "
            f"{key}[{earlier.index}] at {where}, from {_ref_name(earlier.incoming)}: the kernel keeps one "
            f"incoming interface per (source, group), so only one of them can be configured"
        )
    return ConfigError(config.source, f"{key}[{route.index}]", route.line, message)


def _route(config: Config, key: str, index: int, item: Any, owned: tuple[InterfaceRef, ...]) -> Route:
    """One route; every mistake in it at once, but none of a check that needs a value already found bad."""
    line = find_line(config.text, key)

    def error(sub: str, message: str) -> ConfigError:
        path = f"{key}.{sub}" if sub else key
        return ConfigError(config.source, path, find_line(config.text, path), message)

    if not isinstance(item, dict):
        raise error("", 'a route is a table {group = "G", from = IF, to = [IF, ...]} with an optional source = "S"')
    mistakes = Mistakes()
    for unknown in sorted(set(item) - set(ROUTE_KEYS)):
        mistakes.add(error(unknown, f"unknown key in a route (known: {', '.join(ROUTE_KEYS)})"))
    for required in ("group", "from", "to"):
        if required not in item:
            mistakes.add(error("", f"a route needs {required!r}"))
    group = mistakes.check(_group, error, item["group"]) if "group" in item else None
    source = mistakes.check(_source, error, item["source"]) if "source" in item else ANY
    incoming = mistakes.check(_owned, error, "from", item["from"], owned) if "from" in item else None
    to = item.get("to", [])
    if "to" in item and (not isinstance(to, list) or not to):
        mistakes.add(error("to", "must be a non-empty list of the interfaces to forward out of"))
        to = []
    outgoing: list[InterfaceRef] = []
    for i, entry in enumerate(to):
        ref = mistakes.check(_owned, error, f"to[{i}]", entry, owned)
        if ref is not None and ref == incoming:
            mistakes.add(error(f"to[{i}]", f"{_ref_name(ref)} is the incoming interface (from) of this route"))
        elif ref is not None and ref in outgoing:
            mistakes.add(error(f"to[{i}]", f"{_ref_name(ref)} is listed twice"))
        elif ref is not None:
            outgoing.append(ref)
    mistakes.raise_any()
    assert group is not None and source is not None and incoming is not None
    return Route(index, line, source, group, incoming, tuple(outgoing))


def _group(error: Callable[[str, str], ConfigError], value: Any) -> str:
    group, g = _address(error, "group", value)
    if not g.is_multicast:
        raise error("group", f"{group} is not a multicast group (224.0.0.0/4)")
    if is_link_local(group):
        raise error("group", f"{group} is link-local (224.0.0.0/24), which is never forwarded")
    return group


def _source(error: Callable[[str, str], ConfigError], value: Any) -> str:
    source, s = _address(error, "source", value)
    if s.is_unspecified:
        raise error("source", "leave out `source` for a (*,G) route rather than writing 0.0.0.0")
    if any(s in net for net in NOT_A_SOURCE):
        raise error("source", f"{source} cannot be the source of multicast traffic (a unicast address is)")
    return source


def _address(error: Callable[[str, str], ConfigError], key: str, value: Any) -> tuple[str, ipaddress.IPv4Address]:
    try:
        if type(value) is not str:
            raise ValueError(value)
        return value, ipaddress.IPv4Address(value)
    except ValueError:
        raise error(key, f"must be a dotted-quad IPv4 address, not {value!r}") from None


def _owned(
    error: Callable[[str, str], ConfigError], key: str, value: Any, owned: tuple[InterfaceRef, ...]
) -> InterfaceRef:
    """The owned interface `value` names: a name or index as in `interfaces`, or {interface, next_hop}."""
    next_hop: str | None = None
    name = value
    if isinstance(value, dict):
        if set(value) - {"interface", "next_hop"} or "interface" not in value:
            raise error(key, 'an interface table is {interface = NAME_OR_INDEX, next_hop = "A.B.C.D"}')
        name = value["interface"]
        next_hop, _ = _address(error, key, value.get("next_hop", ANY))
    if isinstance(name, bool) or not isinstance(name, str | int):
        raise error(key, f"must name an interface (a name or an index as in `interfaces`), not {name!r}")
    matches = [r for r in owned if r.name_or_index == name and (next_hop is None or r.next_hop == next_hop)]
    listed = ", ".join(_ref_name(r) for r in owned) or "none"
    if not matches:
        shown = name if next_hop is None else f"{name} (next hop {next_hop})"
        raise error(key, f"{shown!r} is not among this plugin's interfaces ({listed}); add it to `interfaces`")
    if len(matches) > 1:
        raise error(key, f"{name!r} has several next hops in `interfaces`: say which with {{interface, next_hop}}")
    return matches[0]


# --- applying -------------------------------------------------------------------------------


Resolve = Callable[[InterfaceRef], Interface]


def memberships(table: RouteTable, resolve: Resolve) -> list[Membership]:
    """The memberships the routes need: each route's (source, group) on each of its outgoing interfaces."""
    result: dict[Membership, None] = {}  # ordered, without repeats
    for route in table.routes:
        for ref in route.outgoing:
            result[(route.source, route.group, resolve(ref))] = None
    return list(result)


def rpf(
    table: RouteTable, resolve: Resolve, source: str, group: str, interface: Interface
) -> tuple[Interface, str] | None:
    """The answer to the manager's RPF question: the route's incoming interface where it differs, else None.

    The upstream neighbour of a configured incoming interface is its next hop
    (0.0.0.0 on a broadcast link): a static route names no neighbour.
    """
    route = table.lookup(source, group)
    if route is None:
        return None
    incoming = resolve(route.incoming)
    return None if incoming == interface else (incoming, incoming.next_hop)


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a SIGHUP changes, in the order to send it.

    Memberships go before the interfaces they are on are released; new
    interfaces are taken before memberships are added on them.
    """

    delete: tuple[Membership, ...] = ()
    release: tuple[Interface, ...] = ()
    take: tuple[Interface, ...] = ()
    add: tuple[Membership, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.delete or self.release or self.take or self.add)

    def summary(self) -> str:
        return (
            f"{len(self.add)} membership(s) to add, {len(self.delete)} to delete, "
            f"{len(self.take)} interface(s) to take, {len(self.release)} to release"
        )


def plan_reload(
    old_interfaces: Sequence[Interface],
    old_members: Iterable[Membership],
    new_interfaces: Sequence[Interface],
    new_members: Iterable[Membership],
) -> ReloadPlan:
    """The difference between the applied routes and the new ones, as requests in a safe order."""
    old_m = dict.fromkeys(old_members)
    new_m = dict.fromkeys(new_members)
    return ReloadPlan(
        delete=tuple(m for m in old_m if m not in new_m),
        release=tuple(i for i in old_interfaces if i not in new_interfaces),
        take=tuple(i for i in new_interfaces if i not in old_interfaces),
        add=tuple(m for m in new_m if m not in old_m),
    )
