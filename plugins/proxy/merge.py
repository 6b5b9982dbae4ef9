"""What the proxy joins upstream and where it forwards, without any I/O (RFC 4605).

The downstream memberships come from IGMP as local joins: per downstream
interface, a set of (source, group) pairs where source 0.0.0.0 is (*,G).
The upstream membership of a group is their merge over the downstream
interfaces that may carry it (the per-interface allow/deny filters):

* any downstream wanting (*,G) makes the upstream membership (*,G), an ASM
  join (EXCLUDE {} in IGMPv3 terms), whatever sources others want;
* otherwise it is the union of the wanted sources (INCLUDE {S1, S2...});
* link-local groups (224.0.0.0/24) are never joined upstream.

`plan` turns a change of one group's upstream membership into kernel
operations ordered so that the upstream never sees the group left in
between: the new membership is joined before the old one is dropped.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from mgm.core.runtime.config import MULTICAST, multicast_prefix
from mgm.core.types import ANY, is_link_local

ASM = "asm"
"""The upstream membership of a group some downstream wants from every source: (*,G)."""

K = TypeVar("K", bound=Hashable)
"""An interface, however the caller names it."""

Upstream = str | frozenset[str]
"""One group's upstream membership: `ASM`, or the frozenset of sources to include."""


@dataclass(frozen=True, slots=True)
class GroupFilter:
    """Which groups a downstream interface may receive: `allow` (empty: all) minus `deny`; deny wins."""

    allow: tuple[ipaddress.IPv4Network, ...] = ()
    deny: tuple[ipaddress.IPv4Network, ...] = ()

    def permits(self, group: str) -> bool:
        address = ipaddress.IPv4Address(group)
        if any(address in net for net in self.deny):
            return False
        return not self.allow or any(address in net for net in self.allow)

    def describe(self) -> str:
        """The filter as the logs show it: "allow P...; deny P...", or "every group"."""
        parts = []
        if self.allow:
            parts.append("allow " + " ".join(map(str, self.allow)))
        if self.deny:
            parts.append("deny " + " ".join(map(str, self.deny)))
        return "; ".join(parts) or "every group"

    @classmethod
    def of(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> GroupFilter:
        """From prefix strings ("239.1.0.0/16", or an address for one group); ValueError if one is bad."""
        return cls(tuple(multicast_prefix(p) for p in allow), tuple(multicast_prefix(p) for p in deny))


ALL = GroupFilter()


def boundary_ranges(group_filter: GroupFilter) -> list[tuple[str, str]]:
    """The groups `group_filter` refuses, as (group, group_mask) prefixes for the manager's boundaries.

    The deny list, plus everything in 224.0.0.0/4 outside the allow list when
    there is one, in as few prefixes as cover exactly that (an allow list of
    one /16 costs 12 prefixes).  Empty when the filter permits every group.
    """
    refused: list[ipaddress.IPv4Network] = list(group_filter.deny)
    if group_filter.allow:
        rest = [MULTICAST]
        for allowed in ipaddress.collapse_addresses(group_filter.allow):
            rest = [piece for net in rest for piece in _without(net, allowed)]
        refused += rest
    return [(str(net.network_address), str(net.netmask)) for net in ipaddress.collapse_addresses(refused)]


def _without(net: ipaddress.IPv4Network, hole: ipaddress.IPv4Network) -> list[ipaddress.IPv4Network]:
    if hole.subnet_of(net):
        return list(net.address_exclude(hole))
    if net.subnet_of(hole):
        return []
    return [net]


def upstream_membership(
    group: str, wanted: Mapping[K, Iterable[str]], filters: Mapping[K, GroupFilter]
) -> Upstream | None:
    """The upstream membership of `group`: `ASM`, a frozenset of sources, or None (not joined).

    `wanted` maps each downstream interface (any key) to the sources its
    receivers want for the group (``0.0.0.0`` for every source);
    `filters` gives the interface's filter (missing: all groups allowed).
    """
    if group == ANY or is_link_local(group):
        return None
    sources: set[str] = set()
    for iface, wanted_sources in wanted.items():
        if not filters.get(iface, ALL).permits(group):
            continue
        for source in wanted_sources:
            if source == ANY:
                return ASM
            sources.add(source)
    return frozenset(sources) if sources else None


class Op(NamedTuple):
    """One kernel membership operation on the upstream interface; source None is the (*,G) join."""

    join: bool
    group: str
    source: str | None


def plan(group: str, old: Upstream | None, new: Upstream | None) -> list[Op]:
    """Operations taking `group` upstream from `old` to `new`: joins first, then drops."""
    if old == new:
        return []
    old_sources = old if isinstance(old, frozenset) else frozenset()
    new_sources = new if isinstance(new, frozenset) else frozenset()
    joins = [Op(True, group, None)] if new == ASM else []  # old != new, so old is not ASM here
    joins += [Op(True, group, s) for s in sorted(new_sources - old_sources)]
    drops = [Op(False, group, s) for s in sorted(old_sources - new_sources)]
    return joins + drops + ([Op(False, group, None)] if old == ASM else [])


def creation_verdicts(
    group: str,
    in_interface: K,
    oil: Sequence[K],
    *,
    upstream: K,
    filters: Mapping[K, GroupFilter],
    downstream: Iterable[K],
    forward_upstream: bool,
) -> dict[K, bool]:
    """Which of our interfaces in a new MFE's OIL may forward `group` (keys as given).

    Only the upstream interface is ever disabled.  It forwards only where
    configured (`forward_upstream`), only traffic that came in on one of our
    downstream interfaces and whose group that interface's filter permits,
    and never a link-local group.  A downstream interface forwards whatever
    its receivers joined, wherever the flow enters (the upstream, another
    downstream interface as RFC 4605 section 4.2 asks, or another
    protocol's interface: the MFE has one incoming interface, so a veto
    there would leave those receivers without the flow at all); the groups
    its filter refuses never get here, they are its boundaries in the
    manager (`boundary_ranges`).  So without ``forward_upstream`` nothing
    is ever disabled and the proxy is not asked (`ProxyPlugin.questions`).
    """
    goes_up = (
        forward_upstream
        and in_interface in set(downstream)
        and not is_link_local(group)
        and filters.get(in_interface, ALL).permits(group)
    )
    return {iface: goes_up if iface == upstream else True for iface in oil}
