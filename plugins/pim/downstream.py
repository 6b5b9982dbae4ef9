"""PIM-SM downstream join state, per interface (RFC 7761 4.5.2 for (*,G), 4.5.3 for (S,G)).  No I/O: the
plugin feeds it the Join/Prune messages addressed to us and the time, and turns its events into MGM
memberships on the interface (so the manager puts the interface in the outgoing lists) and into upstream
joins of our own.

Per (interface, entry) the states are NoInfo (absent here), Join and PrunePending:

* a Join makes or keeps Join; its Expiry Timer runs to the larger of what is left and the message's
  holdtime (0xFFFF: for ever);
* a Prune in Join makes PrunePending for J/P_Override_Interval(I) when the link has other PIM
  neighbours (one of them may override it with a Join), at once NoInfo when we are alone with the
  sender;
* the Prune-Pending Timer or the Expiry Timer running out makes NoInfo.

Events: ("joined", if_index, key) when an entry leaves NoInfo, ("pruned", if_index, key) when it returns.

Not kept: (S,G,rpt) state (a Prune of S on the shared tree is counted and ignored: this interface keeps
getting S's packets from the shared tree), PruneEcho, and group ranges other than one group (mask 32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mgm.plugins.pim.packet import JoinPrune
from mgm.plugins.pim.upstream import Key

JOIN, PRUNE_PENDING = "Join", "PrunePending"
HOLDTIME_FOREVER = 0xFFFF


@dataclass(slots=True)
class DownstreamEntry:
    state: str
    expires: float
    """The Expiry Timer."""
    prune_pending: float = math.inf
    """The Prune-Pending Timer (PrunePending only)."""


class Downstream:
    def __init__(self) -> None:
        self.entries: dict[tuple[int, Key], DownstreamEntry] = {}
        self.ignored: dict[str, int] = {}
        """What the messages asked that we do not keep, counted: "rpt_prune", "rpt_join", "group_range"."""
        self._events: list[tuple[str, int, Key]] = []

    def receive(self, if_index: int, message: JoinPrune, now: float, *, override_interval: float) -> None:
        """A Join/Prune whose upstream neighbour is us, heard on `if_index`.  `override_interval` is
        J/P_Override_Interval(I) when the link has other neighbours than the sender, else 0."""
        holdtime = math.inf if message.holdtime == HOLDTIME_FOREVER else float(message.holdtime)
        for entry in message.groups:
            if entry.group.mask_len != 32:
                self._ignore("group_range")
                continue
            group = entry.group.address
            for source in entry.joins:
                if source.rpt and not source.wildcard:
                    self._ignore("rpt_join")  # (S,G,rpt) Join: undoes an (S,G,rpt) prune we never kept
                    continue
                self._join((if_index, (None if source.wildcard else source.address, group)), now + holdtime)
            for source in entry.prunes:
                if source.rpt and not source.wildcard:
                    self._ignore("rpt_prune")
                    continue
                self._prune((if_index, (None if source.wildcard else source.address, group)), now,
                            override_interval)  # fmt: skip

    def _join(self, where: tuple[int, Key], expires: float) -> None:
        entry = self.entries.get(where)
        if entry is None:
            self.entries[where] = DownstreamEntry(JOIN, expires)
            self._events.append(("joined", *where))
            return
        entry.state, entry.prune_pending = JOIN, math.inf
        entry.expires = max(entry.expires, expires)

    def _prune(self, where: tuple[int, Key], now: float, override_interval: float) -> None:
        entry = self.entries.get(where)
        if entry is None or entry.state == PRUNE_PENDING:
            return
        entry.state, entry.prune_pending = PRUNE_PENDING, now + override_interval

    def _ignore(self, what: str) -> None:
        self.ignored[what] = self.ignored.get(what, 0) + 1

    def tick(self, now: float) -> None:
        """Run the timers: what is due by `now` returns to NoInfo."""
        for where, entry in list(self.entries.items()):
            if entry.expires <= now or entry.prune_pending <= now:
                self._drop(where)

    def forget_interface(self, if_index: int) -> None:
        """The interface stops running PIM: all its state goes."""
        for where in [w for w in self.entries if w[0] == if_index]:
            self._drop(where)

    def _drop(self, where: tuple[int, Key]) -> None:
        del self.entries[where]
        self._events.append(("pruned", *where))

    def next_deadline(self) -> float:
        return min((min(e.expires, e.prune_pending) for e in self.entries.values()), default=math.inf)

    def take_events(self) -> list[tuple[str, int, Key]]:
        events, self._events = self._events, []
        return events
