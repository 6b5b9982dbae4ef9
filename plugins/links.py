"""One watcher of the links and IPv4 addresses per process (`watcher()`), for every plugin that follows interfaces.

Its one netlink socket joins the link and address groups before it dumps
them, so nothing falls between the dump and the events; each subscriber
hears the dump (`LinkSubscriber.dumped`, at once if it comes later) and
then only what changed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import weakref
from dataclasses import dataclass, field
from typing import Any

from mgm.core.types import IFF_LOWER_UP, IFF_UP

log = logging.getLogger(__name__)

IFA_F_SECONDARY = 0x01


@dataclass(frozen=True, slots=True)
class Link:
    """One network interface; `up` means administratively up with carrier (what traffic needs)."""

    index: int
    name: str
    up: bool
    flags: int = field(default=0, compare=False)
    """Its IFF_ flags (core/types.py); not compared, so a change of the others (PROMISC, ALLMULTI) is no event."""


@dataclass(frozen=True, slots=True)
class Address:
    """One IPv4 address; `peer` is the far end of a point-to-point address, else `local` again."""

    index: int
    local: str
    peer: str
    prefixlen: int
    secondary: bool


def link_of(msg: Any) -> Link:
    """A pyroute2 link message (RTM_NEWLINK, RTM_DELLINK or a dump entry) as a `Link`."""
    flags = int(msg.get("flags") or 0)
    up = bool(flags & IFF_UP and flags & IFF_LOWER_UP)
    return Link(int(msg.get("index") or 0), str(msg.get("ifname") or ""), up, flags)


def address_of(msg: Any) -> Address | None:
    """A pyroute2 address message as an `Address` (None without one)."""
    if not (local := msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")):
        return None
    peer = msg.get("IFA_ADDRESS") or local
    return Address(msg["index"], local, peer, msg["prefixlen"], msg["flags"] & IFA_F_SECONDARY > 0)


def if_name(if_index: int) -> str:
    """The interface's name for a log line (ifN once it is gone)."""
    try:
        return socket.if_indextoname(if_index)
    except OSError:
        return f"if{if_index}"


class LinkSubscriber:
    """What a subscriber hears; each method does nothing here, so a subscriber overrides only what it follows."""

    def dumped(self, watcher: LinkWatcher) -> None:
        """Every link and address as they are now (`watcher.links`, `watcher.addresses`); changes follow."""

    def link_changed(self, link: Link, before: Link | None) -> None:
        """A link appeared (`before` None) or changed its name or state."""

    def link_removed(self, link: Link) -> None:
        """A link was deleted (the kernel drops its addresses with it)."""

    def address_added(self, address: Address) -> None:
        """An address appeared, or its flags changed (a secondary promoted)."""

    def address_removed(self, address: Address) -> None:
        """An address went away."""


class LinkWatcher:
    """The links and addresses of this network namespace, kept by one netlink socket (see the module doc)."""

    def __init__(self) -> None:
        self.links: dict[int, Link] = {}
        self.addresses: dict[int, dict[tuple[str, int], Address]] = {}
        """{if_index: {(local, prefixlen): address}} in the kernel's order (the primary first)."""
        self.ready = False  # the dump is in
        self.settled = asyncio.Event()
        """Set when the dump is in or netlink failed: for a subscriber that cannot start without the state."""
        self.subscribers: list[LinkSubscriber] = []
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, subscriber: LinkSubscriber) -> None:
        """Tell `subscriber` the dump (now if it is in) and then every change; the first one opens the socket."""
        self.subscribers.append(subscriber)
        if self.ready:
            subscriber.dumped(self)
        elif self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="links")

    def unsubscribe(self, subscriber: LinkSubscriber) -> None:
        self.subscribers = [s for s in self.subscribers if s is not subscriber]

    async def _run(self) -> None:
        from pyroute2 import AsyncIPRoute
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_LINK

        # pyroute2 logs every netlink message at debug (its import resets its level, hence here): ours would drown.
        pyroute2_log = logging.getLogger("pyroute2")
        pyroute2_log.setLevel(max(logging.INFO, pyroute2_log.getEffectiveLevel()))
        ipr = AsyncIPRoute()
        try:
            await ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR)  # events queue up while we dump
            self.links = {link.index: link for link in [link_of(m) async for m in await ipr.link("dump")]}
            async for msg in await ipr.addr("dump", family=socket.AF_INET):
                if (address := address_of(msg)) is not None:
                    self.addresses.setdefault(address.index, {})[address.local, address.prefixlen] = address
            self.ready = True
            self.settled.set()
            self._tell("dumped", self)
            while True:
                async for msg in ipr.get():
                    self.handle(msg)
        except OSError as exc:
            self.settled.set()
            log.error("cannot watch the links (netlink: %s): interfaces that come, go or change are not followed "
                      "until this process restarts", exc)  # fmt: skip
        finally:
            ipr.close()

    def handle(self, msg: Any) -> None:
        """One netlink event: update the state, and tell the subscribers if it changed anything."""
        event = msg.get("event")
        if event in ("RTM_NEWLINK", "RTM_DELLINK") and msg.get("family", 0) != socket.AF_UNSPEC:
            return  # a bridge port's (AF_BRIDGE) message: the link itself did not change
        if event == "RTM_NEWLINK":
            link = link_of(msg)
            before = self.links.get(link.index)
            self.links[link.index] = link
            if link != before:
                self._tell("link_changed", link, before)
        elif event == "RTM_DELLINK":
            link = link_of(msg)
            self.links.pop(link.index, None)
            self.addresses.pop(link.index, None)
            self._tell("link_removed", link)
        elif event in ("RTM_NEWADDR", "RTM_DELADDR") and (address := address_of(msg)) is not None:
            held, key = self.addresses.setdefault(address.index, {}), (address.local, address.prefixlen)
            if event == "RTM_DELADDR" and held.pop(key, None) is not None:
                self._tell("address_removed", address)
            elif event == "RTM_NEWADDR" and held.get(key) != address:
                held[key] = address  # a promoted secondary keeps its place
                self._tell("address_added", address)

    def _tell(self, method: str, *args: Any) -> None:
        """Call `method` of every subscriber; one that raises is logged, the others still hear it."""
        for subscriber in list(self.subscribers):
            try:
                getattr(subscriber, method)(*args)
            except Exception:
                log.exception("links: %s of %s failed", method, type(subscriber).__name__)


_watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LinkWatcher] = weakref.WeakKeyDictionary()


def watcher() -> LinkWatcher:
    """This process's watcher: one per event loop (a process has one; tests run several, one after the other)."""
    return _watchers.setdefault(asyncio.get_running_loop(), LinkWatcher())
