"""The DR's side of Register (RFC 7761 4.4.1): per (S,G) a source of ours registers to its RP.

No I/O: the plugin feeds in what happens (a flow of a directly connected
source on a link where we are DR, a Register-Stop, the time) and asks
which flows to encapsulate now and which need a null-Register.  The
states are the RFC's: Join (the source's packets go to the RP inside
Registers), Prune (the RP said stop; a null-Register probes before the
Register-Stop timer ends), Join-Pending (the probe went; no new
Register-Stop by its end means Join again).  NoInfo is the absence of
an entry.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

JOIN, JOIN_PENDING, PRUNE = "join", "join-pending", "prune"

Flow = tuple[str, str]
"""(source, group)."""


@dataclass(slots=True)
class Registration:
    rp: str
    if_index: int
    """The source's interface, where its packets arrive."""
    state: str = JOIN
    timer: float = math.inf
    """The Register-Stop timer: when Prune sends its probe, when Join-Pending becomes Join."""
    stops: int = 0


class Registers:
    """Every (S,G) this router registers as the source's DR."""

    def __init__(self, suppression_time: float = 60.0, probe_time: float = 5.0,
                 rand: Callable[[], float] = random.random) -> None:  # fmt: skip
        self.suppression_time = suppression_time
        self.probe_time = probe_time
        self.rand = rand
        self.entries: dict[Flow, Registration] = {}

    def could_register(self, flow: Flow, rp: str, if_index: int) -> bool:
        """CouldRegister(S,G) became true (4.4.1): NoInfo -> Join.  A new RP starts over in Join.  True when
        the entry is new or changed."""
        entry = self.entries.get(flow)
        if entry is not None and (entry.rp, entry.if_index) == (rp, if_index):
            return False
        self.entries[flow] = Registration(rp, if_index)
        return True

    def cannot_register(self, flow: Flow) -> bool:
        """CouldRegister(S,G) became false (we are no longer DR, the flow stopped): -> NoInfo."""
        return self.entries.pop(flow, None) is not None

    def stopped(self, flow: Flow, now: float) -> bool:
        """A Register-Stop for `flow`: Join or Join-Pending -> Prune, with the Register-Stop timer at a random
        point of (0.5, 1.5) x Register_Suppression_Time, less Register_Probe_Time (the probe comes first)."""
        entry = self.entries.get(flow)
        if entry is None:
            return False
        entry.stops += 1
        if entry.state != PRUNE:
            entry.state = PRUNE
            entry.timer = now + (0.5 + self.rand()) * self.suppression_time - self.probe_time
        return True

    def tick(self, now: float) -> list[Flow]:
        """Run the due timers; the flows that need a null-Register now (Prune -> Join-Pending)."""
        probes = []
        for flow, entry in self.entries.items():
            if entry.timer > now:
                continue
            if entry.state == PRUNE:
                entry.state, entry.timer = JOIN_PENDING, now + self.probe_time
                probes.append(flow)
            elif entry.state == JOIN_PENDING:
                entry.state, entry.timer = JOIN, math.inf
        return probes

    def encapsulating(self, if_index: int) -> list[Flow]:
        """The flows arriving on `if_index` whose packets go to their RP in Registers (state Join)."""
        return sorted(flow for flow, entry in self.entries.items()
                      if entry.if_index == if_index and entry.state == JOIN)  # fmt: skip

    def next_deadline(self) -> float:
        return min((entry.timer for entry in self.entries.values()), default=math.inf)
