"""PIM neighbour discovery on one interface (RFC 7761 section 4.3): Hellos, neighbours, the DR. No I/O.

`PimLink` is fed the Hellos that arrive (`receive_hello`) and the time
(`tick`); it answers with what to send (`Hello` messages, by return of
`tick`) and what changed (`NeighborEvent`s, taken with `take_events`),
like the MGM's own rules: the plugin process is the shell that moves the
packets and keeps the clock.

Rules kept here (the section numbers are RFC 7761's):

* 4.3.1: a Hello every `hello_period`; the first, and one after a new
  neighbour or a neighbour's new generation ID, after a random delay of
  at most `triggered_hello_delay` (never later than the periodic one
  would be).  A neighbour lives `holdtime` seconds after its last Hello
  (0xFFFF: forever); a Hello with holdtime 0 removes it at once (a
  goodbye), and so does our own `stop`, which returns our goodbye.
* 4.3.2: the DR is the router with the highest DR priority, the highest
  address breaking ties, when every router on the link sends a priority;
  else the highest address.
* 4.3.3 and 4.3.4: the LAN prune delay option; the link's effective
  propagation delay and override interval are the largest any router
  announces, and join suppression may be disabled only if every neighbour
  sets the T bit.  Join/Prune will use them.
"""

from __future__ import annotations

import ipaddress
import math
import random
from dataclasses import dataclass

from mgm.plugins.pim.packet import HOLDTIME_FOREVER, Hello

HELLO_PERIOD = 30.0
TRIGGERED_HELLO_DELAY = 5.0
DR_PRIORITY = 1
PROPAGATION_DELAY = 0.5
OVERRIDE_INTERVAL = 2.5
DEFAULT_HOLDTIME = 105
"""A neighbour's holdtime when its Hello has no holdtime option (4.11: Default_Hello_Holdtime)."""


@dataclass(slots=True)
class Neighbor:
    """What a neighbour's last Hello said, and when that runs out."""

    address: str
    expires: float
    holdtime: int
    dr_priority: int | None
    generation_id: int | None
    propagation_delay: int | None
    override_interval: int | None
    tracking: bool
    secondary: tuple[str, ...]
    since: float


@dataclass(frozen=True, slots=True)
class NeighborEvent:
    """`kind`: "up", "down" (why says which: "expired", "goodbye", "stopped"), "restarted" (new generation
    ID: it lost our state, which we must send again) or "dr" (the link's DR changed to `address`)."""

    kind: str
    address: str
    why: str = ""


def _key(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


class PimLink:
    """Our PIM presence on one interface whose primary address is `address`."""

    def __init__(
        self,
        address: str,
        *,
        hello_period: float = HELLO_PERIOD,
        holdtime: float | None = None,
        dr_priority: int = DR_PRIORITY,
        propagation_delay: float = PROPAGATION_DELAY,
        override_interval: float = OVERRIDE_INTERVAL,
        triggered_hello_delay: float = TRIGGERED_HELLO_DELAY,
        generation_id: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.address = address
        self.hello_period = hello_period
        self.holdtime = round(3.5 * hello_period if holdtime is None else holdtime)
        self.dr_priority = dr_priority
        self.propagation_delay = propagation_delay
        self.override_interval = override_interval
        self.triggered_hello_delay = triggered_hello_delay
        self._rng = rng or random.Random()
        self.generation_id = self._rng.getrandbits(32) if generation_id is None else generation_id
        self.neighbors: dict[str, Neighbor] = {}
        self.dr = address
        self._next_hello = math.inf
        self._events: list[NeighborEvent] = []
        self._last_now = 0.0
        self.running = False

    # --- what we send ---------------------------------------------------------------------------

    def hello(self, holdtime: int | None = None) -> Hello:
        return Hello(holdtime=self.holdtime if holdtime is None else holdtime, dr_priority=self.dr_priority,
                     generation_id=self.generation_id, propagation_delay=round(self.propagation_delay * 1000),
                     override_interval=round(self.override_interval * 1000), tracking=False)  # fmt: skip

    def start(self, now: float) -> None:
        """Begin: the first Hello within the triggered delay (4.3.1)."""
        self.running = True
        self._next_hello = now + self._rng.uniform(0, self.triggered_hello_delay)

    def stop(self) -> Hello:
        """End: forget every neighbour; the goodbye Hello (holdtime 0) to send."""
        for address in sorted(self.neighbors, key=_key):
            self._events.append(NeighborEvent("down", address, "stopped"))
        self.neighbors.clear()
        self.running = False
        self._next_hello = math.inf
        self._elect()
        return self.hello(holdtime=0)

    def tick(self, now: float) -> list[Hello]:
        """Expire neighbours; the Hellos due by `now`."""
        self._last_now = now
        for neighbor in [n for n in self.neighbors.values() if n.expires <= now]:
            del self.neighbors[neighbor.address]
            self._events.append(NeighborEvent("down", neighbor.address, "expired"))
        self._elect()
        if not self.running or now < self._next_hello:
            return []
        self._next_hello = now + self.hello_period
        return [self.hello()]

    def readdress(self, address: str) -> None:
        """Our primary address changed: the election compares the new one; neighbours hear it at once."""
        self.address = address
        self._elect()
        self._trigger_hello(self._last_now)

    def next_deadline(self) -> float:
        return min([self._next_hello, *(n.expires for n in self.neighbors.values())])

    # --- what we hear -----------------------------------------------------------------------------

    def receive_hello(self, source: str, hello: Hello, now: float) -> None:
        self._last_now = now
        if source == self.address:
            return  # our own, looped back
        holdtime = DEFAULT_HOLDTIME if hello.holdtime is None else hello.holdtime
        known = self.neighbors.get(source)
        if holdtime == 0:
            if known is not None:
                del self.neighbors[source]
                self._events.append(NeighborEvent("down", source, "goodbye"))
                self._elect()
            return
        expires = math.inf if holdtime == HOLDTIME_FOREVER else now + holdtime
        if known is None:
            self._events.append(NeighborEvent("up", source))
            self._trigger_hello(now)
        elif hello.generation_id is not None and hello.generation_id != known.generation_id:
            self._events.append(NeighborEvent("restarted", source))
            self._trigger_hello(now)
        self.neighbors[source] = Neighbor(
            source, expires, holdtime, hello.dr_priority, hello.generation_id, hello.propagation_delay,
            hello.override_interval, hello.tracking, hello.secondary, now if known is None else known.since,
        )  # fmt: skip
        self._elect()

    def _trigger_hello(self, now: float) -> None:
        if self.running:
            self._next_hello = min(self._next_hello, now + self._rng.uniform(0, self.triggered_hello_delay))

    # --- the link's DR and LAN timers --------------------------------------------------------------

    def _elect(self) -> None:
        """4.3.2: by priority when every router sends one, else by address; the highest address breaks ties."""
        everyone = [(self.dr_priority, self.address)] + [(n.dr_priority, n.address) for n in self.neighbors.values()]
        if all(priority is not None for priority, _ in everyone):
            winner = max(everyone, key=lambda e: (e[0], _key(e[1])))[1]
        else:
            winner = max((address for _, address in everyone), key=_key)
        if winner != self.dr:
            self.dr = winner
            self._events.append(NeighborEvent("dr", winner))

    @property
    def is_dr(self) -> bool:
        return self.dr == self.address

    def lan_delay_enabled(self) -> bool:
        """4.3.3: the LAN prune delay counts only when every neighbour sends the option."""
        return all(n.propagation_delay is not None for n in self.neighbors.values())

    def effective_propagation_delay(self) -> float:
        """4.3.3: the largest any router on the link announces (seconds), else the default."""
        if not self.lan_delay_enabled():
            return PROPAGATION_DELAY
        return max([self.propagation_delay, *(n.propagation_delay / 1000 for n in self.neighbors.values()
                                               if n.propagation_delay is not None)])  # fmt: skip

    def effective_override_interval(self) -> float:
        if not self.lan_delay_enabled():
            return OVERRIDE_INTERVAL
        return max([self.override_interval, *(n.override_interval / 1000 for n in self.neighbors.values()
                                              if n.override_interval is not None)])  # fmt: skip

    def prune_override_interval(self, sender: str) -> float:
        """How long a Prune from `sender` waits for another router's overriding Join (4.5.2's
        J/P_Override_Interval), or 0 when `sender` is our only neighbour here: nobody could override."""
        if set(self.neighbors) <= {sender}:
            return 0.0
        return self.effective_propagation_delay() + self.effective_override_interval()

    def take_events(self) -> list[NeighborEvent]:
        events, self._events = self._events, []
        return events
