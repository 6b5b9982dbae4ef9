"""The DR's Register state machine (RFC 7761 4.4.1), driven without sockets."""

from __future__ import annotations

import math

from mgm.plugins.pim.register import JOIN, JOIN_PENDING, PRUNE, Registers

FLOW = ("10.1.1.2", "239.1.1.1")


def registers(rand: float = 0.5) -> Registers:
    return Registers(suppression_time=60.0, probe_time=5.0, rand=lambda: rand)


def test_a_new_flow_is_encapsulated_until_the_register_stop_then_probed_with_a_null_register() -> None:
    r = registers(rand=0.25)
    assert r.could_register(FLOW, "10.9.9.9", 3)
    assert not r.could_register(FLOW, "10.9.9.9", 3), "the same flow again is no change"
    assert r.encapsulating(3) == [FLOW] and r.encapsulating(4) == []
    assert r.next_deadline() == math.inf and r.tick(1000.0) == []
    assert r.stopped(FLOW, 100.0)
    entry = r.entries[FLOW]
    assert (entry.state, entry.timer) == (PRUNE, 100.0 + 0.75 * 60 - 5)  # (0.5 + rand) x suppression, less probe
    assert r.encapsulating(3) == []
    assert r.tick(139.9) == [] and entry.state == PRUNE
    assert r.tick(140.0) == [FLOW], "the null-Register goes when the timer ends"
    assert (entry.state, entry.timer) == (JOIN_PENDING, 145.0)
    assert r.encapsulating(3) == []
    assert r.tick(145.0) == [] and (entry.state, entry.timer) == (JOIN, math.inf)
    assert r.encapsulating(3) == [FLOW], "no Register-Stop answered the probe: Registers again"


def test_a_register_stop_answering_the_probe_keeps_the_flow_pruned() -> None:
    r = registers(rand=0.0)
    r.could_register(FLOW, "10.9.9.9", 3)
    r.stopped(FLOW, 0.0)
    assert r.tick(25.0) == [FLOW]
    assert r.stopped(FLOW, 26.0)
    entry = r.entries[FLOW]
    assert (entry.state, entry.timer, entry.stops) == (PRUNE, 26.0 + 25.0, 2)
    assert r.tick(31.0) == [] and entry.state == PRUNE
    assert r.stopped(FLOW, 27.0) and entry.timer == 51.0, "a Register-Stop in Prune does not restart the timer"


def test_the_rp_changing_starts_over_and_cannot_register_forgets() -> None:
    r = registers()
    r.could_register(FLOW, "10.9.9.9", 3)
    r.stopped(FLOW, 0.0)
    assert r.could_register(FLOW, "10.8.8.8", 3)
    assert (r.entries[FLOW].state, r.entries[FLOW].rp) == (JOIN, "10.8.8.8")
    assert r.cannot_register(FLOW) and not r.cannot_register(FLOW)
    assert not r.stopped(FLOW, 1.0), "a Register-Stop for a flow we do not register is not ours"
    assert r.entries == {}
