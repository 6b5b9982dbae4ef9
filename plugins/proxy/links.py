"""What a link event means for the proxy's upstream interface, without any I/O.

On home and edge routers the upstream is often PPPoE or a VLAN that comes
and goes: ``ppp0`` is deleted when the PPP session drops and created again,
usually under a new if_index.  The plugin hears every link event
(`mgm.plugins.links`) and asks `upstream_event` what each means:

* `Action.GONE`: the upstream's if_index was deleted.  The kernel dropped
  the memberships with the device; the proxy closes its sockets and
  releases the interface in the manager, and keeps what the downstream
  wants.
* `Action.BACK`: while there is no upstream, an interface the
  configuration names appeared (by name: under any if_index; by index:
  only under that index).  The proxy takes it and joins everything again.
* `Action.DOWN` / `Action.UP`: the upstream lost or got back its link
  (administratively or its carrier).  The if_index stays and the kernel
  keeps the sockets' memberships, reporting them again at link up (checked
  on Linux 6: tests/proxy/test_proxy_upstream_netns.py), so the proxy only
  logs it.
* `Action.RENAMED`: the upstream's if_index got another name; the proxy
  keeps using it (memberships are by if_index) under its new name.

`reconcile` does the same for the watcher's dump, so a change between the
plugin's start and its subscription is not missed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from mgm.plugins.links import Link

NEWLINK = "RTM_NEWLINK"
DELLINK = "RTM_DELLINK"


class Action(enum.Enum):
    NOTHING = "nothing"
    GONE = "gone"
    BACK = "back"
    DOWN = "down"
    UP = "up"
    RENAMED = "renamed"


def names_upstream(configured: str | int, link: Link) -> bool:
    """Whether `link` is the interface the configuration calls the upstream (by name, or by if_index)."""
    return link.index == configured if isinstance(configured, int) else link.name == configured


def upstream_event(configured: str | int, current: Link | None, event: str, link: Link) -> Action:
    """What a link event means for the upstream; `current` is the upstream as last seen (None: there is none)."""
    if current is None:
        return Action.BACK if event == NEWLINK and names_upstream(configured, link) else Action.NOTHING
    if link.index != current.index:
        return Action.NOTHING  # another interface (a new one with the upstream's name while it exists: not ours)
    if event == DELLINK:
        return Action.GONE
    if event != NEWLINK:
        return Action.NOTHING
    if link.name and link.name != current.name:
        return Action.RENAMED
    if link.up != current.up:
        return Action.UP if link.up else Action.DOWN
    return Action.NOTHING


def reconcile(configured: str | int, current: Link | None, links: Mapping[int, Link]) -> tuple[Action, Link | None]:
    """What a dump of every link means for the upstream: the action and the link it concerns."""
    if current is None:
        found = sorted((link for link in links.values() if names_upstream(configured, link)), key=lambda k: k.index)
        return (Action.BACK, found[0]) if found else (Action.NOTHING, None)
    now = links.get(current.index)
    if now is None:
        return Action.GONE, current
    return upstream_event(configured, current, NEWLINK, now), now
