"""Entry point ``forwarder``: the Linux kernel forwarder.

It holds this network namespace's multicast routing socket (`mroute`), so
it is the only multicast routing process here; every routing protocol of
mgmbus forwards through it.  Upcalls are read from the event loop
(``add_reader``), all that are queued per wakeup.  Interfaces come and go
through netlink (pyroute2): a dump at start, then link and address events;
a VIF is added when an owned interface's link appears and forgotten when
it goes away (the kernel removes the VIF with the link).

VIFs and entries are static (added through a second socket, see `mroute`):
when this process dies they stay in the kernel, and forward again as soon
as the next forwarder has done MRT_INIT, which it does first of all and then
adopts them from /proc (`adopt_from_proc`).  A clean stop removes them.  In
a routing table other than the default one /proc shows nothing, so there
the entries belong to the routing socket and go with it, as before.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mgm.plugins.forwarder.mirror import Dataplane, Link, Mirror
from mgm.plugins.forwarder.mroute import (
    RT_TABLE_DEFAULT,
    MrouteError,
    MrouteSocket,
    read_ip_mr_cache,
    read_ip_mr_vif,
)
from mgm.plugins.forwarder.plugin import ForwarderPlugin, Settings

if TYPE_CHECKING:
    from mgm.plugins.context import PluginContext

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000


PROC_VIF = Path("/proc/net/ip_mr_vif")
PROC_MFC = Path("/proc/net/ip_mr_cache")


def adopt_from_proc(mirror: Mirror, vif_path: Path = PROC_VIF, mfc_path: Path = PROC_MFC) -> bool:
    """Give `mirror` the VIFs and entries the kernel holds (a crashed predecessor's); False if /proc is unreadable.

    Read after MRT_INIT, when only static entries can be left: the kernel
    flushed those of any earlier routing socket when it closed.
    """
    try:
        vifs, entries = read_ip_mr_vif(vif_path), read_ip_mr_cache(mfc_path)
    except (OSError, ValueError, IndexError) as exc:
        mirror.log.error("cannot read what the kernel forwards (%s, %s): %r; VIFs and entries a previous forwarder "
                         "left are not adopted, their VIF numbers will be skipped as another process's",
                         vif_path, mfc_path, exc)  # fmt: skip
        return False
    mirror.adopt(vifs, entries)
    return True


def link_of(msg: Any) -> Link:
    """A netlink link message as a `Link` (up means administratively up with carrier)."""
    flags = int(msg["flags"])
    return Link(str(msg.get("ifname")), up=bool(flags & IFF_UP and flags & IFF_LOWER_UP))


class LinuxForwarder(ForwarderPlugin):
    """The kernel forwarder (see the module doc)."""

    label = "forwarder"
    log = logging.getLogger(__name__)

    def __init__(self) -> None:
        super().__init__()
        self.sock: MrouteSocket | None = None
        self._reading = False

    def open_dataplane(self, settings: Settings) -> Dataplane:
        from mgm.plugins.host import PluginLoadError

        static = settings.table in (None, RT_TABLE_DEFAULT)  # where /proc lets a successor adopt them
        try:
            self.sock = MrouteSocket(table=settings.table, wrong_vif=settings.wrong_if, static=static)
        except MrouteError as exc:
            raise PluginLoadError(f"forwarder cannot start: {exc}") from exc
        self.log.info("multicast routing socket open (MRT_INIT done%s; wrong-interface upcalls: %s; entries %s)",
                      "" if settings.table is None else f", table {settings.table}", settings.wrong_if,
                      "static, kept over a crash" if static else "go with the socket")  # fmt: skip
        return self.sock

    def adopt_installed(self, mirror: Mirror) -> None:
        if self.sock is not None and self.sock.static:
            adopt_from_proc(mirror)

    def start_io(self, mgm: PluginContext) -> None:
        assert self.sock is not None
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._readable)
        self._reading = True
        mgm.spawn(self._netlink())

    def stop_io(self) -> None:
        if self.sock is None:
            return
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self._reading = False
        self.sock.close()  # MRT_DONE (mgm_stop has withdrawn the static VIFs and entries)

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            upcalls = self.sock.read_upcalls()
        except OSError as exc:
            self.log.error("reading upcalls: %s", exc)
            return
        if upcalls:
            self.on_upcalls(upcalls)

    async def _netlink(self) -> None:
        """Links and addresses: a dump, then events (subscribed first, so nothing falls in between)."""
        from pyroute2 import AsyncIPRoute
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_LINK

        # pyroute2 logs every netlink message at debug (its import resets its level, hence here); this
        # process's debug log is about forwarding.
        logging.getLogger("pyroute2").setLevel(logging.INFO)
        assert self.mirror is not None
        events = AsyncIPRoute()
        try:
            await events.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR)
            async with AsyncIPRoute() as ipr:
                links = {int(m["index"]): link_of(m) async for m in await ipr.link("dump")}
                async for msg in await ipr.addr("dump", family=socket.AF_INET):
                    link = links.get(int(msg["index"]))
                    if link is not None and msg.get("address"):
                        link.addresses.add(str(msg.get("address")))
            self.mirror.set_links(links)
            self.log.debug("netlink: %d link(s): %s", len(links),
                           ", ".join(f"{i}={link.name}" for i, link in sorted(links.items())))  # fmt: skip
            while True:
                async for msg in events.get():
                    self._netlink_event(msg)
        finally:
            events.close()

    def _netlink_event(self, msg: Any) -> None:
        assert self.mirror is not None
        event = msg.get("event")
        index = int(msg.get("index") or 0)
        links = self.mirror.links or {}
        if event == "RTM_NEWLINK":
            link = link_of(msg)
            before = links.get(index)
            if before is not None:
                link.addresses = before.addresses
            self.mirror.link_changed(index, link)
        elif event == "RTM_DELLINK":
            self.mirror.link_removed(index)
        elif event in ("RTM_NEWADDR", "RTM_DELADDR") and index in links and msg.get("address"):
            address = str(msg.get("address"))
            if event == "RTM_NEWADDR":
                links[index].addresses.add(address)
            else:
                links[index].addresses.discard(address)
