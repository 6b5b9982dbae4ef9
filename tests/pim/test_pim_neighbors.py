"""PIM neighbour discovery and DR election on one link (RFC 7761 4.3), driven without sockets or clocks."""

from __future__ import annotations

import math
import random

import pytest

from mgm.plugins.pim.neighbors import PimLink
from mgm.plugins.pim.packet import HOLDTIME_FOREVER, Hello

US = "10.0.0.5"


def link(**settings: object) -> PimLink:
    return PimLink(US, rng=random.Random(1), generation_id=99, **settings)  # type: ignore[arg-type]


def hello(dr_priority: int | None = 1, holdtime: int | None = 105, generation_id: int | None = 7) -> Hello:
    return Hello(holdtime=holdtime, dr_priority=dr_priority, generation_id=generation_id)


def events(pim: PimLink) -> list[tuple[str, str, str]]:
    return [(e.kind, e.address, e.why) for e in pim.take_events()]


def test_the_first_hello_goes_within_the_triggered_delay_then_every_period() -> None:
    pim = link(hello_period=30.0, triggered_hello_delay=5.0)
    pim.start(100.0)
    first = pim.next_deadline()
    assert 100.0 <= first <= 105.0
    assert pim.tick(first - 0.001) == []
    (sent,) = pim.tick(first)
    assert sent == Hello(holdtime=105, dr_priority=1, generation_id=99, propagation_delay=500, override_interval=2500)
    assert pim.next_deadline() == first + 30.0
    assert pim.tick(first + 29.0) == []
    assert len(pim.tick(first + 30.0)) == 1


def test_a_neighbour_comes_up_lives_its_holdtime_and_expires() -> None:
    pim = link()
    pim.start(0.0)
    pim.tick(10.0)
    pim.receive_hello("10.0.0.9", hello(holdtime=40), 10.0)
    assert events(pim) == [("up", "10.0.0.9", ""), ("dr", "10.0.0.9", "")]
    assert pim.neighbors["10.0.0.9"].expires == 50.0
    pim.receive_hello("10.0.0.9", hello(holdtime=40), 30.0)  # refreshed
    pim.tick(69.9)
    assert "10.0.0.9" in pim.neighbors
    pim.tick(70.0)
    assert pim.neighbors == {}
    assert events(pim) == [("down", "10.0.0.9", "expired"), ("dr", US, "")]


def test_holdtime_zero_is_a_goodbye_and_0xffff_is_forever() -> None:
    pim = link()
    pim.receive_hello("10.0.0.9", hello(holdtime=HOLDTIME_FOREVER), 0.0)
    assert math.isinf(pim.neighbors["10.0.0.9"].expires)
    pim.receive_hello("10.0.0.9", hello(holdtime=0), 1.0)
    assert pim.neighbors == {}
    assert events(pim)[-2:] == [("down", "10.0.0.9", "goodbye"), ("dr", US, "")]
    pim.receive_hello("10.0.0.8", hello(holdtime=None), 2.0)  # no holdtime option: the default 105 s
    assert pim.neighbors["10.0.0.8"].expires == 107.0


def test_a_new_neighbour_or_a_new_generation_id_brings_our_hello_forward() -> None:
    pim = link(hello_period=30.0, triggered_hello_delay=5.0)
    pim.start(0.0)
    pim.tick(pim.next_deadline())  # the first hello; the next one is 30 s later
    periodic = pim.next_deadline()
    pim.receive_hello("10.0.0.9", hello(generation_id=7), 1.0)
    assert 1.0 <= pim.next_deadline() <= 6.0
    pim.tick(pim.next_deadline())
    pim.receive_hello("10.0.0.9", hello(generation_id=7), 8.0)  # the same neighbour, nothing new
    assert pim.next_deadline() > 8.0 + 5.0 and pim.next_deadline() <= periodic + 30.0
    pim.receive_hello("10.0.0.9", hello(generation_id=8), 9.0)  # it restarted: it lost what we told it
    assert 9.0 <= pim.next_deadline() <= 14.0
    assert ("restarted", "10.0.0.9", "") in events(pim)


@pytest.mark.parametrize(("ours", "theirs", "dr"), [
    (1, {"10.0.0.9": 1, "10.0.0.2": 1}, "10.0.0.9"),  # equal priorities: the highest address
    (5, {"10.0.0.9": 1, "10.0.0.2": 1}, US),  # the highest priority, even with a lower address
    (1, {"10.0.0.9": 1, "10.0.0.2": 9}, "10.0.0.2"),
    (5, {"10.0.0.9": None, "10.0.0.2": 9}, "10.0.0.9"),  # one router sends no priority: addresses only
    (0, {"10.0.0.2": 0}, US),
])  # fmt: skip
def test_the_dr_is_elected_by_priority_then_address(ours: int, theirs: dict[str, int | None], dr: str) -> None:
    pim = link(dr_priority=ours)
    for address, priority in theirs.items():
        pim.receive_hello(address, hello(dr_priority=priority), 0.0)
    assert pim.dr == dr
    assert pim.is_dr == (dr == US)


def test_stop_drops_every_neighbour_and_says_goodbye() -> None:
    pim = link()
    pim.start(0.0)
    pim.receive_hello("10.0.0.9", hello(), 0.0)
    pim.take_events()
    goodbye = pim.stop()
    assert goodbye.holdtime == 0 and goodbye.generation_id == 99
    assert pim.neighbors == {} and pim.tick(1000.0) == []
    assert events(pim) == [("down", "10.0.0.9", "stopped"), ("dr", US, "")]


def test_our_own_hello_looped_back_is_no_neighbour() -> None:
    pim = link()
    pim.receive_hello(US, hello(), 0.0)
    assert pim.neighbors == {} and events(pim) == []


def test_the_lan_prune_delay_is_the_largest_announced_once_every_neighbour_sends_it() -> None:
    pim = link(propagation_delay=0.5, override_interval=2.5)
    pim.receive_hello("10.0.0.9", Hello(holdtime=105, propagation_delay=800, override_interval=2000), 0.0)
    assert (pim.effective_propagation_delay(), pim.effective_override_interval()) == (0.8, 2.5)
    pim.receive_hello("10.0.0.8", Hello(holdtime=105), 0.0)  # without the option: the defaults hold
    assert (pim.effective_propagation_delay(), pim.effective_override_interval()) == (0.5, 2.5)
