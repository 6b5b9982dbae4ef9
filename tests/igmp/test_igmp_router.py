"""plugins/igmp/router.py driven by time: election, v2 last-member timing, the RFC 3376 tables, compatibility.

Time is whatever the test passes; `run_until` ticks the router at each of
its own deadlines up to a time, as the plugin's loop would.  Defaults are
the RFC's (query interval 125 s, response 10 s, robustness 2, last member
query interval 1 s), so GMI = 260 s and LMQT = 2 s.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgm.core.types import Interface
from mgm.plugins.igmp import packet
from mgm.plugins.igmp.packet import (
    ALLOW_NEW_SOURCES,
    BLOCK_OLD_SOURCES,
    CHANGE_TO_EXCLUDE_MODE,
    CHANGE_TO_INCLUDE_MODE,
    MODE_IS_EXCLUDE,
    MODE_IS_INCLUDE,
    GroupRecord,
    Query,
)
from mgm.plugins.igmp.router import (
    EXCLUDE,
    INCLUDE,
    MAX_SOURCES_PER_QUERY,
    STOPPED,
    ParameterError,
    Parameters,
    Router,
)

IF = Interface(5)
ME = "10.0.0.5"
LOWER, HIGHER = "10.0.0.3", "10.0.0.9"
HOST = "10.0.0.100"
ANY = "0.0.0.0"
G = "239.1.1.1"
A, B, C, D = "10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"
GMI = 260.0
LMQT = 2.0


def make(address: str | None = ME, **config: object) -> Router:
    """A started router with the startup queries already taken."""
    r = Router(IF, Parameters.from_config(config), address, own_addresses={ME, "192.0.2.1"})
    r.start(0.0)
    r.take_packets()
    return r


def run_until(r: Router, until: float) -> None:
    deadline = r.next_deadline()
    while deadline is not None and deadline <= until:
        r.tick(deadline)
        deadline = r.next_deadline()


def v3(r: Router, now: float, rtype: int, group: str = G, sources: tuple[str, ...] = (), src: str = HOST) -> None:
    r.receive(now, src, packet.ALL_IGMPV3_ROUTERS, packet.build_v3_report([GroupRecord(rtype, group, sources)]))


def v2_report(r: Router, now: float, group: str = G, version: int = 2) -> None:
    r.receive(now, HOST, group, packet.build_report(version, group))


def leave(r: Router, now: float, group: str = G) -> None:
    r.receive(now, HOST, packet.ALL_ROUTERS, packet.build_leave(group))


def query_from(r: Router, now: float, src: str, payload: bytes) -> None:
    r.receive(now, src, packet.ALL_SYSTEMS, payload)


def sent(r: Router) -> list[Query]:
    out = []
    for p in r.take_packets():
        q = packet.parse(p.payload)
        assert isinstance(q, Query)
        assert p.destination == (packet.ALL_SYSTEMS if q.is_general else q.group)
        out.append(q)
    return out


def changes(r: Router) -> list[tuple[bool, str, str]]:
    return [tuple(c) for c in r.take_changes()]  # type: ignore[misc]


def state(r: Router, group: str = G) -> tuple[str, set[str], set[str]] | None:
    """(mode, sources with running timers, sources with stopped timers)."""
    s = r.group_state(group)
    if s is None:
        return None
    mode, sources, _ = s
    return mode, {k for k, t in sources.items() if t != STOPPED}, {k for k, t in sources.items() if t == STOPPED}


def exclude(r: Router, now: float, x: tuple[str, ...], y: tuple[str, ...]) -> None:
    """Put G in EXCLUDE(X, Y): IS_EX(Y) makes Y the exclude list, ALLOW(X) adds X with running timers."""
    v3(r, now, MODE_IS_EXCLUDE, sources=y)
    if x:
        v3(r, now, ALLOW_NEW_SOURCES, sources=x)
    assert state(r) == (EXCLUDE, set(x), set(y))
    r.take_changes()
    r.take_packets()


# --- parameters ---------------------------------------------------------------------------------


def test_defaults_are_the_rfc_values() -> None:
    p = Parameters.from_config({})
    assert (p.version, p.robustness, p.query_interval, p.query_response_interval) == (3, 2, 125.0, 10.0)
    assert (p.last_member_query_interval, p.last_member_query_count) == (1.0, 2)
    assert (p.startup_query_interval, p.startup_query_count) == (31.25, 2)
    r = Router(IF, p, ME)
    assert r.group_membership_interval == GMI
    assert r.other_querier_present_interval == 255.0
    assert r.older_host_present_interval == GMI
    assert r.last_member_query_time == LMQT


def test_derived_defaults_follow_robustness_and_query_interval() -> None:
    p = Parameters.from_config({"robustness": 3, "query_interval": 60})
    assert (p.last_member_query_count, p.startup_query_count, p.startup_query_interval) == (3, 3, 15.0)


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"version": 1}, "version"),
        ({"version": True}, "version"),
        ({"robustness": 0}, "robustness"),
        ({"robustness": 8}, "robustness"),
        ({"robustness": "2"}, "robustness"),
        ({"query_interval": 0.5}, "query_interval"),
        ({"query_interval": 10, "query_response_interval": 10}, "query_response_interval"),
        ({"version": 2, "query_response_interval": 30}, "query_response_interval"),
        ({"last_member_query_interval": 0.05}, "last_member_query_interval"),
        ({"last_member_query_count": 0}, "last_member_query_count"),
        ({"startup_query_count": 1.5}, "startup_query_count"),
        ({"startup_query_interval": False}, "startup_query_interval"),
    ],
)
def test_bad_parameters_name_their_key(config: dict[str, object], key: str) -> None:
    with pytest.raises(ParameterError) as info:
        Parameters.from_config(config)
    assert info.value.key == key


# --- querier election ------------------------------------------------------------------------------


def test_startup_queries_then_the_query_interval() -> None:
    r = Router(IF, Parameters.from_config({}), ME)
    r.start(0.0)
    times = [0.0]
    first = sent(r)
    assert len(first) == 1 and first[0].is_general
    assert (first[0].version, first[0].max_response, first[0].qrv, first[0].qqi) == (3, 100, 2, 125)
    for _ in range(3):
        t = r.next_deadline()
        assert t is not None
        r.tick(t)
        assert len(sent(r)) == 1
        times.append(t)
    assert times == [0.0, 31.25, 156.25, 281.25]
    assert r.querier and r.counters.general_queries_sent == 4


def test_a_lower_address_takes_over_until_it_goes_quiet() -> None:
    r = make()
    query_from(r, 10.0, LOWER, packet.build_query(3, ANY, 100, qrv=2, qqi=125))
    assert not r.querier and r.querier_address == LOWER
    run_until(r, 264.9)
    assert sent(r) == [] and not r.querier
    run_until(r, 265.0)  # 10 + other querier present interval (255 s)
    assert r.querier
    assert [q.is_general for q in sent(r)] == [True]


def test_the_querier_keeps_quiet_while_the_lower_one_keeps_querying() -> None:
    r = make()
    for t in range(10, 1000, 125):
        query_from(r, float(t), LOWER, packet.build_query(3, ANY, 100, qrv=2, qqi=125))
        run_until(r, float(t) + 124)
    assert not r.querier and sent(r) == []


@pytest.mark.parametrize(
    ("source", "version", "querier"),
    [(HIGHER, 3, ME), (ANY, 2, ME), (LOWER, 2, LOWER)],
    ids=["a-higher-address-does-not-win", "0.0.0.0-does-not-win", "an-older-version-counts"],
)
def test_the_election_takes_a_lower_address_whatever_its_version(source: str, version: int, querier: str) -> None:
    r = make()
    query_from(r, 10.0, source, packet.build_query(version, ANY, 100))
    assert r.querier == (querier == ME) and r.querier_address == querier


def test_a_non_querier_adopts_the_queriers_robustness_and_interval_then_returns_to_its_own() -> None:
    r = make()
    query_from(r, 0.0, LOWER, packet.build_query(3, ANY, 100, qrv=3, qqi=60))
    assert (r.robustness, r.query_interval) == (3, 60.0)
    assert r.other_querier_until == 3 * 60 + 5  # robustness * interval + response / 2
    run_until(r, 185.0)
    assert r.querier and (r.robustness, r.query_interval) == (2, 125.0)


def test_our_own_queries_and_reports_are_ignored() -> None:
    r = make()
    query_from(r, 1.0, ME, packet.build_query(3, ANY, 100))
    r.receive(1.0, "192.0.2.1", G, packet.build_report(2, G))
    assert r.querier and r.memberships() == set() and r.counters.own_ignored == 2


def test_a_router_without_address_listens_and_starts_querying_once_it_has_one() -> None:
    r = make(address=None)
    assert not r.querier and r.next_deadline() is None
    v2_report(r, 1.0)
    assert changes(r) == [(True, ANY, G)]
    r.set_address(2.0, ME)
    assert r.querier and [q.is_general for q in sent(r)] == [True]
    assert r.next_deadline() == 2.0 + 31.25  # startup queries


# --- v2 hosts, last member timing --------------------------------------------------------------------


def test_v2_report_adds_star_g_and_it_expires_after_the_group_membership_interval() -> None:
    r = make()
    v2_report(r, 0.0)
    assert changes(r) == [(True, ANY, G)]
    assert r.compatibility_mode(G, 0.0) == 2
    run_until(r, 259.9)
    assert changes(r) == []
    run_until(r, 260.0)
    assert changes(r) == [(False, ANY, G)]
    assert r.group_state(G) is None


def test_v2_leave_sends_last_member_queries_and_deletes_after_lmqt() -> None:
    r = make()
    v2_report(r, 0.0)
    changes(r)
    leave(r, 10.0)
    first = sent(r)
    assert [(q.group, q.max_response, q.suppress, q.sources) for q in first] == [(G, 10, False, ())]
    run_until(r, 11.0)
    assert [(q.group, q.suppress) for q in sent(r)] == [(G, False)]
    run_until(r, 11.99)
    assert changes(r) == [] and sent(r) == []
    run_until(r, 12.0)
    assert changes(r) == [(False, ANY, G)]
    assert r.counters.group_queries_sent == 2


def test_a_report_during_the_last_member_queries_keeps_the_group_and_sets_the_suppress_flag() -> None:
    r = make()
    v2_report(r, 0.0)
    leave(r, 10.0)
    sent(r)
    v2_report(r, 10.5)
    run_until(r, 11.0)
    assert [(q.group, q.suppress) for q in sent(r)] == [(G, True)]
    run_until(r, 200.0)
    assert changes(r) == [(True, ANY, G)]  # the add at 0 only: never deleted


def test_a_v1_host_makes_leaves_ignored() -> None:
    r = make()
    v2_report(r, 0.0, version=1)
    v2_report(r, 0.0)
    assert r.compatibility_mode(G, 0.0) == 1
    leave(r, 1.0)
    assert sent(r) == [] and r.counters.ignored == 1
    run_until(r, 5.0)
    assert changes(r) == [(True, ANY, G)]


def test_leave_for_an_unknown_group_does_nothing() -> None:
    r = make()
    leave(r, 1.0)
    assert sent(r) == [] and changes(r) == []


def test_a_v2_router_sends_v2_queries_and_ignores_v3_reports() -> None:
    r = Router(IF, Parameters.from_config({"version": 2}), ME)
    r.start(0.0)
    general = sent(r)
    assert [(q.version, q.max_response) for q in general] == [(2, 100)]
    v3(r, 1.0, CHANGE_TO_EXCLUDE_MODE)
    assert changes(r) == [] and r.counters.ignored == 1
    v2_report(r, 2.0)
    leave(r, 3.0)
    assert [(q.version, q.group, q.max_response) for q in sent(r)] == [(2, G, 10)]


def test_link_local_and_non_multicast_groups_are_never_memberships() -> None:
    r = make()
    v2_report(r, 0.0, group="224.0.0.5")
    v2_report(r, 0.0, group="10.1.1.1")
    v3(r, 0.0, CHANGE_TO_EXCLUDE_MODE, group="224.0.0.251")
    assert changes(r) == [] and r.memberships() == set()
    assert r.counters.ignored == 3


def test_a_non_querier_does_not_query_but_follows_the_queriers_group_query() -> None:
    r = make()
    query_from(r, 0.0, LOWER, packet.build_query(3, ANY, 100))
    v2_report(r, 1.0)
    leave(r, 5.0)
    assert sent(r) == []
    query_from(r, 5.0, LOWER, packet.build_query(3, G, 10, suppress=True))
    run_until(r, 8.0)
    assert changes(r) == [(True, ANY, G)], "a query with the S flag lowers nothing"
    query_from(r, 8.0, LOWER, packet.build_query(3, G, 10))
    run_until(r, 9.99)
    assert changes(r) == []
    run_until(r, 10.0)
    assert changes(r) == [(False, ANY, G)]


def test_a_non_querier_follows_a_v2_group_query_with_its_response_time() -> None:
    r = make()
    query_from(r, 0.0, LOWER, packet.build_query(2, ANY, 100))
    v2_report(r, 1.0)
    changes(r)
    query_from(r, 2.0, LOWER, packet.build_query(2, G, 5))  # 0.5 s, times last member query count 2
    run_until(r, 3.0)
    assert changes(r) == [(False, ANY, G)]


# --- RFC 3376 6.4: INCLUDE mode ---------------------------------------------------------------------------


def test_include_is_in_adds_an_s_g_per_source() -> None:
    r = make()
    v3(r, 0.0, MODE_IS_INCLUDE, sources=(A, B))
    assert state(r) == (INCLUDE, {A, B}, set())
    assert changes(r) == [(True, A, G), (True, B, G)]
    assert r.memberships() == {(A, G), (B, G)}


def test_include_allow_adds_sources_and_they_expire_after_gmi() -> None:
    r = make()
    v3(r, 0.0, MODE_IS_INCLUDE, sources=(A,))
    v3(r, 100.0, ALLOW_NEW_SOURCES, sources=(B,))
    assert state(r) == (INCLUDE, {A, B}, set())
    run_until(r, 260.0)
    assert state(r) == (INCLUDE, {B}, set())
    run_until(r, 360.0)
    assert state(r) is None
    assert changes(r) == [(True, A, G), (True, B, G), (False, A, G), (False, B, G)]


def test_include_block_queries_the_blocked_sources_and_removes_them_after_lmqt() -> None:
    r = make()
    v3(r, 0.0, MODE_IS_INCLUDE, sources=(A, B))
    changes(r)
    v3(r, 10.0, BLOCK_OLD_SOURCES, sources=(B, C))
    assert [(q.group, q.sources, q.suppress) for q in sent(r)] == [(G, (B,), False)]
    run_until(r, 11.0)
    assert [q.sources for q in sent(r)] == [(B,)]
    run_until(r, 12.0)
    assert changes(r) == [(False, B, G)]
    assert state(r) == (INCLUDE, {A}, set())


def test_include_to_ex_switches_to_star_g_adding_before_deleting() -> None:
    r = make()
    v3(r, 0.0, MODE_IS_INCLUDE, sources=(A, B))
    changes(r)
    v3(r, 10.0, CHANGE_TO_EXCLUDE_MODE, sources=(B, C))
    assert state(r) == (EXCLUDE, {B}, {C})  # (A*B, B-A); A deleted
    assert changes(r) == [(True, ANY, G), (False, A, G), (False, B, G)]
    assert [q.sources for q in sent(r)] == [(B,)]  # Q(G, A*B)
    _, _, timer = r.group_state(G)  # type: ignore[misc]
    assert timer == 10.0 + GMI


def test_include_is_ex_switches_without_a_query() -> None:
    r = make()
    v3(r, 0.0, MODE_IS_INCLUDE, sources=(A, B))
    v3(r, 10.0, MODE_IS_EXCLUDE, sources=(B, C))
    assert state(r) == (EXCLUDE, {B}, {C})
    assert sent(r) == []


def test_include_to_in_queries_the_sources_not_named() -> None:
    r = make()
    v3(r, 0.0, MODE_IS_INCLUDE, sources=(A, B))
    v3(r, 10.0, CHANGE_TO_INCLUDE_MODE, sources=(B, C))
    assert state(r) == (INCLUDE, {A, B, C}, set())
    assert [q.sources for q in sent(r)] == [(A,)]  # Q(G, A-B)
    run_until(r, 12.0)
    assert state(r) == (INCLUDE, {B, C}, set())


# --- RFC 3376 6.4: EXCLUDE mode -----------------------------------------------------------------------------


def test_exclude_allow_moves_sources_from_the_exclude_list() -> None:
    r = make()
    exclude(r, 0.0, x=(A,), y=(B, C))
    v3(r, 1.0, ALLOW_NEW_SOURCES, sources=(B, D))
    assert state(r) == (EXCLUDE, {A, B, D}, {C})
    assert changes(r) == [] and r.memberships() == {(ANY, G)}


def test_exclude_is_ex_keeps_only_the_named_sources() -> None:
    r = make()
    exclude(r, 0.0, x=(A, B), y=(C,))
    v3(r, 1.0, MODE_IS_EXCLUDE, sources=(B, C, D))
    assert state(r) == (EXCLUDE, {B, D}, {C})  # (A-Y, Y*A): A removed, D new with GMI
    _, sources, timer = r.group_state(G)  # type: ignore[misc]
    assert sources[D] == 1.0 + GMI and timer == 1.0 + GMI


def test_exclude_block_gives_new_sources_the_group_timer_and_queries_them() -> None:
    r = make()
    exclude(r, 0.0, x=(A,), y=(C,))
    v3(r, 10.0, BLOCK_OLD_SOURCES, sources=(A, C, D))
    _, sources, timer = r.group_state(G)  # type: ignore[misc]
    assert timer == GMI
    assert sources[D] == 10.0 + LMQT  # group timer, then lowered by the query
    assert sources[A] == 10.0 + LMQT
    assert sources[C] == STOPPED
    assert [set(q.sources) for q in sent(r)] == [{A, D}]  # Q(G, A-Y)


def test_exclude_to_ex_new_sources_take_the_old_group_timer() -> None:
    r = make()
    exclude(r, 0.0, x=(A,), y=(C,))
    v3(r, 100.0, CHANGE_TO_EXCLUDE_MODE, sources=(C, D))
    _, sources, timer = r.group_state(G)  # type: ignore[misc]
    assert set(sources) == {C, D}  # A deleted (X-A), C stays excluded
    assert sources[C] == STOPPED
    assert sources[D] == 100.0 + LMQT  # old group timer (260) lowered by Q(G, A-Y)
    assert timer == 100.0 + GMI
    assert [q.sources for q in sent(r)] == [(D,)]


def test_exclude_to_in_queries_group_and_sources_then_falls_back_to_include() -> None:
    r = make()
    exclude(r, 0.0, x=(A, B), y=(C,))
    v3(r, 10.0, CHANGE_TO_INCLUDE_MODE, sources=(B, D))
    queries = sent(r)
    assert [(q.sources, q.suppress) for q in queries] == [((A,), False), ((), False)]  # Q(G, X-A), then Q(G)
    assert r.memberships() == {(ANY, G)}
    run_until(r, 12.0)  # group timer lowered to LMQT: B and D (GMI) keep running, A expired with its query
    assert state(r) == (INCLUDE, {B, D}, set())
    assert changes(r) == [(True, B, G), (True, D, G), (False, ANY, G)]


def test_exclude_group_timer_expiry_without_sources_deletes_the_group() -> None:
    r = make()
    v3(r, 0.0, CHANGE_TO_EXCLUDE_MODE, sources=(C,))
    changes(r)
    run_until(r, 260.0)
    assert state(r) is None and changes(r) == [(False, ANY, G)]


def test_exclude_source_timer_expiry_moves_the_source_to_the_exclude_list() -> None:
    r = make()
    v3(r, 0.0, CHANGE_TO_EXCLUDE_MODE)
    v3(r, 0.0, ALLOW_NEW_SOURCES, sources=(A,))
    v3(r, 100.0, MODE_IS_EXCLUDE)  # refreshes the group timer only: A is deleted (X-A)
    assert state(r) == (EXCLUDE, set(), set())
    v3(r, 100.0, ALLOW_NEW_SOURCES, sources=(B,))
    v3(r, 300.0, MODE_IS_EXCLUDE, sources=(B,))  # B in X: its timer keeps running (GMI from 100)
    run_until(r, 360.0)
    assert state(r) == (EXCLUDE, set(), {B})


def test_source_specific_retransmissions_split_by_the_suppress_flag() -> None:
    r = make()
    v3(r, 0.0, MODE_IS_INCLUDE, sources=(A, B))
    v3(r, 10.0, BLOCK_OLD_SOURCES, sources=(A, B))
    assert [(q.sources, q.suppress) for q in sent(r)] == [((A, B), False)]
    v3(r, 10.5, ALLOW_NEW_SOURCES, sources=(A,))  # a host still wants A
    run_until(r, 11.0)
    assert [(q.sources, q.suppress) for q in sent(r)] == [((A,), True), ((B,), False)]
    run_until(r, 12.0)
    assert state(r) == (INCLUDE, {A}, set())


def test_many_sources_are_split_across_queries() -> None:
    r = make()
    sources = tuple(f"10.2.{i // 250}.{i % 250 + 1}" for i in range(400))
    v3(r, 0.0, MODE_IS_INCLUDE, sources=sources)
    v3(r, 1.0, BLOCK_OLD_SOURCES, sources=sources)
    assert [len(q.sources) for q in sent(r)] == [MAX_SOURCES_PER_QUERY, 400 - MAX_SOURCES_PER_QUERY]


# --- compatibility and robustness ----------------------------------------------------------------------------


def test_with_a_v2_host_present_block_is_ignored_and_to_ex_drops_its_sources() -> None:
    r = make()
    v2_report(r, 0.0)
    v3(r, 1.0, ALLOW_NEW_SOURCES, sources=(A,))
    v3(r, 2.0, BLOCK_OLD_SOURCES, sources=(A,))
    assert sent(r) == []
    assert state(r) == (EXCLUDE, {A}, set())
    v3(r, 3.0, CHANGE_TO_EXCLUDE_MODE, sources=(B,))  # as TO_EX({}): X-{} deleted, B never excluded
    assert state(r) == (EXCLUDE, set(), set())


def test_compatibility_ends_with_the_older_host_present_timer() -> None:
    r = make()
    v2_report(r, 0.0)
    v3(r, 1.0, CHANGE_TO_EXCLUDE_MODE)
    assert r.compatibility_mode(G, 259.0) == 2
    assert r.compatibility_mode(G, 260.0) == 3


def test_unknown_record_types_and_bad_sources_are_skipped_not_fatal() -> None:
    r = make()
    report = packet.build_v3_report(
        [GroupRecord(9, G, (A,)), GroupRecord(MODE_IS_INCLUDE, G, (A, "0.0.0.0", "224.1.1.1", "127.0.0.1"))]
    )
    r.receive(0.0, HOST, packet.ALL_IGMPV3_ROUTERS, report)
    assert changes(r) == [(True, A, G)]
    assert r.counters.ignored == 2


def test_malformed_messages_are_counted_and_dropped() -> None:
    r = make()
    bad = bytearray(packet.build_report(2, G))
    bad[4] ^= 1
    r.receive(0.0, HOST, G, bytes(bad))
    r.receive(0.0, HOST, G, b"\x16")
    assert r.counters.malformed_dropped == 2 and r.memberships() == set()


def test_counters_count_what_arrives() -> None:
    r = make()
    v2_report(r, 0.0)
    v3(r, 0.0, CHANGE_TO_EXCLUDE_MODE)
    leave(r, 1.0)
    query_from(r, 1.0, HIGHER, packet.build_query(3, ANY, 100))
    c = r.counters.as_dict()
    assert (c["reports_received"], c["leaves_received"], c["queries_received"]) == (2, 1, 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2, 3, 4, 5, 6]), st.sets(st.sampled_from([A, B, C, D]))), max_size=12),
       st.lists(st.floats(min_value=0, max_value=5), min_size=12, max_size=12))  # fmt: skip
def test_any_sequence_of_records_keeps_the_memberships_consistent(
    records: list[tuple[int, set[str]]], gaps: list[float]
) -> None:
    """Whatever hosts say, the published changes add up to `memberships()`, and EXCLUDE is exactly (*,G)."""
    r = make()
    held: set[tuple[str, str]] = set()
    now = 0.0
    for (rtype, sources), gap in zip(records, gaps, strict=False):
        now += gap
        run_until(r, now)
        v3(r, now, rtype, sources=tuple(sorted(sources)))
        for added, source, group in r.take_changes():
            assert ((source, group) in held) != added
            (held.add if added else held.discard)((source, group))
        assert held == r.memberships()
        s = state(r)
        if s is not None and s[0] == EXCLUDE:
            assert held == {(ANY, G)}
    run_until(r, now + 1000)
    for added, source, group in r.take_changes():
        (held.add if added else held.discard)((source, group))
    assert held == set() and r.group_state(G) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=96), st.sampled_from([HOST, LOWER, HIGHER, ANY]))
def test_no_payload_crashes_the_router(payload: bytes, source: str) -> None:
    """Random bytes, also with a correct checksum (so they get past it into the message parsers and the tables)."""
    r = make()
    fixed = bytearray(payload)
    if len(fixed) >= 4:
        fixed[2:4] = b"\x00\x00"
        fixed[2:4] = packet.checksum(bytes(fixed)).to_bytes(2, "big")
    for data in (payload, bytes(fixed)):
        r.receive(1.0, source, G, data)
    run_until(r, 300.0)
    r.tick(1e6)  # one jump beyond any group membership interval a query could have made us adopt
    c = r.counters
    assert c.malformed_dropped + c.ignored + c.queries_received + c.reports_received + c.leaves_received >= 2
    assert r.memberships() == set()  # everything expired by now
