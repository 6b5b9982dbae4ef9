"""hello: a small routing protocol for mgmbus, the worked example of the plugin kit.

It owns the interfaces its configuration names and:

- keeps a table of the receivers IGMP reports on them (local joins and leaves);
- insists that every flow comes in on its `upstream` interface (the RPF check);
- never forwards a group listed in `blocked` (the creation alert);
- logs the join and prune alerts of flows it is upstream of.

Configuration (the [plugins.hello] table)::

    [plugins.hello]
    interfaces = ["eth0", "eth1", "eth2"]
    upstream = "eth0"            # a name or an if_index; must be one of the interfaces
    blocked = ["239.255.0.1"]    # groups never forwarded (optional)
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from mgm.core.types import Interface
from mgm.plugins.hookspecs import hookimpl

PROTOCOL_ID = 65100
"""A protocol id from the private range; the config keys protocol_id/component_id override it."""


class Hello:
    def __init__(self) -> None:
        self.upstream: Interface | None = None
        self.blocked: frozenset[str] = frozenset()
        self.receivers: dict[tuple[str, str], set[Interface]] = {}

    @hookimpl
    def mgm_protocol(self, config: Any) -> tuple[int, int]:
        """Called before registering: the place to check our keys.

        `config.error(key, message)` is a ConfigError naming the file, the key
        and its line; raised here, the host exits with status 2 (a mistake a
        restart cannot fix) before it touches the manager.
        """
        upstream = config.get("upstream")
        if upstream is None:
            raise config.error("upstream", "hello needs upstream: the interface flows must come in on")
        if isinstance(upstream, int) and not isinstance(upstream, bool):
            if_index = upstream
        else:
            try:
                if_index = socket.if_nametoindex(str(upstream))
            except OSError:
                raise config.error("upstream", f"no interface named {upstream!r} here") from None
        blocked = config.get("blocked", [])
        if not isinstance(blocked, list) or not all(isinstance(g, str) for g in blocked):
            raise config.error("blocked", "must be a list of group addresses")
        self.upstream = Interface(if_index)
        self.blocked = frozenset(blocked)
        return (PROTOCOL_ID, 1)

    @hookimpl
    def mgm_start(self, mgm: Any, config: Mapping[str, Any]) -> None:
        assert self.upstream is not None
        mgm.log.info("hello up: upstream %s, blocked groups %s", self.upstream.if_index,
                     sorted(self.blocked) or "none")  # fmt: skip

    @hookimpl
    def mgm_local_join(self, mgm: Any, source: str, group: str, interface: Interface) -> None:
        self.receivers.setdefault((source, group), set()).add(interface)
        mgm.log.info("receiver of %s/%s on %s", source, group, interface.if_index)

    @hookimpl
    def mgm_local_leave(self, mgm: Any, source: str, group: str, interface: Interface) -> None:
        here = self.receivers.get((source, group))
        if here is not None:
            here.discard(interface)
            if not here:
                del self.receivers[(source, group)]

    @hookimpl
    def mgm_rpf(self, mgm: Any, interface: Interface, upstream_neighbor: str) -> tuple[Interface, str] | None:
        if self.upstream is not None and interface != self.upstream:
            return (self.upstream, upstream_neighbor)
        return None  # agree

    @hookimpl
    def mgm_creation_alert(self, mgm: Any, group: str, oil: list[Interface]) -> dict[Interface, bool] | None:
        if group in self.blocked:
            return {interface: False for interface in oil}
        return None  # forward out of all of them

    @hookimpl
    def mgm_join_alert(self, mgm: Any, source: str, group: str, member_update: bool) -> None:
        mgm.log.info("join alert %s/%s (member_update=%s)", source, group, member_update)

    @hookimpl
    def mgm_prune_alert(self, mgm: Any, source: str, group: str, member_delete: bool) -> None:
        mgm.log.info("prune alert %s/%s (member_delete=%s)", source, group, member_delete)
