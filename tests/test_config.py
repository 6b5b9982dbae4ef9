"""The one configuration loader: what it accepts, and errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest

from mgm.core.runtime.config import DEFAULT_SOURCE, ConfigError, InterfaceRef, find_line, load, loads

GOOD = """\
# a comment
[manager]
api = "ipc:///tmp/mgm-x/api"
events = "ipc:///tmp/mgm-x/events"
log_level = "debug"

[plugins.igmp]
interfaces = ["veth0", 3, {interface = "veth1", next_hop = "10.0.0.2"}]
robustness = 2

[plugins."static-a"]
protocol_id = 100
component_id = 7
routes = [{source = "10.0.0.1", group = "232.1.1.1"}]
"""


def test_a_full_file_loads_with_every_part() -> None:
    config = loads(GOOD, "good.toml")
    assert config.manager.api == "ipc:///tmp/mgm-x/api"
    assert config.manager.events == "ipc:///tmp/mgm-x/events"
    assert config.manager.log_level == "debug"
    assert list(config.plugins) == ["igmp", "static-a"]
    igmp = config.plugins["igmp"]
    assert igmp.interfaces == (
        InterfaceRef("veth0", "0.0.0.0", "plugins.igmp.interfaces[0]"),
        InterfaceRef(3, "0.0.0.0", "plugins.igmp.interfaces[1]"),
        InterfaceRef("veth1", "10.0.0.2", "plugins.igmp.interfaces[2]"),
    )
    assert igmp.protocol_id is None and igmp.component_id is None
    assert igmp.table["robustness"] == 2
    static = config.plugins["static-a"]
    assert (static.protocol_id, static.component_id) == (100, 7)
    assert static.table["routes"][0]["group"] == "232.1.1.1"


def test_the_plugin_table_is_read_only() -> None:
    table = loads(GOOD).plugins["igmp"].table
    with pytest.raises(TypeError):
        table["robustness"] = 3  # type: ignore[index]


def test_a_plugin_without_a_table_gets_an_empty_one() -> None:
    absent = loads(GOOD).plugin("nowhere")
    assert absent.name == "nowhere" and absent.interfaces == () and dict(absent.table) == {}


def test_an_empty_file_is_a_valid_config() -> None:
    config = loads("")
    assert config.manager.api is None and dict(config.plugins) == {}


def test_the_embedded_default_loads_without_a_file() -> None:
    config = load(None)
    assert config.source == DEFAULT_SOURCE
    assert config.manager.log_level == "info"


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "mgm.toml"
    path.write_text(GOOD)
    assert load(path).plugins["igmp"].table["robustness"] == 2
    assert load(path).source == str(path)


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read"):
        load(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "key_path", "line", "words"),
    [
        ("[manager]\nlog_level = 'loud'\n", "manager.log_level", 2, "must be one of"),
        ("[manager]\n\napi = 'http://x'\n", "manager.api", 3, "endpoint"),
        ("[manager]\nevents = 5\n", "manager.events", 2, "endpoint"),
        ("[manager]\nport = 5\n", "manager.port", 2, "unknown key"),
        ("[managers]\n", "managers", 1, "unknown section"),
        ("plugins = 3\n", "plugins", 1, "table of"),
        ("[plugins]\nigmp = 3\n", "plugins.igmp", 2, "must be a table"),
        ("[plugins.a]\nprotocol_id = -1\n", "plugins.a.protocol_id", 2, "integer from 0"),
        ("[plugins.a]\nprotocol_id = true\n", "plugins.a.protocol_id", 2, "integer from 0"),
        ("[plugins.a]\n\ncomponent_id = '1'\n", "plugins.a.component_id", 3, "integer from 0"),
        ("[plugins.a]\ninterfaces = 'eth0'\n", "plugins.a.interfaces", 2, "must be a list"),
        ("[plugins.a]\ninterfaces = ['eth0', 1.5]\n", "plugins.a.interfaces[1]", 2, "name or index"),
        ("[plugins.a]\ninterfaces = [-2]\n", "plugins.a.interfaces[0]", 2, "index is from 0"),
        ("[plugins.a]\ninterfaces = ['']\n", "plugins.a.interfaces[0]", 2, "cannot be an interface name"),
        ("[plugins.a]\ninterfaces = ['eth0', 'eth0']\n", "plugins.a.interfaces[1]", 2, "listed twice"),
        ("[plugins.a]\ninterfaces = [{interface = 'e', next_hop = '300.1.1.1'}]\n", "plugins.a.interfaces[0]", 2,
         "dotted-quad"),
        ("[plugins.a]\ninterfaces = [{name = 'e'}]\n", "plugins.a.interfaces[0]", 2, "interface table"),
        ('[plugins."bad name"]\n', "plugins.bad name", 1, "entry point name"),
        ("[plugins]\na = {protocol_id = 'x'}\n", "plugins.a.protocol_id", 2, "integer from 0"),
    ],
)
def test_errors_name_file_key_and_line(text: str, key_path: str, line: int, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        loads(text, "conf.toml")
    err = info.value
    assert (err.source, err.key_path, err.line) == ("conf.toml", key_path, line)
    assert words in err.message
    assert str(err).startswith(f"conf.toml:{line}: {key_path}:")


def test_every_mistake_of_the_file_is_named_not_only_the_first() -> None:
    """One run tells all: each section and plugin table, and each interface of a table, is checked."""
    text = (
        "[manager]\nport = 5\nlog_level = 'loud'\n"
        "[plugins.a]\ninterfaces = [1.5, 'eth0', 'eth0']\n"
        "[plugins.b]\nprotocol_id = -1\n"
        "[other]\n"
    )
    with pytest.raises(ConfigError) as info:
        loads(text, "conf.toml")
    assert info.value.lines() == [
        "conf.toml:8: other: unknown section (expected [manager] or [plugins.NAME])",
        "conf.toml:2: manager.port: unknown key (known: api, clients, curve_client_key, curve_secret_key, "
        "curve_server_public_key, events, log_level)",
        "conf.toml:3: manager.log_level: must be one of debug, info, warning, error, not 'loud'",
        "conf.toml:5: plugins.a.interfaces[0]: must be an interface name or index, not 1.5",
        "conf.toml:5: plugins.a.interfaces[2]: interface 'eth0' is listed twice",
        "conf.toml:7: plugins.b.protocol_id: must be an integer from 0 to 4294967295, not -1",
    ]
    assert str(info.value) == "\n".join(info.value.lines())
    assert (info.value.key_path, info.value.line) == ("other", 8)  # the first, as before


def test_a_syntax_error_gives_the_line() -> None:
    with pytest.raises(ConfigError) as info:
        loads("[manager]\nlog_level = \n", "broken.toml")
    assert info.value.line == 2
    assert "not valid TOML" in str(info.value)
    assert str(info.value).startswith("broken.toml:2:")


def test_find_line_follows_tables_dotted_and_quoted_keys() -> None:
    text = '[plugins.igmp]\nx = 1\n\n[plugins."static-a"]\nroutes = []\n[other]\nplugins.p.q = 2\n'
    assert find_line(text, "plugins.igmp") == 1
    assert find_line(text, "plugins.igmp.x") == 2
    assert find_line(text, "plugins.static-a.routes[3]") == 5
    assert find_line(text, "other.plugins.p.q") == 7
    assert find_line(text, "plugins.absent") is None


def test_later_checks_get_the_same_kind_of_error() -> None:
    err = loads(GOOD, "good.toml").error("plugins.igmp.interfaces[0]", "no interface named veth0")
    assert str(err) == "good.toml:8: plugins.igmp.interfaces[0]: no interface named veth0"


def test_the_command_line_wins_where_it_says_other_than_the_default() -> None:
    from mgm.bus.endpoints import default_api, default_events
    from mgm.core.runtime.config import ManagerConfig, effective_manager

    config = loads('[manager]\napi = "ipc:///tmp/c/api"\nlog_level = "debug"\n')
    api, events = default_api(), default_events()
    assert effective_manager(config, api, events, "info") == ManagerConfig("ipc:///tmp/c/api", events, "debug")
    x_api, x_events = "ipc:///tmp/x/api", "ipc:///tmp/x/ev"
    assert effective_manager(config, x_api, x_events, "error") == ManagerConfig(x_api, x_events, "error")
    assert effective_manager(loads(""), api, events, "info") == ManagerConfig(api, events, "info")
