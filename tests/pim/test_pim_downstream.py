"""PIM downstream join state and the LAN rules of upstream joins, without sockets or clocks."""

from __future__ import annotations

import random

from mgm.plugins.pim.downstream import JOIN, PRUNE_PENDING, Downstream
from mgm.plugins.pim.neighbors import PimLink
from mgm.plugins.pim.packet import EncodedGroup, EncodedSource, Hello, JoinPrune, JoinPruneGroup
from mgm.plugins.pim.upstream import Upstream

US, RP, S, G = "10.0.0.2", "10.0.0.1", "10.9.0.5", "239.1.1.1"
STAR = EncodedSource(RP, wildcard=True, rpt=True)
ONE_GROUP = EncodedGroup(G)


def message(*, joins: tuple[EncodedSource, ...] = (), prunes: tuple[EncodedSource, ...] = (), holdtime: int = 210,
            to: str = US, group: EncodedGroup = ONE_GROUP) -> JoinPrune:  # fmt: skip
    return JoinPrune(to, holdtime, (JoinPruneGroup(group, joins, prunes),))


def test_a_join_makes_state_until_its_holdtime_and_a_refresh_extends_it() -> None:
    down = Downstream()
    down.receive(3, message(joins=(STAR, EncodedSource(S))), 0.0, override_interval=0.0)
    assert down.take_events() == [("joined", 3, (None, G)), ("joined", 3, (S, G))]
    assert down.next_deadline() == 210.0
    down.receive(3, message(joins=(STAR,), holdtime=100), 200.0, override_interval=0.0)  # 300 > 210: extended
    down.receive(3, message(joins=(STAR,), holdtime=10), 201.0, override_interval=0.0)  # 211 < 300: kept
    down.tick(210.0)
    assert down.take_events() == [("pruned", 3, (S, G))]
    down.tick(299.9)
    assert down.take_events() == [] and down.entries[(3, (None, G))].state == JOIN
    down.tick(300.0)
    assert down.take_events() == [("pruned", 3, (None, G))] and down.entries == {}


def test_a_prune_from_our_only_neighbour_there_ends_the_state_at_once() -> None:
    down = Downstream()
    down.receive(3, message(joins=(STAR,)), 0.0, override_interval=0.0)
    down.receive(3, message(prunes=(STAR,)), 5.0, override_interval=0.0)
    down.tick(5.0)
    assert down.take_events() == [("joined", 3, (None, G)), ("pruned", 3, (None, G))]


def test_on_a_lan_a_prune_waits_for_an_override_and_a_join_in_time_keeps_the_state() -> None:
    down = Downstream()
    down.receive(3, message(joins=(STAR,)), 0.0, override_interval=3.0)
    down.receive(3, message(prunes=(STAR,)), 10.0, override_interval=3.0)
    assert down.entries[(3, (None, G))].state == PRUNE_PENDING and down.next_deadline() == 13.0
    down.receive(3, message(joins=(STAR,)), 12.0, override_interval=3.0)  # another router overrides
    down.tick(13.0)
    assert down.entries[(3, (None, G))].state == JOIN and down.take_events() == [("joined", 3, (None, G))]
    down.receive(3, message(prunes=(STAR,)), 20.0, override_interval=3.0)
    down.tick(22.9)
    assert down.take_events() == []
    down.tick(23.0)
    assert down.take_events() == [("pruned", 3, (None, G))]


def test_state_is_per_interface_and_a_prune_without_state_does_nothing() -> None:
    down = Downstream()
    down.receive(3, message(prunes=(STAR,)), 0.0, override_interval=0.0)
    down.receive(3, message(joins=(EncodedSource(S),)), 0.0, override_interval=0.0)
    down.receive(4, message(joins=(EncodedSource(S),)), 0.0, override_interval=0.0)
    down.receive(4, message(prunes=(EncodedSource(S),)), 1.0, override_interval=0.0)
    down.tick(1.0)
    assert down.take_events() == [("joined", 3, (S, G)), ("joined", 4, (S, G)), ("pruned", 4, (S, G))]
    down.forget_interface(3)
    assert down.take_events() == [("pruned", 3, (S, G))] and down.entries == {}


def test_what_is_not_kept_is_counted_not_misread() -> None:
    down = Downstream()
    rpt = EncodedSource(S, rpt=True)
    down.receive(3, message(joins=(STAR,), prunes=(rpt,)), 0.0, override_interval=0.0)
    down.receive(3, message(joins=(rpt,)), 0.0, override_interval=0.0)
    down.receive(3, message(joins=(STAR,), group=EncodedGroup("239.0.0.0", 8)), 0.0, override_interval=0.0)
    assert down.take_events() == [("joined", 3, (None, G))]
    assert down.ignored == {"rpt_prune": 1, "rpt_join": 1, "group_range": 1}


def test_a_join_with_holdtime_forever_never_expires() -> None:
    down = Downstream()
    down.receive(3, message(joins=(STAR,), holdtime=0xFFFF), 0.0, override_interval=0.0)
    down.tick(1e9)
    assert down.entries[(3, (None, G))].state == JOIN


UP = (2, RP)


def joined_upstream() -> Upstream:
    up = Upstream(join_prune_interval=60.0, rng=random.Random(1))
    up.want((None, G), RP, UP, 0.0)
    up.tick(0.0)
    return up


def test_another_routers_join_to_our_upstream_neighbour_suppresses_our_next_one() -> None:
    up = joined_upstream()
    up.overheard(UP, message(joins=(STAR,), to=RP), 50.0, 2.5)
    suppressed = up.entries[(None, G)].next_join
    assert 50.0 + 1.1 * 60 <= suppressed <= 50.0 + 1.4 * 60
    assert up.tick(60.0) == []
    up.overheard(UP, message(joins=(STAR,), to=RP, holdtime=5), 60.0, 2.5)  # never later than it would be
    assert up.entries[(None, G)].next_join == suppressed


def test_another_routers_prune_of_what_we_want_is_overridden_within_the_override_interval() -> None:
    up = joined_upstream()
    up.overheard(UP, message(prunes=(STAR,), to=RP), 10.0, 2.5)
    assert 10.0 <= up.next_deadline() <= 12.5
    ((rpf, join),) = up.tick(12.5)
    assert rpf == UP and join.groups[0].joins == (STAR,)


def test_what_goes_to_another_neighbour_or_for_another_entry_changes_nothing() -> None:
    up = joined_upstream()
    up.overheard((2, "10.0.0.3"), message(prunes=(STAR,), to="10.0.0.3"), 10.0, 2.5)
    up.overheard(UP, message(prunes=(EncodedSource(S),), to=RP), 10.0, 2.5)
    assert up.next_deadline() == 60.0


def test_a_prune_waits_for_an_override_only_where_someone_could_send_one() -> None:
    link = PimLink(US, propagation_delay=0.5, override_interval=2.5)
    link.receive_hello("10.0.0.3", Hello(holdtime=105, propagation_delay=500, override_interval=2500), 0.0)
    assert link.prune_override_interval("10.0.0.3") == 0.0
    link.receive_hello("10.0.0.4", Hello(holdtime=105, propagation_delay=1000, override_interval=2000), 0.0)
    assert link.prune_override_interval("10.0.0.3") == 1.0 + 2.5
