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
from ipaddress import IPv4Network
from typing import Any

from mgm.core.runtime.config import PLUGIN_COMMON_KEYS, Config, Mistakes, multicast_prefix, plugin_table
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
    """Every mistake at once; a cross-check that needs a bad value is left out (it would blame the wrong key)."""
    table = config.plugin(name).table
    prefix = f"plugins.{name}"
    known = PLUGIN_COMMON_KEYS | KEYS
    mistakes = Mistakes()
    for key in table:
        if key not in known:
            known_list = ", ".join(sorted(known))
            mistakes.add(config.error(f"{prefix}.{key}", f"unknown key for the proxy plugin (known: {known_list})"))
    upstream = None
    if "upstream" not in table:
        mistakes.add(config.error(prefix, 'the proxy needs `upstream = "IFNAME"` (the interface towards the multicast '
                                          "source)"))  # fmt: skip
    else:
        upstream = mistakes.check(_name, config, f"{prefix}.upstream", table["upstream"])
    raw = table.get("downstream")
    if not isinstance(raw, list) or not raw:
        mistakes.add(config.error(f"{prefix}.downstream" if "downstream" in table else prefix,
                                  "the proxy needs `downstream = [...]`, a non-empty list of interfaces"))  # fmt: skip
        raw = None
    downstream: list[Name] = []
    filters: dict[Name, GroupFilter] = {}
    entries_ok = raw is not None
    for i, item in enumerate(raw or []):
        entries_ok &= _downstream(config, f"{prefix}.downstream[{i}]", item, upstream, downstream, filters, mistakes)
    forward = mistakes.check(_flag, config, prefix, table, "forward_upstream", False)
    immediate = mistakes.check(_flag, config, prefix, table, "immediate_report", True)
    listed = False
    if entries_ok:  # else the checks below would blame the entries left out
        listed = _check_interfaces(config, name, upstream, downstream, mistakes)
        _check_igmp(config, name, upstream, downstream, mistakes)
    mistakes.raise_any()
    assert upstream is not None
    return Settings(upstream, tuple(downstream), filters, bool(forward), bool(immediate), listed)


def _downstream(config: Config, key: str, item: Any, upstream: Name | None, downstream: list[Name],
                filters: dict[Name, GroupFilter], mistakes: Mistakes) -> bool:  # fmt: skip
    """Check one entry of `downstream` and add it to `downstream` (and its filter to `filters`); False if bad."""
    before = len(mistakes.found)
    if not isinstance(item, dict):
        iface = mistakes.check(_name, config, key, item)
    elif set(item) - DOWNSTREAM_KEYS or "interface" not in item:
        iface = None
        mistakes.add(config.error(key, "a downstream table is {interface = NAME, allow = [PREFIX...], deny = [...]}"))
    else:
        iface = mistakes.check(_name, config, key, item["interface"])
        nets: dict[str, list[IPv4Network]] = {"allow": [], "deny": []}
        for which, found in nets.items():
            value = item.get(which, [])
            if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                mistakes.add(config.error(key, f'{which} must be a list of prefix strings like "239.1.0.0/16"'))
                continue
            for text in value:
                try:
                    found.append(multicast_prefix(text))
                except ValueError as exc:
                    mistakes.add(config.error(key, str(exc)))
        if iface is not None:
            filters[iface] = GroupFilter(tuple(nets["allow"]), tuple(nets["deny"]))
    if iface is not None and iface == upstream:
        mistakes.add(config.error(key, f"{iface!r} is the upstream interface; it cannot be downstream too"))
    elif iface is not None and iface in downstream:
        mistakes.add(config.error(key, f"{iface!r} is listed twice"))
    if iface is None or len(mistakes.found) > before:
        return False
    downstream.append(iface)
    return True


def _flag(config: Config, prefix: str, table: Mapping[str, Any], key: str, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise config.error(f"{prefix}.{key}", f"must be true or false, not {value!r}")
    return value


def _name(config: Config, key: str, value: Any) -> Name:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise config.error(key, f"must be an interface name or index, not {value!r}")
    return value


def _check_interfaces(config: Config, name: str, upstream: Name | None, downstream: list[Name],
                      mistakes: Mistakes) -> bool:  # fmt: skip
    """`interfaces` (what the host takes): every downstream interface, the upstream or not, nothing else.

    Returns whether the upstream is listed.  Without a good upstream, what else is listed is not judged.
    """
    plugin = config.plugin(name)
    wanted = downstream if upstream is None else [upstream, *downstream]
    shown = ", ".join(repr(w) if isinstance(w, str) else str(w) for w in wanted)
    hint = f"write interfaces = [{shown}], or leave the upstream out for the proxy to take it when it exists"
    for ref in plugin.interfaces:
        if ref.next_hop != ANY:
            mistakes.add(config.error(ref.key_path, "the proxy works on whole interfaces: no next_hop"))
        elif upstream is not None and ref.name_or_index not in wanted:
            neither = f"{ref.name_or_index!r} is neither upstream nor downstream ({hint})"
            mistakes.add(config.error(ref.key_path, neither))
    listed = {ref.name_or_index for ref in plugin.interfaces}
    if missing := [w for w in downstream if w not in listed]:
        key = f"plugins.{name}.interfaces" if "interfaces" in plugin.table else f"plugins.{name}"
        shown = ", ".join(map(repr, missing))
        mistakes.add(config.error(key, f"the interfaces the proxy owns must list {shown} too ({hint})"))
    return upstream in listed


def _check_igmp(config: Config, name: str, upstream: Name | None, downstream: list[Name], mistakes: Mistakes) -> None:
    """Where [plugins.igmp] is in the same file: not on the upstream, and on every downstream."""
    igmp = config.plugins.get("igmp")
    if igmp is None:
        return
    igmp_ifaces = {ref.name_or_index for ref in igmp.interfaces}
    if upstream in igmp_ifaces:
        mistakes.add(config.error(
            f"plugins.{name}.upstream",
            f"{upstream!r} is also in [plugins.igmp] interfaces: on its upstream the proxy is a host, never "
            "a querier (RFC 4605); remove it from IGMP's interfaces",
        ))
    for i, iface in enumerate(downstream):
        if iface not in igmp_ifaces:
            mistakes.add(config.error(
                f"plugins.{name}.downstream[{i}]",
                f"{iface!r} is not in [plugins.igmp] interfaces: the proxy learns the receivers of its downstream "
                "interfaces from IGMP, so IGMP must run there",
            ))
