"""PIM-SM upstream join state (RFC 7761 4.5.6 and 4.5.7, simplified): which joins and prunes go to which
neighbour, and when.  No I/O: the plugin says what it wants and where its RPF neighbours are, and sends
the `JoinPrune` messages `tick` returns.

An entry is (*,G), joined towards the group's RP (the Join carries the RP with the W and R bits), or
(S,G), joined towards S.  Kept here:

* JoinDesired becomes true: a Join to RPF' at once, then one every `join_prune_interval` (t_periodic)
  with a holdtime of 3.5 times that; false: a Prune to the last RPF', and the entry goes.
* RPF' changes (a route change, a neighbour that comes or goes): a Join to the new neighbour, a Prune to
  the old one (4.5.7 "RPF'(S,G) changes").  No RPF' (no route, or no PIM neighbour there): nothing is
  sent until there is one.
* A neighbour that restarted (new generation ID) lost our joins: they are sent again at once.
* What is due in one `tick` goes out packed (4.9.5): per neighbour, as many groups and sources as fit in
  `MAX_MESSAGE` octets, a group whose sources do not fit carried on in the next message.

* On a LAN, what other routers send to our RPF' counts (4.5.7, `overheard`): their Join of an entry we
  join too suppresses our next periodic Join for t_suppressed (1.1 to 1.4 times the period, at most their
  holdtime), and their Prune of it makes us override with a Join within t_override (at most the link's
  override interval).

* (S,G,rpt) (4.5.9, simplified): while an (S,G) entry is joined through another neighbour than its
  group's (*,G), S is pruned off the shared tree: an (S,G,rpt) Prune rides in every periodic (*,G) Join
  to RPF'(*,G), right after it.  Not in the first (*,G) Join after the (S,G) join, but from the next
  periodic one, so the shortest-path tree has a join/prune interval to form (the RFC waits for the SPT
  bit, a packet on the new tree, which this plugin does not see).  When the (S,G) entry goes, or comes
  to share the (*,G)'s neighbour, a triggered (*,G) Join with an (S,G,rpt) Join takes S back on the
  shared tree at once.

Not yet: the upstream half of asserts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from mgm.plugins.pim.packet import EncodedGroup, EncodedSource, JoinPrune, JoinPruneGroup

JOIN_PRUNE_INTERVAL = 60.0
MAX_MESSAGE = 1400
"""Octets of PIM message (header included) a Join/Prune may take: with the IP header and room for
tunnels it stays below an Ethernet MTU, so nothing is ever fragmented."""
_FIXED, _PER_GROUP, _PER_SOURCE = 14, 12, 8
"""Join/Prune sizes (4.9.5): header, upstream neighbour and counts; a group and its two counts; a source."""
_MAX_GROUPS = 255
"""The message's group count is one octet."""

Key = tuple[str | None, str]
"""(source, group); source None for (*,G)."""
Rpf = tuple[int, str]
"""(if_index, neighbour address)."""


@dataclass(slots=True)
class Entry:
    key: Key
    target: str
    """The address joined towards: the RP of a (*,G), S of an (S,G)."""
    rpf: Rpf | None
    next_join: float
    since: float = math.inf
    """When it was last joined through a new RPF'."""


@dataclass(slots=True)
class _Batch:
    joins: dict[Key, str] = field(default_factory=dict)
    prunes: dict[Key, str] = field(default_factory=dict)
    rpt: dict[Key, bool] = field(default_factory=dict)
    """(S,G,rpt) entries: True for a Prune, False for a Join; each goes with its group's (*,G) Join."""


class Upstream:
    def __init__(self, join_prune_interval: float = JOIN_PRUNE_INTERVAL, rng: random.Random | None = None) -> None:
        self.interval = join_prune_interval
        self._rng = rng or random.Random()
        self.holdtime = min(0xFFFE, round(3.5 * join_prune_interval))
        self.entries: dict[Key, Entry] = {}
        self._due: dict[Rpf, _Batch] = {}
        self.rpt_pruned: dict[Key, Rpf] = {}
        """The (S,G) pruned off the shared tree, and the (*,G)'s RPF' it was pruned at."""

    def want(self, key: Key, target: str, rpf: Rpf | None, now: float) -> None:
        """JoinDesired(key) is true, towards `target` through `rpf` (None: no RPF' now)."""
        entry = self.entries.get(key)
        if entry is None:
            self.entries[key] = entry = Entry(key, target, None, math.inf)
        if entry.rpf == rpf and entry.target == target:
            return
        if entry.rpf is not None:
            self._queue(entry.rpf, key, entry.target, join=False)
        entry.rpf, entry.target = rpf, target
        if rpf is None:
            entry.next_join = math.inf
        else:
            self._queue(rpf, key, target, join=True)
            entry.next_join = now + self.interval
            entry.since = now

    def unwant(self, key: Key) -> None:
        """JoinDesired(key) is false: prune it where it was joined."""
        entry = self.entries.pop(key, None)
        if entry is not None and entry.rpf is not None:
            self._queue(entry.rpf, key, entry.target, join=False)

    def neighbor_restarted(self, rpf: Rpf, now: float) -> None:
        for entry in self.entries.values():
            if entry.rpf == rpf:
                self._queue(rpf, entry.key, entry.target, join=True)
                entry.next_join = now + self.interval

    def overheard(self, rpf: Rpf, message: JoinPrune, now: float, override_interval: float) -> None:
        """Another router's Join/Prune to `rpf` (our RPF' for some entries) on its link."""
        holdtime = math.inf if message.holdtime == 0xFFFF else message.holdtime
        suppress = min(self._rng.uniform(1.1, 1.4) * self.interval, holdtime)
        for entry_group in message.groups:
            group = entry_group.group.address
            for joined, sources in ((True, entry_group.joins), (False, entry_group.prunes)):
                for source in sources:
                    if source.rpt and not source.wildcard:
                        continue  # (S,G,rpt): we keep no such entry
                    entry = self.entries.get((None if source.wildcard else source.address, group))
                    if entry is None or entry.rpf != rpf:
                        continue
                    if joined:  # see Join: suppress ours
                        entry.next_join = max(entry.next_join, now + suppress)
                    else:  # see Prune: override it
                        entry.next_join = min(entry.next_join, now + self._rng.uniform(0, override_interval))

    def tick(self, now: float) -> list[tuple[Rpf, JoinPrune]]:
        """The messages due by `now`, each with the (interface, neighbour) it goes to."""
        periodic: set[Key] = set()
        for entry in self.entries.values():
            if entry.rpf is not None and entry.next_join <= now:
                self._queue(entry.rpf, entry.key, entry.target, join=True)
                entry.next_join = now + self.interval
                periodic.add(entry.key)
        self._shared_tree_prunes(periodic, now)
        due, self._due = self._due, {}
        return [(rpf, message) for rpf, batch in sorted(due.items()) for message in self._pack(rpf[1], batch)]

    def _shared_tree_prunes(self, periodic: set[Key], now: float) -> None:
        """Which (S,G) are pruned off the shared tree (PruneDesired(S,G,rpt)): put their (S,G,rpt) Prunes in the
        (*,G) Joins going out now; take back, with an (S,G,rpt) Join, those no longer pruned."""
        for key, pruned_at in list(self.rpt_pruned.items()):
            star = self.entries.get((None, key[1]))
            entry = self.entries.get(key)
            if star is None or star.rpf != pruned_at or entry is None or entry.rpf in (None, star.rpf):
                del self.rpt_pruned[key]
                if star is not None and star.rpf == pruned_at:  # S back on the shared tree, now
                    self._queue(pruned_at, star.key, star.target, join=True)
                    self._due[pruned_at].rpt[key] = False
                # else the (*,G) left that neighbour: its (*,G) Prune there ends our (S,G,rpt) state too
        stars = {key[1]: self.entries[key] for key in periodic if key[0] is None}
        if stars:
            settled = now - self.interval / 2
            for key, entry in self.entries.items():
                star = stars.get(key[1])
                if (star is not None and star.rpf is not None and key[0] is not None
                        and entry.rpf not in (None, star.rpf) and entry.since <= settled):  # fmt: skip
                    self.rpt_pruned[key] = star.rpf
        for key, pruned_at in self.rpt_pruned.items():
            batch = self._due.get(pruned_at)
            if batch is not None and (None, key[1]) in batch.joins:
                batch.rpt[key] = True

    def next_deadline(self) -> float:
        if self._due:
            return -math.inf
        return min((e.next_join for e in self.entries.values()), default=math.inf)

    def _queue(self, rpf: Rpf, key: Key, target: str, *, join: bool) -> None:
        batch = self._due.setdefault(rpf, _Batch())
        (batch.joins if join else batch.prunes)[key] = target
        (batch.prunes if join else batch.joins).pop(key, None)  # the later of the two wins

    def _pack(self, neighbor: str, batch: _Batch) -> list[JoinPrune]:
        # per group: the (*,G) Join, its (S,G,rpt) entries, the other joins, the prunes, in that order, so that
        # a group split over two messages keeps its (S,G,rpt) entries beside the (*,G) Join (4.5.2)
        groups: dict[str, list[tuple[bool, EncodedSource]]] = {}
        for joined, entries in ((True, batch.joins), (False, batch.prunes)):
            for (source, group), target in sorted(entries.items(), key=lambda kv: (kv[0][1], kv[0][0] or "")):
                sources = groups.setdefault(group, [])
                if source is None:
                    sources.insert(0, (joined, EncodedSource(target, wildcard=True, rpt=True)))
                    if joined:
                        sources[1:1] = [(not pruned, EncodedSource(s, rpt=True)) for (s, g), pruned
                                        in sorted(batch.rpt.items()) if g == group and s is not None]  # fmt: skip
                else:
                    sources.append((joined, EncodedSource(source)))
        messages: list[JoinPrune] = []
        packed: list[JoinPruneGroup] = []
        room = MAX_MESSAGE - _FIXED

        def close() -> None:
            nonlocal packed, room
            messages.append(JoinPrune(neighbor, self.holdtime, tuple(packed)))
            packed, room = [], MAX_MESSAGE - _FIXED

        for group, sources in groups.items():
            while sources:
                if room < _PER_GROUP + _PER_SOURCE or len(packed) == _MAX_GROUPS:
                    close()
                fits = (room - _PER_GROUP) // _PER_SOURCE
                part, sources = sources[:fits], sources[fits:]
                packed.append(JoinPruneGroup(EncodedGroup(group), tuple(s for joined, s in part if joined),
                                             tuple(s for joined, s in part if not joined)))  # fmt: skip
                room -= _PER_GROUP + _PER_SOURCE * len(part)
        if packed:
            close()
        return messages
