"""The proxy's decisions without sockets: the RFC 4605 merge, the join order, filters, creation alerts, settings."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from proxy_fakes import FakeKernel

from mgm.core.runtime.config import ConfigError, loads
from mgm.core.types import Interface, is_link_local
from mgm.plugins.proxy import merge, settings
from mgm.plugins.proxy.merge import ASM, GroupFilter, Op, plan, upstream_membership
from mgm.plugins.proxy.plugin import ProxyPlugin

ANY = "0.0.0.0"
S1, S2, S3 = "10.0.0.1", "10.0.0.2", "192.0.2.9"
G = "239.1.2.3"


def test_the_union_of_downstream_sources_is_joined_upstream() -> None:
    wanted = {"eth1": {S1}, "eth2": {S2, S3}}
    assert upstream_membership(G, wanted, {}) == frozenset({S1, S2, S3})


def test_star_g_on_any_downstream_overrides_the_sources() -> None:
    assert upstream_membership(G, {"eth1": {S1}, "eth2": {ANY}}, {}) == ASM
    assert upstream_membership(G, {"eth1": {S1, ANY}}, {}) == ASM


def test_nothing_wanted_is_not_joined() -> None:
    assert upstream_membership(G, {}, {}) is None
    assert upstream_membership(G, {"eth1": set()}, {}) is None


def test_link_local_groups_are_never_joined_upstream() -> None:
    assert upstream_membership("224.0.0.251", {"eth1": {ANY}}, {}) is None
    assert upstream_membership("224.0.0.22", {"eth1": {S1}}, {}) is None
    assert upstream_membership("224.0.1.1", {"eth1": {ANY}}, {}) == ASM  # outside 224.0.0.0/24


def test_a_denied_interface_does_not_count_towards_the_upstream_membership() -> None:
    filters = {"eth2": GroupFilter.of(deny=["239.1.0.0/16"])}
    assert upstream_membership(G, {"eth1": {S1}, "eth2": {ANY}}, filters) == frozenset({S1})
    assert upstream_membership(G, {"eth2": {ANY}}, filters) is None


def test_allow_lists_and_deny_wins() -> None:
    f = GroupFilter.of(allow=["239.1.0.0/16"], deny=["239.1.2.0/24"])
    assert f.permits("239.1.9.9")
    assert not f.permits("239.1.2.3")  # allowed by the /16, denied by the /24: deny wins
    assert not f.permits("239.2.0.1")  # outside the allow list
    assert GroupFilter().permits("239.2.0.1")  # no list: everything
    assert GroupFilter.of(allow=["239.5.5.5"]).permits("239.5.5.5")  # an address is a /32


@pytest.mark.parametrize("prefix", ["10.0.0.0/8", "239.1.2.3/16", "nonsense", "224.0.0.0/3"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError):
        GroupFilter.of(allow=[prefix])


def test_plan_joins_before_it_drops() -> None:
    assert plan(G, None, ASM) == [Op(True, G, None)]
    assert plan(G, ASM, None) == [Op(False, G, None)]
    assert plan(G, ASM, ASM) == []
    # sources -> (*,G): the (*,G) join comes first, so the upstream never sees the group left
    assert plan(G, frozenset({S1, S2}), ASM) == [Op(True, G, None), Op(False, G, S1), Op(False, G, S2)]
    assert plan(G, ASM, frozenset({S1})) == [Op(True, G, S1), Op(False, G, None)]
    assert plan(G, frozenset({S1}), frozenset({S2})) == [Op(True, G, S2), Op(False, G, S1)]
    assert plan(G, frozenset({S1}), None) == [Op(False, G, S1)]


def test_filters_become_boundaries_covering_exactly_the_refused_groups() -> None:
    """The manager keeps a downstream out of OILs by boundary: the ranges must refuse what the filter does."""
    assert merge.boundary_ranges(merge.ALL) == []
    assert merge.boundary_ranges(GroupFilter.of(deny=["239.1.0.0/16", "239.1.2.3"])) == [("239.1.0.0", "255.255.0.0")]
    allow_one = GroupFilter.of(allow=["239.2.0.0/16"], deny=["239.2.9.0/24"])
    ranges = merge.boundary_ranges(allow_one)
    assert len(ranges) == 13  # 224/4 minus a /16: 12 prefixes; plus the denied /24 inside it
    nets = [ipaddress.IPv4Network(f"{g}/{m}") for g, m in ranges]
    for group in ("224.0.0.1", "239.1.255.255", "239.2.9.7", "239.3.0.0", "239.255.255.255", "232.1.1.1"):
        refused = any(ipaddress.IPv4Address(group) in net for net in nets)
        assert refused == (not allow_one.permits(group)), group
    assert not any(ipaddress.IPv4Address("239.2.3.4") in net for net in nets)
    assert merge.boundary_ranges(GroupFilter.of(allow=["224.0.0.0/4"])) == []


@pytest.mark.parametrize(
    ("group", "in_if", "oil", "forward_upstream", "verdicts"),
    [
        # eth2's filter is its boundary in the manager: never in the OIL asked about
        (G, "eth0", ["eth1"], False, {"eth1": True}),
        # the upstream in an OIL: vetoed unless forward_upstream, and then only for flows from our downstream
        ("239.2.0.1", "eth1", ["eth0", "eth2"], False, {"eth0": False, "eth2": True}),
        (G, "eth1", ["eth0"], True, {"eth0": True}),
        (G, "eth2", ["eth0"], True, {"eth0": False}),  # eth2 may not carry G at all
        (G, "eth9", ["eth0"], True, {"eth0": False}),  # not from one of our downstream interfaces
        ("224.0.0.9", "eth1", ["eth0"], True, {"eth0": False}),
        # downstream to downstream is allowed (RFC 4605 4.2), and so are flows entering on another protocol's
        # interface: the MFE has that one incoming interface, a veto would keep its receivers from the flow
        ("239.2.0.1", "eth2", ["eth1"], False, {"eth1": True}),
        ("239.2.0.1", "eth7", ["eth1", "eth8"], False, {"eth1": True, "eth8": True}),
    ],
)
def test_creation_alert_disables_only_the_upstream(
    group: str, in_if: str, oil: list[str], forward_upstream: bool, verdicts: dict[str, bool]
) -> None:
    filters = {"eth2": GroupFilter.of(deny=["239.1.0.0/16"])}
    assert merge.creation_verdicts(group, in_if, oil, upstream="eth0", filters=filters, downstream=["eth1", "eth2"],
                                   forward_upstream=forward_upstream) == verdicts  # fmt: skip


# --- settings ------------------------------------------------------------------------------------

GOOD = """\
[plugins.igmp]
interfaces = ["eth1", "eth2"]

[plugins.proxy]
interfaces = ["eth0", "eth1", "eth2"]
upstream = "eth0"
downstream = [
  "eth1",
  { interface = "eth2", allow = ["239.0.0.0/8"], deny = ["239.9.0.0/16"] },
]
"""


def test_settings_read_upstream_downstream_and_filters() -> None:
    conf = settings.parse(loads(GOOD, "router.toml"), "proxy")
    assert conf.upstream == "eth0"
    assert conf.downstream == ("eth1", "eth2")
    assert conf.forward_upstream is False
    assert conf.filters["eth2"].permits("239.1.1.1") and not conf.filters["eth2"].permits("239.9.1.1")
    assert "eth1" not in conf.filters


@pytest.mark.parametrize(
    ("change", "line", "words"),
    [
        (('upstream = "eth0"', 'upstream = "eth1"'), 8, "cannot be downstream too"),
        (('interfaces = ["eth0", "eth1", "eth2"]', 'interfaces = ["eth0", "eth1"]'), 5, "must list 'eth2'"),
        (('interfaces = ["eth0", "eth1", "eth2"]', 'interfaces = ["eth0", "eth1", "eth2", "eth3"]'), 5, "neither"),
        (('deny = ["239.9.0.0/16"]', 'deny = ["10.0.0.0/8"]'), 9, "224.0.0.0/4"),
        (('"eth1",\n', '"eth1",\n  "eth1",\n'), 9, "listed twice"),
        (('interfaces = ["eth1", "eth2"]', 'interfaces = ["eth0", "eth1", "eth2"]'), 6, "never a querier"),
        (('interfaces = ["eth1", "eth2"]', 'interfaces = ["eth1"]'), 9, "IGMP must run there"),
        (('upstream = "eth0"\n', 'upstream = "eth0"\nforward_upstream = "yes"\n'), 7, "true or false"),
        (('upstream = "eth0"\n', 'upstream = "eth0"\nupstreams = 1\n'), 7, "unknown key"),
    ],
)
def test_settings_mistakes_name_the_file_and_line(change: tuple[str, str], line: int, words: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(ConfigError) as info:
        settings.parse(loads(text, "router.toml"), "proxy")
    assert info.value.source == "router.toml"
    assert info.value.line == line, str(info.value)
    assert words in str(info.value)


def test_settings_mistakes_come_all_at_once() -> None:
    """Unknown keys, each bad downstream entry; the cross-checks once the entries are right, all of theirs."""
    text = GOOD.replace('upstream = "eth0"\n', 'upstream = "eth0"\nupstreams = 1\nfast = true\n').replace(
        'deny = ["239.9.0.0/16"]', 'deny = ["10.0.0.0/8"]').replace('"eth1",\n', '"eth1",\n  "eth1",\n')
    with pytest.raises(ConfigError) as info:
        settings.parse(loads(text, "router.toml"), "proxy")
    assert [line.split(": ", 2)[1] for line in info.value.lines()] == [
        "plugins.proxy.upstreams", "plugins.proxy.fast", "plugins.proxy.downstream[1]", "plugins.proxy.downstream[2]",
    ]  # fmt: skip
    text = GOOD.replace('interfaces = ["eth1", "eth2"]', "interfaces = []")
    with pytest.raises(ConfigError) as info:
        settings.parse(loads(text, "router.toml"), "proxy")
    assert [line.split(": ", 2)[1] for line in info.value.lines()] == [
        "plugins.proxy.downstream[0]", "plugins.proxy.downstream[1]",
    ]  # fmt: skip


def test_settings_name_every_mistake_of_every_kind_with_its_line() -> None:
    """Issue 11: two downstream interfaces missing from `interfaces` and the other mistakes are all named."""
    flags = 'interfaces = ["eth0"]\nforward_upstream = "yes"\nimmediate_report = 1'
    text = GOOD.replace('interfaces = ["eth1", "eth2"]', 'interfaces = ["eth0"]').replace(
        'interfaces = ["eth0", "eth1", "eth2"]', flags)
    with pytest.raises(ConfigError) as info:
        settings.parse(loads(text, "router.toml"), "proxy")
    assert [tuple(line.split(": ", 2)[:2]) for line in info.value.lines()] == [
        ("router.toml:6", "plugins.proxy.forward_upstream"), ("router.toml:7", "plugins.proxy.immediate_report"),
        ("router.toml:5", "plugins.proxy.interfaces"), ("router.toml:8", "plugins.proxy.upstream"),
        ("router.toml:10", "plugins.proxy.downstream[0]"), ("router.toml:11", "plugins.proxy.downstream[1]"),
    ]  # fmt: skip
    assert "must list 'eth1', 'eth2' too" in str(info.value) and "never a querier" in str(info.value)
    text = GOOD.replace('upstream = "eth0"\n', "").replace('allow = ["239.0.0.0/8"]', 'allow = "239.0.0.0/8"').replace(
        '"239.9.0.0/16"', '"10.0.0.0/8", "239.1.1.1/8"')
    with pytest.raises(ConfigError) as info:
        settings.parse(loads(text, "router.toml"), "proxy")
    assert [line.split(": ", 2)[1:] for line in info.value.lines()] == [
        ["plugins.proxy", 'the proxy needs `upstream = "IFNAME"` (the interface towards the multicast source)'],
        ["plugins.proxy.downstream[1]", 'allow must be a list of prefix strings like "239.1.0.0/16"'],
        ["plugins.proxy.downstream[1]", "'10.0.0.0/8' is not inside 224.0.0.0/4 (multicast groups)"],
        ["plugins.proxy.downstream[1]", "'239.1.1.1/8' is not an IPv4 prefix like 239.1.0.0/16 (239.1.1.1/8 has "
                                        "host bits set)"],
    ]  # fmt: skip


def test_no_upstream_or_downstream_is_an_error() -> None:
    with pytest.raises(ConfigError, match="needs `upstream"):
        settings.parse(loads('[plugins.proxy]\ndownstream = ["eth1"]\n', "r.toml"), "proxy")
    with pytest.raises(ConfigError, match="needs `downstream"):
        settings.parse(loads('[plugins.proxy]\nupstream = "eth0"\ninterfaces = ["eth0"]\n', "r.toml"), "proxy")


def test_is_link_local() -> None:
    assert is_link_local("224.0.0.1") and is_link_local("224.0.0.255") and not is_link_local("224.0.1.1")
    assert not is_link_local("239.0.0.1")


# --- the plugin's bookkeeping, with a kernel stand-in ---------------------------------------------


def proxy_with(kernel: FakeKernel, **filters: GroupFilter) -> Any:
    plugin = ProxyPlugin()
    plugin.settings = settings.Settings("up", ("d1", "d2"), {}, False)
    plugin.upstream = Interface(1)
    for index, name in ((2, "d1"), (3, "d2")):
        plugin.downstream[Interface(index)] = name
        plugin.filters[Interface(index)] = filters.get(name, merge.ALL)
    plugin.kernel = kernel  # type: ignore[assignment]  # the stand-in has the methods the plugin uses
    return plugin


def test_the_plugin_joins_once_and_follows_the_merge_without_a_gap() -> None:
    kernel = FakeKernel()
    proxy = proxy_with(kernel)
    d1, d2 = Interface(2), Interface(3)
    proxy.local(True, S1, G, d1)
    proxy.local(True, S2, G, d2)
    assert kernel.ops == [("join", G, S1), ("join", G, S2)]
    proxy.local(True, ANY, G, d2)  # (*,G) wins: joined first, then the sources go
    assert kernel.ops[2:] == [("join", G, None), ("leave", G, S1), ("leave", G, S2)]
    proxy.local(True, ANY, G, d1)  # a second (*,G) receiver changes nothing upstream
    assert len(kernel.ops) == 5
    proxy.local(False, ANY, G, d2)
    proxy.local(False, ANY, G, d1)  # back to d1's and d2's sources
    assert kernel.ops[5:] == [("join", G, S1), ("join", G, S2), ("leave", G, None)]
    proxy.local(False, S1, G, d1)
    proxy.local(False, S2, G, d2)
    assert kernel.where == {} and proxy.joined == {} and proxy.members == {}


def test_the_plugin_ignores_link_local_foreign_interfaces_and_remembers_refusals() -> None:
    kernel = FakeKernel(refuse=frozenset({"239.9.9.9"}))
    proxy = proxy_with(kernel, d2=GroupFilter.of(deny=["239.5.0.0/16"]))
    proxy.local(True, ANY, "224.0.0.251", Interface(2))
    proxy.local(True, ANY, G, Interface(9))  # not a downstream interface
    proxy.local(True, ANY, "239.5.1.1", Interface(3))  # denied on d2
    assert kernel.ops == []
    proxy.local(True, ANY, "239.9.9.9", Interface(2))
    assert proxy.errors == 1 and "239.9.9.9" not in proxy.joined  # not held: a later change tries again
    assert not hasattr(proxy, "mgm_rpf")  # the manager keeps the incoming interface it proposes, unasked
    verdicts = proxy.mgm_creation_alert(group="239.5.1.1", in_interface=Interface(1), oil=[Interface(2)])
    assert verdicts == {Interface(2): True}  # d2 (3) refuses 239.5/16 by boundary: the manager never offers it
