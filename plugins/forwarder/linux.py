"""Entry point ``forwarder``: the Linux kernel forwarder, on one of two backends.

* **mrt**: this network namespace's multicast routing socket (`mroute`),
  the kernel's multicast routing table with its VIFs (32 at most).  Only one
  process per table can hold it, so this is the only multicast routing
  process here; every routing protocol of mgmbus forwards through it.
* **nft**: an nftables table of our own (`nftables`), for kernels built
  without CONFIG_IP_MROUTE, with no ceiling on interfaces; new flows and
  wrong-interface packets arrive through NFLOG (`nflog`).

``backend = "auto"`` (the default) takes MRT where the kernel has it and
nftables where it does not, and says which and why; a backend the kernel
cannot run is reported as that (`PluginUnsupported`), not as a mistake in
the configuration.

Upcalls are read from the event loop (``add_reader``), all that are queued
per wakeup.  Interfaces come and go through the process's link watcher
(`mgm.plugins.links`): a dump at start, then link events; a VIF is added when an owned
interface's link appears and forgotten when it goes away (the kernel
removes the VIF with the link).

MRT VIFs and entries are static (`mroute` says why), so they outlive a
crash: the next forwarder's first act is MRT_INIT, then it adopts them from
/proc (`adopt_from_proc`); a clean stop removes them.  A routing table other
than the default one has no /proc view, so there they go with the routing
socket.  The nftables table is adopted likewise.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from mgm.plugins import links
from mgm.plugins.forwarder.mirror import Dataplane, Entry, Mirror, SgKey
from mgm.plugins.forwarder.mroute import (
    RT_TABLE_DEFAULT,
    VIFF_STATIC,
    VIFF_USE_IFINDEX,
    MrouteError,
    MrouteSocket,
    read_ip_mr_cache,
    read_ip_mr_vif,
)
from mgm.plugins.forwarder.nflog import NflogError, NflogSocket
from mgm.plugins.forwarder.nftables import HeldPackets, NftDataplane, NftError
from mgm.plugins.forwarder.plugin import ForwarderPlugin, Settings

if TYPE_CHECKING:
    from mgm.plugins.context import PluginContext

PROC_VIF = Path("/proc/net/ip_mr_vif")
PROC_MFC = Path("/proc/net/ip_mr_cache")


def adopt_from_proc(mirror: Mirror, vif_path: Path = PROC_VIF, mfc_path: Path = PROC_MFC) -> bool:
    """Give `mirror` the VIFs and entries the kernel holds (a crashed predecessor's); False if /proc is unreadable.

    Read after MRT_INIT, when only static entries can be left: the kernel
    flushed those of any earlier routing socket when it closed.  Ours are
    the VIFs added the way the mirror adds them (by if_index, static: flags
    VIFF_USE_IFINDEX | VIFF_STATIC) and the resolved entries that use no
    other VIF; any other VIF is another process's and only its number is
    avoided.
    """
    try:
        vifs, entries = read_ip_mr_vif(vif_path), read_ip_mr_cache(mfc_path)
    except (OSError, ValueError, IndexError) as exc:
        mirror.log.error("cannot read what the kernel forwards (%s, %s): %r; VIFs and entries a previous forwarder "
                         "left are not adopted, their VIF numbers will be skipped as another process's",
                         vif_path, mfc_path, exc)  # fmt: skip
        return False
    ours: dict[int, int] = {}  # if_index -> vif
    foreign: set[int] = set()
    for proc in sorted(vifs, key=lambda v: v.vif):
        if proc.flags != VIFF_USE_IFINDEX | VIFF_STATIC or proc.local <= 0:
            foreign.add(proc.vif)
            mirror.log.info("VIF %d on %s (flags %#x) is another process's: its number is not used",
                            proc.vif, proc.name, proc.flags)  # fmt: skip
        elif proc.local in ours:
            foreign.add(proc.vif)
            mirror.log.warning("VIF %d on %s: a second VIF on if_index %d (VIF %d adopted); left alone",
                               proc.vif, proc.name, proc.local, ours[proc.local])  # fmt: skip
        else:
            ours[proc.local] = proc.vif
    adopted: dict[SgKey, Entry] = {}
    for entry in (e for e in entries if e.resolved):
        key = (entry.source, entry.group)
        used = {entry.parent, *entry.oifs}
        if used & foreign:
            mirror.log.info("MFC (%s, %s) uses another process's VIF(s) %s: left alone", *key,
                            sorted(used & foreign))  # fmt: skip
            continue
        adopted[key] = Entry(entry.parent, frozenset(entry.oifs))
    mirror.adopt(ours, adopted, foreign)
    return True


def _load_error(exc: OSError, backend: str, *, lacks: bool) -> Exception:
    """The host's error for a backend that cannot start: `PluginUnsupported` where the machine lacks something."""
    from mgm.plugins.host import PluginLoadError, PluginUnsupported

    if lacks:
        return PluginUnsupported(f"forwarder backend {backend}: this machine cannot run it: {exc}")
    return PluginLoadError(f"forwarder backend {backend} cannot start: {exc}")


KERNEL_LACKS = (errno.ENOPROTOOPT, errno.EOPNOTSUPP)
"""MRT_INIT's answers on a kernel built without CONFIG_IP_MROUTE."""


class LinuxForwarder(ForwarderPlugin, links.LinkSubscriber):
    """The kernel forwarder (see the module doc)."""

    log = logging.getLogger(__name__)

    def __init__(self) -> None:
        super().__init__()
        self.backend: str | None = None  # "mrt" or "nft", once open
        self.sock: MrouteSocket | None = None
        self.nft: NftDataplane | None = None
        self.nflog: NflogSocket | None = None
        self._reading: int | None = None  # the fd read from the event loop
        self._batches: asyncio.Event | None = None
        self._adopted: tuple[set[int], dict[SgKey, Entry]] = (set(), {})
        self.held = HeldPackets()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nftables")
        """Every libnftables call but the few at start and stop, one after the other, in the order asked: a
        counter read never lands after a batch that replaced what it read (libnftables releases the GIL)."""

    @property
    def registration_name(self) -> str:
        return f"{self.label} ({self.backend})" if self.backend else self.label

    def open_dataplane(self, settings: Settings) -> Dataplane:
        if settings.backend in ("auto", "mrt"):
            try:
                return self._open_mrt(settings)
            except MrouteError as exc:
                if settings.backend == "mrt" or exc.errno not in KERNEL_LACKS:
                    raise _load_error(exc, "mrt", lacks=exc.errno in KERNEL_LACKS) from exc
                self.log.info("backend auto: %s; forwarding with nftables instead", exc)
        return self._open_nft(settings)

    def _open_mrt(self, settings: Settings) -> Dataplane:
        static = settings.table in (None, RT_TABLE_DEFAULT)  # where /proc lets a successor adopt them
        self.sock = MrouteSocket(table=settings.table, wrong_vif=settings.wrong_if, static=static)
        self.backend = "mrt"
        self.log.info("backend mrt: multicast routing socket open (MRT_INIT done%s; wrong-interface upcalls: %s; "
                      "entries %s)", "" if settings.table is None else f", table {settings.table}", settings.wrong_if,
                      "static, kept over a crash" if static else "go with the socket")  # fmt: skip
        return self.sock

    def _open_nft(self, settings: Settings) -> Dataplane:
        # The NFLOG group first: binding it proves no live instance uses it, so its table is a dead one's.
        try:
            self.nflog = NflogSocket(settings.nflog_group)
        except NflogError as exc:
            raise _load_error(exc, "nft", lacks=exc.errno in (errno.ENOENT, errno.EOPNOTSUPP,
                                                             errno.EPROTONOSUPPORT)) from exc  # fmt: skip
        except OSError as exc:
            raise _load_error(exc, "nft", lacks=True) from exc
        try:
            self.nft = NftDataplane(table=settings.nft_table, nflog_group=settings.nflog_group,
                                    wrong_if=settings.wrong_if)  # fmt: skip
            self._adopted = self.nft.open()
        except NftError as exc:
            self.nflog.close()
            raise _load_error(exc, "nft", lacks=exc.errno == errno.ENOENT) from exc
        self.backend = "nft"
        self.max_vifs = None
        self.log.info("backend nft: nftables table ip %s, new flows and wrong-interface packets through NFLOG group "
                      "%d (wrong-interface reports: %s); no limit on interfaces", settings.nft_table,
                      settings.nflog_group, settings.wrong_if)  # fmt: skip
        return self.nft

    def adopt_installed(self, mirror: Mirror) -> None:
        if self.sock is not None and self.sock.static:
            adopt_from_proc(mirror)
        elif self.nft is not None:
            ifs, entries = self._adopted
            mirror.adopt({i: i for i in ifs}, entries)

    def start_io(self, mgm: PluginContext) -> None:
        loop = asyncio.get_running_loop()
        source = self.sock if self.sock is not None else self.nflog
        assert source is not None
        self._reading = source.fileno()
        loop.add_reader(self._reading, self._readable)
        if self.nft is not None:
            self._batches = asyncio.Event()
            self.nft.on_pending = self._batches.set
            if self.nft.pending or self.nft.pending_ifs:
                self._batches.set()
            mgm.spawn(self._apply_batches())
        links.watcher().subscribe(self)

    def stop_io(self) -> None:
        links.watcher().unsubscribe(self)
        if self._reading is not None:
            asyncio.get_running_loop().remove_reader(self._reading)
            self._reading = None
        if self.sock is not None:
            self.sock.close()  # MRT_DONE (mgm_stop has withdrawn the static VIFs and entries)
        if self.nft is not None:
            self.nft.on_pending = None
            try:
                self.nft.remove()  # mgm_stop withdrew: nothing of ours may forward any more
                self.log.info("nftables table ip %s deleted", self.nft.table)
            except NftError as exc:
                self.log.error("nftables table ip %s not deleted: %s", self.nft.table, exc)
            self.nft.close()
        if self.nflog is not None:
            self.nflog.close()
        self.held.close()
        self._worker.shutdown(wait=True, cancel_futures=True)

    async def read_counters(self) -> None:
        if self.nft is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._worker, self.nft.read_counters)
            except NftError as exc:
                self.log.warning("nftables counters not read: %s", exc)

    async def _apply_batches(self) -> None:
        """Apply queued changes: one transaction per burst, in a worker thread, so the loop keeps serving."""
        assert self._batches is not None and self.nft is not None and self.mirror is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._batches.wait()
            self._batches.clear()
            while (batch := self.nft.take_batch()) is not None:
                self.held.count(batch)
                result = await loop.run_in_executor(self._worker, self.nft.run_batch, batch)
                for key, have in self.nft.commit(batch, result).items():
                    self.mirror.dataplane_failed(key, have)
                if result.error is not None:
                    continue
                now = time.monotonic()
                for key, (have, want) in batch.entries.items():
                    if have is not None and want is not None and key in batch.counters:
                        self.mirror.settle_replaced(key, have.oifs, batch.counters[key])
                    elif have is None and want is not None and self.held.packets:
                        self.held.release(key, want.oifs, now)
                self.log.debug("nftables: %d entr(ies), %d interface(s) changed in one transaction",
                               len(batch.entries), len(batch.ifs_add) + len(batch.ifs_del))  # fmt: skip

    def _readable(self) -> None:
        source = self.sock if self.sock is not None else self.nflog
        assert source is not None
        try:
            upcalls = source.read_upcalls()
        except OSError as exc:
            self.log.error("reading upcalls: %s", exc)
            return
        if not upcalls:
            return
        if self.nft is not None:
            now = time.monotonic()
            for upcall in upcalls:
                if upcall.packet and (upcall.source, upcall.group) not in self.nft.entries:
                    self.held.hold((upcall.source, upcall.group), upcall.packet, now)
        self.on_upcalls(upcalls)

    def dumped(self, watcher: links.LinkWatcher) -> None:
        assert self.mirror is not None
        self.mirror.set_links(watcher.links)
        self.log.debug("netlink: %d link(s): %s", len(watcher.links),
                       ", ".join(f"{i}={link.name}" for i, link in sorted(watcher.links.items())))  # fmt: skip

    def link_changed(self, link: links.Link, before: links.Link | None) -> None:
        assert self.mirror is not None
        self.mirror.link_changed(link.index, link)

    def link_removed(self, link: links.Link) -> None:
        assert self.mirror is not None
        if self.nft is not None and link.index in self.mirror.vifs:
            self.nft.del_vif(link.index)  # the kernel drops an MRT VIF with its link; our set keeps the index
        self.mirror.link_removed(link.index)
