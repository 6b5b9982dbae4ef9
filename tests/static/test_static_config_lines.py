"""core.config's line lookup for list elements and the plugin table that knows its file.

The static plugin's errors name the line of the one route at fault, so
`find_line` must find an element of a list written over several lines, and
the n-th table of an array of tables.
"""

from __future__ import annotations

import pytest

from mgm.core.runtime.config import ConfigError, PluginTable, find_line, loads

MULTILINE = """\
[plugins.static]
interfaces = ["a", "b"]
routes = [  # a comment with [ { and "
  { source = "10.0.0.1", group = "239.1.1.1", from = "a", to = ["b"] },
  # { group = "a commented-out route" },
  { group = \"\"\"
239.2.2.2\"\"\", from = 'a', to = [
     "b"] },
  "a string, with a comma", [1,
  2], 5
]
"""

ARRAY_OF_TABLES = """\
[plugins.static]
interfaces = ["a"]

[[plugins.static.routes]]
group = "239.1.1.1"

[[plugins.static.routes]]
source = "10.0.0.1"
group = "239.1.1.1"

[plugins.other]
"""


@pytest.mark.parametrize(
    ("key", "line"),
    [
        *[(f"routes[{index}]", line) for index, line in ((0, 4), (1, 6), (2, 9), (3, 9), (4, 10))],
        ("routes[1].group", 6),  # a key inside an element points at the element
        ("routes[9]", 3),  # an index past the end falls back to the list key
    ],
)
def test_an_element_of_a_list_over_several_lines_has_its_own_line(key: str, line: int) -> None:
    assert find_line(MULTILINE, f"plugins.static.{key}") == line


@pytest.mark.parametrize(
    ("key", "line"),
    [("routes[0]", 4), ("routes[1]", 7), ("routes[1].source", 8), ("routes[1].group", 9), ("routes[0].group", 5)],
)
def test_an_array_of_tables_counts_its_headers(key: str, line: int) -> None:
    assert find_line(ARRAY_OF_TABLES, f"plugins.static.{key}") == line


def test_a_list_on_one_line_keeps_the_line_of_its_key() -> None:
    assert find_line('[plugins.a]\n\ninterfaces = ["x", "y"]\n', "plugins.a.interfaces[1]") == 3


def test_the_plugin_table_knows_its_file_and_makes_errors_with_lines() -> None:
    config = loads(MULTILINE, "static.toml")
    table = config.plugin("static").table
    assert isinstance(table, PluginTable)
    assert (table.name, table.source, table.text) == ("static", "static.toml", MULTILINE)
    err = table.error("routes[1].group", "not a multicast group")
    assert isinstance(err, ConfigError)
    assert str(err) == "static.toml:6: plugins.static.routes[1].group: not a multicast group"
    with pytest.raises(TypeError):
        table["routes"] = []  # type: ignore[index]


def test_a_missing_plugin_table_still_knows_the_file() -> None:
    table = loads("[manager]\n", "m.toml").plugin("static").table
    assert isinstance(table, PluginTable)
    assert (dict(table), table.source, table.name) == ({}, "m.toml", "static")


def test_every_element_of_a_long_list_has_its_own_line() -> None:
    body = "".join(f'  {{ group = "239.1.{i // 250}.{i % 250 + 1}" }},  # route {i}\n' for i in range(600))
    text = f"[plugins.static]\nx = 1\nroutes = [\n{body}]\n"
    assert [find_line(text, f"plugins.static.routes[{i}]") for i in range(600)] == list(range(4, 604))
