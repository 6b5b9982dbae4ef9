"""The static routes without sockets: parsing, every check with its file and line, lookup, RPF, reload diff."""

from __future__ import annotations

import pytest

from mgm.core.runtime.config import ConfigError, InterfaceRef, loads, plugin_table
from mgm.core.types import Interface
from mgm.plugins.static.routes import ReloadPlan, RouteTable, memberships, parse, plan_reload, rpf

GOOD = """\
[plugins.static]
interfaces = ["veth0", "veth1", "veth2", {interface = "tun0", next_hop = "10.9.0.2"}]
routes = [
  { source = "10.0.0.1", group = "239.1.1.1", from = "veth0", to = ["veth1", "veth2"] },
  { group = "239.1.1.1", from = "veth2", to = ["veth1"] },
  { group = "239.2.2.2", from = {interface = "tun0", next_hop = "10.9.0.2"}, to = ["veth0"] },
]
"""

SAME_AS_TABLES = """\
[plugins.static]
interfaces = ["veth0", "veth1", "veth2", {interface = "tun0", next_hop = "10.9.0.2"}]

[[plugins.static.routes]]
source = "10.0.0.1"
group = "239.1.1.1"
from = "veth0"
to = ["veth1", "veth2"]

[[plugins.static.routes]]
group = "239.1.1.1"
from = "veth2"
to = ["veth1"]

[[plugins.static.routes]]
group = "239.2.2.2"
from = "tun0"
to = ["veth0"]
"""

INDEX = {"veth0": 10, "veth1": 11, "veth2": 12, "tun0": 20}


def resolve(ref: InterfaceRef) -> Interface:
    return Interface(INDEX[str(ref.name_or_index)], ref.next_hop)


def table_of(text: str, source: str = "static.toml") -> RouteTable:
    return parse(loads(text, source), "static")


# --- parsing -------------------------------------------------------------------------------------


def test_routes_parse_with_their_lines_and_owned_interfaces() -> None:
    table = table_of(GOOD)
    assert table.source == "static.toml"
    assert [(r.source, r.group, r.line) for r in table.routes] == [
        ("10.0.0.1", "239.1.1.1", 4),
        ("0.0.0.0", "239.1.1.1", 5),
        ("0.0.0.0", "239.2.2.2", 6),
    ]
    first = table.routes[0]
    assert first.incoming is table.interfaces[0]
    assert first.outgoing == (table.interfaces[1], table.interfaces[2])
    assert table.routes[2].incoming == InterfaceRef("tun0", "10.9.0.2", "plugins.static.interfaces[3]")
    assert first.describe() == "(10.0.0.1, 239.1.1.1) from veth0 to veth1, veth2"
    assert table.routes[2].describe() == "(*, 239.2.2.2) from tun0 (next hop 10.9.0.2) to veth0"


def test_an_array_of_tables_says_the_same() -> None:
    inline, tables = table_of(GOOD), table_of(SAME_AS_TABLES)
    assert [r.describe() for r in tables.routes] == [r.describe() for r in inline.routes]
    assert [r.line for r in tables.routes] == [4, 10, 15]


def test_a_table_without_routes_has_none() -> None:
    assert table_of('[plugins.static]\ninterfaces = ["a"]\n').routes == ()
    assert table_of("[manager]\n").routes == ()


def test_the_routes_are_read_again_from_what_the_host_passes() -> None:
    config = loads(GOOD, "static.toml")
    table = plugin_table(config.plugin("static").table, "static")
    assert parse(table.config(), table.name).routes == table_of(GOOD).routes
    with pytest.raises(TypeError, match="PluginTable"):
        plugin_table({"routes": []}, "static")


def test_a_quoted_plugin_name_still_gives_lines() -> None:
    text = '[plugins."static"]\ninterfaces = ["a", "b"]\nroutes = [\n  { group = "10.1.1.1", from = "a", to = ["b"] }]'
    with pytest.raises(ConfigError) as info:
        table_of(text, "q.toml")
    assert info.value.line == 4


# --- every mistake names the file, the key and the line -------------------------------------------

HEAD = '[plugins.static]\ninterfaces = ["a", "b", "c", {interface = "p", next_hop = "10.0.0.2"}, ' \
       '{interface = "p", next_hop = "10.0.0.3"}]\n'  # fmt: skip


def routes(*lines: str) -> str:
    return HEAD + "routes = [\n" + "".join(f"  {line},\n" for line in lines) + "]\n"


OK = '{ group = "239.1.1.1", from = "a", to = ["b"] }'


def with_source(source: str) -> str:
    return routes(f'{{ source = "{source}", group = "239.1.1.1", from = "a", to = ["b"] }}')


def with_from(incoming: str) -> str:
    """`incoming` is TOML: a quoted name, a number, a table."""
    return routes(f'{{ group = "239.1.1.1", from = {incoming}, to = ["b"] }}')


def with_to(outgoing: str) -> str:
    return routes(f'{{ group = "239.1.1.1", from = "a", to = {outgoing} }}')


@pytest.mark.parametrize(
    ("text", "key", "line", "words"),
    [
        (HEAD + "routes = 3\n", "routes", 3, "must be a list"),
        (HEAD + "rootes = []\n", "rootes", 3, "unknown key for the static plugin"),
        (routes(OK, '"239.1.1.1"'), "routes[1]", 5, "a route is a table"),
        (routes('{ group = "239.1.1.1", from = "a", to = ["b"], ttl = 3 }'), "routes[0].ttl", 4, "unknown key"),
        (routes('{ from = "a", to = ["b"] }'), "routes[0]", 4, "needs 'group'"),
        (routes('{ group = "239.1.1.1", to = ["b"] }'), "routes[0]", 4, "needs 'from'"),
        (routes('{ group = "239.1.1.1", from = "a" }'), "routes[0]", 4, "needs 'to'"),
        (routes(OK, '{ group = "239.1.1", from = "a", to = ["b"] }'), "routes[1].group", 5, "dotted-quad"),
        (routes('{ group = "239.01.1.1", from = "a", to = ["b"] }'), "routes[0].group", 4, "dotted-quad"),
        (routes('{ group = 239, from = "a", to = ["b"] }'), "routes[0].group", 4, "dotted-quad"),
        (routes('{ group = "10.1.1.1", from = "a", to = ["b"] }'), "routes[0].group", 4, "not a multicast group"),
        (routes('{ group = "240.1.1.1", from = "a", to = ["b"] }'), "routes[0].group", 4, "not a multicast group"),
        (routes('{ group = "224.0.0.251", from = "a", to = ["b"] }'), "routes[0].group", 4, "link-local"),
        (with_source("10.0.0"), "routes[0].source", 4, "dotted-quad"),
        (with_source("0.0.0.0"), "routes[0].source", 4, "leave out `source`"),
        (with_source("239.0.0.1"), "routes[0].source", 4, "cannot be the source"),
        (with_source("255.255.255.255"), "routes[0].source", 4, "cannot be the source"),
        (with_source("127.0.0.1"), "routes[0].source", 4, "cannot be the source"),
        (
            with_from('"eth9"'),
            "routes[0].from",
            4,
            "'eth9' is not among this plugin's interfaces (a, b, c, p (next hop 10.0.0.2), p (next hop 10.0.0.3))",
        ),
        (with_from("3"), "routes[0].from", 4, "not among"),
        (with_from("1.5"), "routes[0].from", 4, "must name an interface"),
        (with_from("true"), "routes[0].from", 4, "must name an interface"),
        (with_from('"p"'), "routes[0].from", 4, "several next hops"),
        (
            with_from('{interface = "p", next_hop = "10.0.0.4"}'),
            "routes[0].from",
            4,
            "'p (next hop 10.0.0.4)' is not among",
        ),
        (with_from('{name = "p"}'), "routes[0].from", 4, "an interface table is"),
        (with_from('{interface = "p", next_hop = "x"}'), "routes[0].from", 4, "dotted-quad"),
        (with_to("[]"), "routes[0].to", 4, "non-empty list"),
        (with_to('"b"'), "routes[0].to", 4, "non-empty list"),
        (with_to('["b", "d"]'), "routes[0].to[1]", 4, "'d' is not among"),
        (with_to('["b", "a"]'), "routes[0].to[1]", 4, "a is the incoming interface"),
        (with_to('["b", "c", "b"]'), "routes[0].to[2]", 4, "listed twice"),
    ],
)
def test_every_mistake_names_file_key_and_line(text: str, key: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        table_of(text, "conf.toml")
    err = info.value
    assert (err.source, err.key_path, err.line) == ("conf.toml", f"plugins.static.{key}", line)
    assert words in err.message
    assert str(err).startswith(f"conf.toml:{line}: plugins.static.{key}:")


def test_every_route_is_checked_so_all_mistakes_come_at_once() -> None:
    text = HEAD.replace("[plugins.static]\n", "[plugins.static]\nttl = 3\n") + "routes = [\n" + "".join(
        f"  {line},\n" for line in (
            '{ group = "10.1.1.1", from = "a", to = ["b"] }', OK, '{ from = "a", to = ["b"] }',
            '{ group = "239.1.1.1", from = "c", to = ["b"] }',
        )
    ) + "]\n"  # fmt: skip
    with pytest.raises(ConfigError) as info:
        table_of(text, "conf.toml")
    assert [line.split(": ", 2)[:2] for line in info.value.lines()] == [
        ["conf.toml:2", "plugins.static.ttl"],
        ["conf.toml:5", "plugins.static.routes[0].group"],
        ["conf.toml:7", "plugins.static.routes[2]"],
        ["conf.toml:8", "plugins.static.routes[3]"],  # the conflict with routes[1]
    ]


def test_every_mistake_of_a_route_is_named_but_none_that_needs_a_bad_value() -> None:
    text = routes('{ group = "10.1.1.1", source = "0.0.0.0", from = "d", to = ["a", "e", "a"], ttl = 3 }',
                  '{ group = "224.0.0.1" }')  # fmt: skip
    with pytest.raises(ConfigError) as info:
        table_of(text, "conf.toml")
    found = [info.value, *info.value.also]  # to[0] is not the incoming interface: `from` is bad
    expected = [("[0].ttl", 4, "unknown key"), ("[0].group", 4, "not a multicast"), ("[0].source", 4, "leave out"),
                ("[0].from", 4, "'d' is not among"), ("[0].to[1]", 4, "'e' is not among"), ("[0].to[2]", 4, "twice"),
                ("[1]", 5, "needs 'from'"), ("[1]", 5, "needs 'to'"), ("[1].group", 5, "link-local")]  # fmt: skip
    assert [(e.key_path, e.line) for e in found] == [(f"plugins.static.routes{k}", n) for k, n, _ in expected]
    assert all(words in e.message for e, (_, _, words) in zip(found, expected, strict=True))


def test_in_an_array_of_tables_a_mistake_points_at_its_key() -> None:
    text = SAME_AS_TABLES.replace('group = "239.2.2.2"', 'group = "224.0.0.1"')
    with pytest.raises(ConfigError) as info:
        table_of(text, "t.toml")
    assert (info.value.key_path, info.value.line) == ("plugins.static.routes[2].group", 16)


# --- one (S,G), one incoming interface ----------------------------------------------------------


def test_two_routes_for_one_sg_with_different_incoming_interfaces_name_both_lines() -> None:
    text = routes(
        '{ source = "10.0.0.1", group = "239.1.1.1", from = "a", to = ["b"] }',
        OK,
        '{ source = "10.0.0.1", group = "239.1.1.1", from = "c", to = ["b"] }',
    )
    with pytest.raises(ConfigError) as info:
        table_of(text, "dup.toml")
    err = info.value
    assert (err.key_path, err.line) == ("plugins.static.routes[2]", 6)
    assert str(err).startswith("dup.toml:6: plugins.static.routes[2]: route for (10.0.0.1, 239.1.1.1) from c")
    assert "conflicts with plugins.static.routes[0] at line 4, from a" in err.message
    assert "one incoming interface per (source, group)" in err.message


def test_two_star_g_routes_for_one_group_name_both_lines() -> None:
    text = routes(OK, '{ group = "239.1.1.1", from = "c", to = ["b"] }')
    with pytest.raises(ConfigError, match=r"conf.toml:5: .*\(\*, 239.1.1.1\) from c conflicts with .*line 4, from a"):
        table_of(text, "conf.toml")


def test_the_same_route_twice_is_refused_too_naming_both_lines() -> None:
    text = routes(OK, '{ group = "239.1.1.1", from = "a", to = ["c"] }')
    with pytest.raises(ConfigError) as info:
        table_of(text, "conf.toml")
    assert info.value.line == 5
    assert "a second route for (*, 239.1.1.1) (the first is plugins.static.routes[0] at line 4)" in info.value.message


def test_sg_and_star_g_routes_of_one_group_may_differ() -> None:
    table = table_of(routes(OK, '{ source = "10.0.0.1", group = "239.1.1.1", from = "c", to = ["a"] }'))
    assert len(table.routes) == 2


# --- lookup and RPF ------------------------------------------------------------------------------


def test_lookup_prefers_the_sg_route_over_the_star_g_route() -> None:
    table = table_of(GOOD)
    assert table.lookup("10.0.0.1", "239.1.1.1") is table.routes[0]
    assert table.lookup("10.0.0.7", "239.1.1.1") is table.routes[1]
    assert table.lookup("10.0.0.1", "239.2.2.2") is table.routes[2]
    assert table.lookup("10.0.0.1", "239.3.3.3") is None


def test_rpf_answers_the_configured_incoming_interface_where_it_differs() -> None:
    table = table_of(GOOD)
    assert rpf(table, resolve, "10.0.0.1", "239.1.1.1", Interface(12)) == (Interface(10), "0.0.0.0")
    assert rpf(table, resolve, "10.0.0.1", "239.1.1.1", Interface(10)) is None  # agrees
    assert rpf(table, resolve, "10.0.0.7", "239.1.1.1", Interface(10)) == (Interface(12), "0.0.0.0")
    assert rpf(table, resolve, "10.0.0.1", "239.3.3.3", Interface(10)) is None  # no route: no opinion
    # the upstream neighbour of a point-to-multipoint incoming interface is its next hop
    assert rpf(table, resolve, "10.0.0.1", "239.2.2.2", Interface(10)) == (Interface(20, "10.9.0.2"), "10.9.0.2")


def test_memberships_are_each_routes_sg_on_each_outgoing_interface() -> None:
    assert memberships(table_of(GOOD), resolve) == [
        ("10.0.0.1", "239.1.1.1", Interface(11)),
        ("10.0.0.1", "239.1.1.1", Interface(12)),
        ("0.0.0.0", "239.1.1.1", Interface(11)),
        ("0.0.0.0", "239.2.2.2", Interface(10)),
    ]


# --- the SIGHUP diff -------------------------------------------------------------------------------

A, B, C, D = (Interface(i) for i in (1, 2, 3, 4))
M1 = ("10.0.0.1", "239.1.1.1", B)
M2 = ("0.0.0.0", "239.2.2.2", C)
M3 = ("0.0.0.0", "239.3.3.3", D)


def test_nothing_changed_plans_nothing() -> None:
    plan = plan_reload([A, B, C], [M1, M2], [A, B, C], [M2, M1])
    assert plan == ReloadPlan()
    assert not plan


def test_the_plan_deletes_what_went_and_adds_what_came() -> None:
    plan = plan_reload([A, B, C], [M1, M2], [A, B, C, D], [M2, M3])
    assert plan == ReloadPlan(delete=(M1,), release=(), take=(D,), add=(M3,))
    assert plan
    assert plan.summary() == "1 membership(s) to add, 1 to delete, 1 interface(s) to take, 0 to release"


def test_interfaces_no_longer_listed_are_released() -> None:
    plan = plan_reload([A, B, C], [M1, M2], [A, B], [M1])
    assert plan == ReloadPlan(delete=(M2,), release=(C,), take=(), add=())


def test_a_reload_of_a_real_file_diffs_as_the_plugin_applies_it() -> None:
    old = table_of(GOOD)
    new_text = GOOD.replace('to = ["veth1", "veth2"]', 'to = ["veth2"]').replace('"239.2.2.2"', '"239.4.4.4"')
    new = table_of(new_text)
    plan = plan_reload([], memberships(old, resolve), [], memberships(new, resolve))
    assert plan.delete == (("10.0.0.1", "239.1.1.1", Interface(11)), ("0.0.0.0", "239.2.2.2", Interface(10)))
    assert plan.add == (("0.0.0.0", "239.4.4.4", Interface(10)),)
