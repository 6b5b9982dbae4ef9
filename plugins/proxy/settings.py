"""The ``[plugins.proxy]`` table, checked: every mistake names the file, the key and the line.

::

    [plugins.proxy]
    interfaces = ["eth0", "eth1", "eth2"]   # the downstream ones and (optionally) the upstream: the host takes them
    upstream = "eth0"
    downstream = ["eth1", { interface = "eth2", allow = ["239.1.0.0/16"], deny = ["239.1.255.0/24"] }]
    forward_upstream = false                 # RFC 4605 allows it; off unless asked for
    immediate_report = true                  # also report a join upstream at once, not only the kernel's report

``interfaces`` must list every downstream interface and nothing else but
the upstream.  Listing the upstream there makes the host take it at start
(and refuse to start while it does not exist); leaving it out lets the
proxy start before it exists (PPPoE not up yet at boot) and take it itself
whenever it appears.

The upstream interface must not be one of IGMP's: the proxy is a host
there, and the upstream querier is someone else's.  Where ``[plugins.igmp]``
is in the same file this is checked here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mgm.core.runtime.config import PLUGIN_COMMON_KEYS, Config, Mistakes, plugin_table
from mgm.core.types import ANY
from mgm.plugins.proxy.merge import GroupFilter

KEYS = frozenset({"upstream", "downstream", "forward_upstream", "immediate_report"})
DOWNSTREAM_KEYS = frozenset({"interface", "allow", "deny"})

Name = str | int
"""An interface as the configuration names it: a name, or an if_index."""


@dataclass(frozen=True, slots=True)
class Settings:
    upstream: Name
    downstream: tuple[Name, ...]
    filters: Mapping[Name, GroupFilter] = field(default_factory=dict)
    forward_upstream: bool = False
    immediate_report: bool = True
    upstream_listed: bool = True
    """The upstream is in ``interfaces`` (the host takes it); else the proxy takes it when it exists."""


def read(table: Mapping[str, Any]) -> Settings:
    """Check the table a hook receives (a `PluginTable`, which knows its file and text)."""
    checked = plugin_table(table, "proxy")
    return parse(checked.config(), checked.name)


def parse(config: Config, name: str) -> Settings:
    plugin = config.plugin(name)
    table = plugin.table
    prefix = f"plugins.{name}"
    known = PLUGIN_COMMON_KEYS | KEYS
    mistakes = Mistakes()  # every unknown key, every bad downstream entry, every interface IGMP lacks
    for key in table:
        if key not in known:
            known_list = ", ".join(sorted(known))
            mistakes.add(config.error(f"{prefix}.{key}", f"unknown key for the proxy plugin (known: {known_list})"))
    settings = mistakes.check(_parse_known, config, name, mistakes)
    mistakes.raise_any()
    assert settings is not None
    return settings


def _parse_known(config: Config, name: str, mistakes: Mistakes) -> Settings | None:
    table = config.plugin(name).table
    prefix = f"plugins.{name}"
    if "upstream" not in table:
        raise config.error(prefix, 'the proxy needs `upstream = "IFNAME"` (the interface towards the multicast source)')
    upstream = _name(config, f"{prefix}.upstream", table["upstream"])
    raw = table.get("downstream")
    if not isinstance(raw, list) or not raw:
        raise config.error(f"{prefix}.downstream" if "downstream" in table else prefix,
                           "the proxy needs `downstream = [...]`, a non-empty list of interfaces")  # fmt: skip
    downstream: list[Name] = []
    filters: dict[Name, GroupFilter] = {}
    before = len(mistakes.found)
    for i, item in enumerate(raw):
        mistakes.check(_downstream, config, f"{prefix}.downstream[{i}]", item, upstream, downstream, filters)
    if len(mistakes.found) > before:
        return None  # the checks below would blame the entries left out
    forward = _flag(config, prefix, table, "forward_upstream", False)
    immediate = _flag(config, prefix, table, "immediate_report", True)
    listed = _check_interfaces(config, name, upstream, downstream)
    _check_igmp(config, name, upstream, downstream, mistakes)
    return Settings(upstream, tuple(downstream), filters, forward, immediate, listed)


def _downstream(config: Config, key: str, item: Any, upstream: Name, downstream: list[Name],
                filters: dict[Name, GroupFilter]) -> None:  # fmt: skip
    """Check one entry of `downstream` and add it to `downstream` (and its filter to `filters`)."""
    if isinstance(item, dict):
        unknown = sorted(set(item) - DOWNSTREAM_KEYS)
        if unknown or "interface" not in item:
            raise config.error(key, "a downstream table is {interface = NAME, allow = [PREFIX...], deny = [...]}")
        iface = _name(config, key, item["interface"])
        lists = {}
        for which in ("allow", "deny"):
            value = item.get(which, [])
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                raise config.error(key, f'{which} must be a list of prefix strings like "239.1.0.0/16"')
            lists[which] = value
        try:
            filters[iface] = GroupFilter.of(lists["allow"], lists["deny"])
        except ValueError as exc:
            raise config.error(key, str(exc)) from None
    else:
        iface = _name(config, key, item)
    if iface == upstream:
        raise config.error(key, f"{iface!r} is the upstream interface; it cannot be downstream too")
    if iface in downstream:
        raise config.error(key, f"{iface!r} is listed twice")
    downstream.append(iface)


def _flag(config: Config, prefix: str, table: Mapping[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise config.error(f"{prefix}.{key}", f"must be true or false, not {value!r}")
    return value


def _name(config: Config, key: str, value: Any) -> Name:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise config.error(key, f"must be an interface name or index, not {value!r}")
    return value


def _check_interfaces(config: Config, name: str, upstream: Name, downstream: list[Name]) -> bool:
    """`interfaces` (what the host takes): every downstream interface, the upstream or not, nothing else.

    Returns whether the upstream is listed.
    """
    plugin = config.plugin(name)
    wanted = [upstream, *downstream]
    shown = ", ".join(repr(w) if isinstance(w, str) else str(w) for w in wanted)
    hint = f"write interfaces = [{shown}], or leave the upstream out for the proxy to take it when it exists"
    for ref in plugin.interfaces:
        if ref.next_hop != ANY:
            raise config.error(ref.key_path, "the proxy works on whole interfaces: no next_hop")
        if ref.name_or_index not in wanted:
            raise config.error(ref.key_path, f"{ref.name_or_index!r} is neither upstream nor downstream ({hint})")
    listed = {ref.name_or_index for ref in plugin.interfaces}
    missing = [w for w in downstream if w not in listed]
    if missing:
        key = f"plugins.{name}.interfaces" if "interfaces" in plugin.table else f"plugins.{name}"
        raise config.error(key, f"the interfaces the proxy owns must list {missing[0]!r} too ({hint})")
    return upstream in listed


def _check_igmp(config: Config, name: str, upstream: Name, downstream: list[Name], mistakes: Mistakes) -> None:
    """Where [plugins.igmp] is in the same file: not on the upstream, and on every downstream."""
    igmp = config.plugins.get("igmp")
    if igmp is None:
        return
    igmp_ifaces = {ref.name_or_index for ref in igmp.interfaces}
    if upstream in igmp_ifaces:
        raise config.error(
            f"plugins.{name}.upstream",
            f"{upstream!r} is also in [plugins.igmp] interfaces: on its upstream the proxy is a host, never "
            "a querier (RFC 4605); remove it from IGMP's interfaces",
        )
    for i, iface in enumerate(downstream):
        if iface not in igmp_ifaces:
            mistakes.add(config.error(
                f"plugins.{name}.downstream[{i}]",
                f"{iface!r} is not in [plugins.igmp] interfaces: the proxy learns the receivers of its downstream "
                "interfaces from IGMP, so IGMP must run there",
            ))
