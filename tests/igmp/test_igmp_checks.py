"""What the router refuses to learn from: the SSM range (RFC 4604), and reports that did not come from this link.

Each rule is shown from both sides: the message that passes changes the
router's state, the one that fails leaves it untouched (no group, no
membership change, no query) and moves exactly its counter.  Defaults are
the RFC's, as in test_igmp_router.py (GMI 260 s, LMQT 2 s).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import pytest
from test_igmp_plugin import table
from test_igmp_router import changes, sent

from mgm.core.runtime.config import ConfigError
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
)
from mgm.plugins.igmp.plugin import read_parameters
from mgm.plugins.igmp.router import DROP_LOG_INTERVAL, INCLUDE, ParameterError, Parameters, Router

IF = Interface(5)
ME = "10.0.0.5"
LOWER = "10.0.0.3"
HOST = "10.0.0.100"
FAR = "192.168.7.7"
ANY = "0.0.0.0"
LAN = ipaddress.IPv4Network("10.0.0.0/24")
ASM_G = "239.1.1.1"
SSM_G = "232.1.1.1"
S1, S2 = "10.9.0.1", "10.9.0.2"
REASONS = ("ignored_ssm_asm", "bad_ttl", "no_router_alert", "foreign_source")


def make(subnets: tuple[ipaddress.IPv4Network, ...] = (LAN,), **config: object) -> Router:
    """A started router on 10.0.0.0/24, startup queries taken."""
    r = Router(IF, Parameters.from_config(config), ME, own_addresses={ME}, subnets=subnets)
    r.start(0.0)
    r.take_packets()
    return r


def old_report(r: Router, now: float, group: str, version: int = 2, src: str = HOST, **ip: Any) -> None:
    r.receive(now, src, group, packet.build_report(version, group), **ip)


def leave(r: Router, now: float, group: str, src: str = HOST, **ip: Any) -> None:
    r.receive(now, src, packet.ALL_ROUTERS, packet.build_leave(group), **ip)


def v3(r: Router, now: float, *records: tuple[int, str, tuple[str, ...]], src: str = HOST, **ip: Any) -> None:
    payload = packet.build_v3_report([GroupRecord(t, g, s) for t, g, s in records])
    r.receive(now, src, packet.ALL_IGMPV3_ROUTERS, payload, **ip)


def drops(r: Router) -> dict[str, int]:
    """The drop counters that are not zero."""
    counters = r.counters.as_dict()
    return {k: counters[k] for k in (*REASONS, "ignored", "no_router_alert_accepted") if counters[k]}


# --- configuration --------------------------------------------------------------------------------


def test_defaults_are_the_ssm_range_of_rfc_4607_and_local_sources_only() -> None:
    p = Parameters.from_config({})
    assert p.ssm_range == (ipaddress.IPv4Network("232.0.0.0/8"),)
    assert p.require_local_source is True
    assert p == Parameters()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("232.0.0.0/8", ("232.0.0.0/8",)),
        (["232.0.0.0/8", "239.232.0.0/16"], ("232.0.0.0/8", "239.232.0.0/16")),
        ([], ()),
    ],
)
def test_ssm_range_is_a_list_of_prefixes_a_single_string_or_none(value: object, expected: tuple[str, ...]) -> None:
    p = Parameters.from_config({"ssm_range": value})
    assert tuple(map(str, p.ssm_range)) == expected


@pytest.mark.parametrize(
    ("value", "key", "words"),
    [
        (["232.0.0.0/8", "10.0.0.0/8"], "ssm_range[1]", "not inside 224.0.0.0/4"),
        (["232.0.0.1/8"], "ssm_range[0]", "not an IPv4 prefix"),
        ("232/8", "ssm_range", "not an IPv4 prefix"),
        (["232.0.0.0/8", 232], "ssm_range[1]", "written as a string"),
        (232, "ssm_range", "must be a list of multicast prefixes"),
        ({"prefix": "232.0.0.0/8"}, "ssm_range", "must be a list of multicast prefixes"),
    ],
)
def test_a_bad_ssm_range_names_the_element_at_fault(value: object, key: str, words: str) -> None:
    with pytest.raises(ParameterError) as info:
        Parameters.from_config({"ssm_range": value})
    assert info.value.key == key
    assert words in info.value.message


@pytest.mark.parametrize("value", ["yes", 1, 0, None])
def test_require_local_source_is_a_boolean(value: object) -> None:
    with pytest.raises(ParameterError, match="true or false") as info:
        Parameters.from_config({"require_local_source": value})
    assert info.value.key == "require_local_source"


def test_the_new_keys_are_read_from_the_file_and_errors_point_at_the_line() -> None:
    params = read_parameters(table('[plugins.igmp]\nssm_range = ["232.0.0.0/8", "233.252.0.0/14"]\n'
                                   "require_local_source = false\n"))  # fmt: skip
    assert tuple(map(str, params.ssm_range)) == ("232.0.0.0/8", "233.252.0.0/14")
    assert params.require_local_source is False
    with pytest.raises(ConfigError) as info:
        read_parameters(table('[plugins.igmp]\nssm_range = [\n  "232.0.0.0/8",\n  "192.0.2.0/24",\n]\n'))
    assert (info.value.key_path, info.value.line) == ("plugins.igmp.ssm_range[1]", 4)
    assert "not inside 224.0.0.0/4" in str(info.value)
    with pytest.raises(ConfigError, match=r"plugins\.igmp\.require_local_source: must be true or false"):
        read_parameters(table('[plugins.igmp]\nrequire_local_source = "no"\n'))


# --- SSM range: any-source joins ignored (RFC 4604 section 2.2.1) ---------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_report_for_an_ssm_group_creates_nothing(version: int) -> None:
    r = make()
    old_report(r, 1.0, SSM_G, version)
    assert r.group_state(SSM_G) is None and changes(r) == [] and r.memberships() == set()
    assert drops(r) == {"ignored_ssm_asm": 1} and r.counters.reports_received == 1
    old_report(r, 2.0, ASM_G, version)
    assert changes(r) == [(True, ANY, ASM_G)], "outside the SSM range the same report joins"
    assert drops(r) == {"ignored_ssm_asm": 1}


@pytest.mark.parametrize("rtype", [MODE_IS_EXCLUDE, CHANGE_TO_EXCLUDE_MODE])
@pytest.mark.parametrize("sources", [(), (S1,)])
def test_an_exclude_record_for_an_ssm_group_creates_nothing(rtype: int, sources: tuple[str, ...]) -> None:
    r = make()
    v3(r, 1.0, (rtype, SSM_G, sources))
    assert r.group_state(SSM_G) is None and changes(r) == [] and sent(r) == []
    assert drops(r) == {"ignored_ssm_asm": 1}
    v3(r, 2.0, (rtype, ASM_G, sources))
    assert changes(r) == [(True, ANY, ASM_G)]


@pytest.mark.parametrize("rtype", [MODE_IS_INCLUDE, CHANGE_TO_INCLUDE_MODE, ALLOW_NEW_SOURCES])
def test_include_records_for_an_ssm_group_join_per_source(rtype: int) -> None:
    r = make()
    v3(r, 1.0, (rtype, SSM_G, (S1, S2)))
    assert changes(r) == [(True, S1, SSM_G), (True, S2, SSM_G)]
    state = r.group_state(SSM_G)
    assert state is not None and state[0] == INCLUDE and set(state[1]) == {S1, S2}
    assert drops(r) == {}


def test_block_for_an_ssm_group_queries_the_source_and_the_membership_goes() -> None:
    r = make()
    v3(r, 1.0, (ALLOW_NEW_SOURCES, SSM_G, (S1, S2)))
    changes(r)
    v3(r, 10.0, (BLOCK_OLD_SOURCES, SSM_G, (S1,)))
    assert [(q.group, q.sources) for q in sent(r)] == [(SSM_G, (S1,))]
    r.tick(10.0 + 2.0)  # LMQT later, nobody answered
    assert changes(r) == [(False, S1, SSM_G)]
    assert r.memberships() == {(S2, SSM_G)} and drops(r) == {}


def test_an_exclude_record_leaves_the_ssm_groups_source_state_alone() -> None:
    r = make()
    v3(r, 1.0, (ALLOW_NEW_SOURCES, SSM_G, (S1,)))
    changes(r)
    before = r.group_state(SSM_G)
    v3(r, 5.0, (CHANGE_TO_EXCLUDE_MODE, SSM_G, (S1,)), (MODE_IS_EXCLUDE, SSM_G, ()))
    assert r.group_state(SSM_G) == before and changes(r) == [] and sent(r) == []
    assert drops(r) == {"ignored_ssm_asm": 2}, "one per record"


def test_in_one_report_only_the_any_source_record_for_the_ssm_group_is_ignored() -> None:
    r = make()
    v3(r, 1.0, (CHANGE_TO_EXCLUDE_MODE, SSM_G, ()), (CHANGE_TO_EXCLUDE_MODE, ASM_G, ()),
       (ALLOW_NEW_SOURCES, "232.2.2.2", (S1,)))  # fmt: skip
    assert changes(r) == [(True, ANY, ASM_G), (True, S1, "232.2.2.2")]
    assert drops(r) == {"ignored_ssm_asm": 1}


def test_an_ignored_v2_report_does_not_put_the_ssm_group_in_v2_compatibility_mode() -> None:
    """A v2 host present would make BLOCK records ignored; its ignored report must not slow the v3 hosts' leaves."""
    r = make()
    v3(r, 1.0, (ALLOW_NEW_SOURCES, SSM_G, (S1,)))
    old_report(r, 2.0, SSM_G, 2)
    old_report(r, 2.0, SSM_G, 1)
    assert r.compatibility_mode(SSM_G, 3.0) == 3
    changes(r)
    v3(r, 10.0, (BLOCK_OLD_SOURCES, SSM_G, (S1,)))
    assert [q.sources for q in sent(r)] == [(S1,)], "BLOCK acted on: v3 compatibility mode"
    r.tick(12.0)
    assert changes(r) == [(False, S1, SSM_G)]
    old_report(r, 20.0, ASM_G, 2)
    assert r.compatibility_mode(ASM_G, 21.0) == 2, "outside the range a v2 report still sets v2 mode"


def test_a_v2_leave_for_an_ssm_group_is_ignored() -> None:
    r = make()
    v3(r, 1.0, (ALLOW_NEW_SOURCES, SSM_G, (S1,)))
    changes(r)
    before = r.group_state(SSM_G)
    leave(r, 5.0, SSM_G)
    assert r.group_state(SSM_G) == before and sent(r) == [] and changes(r) == []
    assert drops(r) == {"ignored_ssm_asm": 1} and r.counters.leaves_received == 1


def test_a_v2_router_ignores_v2_reports_for_ssm_groups_and_serves_the_others() -> None:
    r = make(version=2)
    old_report(r, 1.0, SSM_G, 2)
    old_report(r, 1.0, SSM_G, 1)
    assert r.group_state(SSM_G) is None and changes(r) == []
    assert drops(r) == {"ignored_ssm_asm": 2}
    old_report(r, 2.0, ASM_G, 2)
    assert changes(r) == [(True, ANY, ASM_G)]
    leave(r, 3.0, ASM_G)
    assert [(q.version, q.group) for q in sent(r)] == [(2, ASM_G)]


def test_an_empty_ssm_range_lets_any_source_joins_in_everywhere() -> None:
    r = make(ssm_range=[])
    old_report(r, 1.0, SSM_G, 2)
    v3(r, 1.0, (CHANGE_TO_EXCLUDE_MODE, "232.2.2.2", ()))
    assert changes(r) == [(True, ANY, SSM_G), (True, ANY, "232.2.2.2")]
    assert drops(r) == {}


def test_a_configured_ssm_range_replaces_the_default() -> None:
    r = make(ssm_range=["239.100.0.0/16"])
    old_report(r, 1.0, "239.100.3.4", 2)
    old_report(r, 1.0, SSM_G, 2)
    assert changes(r) == [(True, ANY, SSM_G)]
    assert drops(r) == {"ignored_ssm_asm": 1}
    assert r.is_ssm("239.100.255.255") and not r.is_ssm("239.101.0.0") and not r.is_ssm(SSM_G)


# --- IP TTL 1 (RFC 2236 section 9, RFC 3376 section 4) --------------------------------------------


@pytest.mark.parametrize("ttl", [0, 2, 64, 255])
def test_reports_with_a_ttl_other_than_1_are_dropped(ttl: int) -> None:
    r = make()
    old_report(r, 1.0, ASM_G, 2, ttl=ttl)
    v3(r, 1.0, (ALLOW_NEW_SOURCES, SSM_G, (S1,)), ttl=ttl)
    assert r.memberships() == set() and changes(r) == []
    assert drops(r) == {"bad_ttl": 2} and r.counters.reports_received == 2
    old_report(r, 2.0, ASM_G, 2, ttl=1)
    v3(r, 2.0, (ALLOW_NEW_SOURCES, SSM_G, (S1,)), ttl=1)
    assert changes(r) == [(True, ANY, ASM_G), (True, S1, SSM_G)]


def test_a_leave_with_a_ttl_other_than_1_is_dropped() -> None:
    r = make()
    old_report(r, 1.0, ASM_G, 2)
    changes(r)
    leave(r, 5.0, ASM_G, ttl=2)
    assert sent(r) == [] and drops(r) == {"bad_ttl": 1}
    r.tick(5.0 + 2.0)
    assert r.memberships() == {(ANY, ASM_G)}, "the leave did not start the last member queries"
    leave(r, 10.0, ASM_G, ttl=1)
    assert [q.group for q in sent(r)] == [ASM_G]


def test_a_query_with_a_ttl_other_than_1_does_not_win_the_election() -> None:
    r = make()
    general = packet.build_query(3, ANY, 100, qrv=2, qqi=125)
    r.receive(10.0, LOWER, packet.ALL_SYSTEMS, general, ttl=2)
    assert r.querier and r.querier_address == ME
    assert r.counters.queries_received == 1 and drops(r) == {"bad_ttl": 1}
    r.receive(11.0, LOWER, packet.ALL_SYSTEMS, general, ttl=1)
    assert not r.querier and r.querier_address == LOWER


def test_a_group_query_with_a_ttl_other_than_1_does_not_lower_timers() -> None:
    r = make()
    r.receive(1.0, LOWER, packet.ALL_SYSTEMS, packet.build_query(3, ANY, 100), ttl=1)  # we are non-querier
    old_report(r, 2.0, ASM_G, 2)
    timer = r.group_state(ASM_G)
    r.receive(3.0, LOWER, ASM_G, packet.build_query(3, ASM_G, 10), ttl=5)
    assert r.group_state(ASM_G) == timer
    r.receive(3.0, LOWER, ASM_G, packet.build_query(3, ASM_G, 10), ttl=1)
    state = r.group_state(ASM_G)
    assert state is not None and state[2] == 3.0 + 2.0


# --- Router Alert (RFC 3376 section 9: v3 reports without it are ignored) -------------------------


def test_a_v3_report_without_router_alert_is_dropped() -> None:
    r = make()
    v3(r, 1.0, (CHANGE_TO_EXCLUDE_MODE, ASM_G, ()), router_alert=False)
    assert r.group_state(ASM_G) is None and changes(r) == []
    assert drops(r) == {"no_router_alert": 1}
    v3(r, 2.0, (CHANGE_TO_EXCLUDE_MODE, ASM_G, ()), router_alert=True)
    assert changes(r) == [(True, ANY, ASM_G)]


def test_v1_v2_reports_and_leaves_without_router_alert_are_accepted_and_counted() -> None:
    r = make()
    old_report(r, 1.0, ASM_G, 2, router_alert=False)
    old_report(r, 1.0, "239.2.2.2", 1, router_alert=False)
    assert changes(r) == [(True, ANY, ASM_G), (True, ANY, "239.2.2.2")]
    leave(r, 5.0, ASM_G, router_alert=False)
    assert [q.group for q in sent(r)] == [ASM_G]
    assert drops(r) == {"no_router_alert_accepted": 3}


def test_queries_without_router_alert_still_count_in_the_election() -> None:
    r = make()
    r.receive(10.0, LOWER, packet.ALL_SYSTEMS, packet.build_query(2, ANY, 100), router_alert=False)
    assert not r.querier and drops(r) == {}


# --- the source is on this link (RFC 3376 section 9, RFC 4605) ------------------------------------


def test_reports_and_leaves_from_outside_the_interfaces_subnets_are_dropped() -> None:
    r = make()
    old_report(r, 1.0, ASM_G, 2, src=FAR)
    v3(r, 1.0, (ALLOW_NEW_SOURCES, SSM_G, (S1,)), src=FAR)
    assert r.memberships() == set() and changes(r) == []
    assert drops(r) == {"foreign_source": 2}
    old_report(r, 2.0, ASM_G, 2, src=HOST)
    changes(r)
    leave(r, 3.0, ASM_G, src=FAR)
    assert sent(r) == [] and drops(r) == {"foreign_source": 3}
    leave(r, 4.0, ASM_G, src=HOST)
    assert [q.group for q in sent(r)] == [ASM_G]


@pytest.mark.parametrize(
    ("config", "src"),
    [({}, ANY), ({"subnets": ()}, FAR), ({"require_local_source": False}, FAR)],
    ids=["from-0.0.0.0", "interface-without-address", "require_local_source-false"],
)
def test_reports_from_0_0_0_0_or_from_anywhere_where_asked_are_accepted(config: dict[str, Any], src: str) -> None:
    r = make(**config)
    old_report(r, 1.0, ASM_G, 2, src=src)
    v3(r, 1.0, (ALLOW_NEW_SOURCES, SSM_G, (S1,)), src=src)
    assert changes(r) == [(True, ANY, ASM_G), (True, S1, SSM_G)] and drops(r) == {}


def test_every_subnet_of_the_interface_is_local() -> None:
    r = make(subnets=(LAN, ipaddress.IPv4Network("172.16.0.0/30")))
    old_report(r, 1.0, ASM_G, 2, src="172.16.0.2")
    old_report(r, 1.0, "239.2.2.2", 2, src="172.16.0.4")
    assert changes(r) == [(True, ANY, ASM_G)] and drops(r) == {"foreign_source": 1}


def test_the_subnets_follow_the_interfaces_addresses() -> None:
    r = make()
    old_report(r, 1.0, ASM_G, 2, src=FAR)
    r.set_subnets([LAN, ipaddress.IPv4Network("192.168.7.0/24")])
    old_report(r, 2.0, ASM_G, 2, src=FAR)
    assert changes(r) == [(True, ANY, ASM_G)] and drops(r) == {"foreign_source": 1}
    r.set_subnets([LAN])
    old_report(r, 3.0, "239.2.2.2", 2, src=FAR)
    assert changes(r) == [] and drops(r) == {"foreign_source": 2}


def test_queries_from_outside_the_subnets_still_count_in_the_election() -> None:
    r = make(subnets=(ipaddress.IPv4Network("10.0.0.4/30"),))  # LOWER, 10.0.0.3, is outside
    r.receive(10.0, LOWER, packet.ALL_SYSTEMS, packet.build_query(3, ANY, 100))
    assert not r.querier and r.querier_address == LOWER and drops(r) == {}


# --- one reason per message, and logs that do not flood -------------------------------------------


def test_a_message_failing_several_checks_counts_once_under_the_first() -> None:
    r = make()
    v3(r, 1.0, (CHANGE_TO_EXCLUDE_MODE, SSM_G, ()), src=FAR, ttl=3, router_alert=False)
    v3(r, 1.0, (CHANGE_TO_EXCLUDE_MODE, SSM_G, ()), src=FAR, router_alert=False)
    v3(r, 1.0, (CHANGE_TO_EXCLUDE_MODE, SSM_G, ()), src=FAR)
    v3(r, 1.0, (CHANGE_TO_EXCLUDE_MODE, SSM_G, ()))
    assert drops(r) == {"bad_ttl": 1, "no_router_alert": 1, "foreign_source": 1, "ignored_ssm_asm": 1}
    assert r.group_state(SSM_G) is None


def test_each_reason_is_said_at_info_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    r = make()
    caplog.set_level(logging.DEBUG, logger="mgm.plugins.igmp.router")

    def lines(level: int) -> list[str]:
        out = [rec.getMessage() for rec in caplog.records if rec.levelno == level and "ignored" in rec.getMessage()]
        caplog.clear()
        return out

    old_report(r, 1.0, SSM_G, 2)
    (first,) = lines(logging.INFO)
    assert "v2 report for 232.1.1.1 from 10.0.0.100" in first and "ignored_ssm_asm" in first
    assert "SSM range 232.0.0.0/8" in first
    old_report(r, 2.0, "232.3.3.3", 2)
    old_report(r, 3.0, "232.4.4.4", 2, ttl=2)  # another reason has its own minute
    infos = lines(logging.INFO)
    assert len(infos) == 1 and "bad_ttl" in infos[0]
    old_report(r, 1.0 + DROP_LOG_INTERVAL, "232.5.5.5", 2)
    (again,) = lines(logging.INFO)
    assert "232.5.5.5" in again and "1 more since the last such line" in again
    assert r.counters.ignored_ssm_asm == 3


def test_the_counters_name_every_reason() -> None:
    r = make()
    assert set(REASONS) | {"no_router_alert_accepted"} <= set(r.counters.as_dict())
