"""The forwarder's bookkeeping, without I/O: the manager's MFEs mirrored onto a dataplane.

`Mirror` holds two pictures and keeps the second equal to what the first
asks for:

* what the manager says (from the ``state`` stream): which interfaces are
  owned (each gets a VIF) and which MFEs exist;
* what the dataplane has: the VIFs and MFC entries this process installed.

Every change of the first (an event, a resync snapshot, a link appearing or
going away) ends in `_sync_vifs` / `_sync_entry`, which compute the wanted
dataplane state and apply only the difference.  A resync therefore never
flushes: entries that are right stay untouched and keep forwarding.

The dataplane is the kernel (`mroute.MrouteSocket`) for the Linux forwarder
and an in-memory one for the simulated forwarder; both satisfy `Dataplane`.

A restarted forwarder.  The Linux forwarder's VIFs and entries are static
(`mroute`): a forwarder that crashed leaves them in the kernel, where they
forward again as soon as its successor has done MRT_INIT.  The successor
`adopt`s them before it even reaches the manager: they count as installed,
so nothing is flushed and added again while the manager is unreachable, and
they stay untouched until the first resync, which reconciles them like any
other (entries that are right stay, the others are updated or deleted).  A
clean stop `withdraw`s everything, since the kernel would not.

Counters.  The kernel counts per MFC entry (packets, bytes, wrong
interface) and per VIF, but not per (entry, outgoing VIF).  The per-OIL
``out_packets`` we report are derived: the packets that matched the entry
while that interface was in its installed output list (the counters are
read, to settle the attribution, before each change of the list).  They
equal what was sent except packets whose TTL was at or below the VIF's
threshold (1), which the kernel counts but does not forward.
"""

from __future__ import annotations

import errno
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from mgm.core.types import ANY, IGMP_PROTOCOL_ID, ClientId, Interface, is_link_local
from mgm.plugins.forwarder.mroute import IGMPMSG_NOCACHE, IGMPMSG_WRONGVIF, MAXVIFS, MrouteError, SgCount, Upcall
from mgm.plugins.links import Link

SgKey = tuple[str, str]
"""(source, group) as dotted strings: the key of an MFE and of an MFC entry."""


class Dataplane(Protocol):
    """What the mirror needs from a forwarding plane (the kernel's or a simulated one)."""

    def add_vif(self, vifi: int, if_index: int, *, threshold: int = 1) -> None: ...
    def del_vif(self, vifi: int) -> None: ...
    def add_mfc(self, source: str, group: str, parent: int, oifs: Mapping[int, int] | Iterable[int] = ()) -> None: ...
    def del_mfc(self, source: str, group: str) -> None: ...
    def sg_count(self, source: str, group: str) -> SgCount | None: ...


@dataclass(frozen=True, slots=True)
class Entry:
    """An MFC entry as installed: incoming VIF and outgoing VIFs."""

    parent: int
    oifs: frozenset[int]


@dataclass(slots=True)
class _Owners:
    routing: ClientId | None = None
    igmp: bool = False


NO_COUNT = SgCount(0, 0, 0)


@dataclass(slots=True)
class _Counts:
    last: SgCount = NO_COUNT  # immutable: one shared start for every entry
    out: Counter[int] = field(default_factory=Counter)  # if_index -> packets attributed


def sg_of(mfe: Mapping[str, Any]) -> SgKey:
    return str(mfe["source"]), str(mfe["group"])


class Mirror:
    """The manager's MFEs and interfaces, mirrored onto a `Dataplane` (see the module doc)."""

    def __init__(self, dataplane: Dataplane, log: logging.Logger, *, max_vifs: int | None = MAXVIFS) -> None:
        self.dataplane = dataplane
        self.log = log
        self.max_vifs = max_vifs
        """How many VIF numbers the dataplane has; None: it has no VIF numbers and takes the if_index as one."""
        self.owners: dict[Interface, _Owners] = {}
        self.mfes: dict[SgKey, Mapping[str, Any]] = {}
        self.vifs: dict[int, int] = {}  # if_index -> vif
        self.links: dict[int, Link] | None = None  # None until netlink has told us (assume links exist)
        self.installed: dict[SgKey, Entry] = {}
        self.counts: dict[SgKey, _Counts] = {}
        self.requested: set[SgKey] = set()  # new_packet in flight
        self.stale: set[SgKey] = set()  # installed, unknown to the manager, deletion deferred
        self.kept_vifs: set[int] = set()  # if_indexes whose VIF outlives a manager restart until the grace ends
        self.foreign_vifs: set[int] = set()  # VIF numbers in use by another process
        self.adopted: set[SgKey] = set()  # taken over from a previous forwarder, untouched until the first resync
        self.resynced = False
        self._warned: set[tuple[str, object]] = set()

    # --- a predecessor's entries, and leaving ------------------------------------------------------------------

    def adopt(self, vifs: Mapping[int, int], entries: Mapping[SgKey, Entry], foreign_vifs: Iterable[int] = ()) -> None:
        """Take what a previous forwarder left on the dataplane as installed: `vifs` (if_index -> VIF) and
        `entries`; `foreign_vifs` are VIF numbers another process holds, never to be used.

        Until the first resync the adopted VIFs stay wanted and the adopted
        entries are left alone (the manager's picture is not known yet); the
        resync then reconciles them.  The per-interface ``out_packets`` of an
        adopted entry start from its whole packet count, as if its output
        list had never changed.
        """
        assert not self.resynced, "adopt before the first resync"
        self.foreign_vifs |= set(foreign_vifs)
        self.vifs.update(vifs)
        self.kept_vifs |= set(vifs)
        self.installed.update(entries)
        self.counts.update((key, _Counts()) for key in entries)
        self.adopted |= set(entries)
        if vifs or self.adopted:
            names = ", ".join(
                self.name(i) if vif == i else f"{vif} on {self.name(i)}" for i, vif in sorted(vifs.items())
            )
            self.log.info("adopted what a previous forwarder left on the dataplane: %d interface(s) (%s), "
                          "%d entr(ies); they forward as they are until the manager's picture arrives",
                          len(vifs), names, len(self.adopted))  # fmt: skip

    def withdraw(self) -> None:
        """Delete every entry and VIF this forwarder holds: on a clean stop (the kernel keeps static ones)."""
        entries, vifs = len(self.installed), len(self.vifs)
        for key in sorted(self.installed):
            try:
                self.dataplane.del_mfc(*key)
            except MrouteError as exc:
                if exc.errno != errno.ENOENT:
                    self.log.warning("MFC (%s, %s): %s", *key, exc)
        for if_index, vif in sorted(self.vifs.items()):
            try:
                self.dataplane.del_vif(vif)
            except MrouteError as exc:
                self.log.warning("VIF %d of %s: %s", vif, self.name(if_index), exc)
        self.installed.clear()
        self.counts.clear()
        self.vifs.clear()
        self.stale.clear()
        self.adopted.clear()
        self.kept_vifs = set()
        if entries or vifs:
            self.log.info("withdrawn: %d MFC entr(ies) and %d VIF(s) removed from the kernel", entries, vifs)

    # --- the manager's side ---------------------------------------------------------------------

    def resync(self, state: Mapping[str, Any], *, defer_stale: bool = False) -> None:
        """Replace the manager's picture by a snapshot and converge: add, update, delete; never flush.

        With `defer_stale` (the manager restarted and is still being told
        everything again) entries it does not know yet stay installed until
        `stale_requests`, so traffic keeps flowing meanwhile.
        """
        self.owners = {}
        for entry in state.get("interfaces", []):
            iface = Interface(int(entry["if_index"]), str(entry.get("next_hop", ANY)))
            owner = entry.get("owner")
            owners = _Owners(igmp=bool(entry.get("igmp")))
            if owner is not None and int(owner["protocol_id"]) == IGMP_PROTOCOL_ID:
                owners.igmp = True  # IGMP alone: the snapshot names it as the owner
            elif owner is not None:
                owners.routing = ClientId(int(owner["protocol_id"]), int(owner["component_id"]))
            if owners.routing is not None or owners.igmp:
                self.owners[iface] = owners
        self.mfes = {sg_of(m): m for m in state.get("mfes", [])}
        self.requested.clear()  # the kernel upcalls again for what is still unresolved
        self.resynced = True
        self.adopted.clear()  # reconciled below like everything else
        stale = set(self.installed) - set(self.mfes)
        self.stale = stale if defer_stale else set()
        # The new manager's first snapshot may come before the owners took their interfaces again:
        # removing those VIFs would drop packets of the entries kept above, so they stay until the grace ends.
        self.kept_vifs = set(self.vifs) - {iface.if_index for iface in self.owners} if self.stale else set()
        self._sync_vifs(resync_entries=False)
        for key in sorted(set(self.installed) | set(self.mfes)):
            if key not in self.stale:
                self._sync_entry(key)
        self.log.info("resync: %d interface(s), %d VIF(s), %d MFE(s), %d MFC entr(ies) installed%s",
                      len(self.owners), len(self.vifs), len(self.mfes), len(self.installed),
                      f", {len(self.stale)} kept until the manager is complete" if self.stale else "")  # fmt: skip

    def stale_requests(self) -> list[dict[str, Any]]:
        """The restart grace is over: ``new_packet`` args for each kept entry the manager still lacks.

        The entry keeps forwarding while the manager builds the MFE again
        from the memberships replayed meanwhile; its ``mfe_created`` then
        replaces the entry in place.  `forget` removes an entry whose
        request was refused.  Entries whose incoming VIF is gone are deleted now.
        """
        by_vif = {v: i for i, v in self.vifs.items()}
        args = []
        for key in sorted(self.stale):
            entry = self.installed.get(key)
            if key in self.mfes or entry is None:
                self.stale.discard(key)
                continue
            if_index = by_vif.get(entry.parent)
            if if_index is None:
                self.forget(key)
                continue
            self.requested.add(key)
            args.append({"source": key[0], "group": key[1], "if_index": if_index, "next_hop": ANY})
        if self.kept_vifs:
            self.kept_vifs = set()
            self._sync_vifs()  # the VIFs of interfaces still nobody's go now
        return args

    def forget(self, key: SgKey) -> None:
        """Delete a kept entry the manager does not want (its new_packet was refused)."""
        self.stale.discard(key)
        if key not in self.mfes:
            self._sync_entry(key)

    def apply(self, event: Mapping[str, Any]) -> None:
        """One ``state`` stream event."""
        etype = event.get("type")
        if etype in ("mfe_created", "mfe_updated", "mfe_deleted"):
            key = sg_of(event["mfe"])
            if etype == "mfe_deleted":
                self.mfes.pop(key, None)
            else:
                self.mfes[key] = event["mfe"]
                self.requested.discard(key)
            self.stale.discard(key)
            self.adopted.discard(key)
            self._sync_entry(key)
        elif etype in ("interface_owned", "interface_released"):
            iface = Interface(int(event["if_index"]), str(event.get("next_hop", ANY)))
            owners = self.owners.setdefault(iface, _Owners())
            client = ClientId(int(event["protocol_id"]), int(event["component_id"]))
            owned = etype == "interface_owned"
            if client.protocol_id == IGMP_PROTOCOL_ID:
                owners.igmp = owned
            else:
                owners.routing = client if owned else None
            if owners.routing is None and not owners.igmp:
                del self.owners[iface]
            self._sync_vifs()

    # --- links (netlink, or nothing for the simulated plane) -------------------------------------------

    def set_links(self, links: Mapping[int, Link]) -> None:
        """The full list of links (a netlink dump)."""
        self.links = dict(links)
        self._sync_vifs()

    def link_changed(self, if_index: int, link: Link) -> None:
        if self.links is None:
            self.links = {}
        before = self.links.get(if_index)
        self.links[if_index] = link
        if (before is None or before.up != link.up) and if_index in self._wanted_vifs():
            self.log.info("interface %s (if_index %d) is %s", link.name, if_index, "up" if link.up else "down")
        if before is None:
            self._sync_vifs()

    def link_removed(self, if_index: int) -> None:
        """The link is gone, and the kernel removed its VIF with it."""
        if self.links is not None:
            self.links.pop(if_index, None)
        vif = self.vifs.pop(if_index, None)
        if vif is not None:
            self.log.warning("interface %d went away: VIF %d is gone with it", if_index, vif)
            self._sync_all()

    def name(self, if_index: int) -> str:
        link = None if self.links is None else self.links.get(if_index)
        return f"{link.name} (if_index {if_index})" if link else f"if_index {if_index}"

    # --- upcalls -----------------------------------------------------------------------------------

    def upcall(self, upcall: Upcall) -> tuple[str, dict[str, Any]] | None:
        """The request an upcall turns into (op, args without the handle), or None."""
        if_index = next((i for i, v in self.vifs.items() if v == upcall.vif), None)
        key = (upcall.source, upcall.group)
        if if_index is None:
            self.log.debug("%s upcall on unknown VIF %d ignored", upcall.kind_name, upcall.vif)
            return None
        if is_link_local(upcall.group):
            return None
        args = {"source": upcall.source, "group": upcall.group, "if_index": if_index, "next_hop": ANY}
        if upcall.kind == IGMPMSG_NOCACHE:
            if key in self.mfes:
                # We have the MFE: the packet raced our install, or the kernel lost the entry.
                self._reinstall(key)
                return None
            if key in self.requested:
                return None
            self.requested.add(key)
            self.log.debug("new (%s, %s) on %s: asking the manager", *key, self.name(if_index))
            return "new_packet", args
        if upcall.kind == IGMPMSG_WRONGVIF and key in self.mfes:
            return "wrong_interface", args
        return None

    def request_done(self, key: SgKey) -> None:
        self.requested.discard(key)

    # --- counters -----------------------------------------------------------------------------------

    def counters(self) -> list[dict[str, Any]]:
        """The ``mfe_counters`` entries for every installed entry the manager knows."""
        entries = []
        for key in sorted(self.installed):
            mfe = self.mfes.get(key)
            if mfe is None or (counts := self._settle(key)) is None:
                continue
            oil = [
                {"if_index": int(o["if_index"]), "next_hop": str(o.get("next_hop", ANY)),
                 "out_packets": counts.out.get(int(o["if_index"]), 0)}
                for o in mfe.get("oil", [])
            ]  # fmt: skip
            entries.append({"source": key[0], "group": key[1], "in_packets": counts.last.packets,
                            "in_bytes": counts.last.bytes, "wrong_if_packets": counts.last.wrong_if,
                            "oil": oil})  # fmt: skip
        return entries

    def _settle(self, key: SgKey) -> _Counts | None:
        """Read the entry's counters and attribute the new packets to its current output list."""
        entry = self.installed.get(key)
        if entry is None:
            return None
        try:
            now = self.dataplane.sg_count(*key)
        except MrouteError as exc:
            self.log.warning("counters of (%s, %s): %s", *key, exc)
            return None
        counts = self.counts.setdefault(key, _Counts())
        if now is None:
            return counts
        delta = now.packets - counts.last.packets
        if delta < 0:  # the entry was re-created underneath us: its counters restarted
            delta = now.packets
        if delta:
            by_vif = {v: i for i, v in self.vifs.items()}
            counts.out.update({by_vif[vif]: delta for vif in entry.oifs if vif in by_vif})
        counts.last = now
        return counts

    # --- converging -----------------------------------------------------------------------------------

    def _wanted_vifs(self) -> set[int]:
        return {iface.if_index for iface in self.owners} | self.kept_vifs

    def _sync_vifs(self, *, resync_entries: bool = True) -> None:
        wanted = self._wanted_vifs()
        changed = False
        for if_index in sorted(set(self.vifs) - wanted):
            vif = self.vifs.pop(if_index)
            changed = True
            try:
                self.dataplane.del_vif(vif)
                self.log.info("VIF %d removed from %s (no longer owned)", vif, self.name(if_index))
            except MrouteError as exc:
                self.log.warning("VIF %d of %s: %s", vif, self.name(if_index), exc)
        for if_index in sorted(wanted - set(self.vifs)):
            if self.links is not None and if_index not in self.links:  # None: netlink has not spoken yet
                self._warn_once("nolink", if_index, "interface %d is owned but does not exist here; "
                                "its VIF is added when it appears", if_index)  # fmt: skip
                continue
            added = self._add_vif(if_index)
            if added is not None:
                self.vifs[if_index] = added
                self._warned.discard(("nolink", if_index))
                changed = True
                self.log.info("VIF %d added on %s", added, self.name(if_index))
        if changed and resync_entries:
            self._sync_all()

    def _add_vif(self, if_index: int) -> int | None:
        """Add a VIF on the lowest free number; numbers another process holds (static VIFs) are skipped."""
        if self.max_vifs is None:
            candidates: Iterable[int] = (if_index,)
        else:
            used = set(self.vifs.values()) | self.foreign_vifs
            candidates = (vif for vif in range(self.max_vifs) if vif not in used)
        for vif in candidates:
            try:
                self.dataplane.add_vif(vif, if_index)
                return vif
            except MrouteError as exc:
                if exc.errno == errno.EADDRINUSE:
                    self.log.warning("VIF %d is taken by another process (a static VIF?); trying the next", vif)
                    self.foreign_vifs.add(vif)
                    continue
                level = logging.WARNING if exc.errno == errno.ENODEV else logging.ERROR
                self.log.log(level, "VIF for %s not added: %s", self.name(if_index), exc)
                return None
        if self.max_vifs is not None:
            self._warn_once("full", if_index, "no free VIF for %s: the kernel has %d at most",
                            self.name(if_index), self.max_vifs)  # fmt: skip
        return None

    def _sync_all(self) -> None:
        for key in sorted(set(self.installed) | set(self.mfes)):
            if key not in self.stale and key not in self.adopted:
                self._sync_entry(key)

    def _wanted(self, key: SgKey) -> Entry | None:
        mfe = self.mfes.get(key)
        if mfe is None:
            return None
        source, group = key
        if source == ANY or is_link_local(group):
            self._warn_once("skip", key, "MFE (%s, %s) is not installed: the kernel keys entries by (S,G) "
                            "and link-local groups never leave their link", source, group)  # fmt: skip
            return None
        in_if = int(mfe["in_if_index"])
        parent = self.vifs.get(in_if)
        if parent is None:
            self._warn_once("noparent", key, "MFE (%s, %s) waits for a VIF on its incoming %s",
                            source, group, self.name(in_if))  # fmt: skip
            return None
        oifs = set()
        for out in mfe.get("oil", []):
            vif = self.vifs.get(int(out["if_index"]))
            if vif is None:
                self._warn_once("nooif", (key, int(out["if_index"])), "MFE (%s, %s): outgoing %s has no VIF yet",
                                source, group, self.name(int(out["if_index"])))  # fmt: skip
            elif vif != parent:
                oifs.add(vif)
        return Entry(parent, frozenset(oifs))

    def _sync_entry(self, key: SgKey) -> None:
        wanted = self._wanted(key)
        have = self.installed.get(key)
        if wanted == have:
            return
        try:
            if wanted is None:
                assert have is not None
                self.dataplane.del_mfc(*key)
                del self.installed[key]
                self.counts.pop(key, None)
                self.log.info("MFC (%s, %s) deleted", *key)
                return
            if have is not None:
                self._settle(key)  # attribute what came so far to the list in force until now
            self.dataplane.add_mfc(key[0], key[1], wanted.parent, sorted(wanted.oifs))
        except MrouteError as exc:
            if wanted is None and exc.errno == errno.ENOENT:
                self.installed.pop(key, None)  # already gone (e.g. its VIF's link went away)
                return
            self.log.error("MFC (%s, %s): %s", *key, exc)
            return
        if have is None:
            self.counts[key] = _Counts()
        self.installed[key] = wanted
        if self.log.isEnabledFor(logging.INFO):  # a burst of 100k entries need not build 100k lines nobody reads
            by_vif = {v: i for i, v in self.vifs.items()}
            out = ", ".join(self.name(by_vif[v]) for v in sorted(wanted.oifs)) or "nothing (negative)"
            self.log.info("MFC (%s, %s) %s: in %s, out %s", *key, "updated" if have else "installed",
                          self.name(by_vif[wanted.parent]), out)  # fmt: skip

    def settle_replaced(self, key: SgKey, oifs: Iterable[int], count: SgCount) -> None:
        """A batch replaced the entry's output list `oifs` (VIFs) when its counters stood at `count`: what came
        since the last settle went out of those (for dataplanes that change entries after the call returned)."""
        counts = self.counts.setdefault(key, _Counts())
        delta = count.packets - counts.last.packets
        if delta > 0:
            by_vif = {v: i for i, v in self.vifs.items()}
            counts.out.update({by_vif[vif]: delta for vif in oifs if vif in by_vif})
        counts.last = count

    def dataplane_failed(self, key: SgKey, have: Entry | None) -> None:
        """A deferred change of `key` did not reach the dataplane, which holds `have`: believe it.

        For dataplanes that apply changes in batches after the call
        returned (nftables).  The next change of the entry, or a resync,
        tries again.
        """
        if have is None:
            self.installed.pop(key, None)
            self.counts.pop(key, None)
        else:
            self.installed[key] = have
            self.counts.setdefault(key, _Counts())

    def _reinstall(self, key: SgKey) -> None:
        """Add the entry again as we believe it is installed (an update where it is; counters kept)."""
        entry = self.installed.get(key)
        if entry is None:
            self._sync_entry(key)
            return
        self.log.info("packet of known MFE (%s, %s) missed the forwarding cache: adding the entry again", *key)
        try:
            self.dataplane.add_mfc(key[0], key[1], entry.parent, sorted(entry.oifs))
        except MrouteError as exc:
            self.log.error("MFC (%s, %s): %s", *key, exc)

    def _warn_once(self, kind: str, what: object, msg: str, *args: object) -> None:
        if (kind, what) not in self._warned:
            self._warned.add((kind, what))
            self.log.warning(msg, *args)
