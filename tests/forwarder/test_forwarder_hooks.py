"""The forwarder's hooks in-process, with a stand-in for the context (no manager, no root)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from test_forwarder_mirror import mfe, state

from mgm.bus.status import MgmError, Status
from mgm.core.runtime.config import ConfigError, PluginTable, loads
from mgm.plugins.forwarder.plugin import COUNTERS_BATCH, Settings, read_settings
from mgm.plugins.forwarder.sim import SimForwarder
from mgm.plugins.testing import wait_for_async

S, G = "10.1.0.2", "239.1.1.1"


class FakeClient:
    epoch: int | None = 1
    manager_lost = False


class FakeContext:
    """Records requests; each reply is a future the test settles."""

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = PluginTable(config or {}, "forwarder-sim")
        self.client = FakeClient()
        self.requests: list[tuple[str, dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        self.tasks: list[asyncio.Task[Any]] = []

    def request(self, op: str, args: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.requests.append((op, args, future))
        return future

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task

    def ops(self, op: str) -> list[dict[str, Any]]:
        return [args for o, args, _f in self.requests if o == op]


def run(scenario: Callable[[SimForwarder, FakeContext], Awaitable[None]], config: dict[str, Any] | None = None) -> None:
    """Start the plugin on a FakeContext, run `scenario` with both, then cancel the tasks the plugin spawned."""

    async def main() -> None:
        plugin = SimForwarder()
        ctx = FakeContext(config)
        assert plugin.mgm_protocol(config=ctx.config) == (65001, 1)
        plugin.mgm_start(mgm=ctx, config=ctx.config)  # type: ignore[arg-type]
        try:
            await scenario(plugin, ctx)
        finally:
            for task in ctx.tasks:
                task.cancel()

    asyncio.run(main())


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_a_refused_new_packet_lets_the_next_packet_ask_again() -> None:
    async def scenario(plugin: SimForwarder, ctx: FakeContext) -> None:
        plugin.mgm_state_resync(mgm=ctx, state=state([3, 5]))  # type: ignore[arg-type]
        plugin.inject(S, G, 3)
        await _settle()
        assert ctx.ops("new_packet") == [{"source": S, "group": G, "if_index": 3, "next_hop": "0.0.0.0"}]
        plugin.inject(S, G, 3)  # still unresolved: the plane holds it, no second upcall, no second request
        await _settle()
        assert len(ctx.ops("new_packet")) == 1
        ctx.requests[-1][2].set_exception(MgmError(Status.ERROR_INVALID_PARAMETER, "no"))
        await _settle()
        assert plugin.mirror is not None and plugin.mirror.requested == set()

    run(scenario)


def test_counters_go_in_batches_that_fit_a_frame() -> None:
    async def scenario(plugin: SimForwarder, ctx: FakeContext) -> None:
        mfes = [mfe(S, f"239.2.{i // 250}.{i % 250}", 3, [5]) for i in range(COUNTERS_BATCH + 10)]
        plugin.mgm_state_resync(mgm=ctx, state=state([3, 5], mfes))  # type: ignore[arg-type]
        assert plugin.report_counters(ctx) == COUNTERS_BATCH + 10  # type: ignore[arg-type]
        assert [len(args["entries"]) for args in ctx.ops("mfe_counters")] == [COUNTERS_BATCH, 10]

    run(scenario)


def test_the_counters_task_reports_on_its_interval() -> None:
    async def scenario(plugin: SimForwarder, ctx: FakeContext) -> None:
        plugin.mgm_state_resync(mgm=ctx, state=state([3, 5], [mfe(S, G, 3, [5])]))  # type: ignore[arg-type]
        plugin.inject(S, G, 3, count=2)
        await wait_for_async(lambda: ctx.ops("mfe_counters"), 10, "a counters report")
        (first, *_rest) = ctx.ops("mfe_counters")
        assert first["entries"][0]["in_packets"] == 2

    run(scenario, {"counters_interval": 0.05})


def test_no_counters_while_the_manager_is_gone() -> None:
    """Each would wait in the queue and be refused by the next manager (an unknown handle): one warning
    per report and interval.  The first report after it is back carries everything."""

    async def scenario(plugin: SimForwarder, ctx: FakeContext) -> None:
        plugin.mgm_state_resync(mgm=ctx, state=state([3, 5], [mfe(S, G, 3, [5])]))  # type: ignore[arg-type]
        ctx.client.manager_lost = True
        await asyncio.sleep(0.3)  # six intervals
        assert ctx.ops("mfe_counters") == []
        ctx.client.manager_lost = False
        await wait_for_async(lambda: ctx.ops("mfe_counters"), 10, "a counters report")
        assert ctx.ops("mfe_counters")[0]["entries"][0]["source"] == S

    run(scenario, {"counters_interval": 0.05})


def test_a_stop_withdraws_every_vif_and_entry() -> None:
    """The Linux forwarder's entries outlive its routing socket (static), so a clean stop removes them itself."""

    async def scenario(plugin: SimForwarder, ctx: FakeContext) -> None:
        plugin.mgm_state_resync(mgm=ctx, state=state([3, 5], [mfe(S, G, 3, [5])]))  # type: ignore[arg-type]
        assert plugin.sim is not None and plugin.sim.vifs and plugin.sim.mfc
        plugin.mgm_stop(mgm=ctx)  # type: ignore[arg-type]
        assert (plugin.sim.vifs, plugin.sim.mfc) == ({}, {})

    run(scenario)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("counters_interval = 0", "counters_interval"),
        ('counters_interval = "5"', "counters_interval"),
        ("restart_grace = true", "restart_grace"),
        ('wrong_if = "some"', "wrong_if"),
        ("table = -1", "table"),
    ],
)
def test_bad_settings_name_the_file_key_and_line(line: str, key: str) -> None:
    config = loads(f"[plugins.forwarder]\n{line}\n", "fwd.toml")
    with pytest.raises(ConfigError) as info:
        read_settings(config.plugin("forwarder").table)
    assert str(info.value).startswith(f"fwd.toml:2: plugins.forwarder.{key}:")


def test_an_unknown_key_is_refused_with_its_line_and_the_known_ones() -> None:
    """A typo (counter_interval) would otherwise leave the default in force without a word."""
    config = loads("[plugins.forwarder]\ncounter_interval = 1\n", "fwd.toml")
    with pytest.raises(ConfigError) as info:
        read_settings(config.plugin("forwarder").table)
    assert str(info.value).startswith("fwd.toml:2: plugins.forwarder.counter_interval: unknown key")
    assert "counters_interval" in str(info.value)
    sim = loads('[plugins.forwarder-sim]\ncontrol = "ipc:///tmp/x"\n', "sim.toml")
    assert read_settings(sim.plugin("forwarder-sim").table, frozenset({"control"})) == Settings()
    with pytest.raises(ConfigError, match="control: unknown key"):
        read_settings(sim.plugin("forwarder-sim").table)


def test_good_settings() -> None:
    config = loads('[plugins.forwarder]\ncounters_interval = 1\nwrong_if = "oil"\ntable = 7\n', "fwd.toml")
    settings = read_settings(config.plugin("forwarder").table)
    assert (settings.counters_interval, settings.wrong_if, settings.table) == (1.0, "oil", 7)
