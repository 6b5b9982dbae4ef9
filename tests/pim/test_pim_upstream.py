"""PIM upstream join state without sockets or clocks: what goes to which neighbour, and when."""

from __future__ import annotations

import pytest

from mgm.plugins.pim.packet import EncodedGroup, EncodedSource, JoinPrune, JoinPruneGroup, build, parse
from mgm.plugins.pim.upstream import MAX_MESSAGE, Upstream

RP, S, G, G2 = "10.0.0.1", "10.9.0.5", "239.1.1.1", "239.1.1.2"
UP = (2, "10.0.0.1")
OTHER = (3, "10.0.1.1")
STAR = EncodedSource(RP, wildcard=True, rpt=True)


def test_a_star_g_join_goes_at_once_then_every_interval_and_a_prune_when_unwanted() -> None:
    up = Upstream(join_prune_interval=60.0)
    up.want((None, G), RP, UP, 0.0)
    assert up.tick(0.0) == [(UP, JoinPrune("10.0.0.1", 210, (JoinPruneGroup(EncodedGroup(G), joins=(STAR,)),)))]
    assert up.next_deadline() == 60.0 and up.tick(59.0) == []
    ((_, periodic),) = up.tick(60.0)
    assert periodic.groups[0].joins == (STAR,)
    up.unwant((None, G))
    ((rpf, prune),) = up.tick(61.0)
    assert rpf == UP and prune.groups == (JoinPruneGroup(EncodedGroup(G), prunes=(STAR,)),)
    assert up.entries == {} and up.tick(1000.0) == []


def test_a_new_rpf_neighbour_gets_the_join_and_the_old_one_the_prune() -> None:
    up = Upstream()
    up.want((S, G), S, UP, 0.0)
    up.tick(0.0)
    up.want((S, G), S, OTHER, 5.0)
    sent = dict(up.tick(5.0))
    assert sent[OTHER].groups[0].joins == (EncodedSource(S),) and sent[OTHER].upstream_neighbor == "10.0.1.1"
    assert sent[UP].groups[0].prunes == (EncodedSource(S),) and sent[UP].groups[0].joins == ()


def test_without_rpf_nothing_is_sent_until_there_is_one() -> None:
    up = Upstream()
    up.want((None, G), RP, None, 0.0)
    assert up.tick(0.0) == [] and up.tick(500.0) == []
    up.want((None, G), RP, UP, 501.0)
    assert [rpf for rpf, _ in up.tick(501.0)] == [UP]
    up.want((None, G), RP, None, 502.0)  # the neighbour went: it is pruned (it may still hear)
    ((rpf, message),) = up.tick(502.0)
    assert rpf == UP and message.groups[0].prunes == (STAR,)


def test_a_restarted_neighbour_gets_our_joins_again_at_once() -> None:
    up = Upstream()
    up.want((None, G), RP, UP, 0.0)
    up.want((S, G2), S, OTHER, 0.0)
    up.tick(0.0)
    up.neighbor_restarted(UP, 10.0)
    assert [rpf for rpf, _ in up.tick(10.0)] == [UP]


def test_what_is_due_together_is_packed_per_neighbour_and_group() -> None:
    up = Upstream()
    up.want((None, G), RP, UP, 0.0)
    up.want((S, G), S, UP, 0.0)
    up.want((S, G2), S, UP, 0.0)
    ((_, message),) = up.tick(0.0)
    assert message.groups == (JoinPruneGroup(EncodedGroup(G), joins=(STAR, EncodedSource(S))),
                              JoinPruneGroup(EncodedGroup(G2), joins=(EncodedSource(S),)))  # fmt: skip
    assert parse(build(message)) == message


def test_a_join_then_a_prune_before_the_tick_sends_only_the_prune() -> None:
    up = Upstream()
    up.want((S, G), S, UP, 0.0)
    up.unwant((S, G))
    ((_, message),) = up.tick(0.0)
    assert message.groups == (JoinPruneGroup(EncodedGroup(G), prunes=(EncodedSource(S),)),)


@pytest.mark.parametrize(("groups", "sources"), [(1, 10_000), (10_000, 1), (100, 100), (3, 175)])
def test_many_joins_are_packed_into_as_few_messages_as_fit_each_within_the_size_limit(groups: int,
                                                                                      sources: int) -> None:
    up = Upstream()
    wanted = {(f"10.{s // 250}.{s % 250}.1", f"239.2.{g // 250}.{g % 250}") for g in range(groups)
              for s in range(sources)}  # fmt: skip
    for key in wanted:
        up.want(key, key[0], UP, 0.0)
    messages = [message for _, message in up.tick(0.0)]
    sent = [build(message) for message in messages]
    assert [parse(raw) for raw in sent] == messages
    assert {(s.address, g.group.address) for m in messages for g in m.groups for s in g.joins} == wanted
    assert all(len(raw) <= MAX_MESSAGE for raw in sent)
    # none but the last was closed while it could take another group part of one source (12 + 8 octets)
    assert all(len(raw) > MAX_MESSAGE - 20 for raw in sent[:-1])


def rpt(source: str) -> EncodedSource:
    return EncodedSource(source, rpt=True)


def test_an_sg_on_another_neighbour_is_pruned_off_the_shared_tree_and_taken_back_when_it_goes() -> None:
    """(S,G,rpt) Prunes ride in the periodic (*,G) Joins, from the first one half an interval after the (S,G)
    join; the (S,G)'s end sends a triggered (*,G) Join with an (S,G,rpt) Join."""
    up = Upstream(join_prune_interval=60.0)
    up.want((None, G), RP, UP, 0.0)
    up.tick(0.0)
    up.want((S, G), S, OTHER, 40.0)  # the switch to the shortest-path tree, through OTHER
    ((rpf, join),) = up.tick(40.0)
    assert rpf == OTHER and join.groups == (JoinPruneGroup(EncodedGroup(G), joins=(EncodedSource(S),)),)
    ((_, periodic),) = up.tick(60.0)  # 20 s after the (S,G) join: not yet
    assert periodic.groups == (JoinPruneGroup(EncodedGroup(G), joins=(STAR,)),)
    for now in (120.0, 180.0):
        sent = dict(up.tick(now))
        assert sent[UP].groups == (JoinPruneGroup(EncodedGroup(G), joins=(STAR,), prunes=(rpt(S),)),)
        assert parse(build(sent[UP])) == sent[UP]
    up.unwant((S, G))
    sent = dict(up.tick(190.0))
    assert sent[UP].groups == (JoinPruneGroup(EncodedGroup(G), joins=(STAR, rpt(S))),)
    assert sent[OTHER].groups == (JoinPruneGroup(EncodedGroup(G), prunes=(EncodedSource(S),)),)
    assert dict(up.tick(240.0))[UP].groups == (JoinPruneGroup(EncodedGroup(G), joins=(STAR,)),)


def test_an_sg_through_the_shared_trees_neighbour_is_not_pruned_off_it() -> None:
    up = Upstream(join_prune_interval=60.0)
    up.want((None, G), RP, UP, 0.0)
    up.want((S, G), S, UP, 0.0)
    for now in (0.0, 60.0, 120.0):
        ((_, message),) = up.tick(now)
        assert message.groups == (JoinPruneGroup(EncodedGroup(G), joins=(STAR, EncodedSource(S))),)
