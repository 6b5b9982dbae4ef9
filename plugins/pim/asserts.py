"""The (S,G) Assert state machine of RFC 7761 4.6.1, per (S,G) and interface, without I/O.

Two routers forwarding the same flow onto one LAN see each other's packets
arrive on an interface of their outgoing list (the manager's wrong_if): each
sends an Assert with its metric towards S, the preferred one keeps
forwarding (Winner), the other stops (Loser) until the winner's assert
state times out or it cancels.  The plugin feeds in packets, Asserts and
time, and reads which Asserts to send and where it lost.  Out of scope here:
(*,G) Asserts and the assert winner as RPF neighbour of downstream routers.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

WINNER, LOSER = "winner", "loser"
ASSERT_TIME = 180.0
ASSERT_OVERRIDE_INTERVAL = 3.0
INFINITE_PREFERENCE = 0x7FFFFFFF
INFINITE_METRIC = 0xFFFFFFFF

Key = tuple[str, str, int]
"""(source, group, if_index)."""


@dataclass(frozen=True, slots=True)
class Metric:
    """What an Assert compares (4.6.2): the RPT bit, the metric preference, the route metric, the address."""

    rpt: bool
    preference: int
    metric: int
    address: str

    def beats(self, other: Metric) -> bool:
        """Preferred: SPT over RPT, then the lower preference, the lower metric, and the higher address."""
        mine = (self.rpt, self.preference, self.metric)
        theirs = (other.rpt, other.preference, other.metric)
        if mine != theirs:
            return mine < theirs
        return ipaddress.IPv4Address(self.address) > ipaddress.IPv4Address(other.address)

    @property
    def cancels(self) -> bool:
        """An AssertCancel: the infinite metric, sent by a winner that no longer forwards."""
        return self.preference == INFINITE_PREFERENCE and self.metric == INFINITE_METRIC


@dataclass(slots=True)
class AssertState:
    state: str
    winner: Metric
    timer: float


class Asserts:
    """Every (S,G,I) not in NoInfo; `send` collects the Asserts to go out: (key, our metric)."""

    def __init__(self, assert_time: float = ASSERT_TIME, override_interval: float = ASSERT_OVERRIDE_INTERVAL) -> None:
        self.assert_time = assert_time
        self.override_interval = override_interval
        self.entries: dict[Key, AssertState] = {}
        self.send: list[tuple[Key, Metric]] = []

    def _win(self, key: Key, ours: Metric, now: float) -> None:
        self.send.append((key, ours))
        self.entries[key] = AssertState(WINNER, ours, now + self.assert_time - self.override_interval)

    def _lose(self, key: Key, theirs: Metric, now: float) -> None:
        self.entries[key] = AssertState(LOSER, theirs, now + self.assert_time)

    def data_arrived(self, key: Key, ours: Metric, now: float) -> None:
        """A packet of (S,G) came in on I, an interface we forward it onto (CouldAssert): NoInfo -> Winner."""
        if key not in self.entries:
            self._win(key, ours, now)

    def received(self, key: Key, theirs: Metric, ours: Metric | None, now: float) -> None:
        """An Assert for (S,G) on I from a neighbour; `ours` is None where we do not forward (S,G) onto I
        (CouldAssert false: the other router's assert is then acceptable and we have nothing to stop)."""
        entry = self.entries.get(key)
        if entry is None:
            if ours is None or theirs.cancels:
                return
            if theirs.beats(ours):
                self._lose(key, theirs, now)
            else:
                self._win(key, ours, now)
        elif entry.state == WINNER:
            if ours is not None and not theirs.beats(ours):
                self._win(key, ours, now)  # an inferior Assert: ours again
            elif not theirs.cancels:
                self._lose(key, theirs, now)
        elif theirs.address == entry.winner.address:
            if theirs.cancels or (ours is not None and ours.beats(theirs)):
                del self.entries[key]  # the winner cancels, or is now worse than us: NoInfo, forward again
            else:
                self._lose(key, theirs, now)
        elif (ours is None or theirs.beats(entry.winner)) and not theirs.cancels:
            self._lose(key, theirs, now)  # a better winner than the one we knew

    def could_assert_ended(self, key: Key) -> None:
        """We no longer forward (S,G) onto I: a winner cancels (AssertCancel), a loser forgets."""
        entry = self.entries.pop(key, None)
        if entry is not None and entry.state == WINNER:
            self.send.append((key, Metric(True, INFINITE_PREFERENCE, INFINITE_METRIC, entry.winner.address)))

    def neighbor_gone(self, if_index: int, address: str) -> None:
        """A neighbour expired or restarted: where it was the winner we lost to, NoInfo (forward again)."""
        for key in [k for k, e in self.entries.items()
                    if k[2] == if_index and e.state == LOSER and e.winner.address == address]:  # fmt: skip
            del self.entries[key]

    def tick(self, now: float) -> None:
        """The Assert timers: a winner asserts again, a loser whose winner went quiet forwards again."""
        for key, entry in list(self.entries.items()):
            if entry.timer <= now:
                if entry.state == WINNER:
                    self._win(key, entry.winner, now)
                else:
                    del self.entries[key]

    def losing(self, key: Key) -> bool:
        entry = self.entries.get(key)
        return entry is not None and entry.state == LOSER

    def next_deadline(self) -> float:
        return min((entry.timer for entry in self.entries.values()), default=math.inf)
