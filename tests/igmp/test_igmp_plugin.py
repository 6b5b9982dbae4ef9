"""plugins/igmp/plugin.py without sockets: configuration checks, and disable/enable IGMP against a recording context."""

from __future__ import annotations

from typing import Any

import pytest
from test_igmp_router import run_until, v2_report

from mgm.core.runtime.config import ConfigError, loads
from mgm.core.types import IGMP_PROTOCOL_ID, Interface
from mgm.plugins.host import plugin_manager
from mgm.plugins.igmp import packet
from mgm.plugins.igmp.plugin import IgmpPlugin, read_parameters
from mgm.plugins.igmp.router import Parameters, Router

IF = Interface(5)
OTHER = Interface(6)
ME = "10.0.0.5"
HOST = "10.0.0.100"
ANY = "0.0.0.0"
G1, G2, G3 = "239.1.1.1", "239.2.2.2", "239.3.3.3"


class RecordingContext:
    """Stands in for PluginContext: records membership calls in order, and keeps its ledger of memberships."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, Interface]] = []
        self.ledger: dict[tuple[str, str, Interface], None] = {}

    def add_membership(self, source: str, group: str, interface: Interface, **kw: Any) -> None:
        self.calls.append(("add", source, group, interface))
        self.ledger[(source, group, interface)] = None

    def delete_membership(self, source: str, group: str, interface: Interface, **kw: Any) -> None:
        self.calls.append(("delete", source, group, interface))
        self.ledger.pop((source, group, interface), None)

    @property
    def memberships(self) -> tuple[tuple[str, str, str, str, Interface, int], ...]:
        """PluginContext.memberships' shape: (source, source_mask, group, group_mask, interface, flags)."""
        return tuple((s, "", g, "", i, 1) for s, g, i in self.ledger)

    def held(self, if_index: int) -> set[tuple[str, str]]:
        return {(s, g) for s, g, i in self.ledger if i.if_index == if_index}

    def take(self) -> list[tuple[str, str, str, Interface]]:
        out, self.calls = self.calls, []
        return out


def table(text: str) -> Any:
    return loads(text, "igmp.toml").plugin("igmp").table


def plugin_with_routers(*interfaces: Interface) -> tuple[IgmpPlugin, RecordingContext, dict[int, Router]]:
    plugin = IgmpPlugin()
    ctx = RecordingContext()
    plugin.ctx = ctx  # type: ignore[assignment]
    for interface in interfaces:
        router = Router(interface, Parameters(), ME)
        router.start(0.0)
        plugin.routers[interface.if_index] = router
    plugin._flush()  # no socket: the startup queries are dropped, nothing is scheduled
    return plugin, ctx, plugin.routers


# --- configuration ---------------------------------------------------------------------------------


def test_the_plugin_fits_the_hook_specs_and_registers_as_igmp() -> None:
    plugin = IgmpPlugin()
    pm = plugin_manager("igmp", plugin)
    assert pm.hook.mgm_protocol(config=table('[plugins.igmp]\ninterfaces = ["eth0"]\n')) == (IGMP_PROTOCOL_ID, 1)
    assert plugin.params == Parameters()


def test_configured_values_are_used() -> None:
    params = read_parameters(table("[plugins.igmp]\nversion = 2\nquery_interval = 30\nlast_member_query_count = 3\n"))
    assert (params.version, params.query_interval, params.last_member_query_count) == (2, 30.0, 3)
    assert params.startup_query_interval == 7.5


def test_a_bad_value_names_file_key_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        read_parameters(table('[plugins.igmp]\ninterfaces = ["eth0"]\nrobustness = 0\n'))
    assert (info.value.source, info.value.key_path, info.value.line) == ("igmp.toml", "plugins.igmp.robustness", 3)
    assert "from 1 to 7" in str(info.value)


def test_every_bad_value_is_named_at_once_with_its_line() -> None:
    text = ('[plugins.igmp]\nrobustness = 0\nquery_interval = 10\nquery_response_interval = 12\n'
            'ssm_range = "1.2.3.0/24"\n')
    with pytest.raises(ConfigError) as info:
        read_parameters(table(text))
    found = [(e.key_path, e.line) for e in (info.value, *info.value.also)]
    assert found == [("plugins.igmp.robustness", 2), ("plugins.igmp.query_response_interval", 4),
                     ("plugins.igmp.ssm_range", 5)]  # fmt: skip


def test_an_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown key") as info:
        read_parameters(table("[plugins.igmp]\nquerier_interval = 3\n"))
    assert info.value.line == 2


# --- memberships and disable/enable --------------------------------------------------------------------


def test_router_changes_become_membership_calls_on_the_right_interface() -> None:
    plugin, ctx, routers = plugin_with_routers(IF, OTHER)
    v2_report(routers[5], 1.0, G1)
    v2_report(routers[6], 1.0, G2)
    plugin._flush()
    assert ctx.take() == [("add", ANY, G1, IF), ("add", ANY, G2, OTHER)]
    run_until(routers[5], 261.0)
    plugin._flush()
    assert ctx.take() == [("delete", ANY, G1, IF)]
    assert (ctx.held(5), ctx.held(6)) == (set(), {(ANY, G2)})


def test_while_disabled_nothing_reaches_the_manager_and_enable_catches_up() -> None:
    plugin, ctx, routers = plugin_with_routers(IF, OTHER)
    router = routers[5]
    v2_report(router, 0.0, G1)  # will leave while disabled
    v2_report(router, 0.0, G3)  # stays throughout
    plugin._flush()
    ctx.take()

    plugin.mgm_disable_igmp(ctx, IF)  # type: ignore[arg-type]
    v2_report(router, 10.0, G2)  # joins while disabled
    router.receive(11.0, HOST, packet.ALL_ROUTERS, packet.build_leave(G1))
    run_until(router, 20.0)
    v2_report(routers[6], 20.0, G2)  # the other interface is not disabled
    plugin._flush()
    assert ctx.take() == [("add", ANY, G2, OTHER)]
    assert router.memberships() == {(ANY, G2), (ANY, G3)}, "the router kept tracking hosts"

    plugin.mgm_enable_igmp(ctx, IF)  # type: ignore[arg-type]
    assert ctx.take() == [("add", ANY, G2, IF), ("add", ANY, G3, IF), ("delete", ANY, G1, IF)]
    assert ctx.held(5) == {(ANY, G2), (ANY, G3)}

    router.receive(30.0, HOST, packet.ALL_ROUTERS, packet.build_leave(G3))
    run_until(router, 40.0)
    plugin._flush()
    assert ctx.take() == [("delete", ANY, G3, IF)], "enabled again: changes flow at once"


def test_disable_and_enable_before_the_routers_exist_are_remembered() -> None:
    plugin = IgmpPlugin()
    ctx = RecordingContext()
    plugin.mgm_disable_igmp(ctx, IF)  # type: ignore[arg-type]
    assert plugin.disabled == {5}
    plugin.mgm_enable_igmp(ctx, IF)  # type: ignore[arg-type]
    assert plugin.disabled == set() and ctx.take() == []


def test_counters_are_per_interface() -> None:
    plugin, _, routers = plugin_with_routers(IF, OTHER)
    v2_report(routers[6], 1.0, G1)
    routers[6].receive(1.0, HOST, G1, b"garbage!")
    assert plugin.counters()[5]["reports_received"] == 0
    assert plugin.counters()[6]["reports_received"] == 1
    assert plugin.counters()[6]["malformed_dropped"] == 1
