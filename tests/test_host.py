"""The plugin host and its context without a manager: a fake client records what would be sent.

The multi-process tests (test_multiprocess*.py) run the same code against a
real manager; these pin the translation rules (event -> hook -> answer) and
the ledger one by one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeClient

from mgm.bus.status import MgmError, Status
from mgm.core.runtime.config import ConfigError, load, loads
from mgm.core.types import ClientId, Interface
from mgm.plugins.context import PluginContext
from mgm.plugins.hookspecs import hookimpl
from mgm.plugins.host import Host, PluginLoadError, load_plugin, plugin_manager, protocol_of, resolve_interfaces
from mgm.plugins.testing import wait_for_async

CONFIG = """\
[plugins.test-routing-a]
protocol_id = 100
component_id = 1
interfaces = [3, {interface = 4, next_hop = "10.0.0.2"}]
control = "ipc:///nonexistent"

[plugins.test-igmp]
"""


def make_host(name: str = "test-routing-a", client: FakeClient | None = None) -> tuple[Host, FakeClient, Any]:
    host = Host(name, loads(CONFIG, "t.toml"), "ipc:///x", "ipc:///y")
    client = client or FakeClient()
    host.ctx = PluginContext(name=name, client=client, protocol=host.protocol, config=host.plugin.table, handle=7)
    host.registered = True
    host.started = True
    return host, client, host.pm.get_plugin(name)


def run(coro_fn: Callable[[], Any]) -> Any:
    async def main() -> Any:
        return coro_fn()

    return asyncio.run(main())


# --- loading -------------------------------------------------------------------------------


def test_a_misspelled_hook_fails_at_load_with_its_name() -> None:
    with pytest.raises(PluginLoadError, match="mgm_local_joins") as info:
        load_plugin("test-misspelled")
    assert "does not fit the hook specs" in str(info.value)
    assert "mgm_local_join," in str(info.value)  # the message lists the real hooks


@pytest.mark.parametrize(("name", "words"), [("test-wrong-argument", "iface"), ("no-such-plugin", "test-routing-a")],
                         ids=["an unknown argument is named", "an unknown plugin name lists the installed ones"])
def test_a_plugin_that_does_not_load_says_why(name: str, words: str) -> None:
    with pytest.raises(PluginLoadError, match=words):
        load_plugin(name)


def test_a_module_object_is_a_plugin_too() -> None:
    class Module:  # stands for a module: an object with hookimpl functions
        @staticmethod
        @hookimpl
        def mgm_protocol() -> tuple[int, int]:
            return 300, 2

    assert plugin_manager("mod", Module).hook.mgm_protocol(config={}) == (300, 2)


def test_protocol_from_config_wins_over_the_hook() -> None:
    pm = load_plugin("test-igmp")
    assert protocol_of(pm, loads("[plugins.test-igmp]").plugin("test-igmp"), loads("")) == ClientId(10, 1)
    config = loads("[plugins.test-igmp]\ncomponent_id = 5\n")
    assert protocol_of(pm, config.plugin("test-igmp"), config) == ClientId(10, 5)


def test_a_protocol_nobody_gives_is_a_config_error_with_the_line() -> None:
    pm = load_plugin("test-routing-a")
    config = loads("[plugins.test-routing-a]\nprotocol_id = 100\n", "r.toml")
    with pytest.raises(ConfigError, match="component_id") as info:
        protocol_of(pm, config.plugin("test-routing-a"), config)
    assert info.value.source == "r.toml"


def test_interfaces_resolve_by_name_and_index() -> None:
    config = loads("[plugins.p]\ninterfaces = ['lo', 9]\n")
    assert resolve_interfaces(config.plugin("p"), config) == [Interface(1, "0.0.0.0"), Interface(9, "0.0.0.0")]
    config = loads("[plugins.p]\n\ninterfaces = ['nosuchif0']\n", "i.toml")
    with pytest.raises(ConfigError, match="nosuchif0") as info:
        resolve_interfaces(config.plugin("p"), config)
    assert info.value.line == 3


# --- events into hooks, answers out ----------------------------------------------------------

RPF = {"type": "rpf", "question": 41, "deadline": 0.1, "source": "10.1.1.1", "group": "232.1.1.1",
       "if_index": 3, "next_hop": "0.0.0.0", "upstream_neighbor": "0.0.0.0"}  # fmt: skip
CREATION = {"type": "creation_alert", "question": 42, "deadline": 0.1, "source": "10.1.1.1", "group": "232.1.1.1",
            "in_if_index": 3, "in_next_hop": "0.0.0.0",
            "oil": [{"if_index": 5, "next_hop": "0.0.0.0"}, {"if_index": 6, "next_hop": "0.0.0.0"}]}  # fmt: skip
JOIN = {"type": "local_join", "source": "0.0.0.0", "source_mask": "0.0.0.0", "group": "239.1.1.1",
        "group_mask": "255.255.255.255", "if_index": 3, "next_hop": "0.0.0.0"}  # fmt: skip


def test_rpf_without_an_answer_gets_the_default_at_once() -> None:
    host, client, plugin = make_host()
    run(lambda: host.on_event(RPF))
    assert plugin.calls[-1]["hook"] == "mgm_rpf" and plugin.calls[-1]["interface"] == [3, "0.0.0.0"]
    assert client.ops("answer") == [
        {"handle": 7, "question": 41, "if_index": 3, "next_hop": "0.0.0.0", "upstream_neighbor": "0.0.0.0"}
    ]


def test_rpf_answer_changes_the_incoming_interface() -> None:
    host, client, plugin = make_host()
    plugin.answers = {"rpf": {"if_index": 4, "next_hop": "0.0.0.0", "upstream_neighbor": "10.0.0.9"}}
    run(lambda: host.on_event(RPF))
    assert client.ops("answer")[0] | {} == {
        "handle": 7, "question": 41, "if_index": 4, "next_hop": "0.0.0.0", "upstream_neighbor": "10.0.0.9"
    }  # fmt: skip


def test_creation_alert_veto_and_default() -> None:
    host, client, plugin = make_host()
    run(lambda: host.on_event(CREATION))
    plugin.answers = {"creation": {"disable": [[6, "0.0.0.0"]]}}
    run(lambda: host.on_event(CREATION | {"question": 43}))
    default, veto = client.ops("answer")
    assert default["oil"] == [{"if_index": 5, "next_hop": "0.0.0.0", "enabled": True},
                              {"if_index": 6, "next_hop": "0.0.0.0", "enabled": True}]  # fmt: skip
    assert veto["question"] == 43
    assert veto["oil"] == [{"if_index": 5, "next_hop": "0.0.0.0", "enabled": True},
                           {"if_index": 6, "next_hop": "0.0.0.0", "enabled": False}]  # fmt: skip
    assert plugin.calls[-1]["in_interface"] == [3, "0.0.0.0"]


def test_answer_later_sends_nothing() -> None:
    host, client, plugin = make_host()
    plugin.answers = {"rpf": "never", "creation": "never"}
    run(lambda: (host.on_event(RPF), host.on_event(CREATION)))
    assert [c["hook"] for c in plugin.calls] == ["mgm_rpf", "mgm_creation_alert"]
    assert client.ops("answer") == []


def test_prune_alert_question_answers_with_a_timeout_or_without() -> None:
    host, client, plugin = make_host()
    prune = {"type": "prune_alert", "question": 50, "source": "10.1.1.1", "source_mask": "255.255.255.255",
             "group": "232.1.1.1", "group_mask": "255.255.255.255", "if_index": 3, "next_hop": "0.0.0.0",
             "member_delete": False, "deadline": 0.1}  # fmt: skip
    run(lambda: host.on_event(prune))
    plugin.answers = {"prune": 30}
    run(lambda: host.on_event(prune | {"question": 51}))
    run(lambda: host.on_event(prune | {"member_delete": True, "question": None}))
    assert client.ops("answer") == [{"handle": 7, "question": 50}, {"handle": 7, "question": 51, "timeout": 30.0}]
    assert [c["member_delete"] for c in plugin.calls] == [False, False, True]


def test_a_raising_hook_is_logged_and_the_question_gets_the_default(caplog: pytest.LogCaptureFixture) -> None:
    host, client, plugin = make_host()
    plugin.raise_in.add("mgm_rpf")
    with caplog.at_level(logging.ERROR, logger="mgm.plugins.host"):
        run(lambda: host.on_event(RPF))
    assert "plugin test-routing-a: hook mgm_rpf raised on rpf 10.1.1.1/232.1.1.1" in caplog.text
    assert client.ops("answer")[0]["if_index"] == 3


def test_malformed_and_unknown_events_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    host, _client, plugin = make_host()
    with caplog.at_level(logging.WARNING, logger="mgm.plugins.host"):
        run(lambda: (host.on_event({"type": "rpf"}), host.on_event({"type": "what"})))
    assert "malformed rpf event" in caplog.text and "unknown type 'what'" in caplog.text
    assert plugin.calls == []


def test_local_join_and_leave_reach_the_hooks_with_interfaces() -> None:
    host, _client, plugin = make_host()
    run(lambda: (host.on_event(JOIN), host.on_event(JOIN | {"type": "local_leave"})))
    assert [(c["hook"], c["group"], c["interface"]) for c in plugin.calls] == [
        ("mgm_local_join", "239.1.1.1", [3, "0.0.0.0"]),
        ("mgm_local_leave", "239.1.1.1", [3, "0.0.0.0"]),
    ]


def test_a_resync_delivers_only_the_difference_and_open_questions_once() -> None:
    host, client, plugin = make_host()
    other = JOIN | {"group": "239.2.2.2"}
    run(lambda: host.on_event(JOIN))
    snapshot = {"registered": True, "interfaces": [], "questions": [RPF],
                "local_members": [{k: v for k, v in other.items() if k != "type"}]}  # fmt: skip
    run(lambda: (host.on_snapshot("proto/100/1", snapshot), host.on_snapshot("proto/100/1", snapshot)))
    hooks = [(c["hook"], c.get("group")) for c in plugin.calls]
    assert hooks == [("mgm_local_join", "239.1.1.1"), ("mgm_local_leave", "239.1.1.1"),
                     ("mgm_local_join", "239.2.2.2"), ("mgm_rpf", "232.1.1.1")]  # fmt: skip
    assert len(client.ops("answer")) == 1


def test_a_snapshot_taken_before_registration_changes_nothing() -> None:
    host, _client, plugin = make_host()
    run(lambda: host.on_event(JOIN))
    run(lambda: host.on_snapshot("proto/100/1", {"registered": False, "local_members": [], "questions": []}))
    assert [c["hook"] for c in plugin.calls] == ["mgm_local_join"]


def test_igmp_enable_disable_from_events_and_resync() -> None:
    host, _client, plugin = make_host("test-igmp")
    iface = {"if_index": 3, "next_hop": "0.0.0.0"}
    run(lambda: host.on_event({"type": "disable_igmp", **iface}))
    run(lambda: host.on_snapshot("proto/10/1", {"registered": True, "local_members": [], "questions": [],
                                                "interfaces": [iface | {"igmp_enabled": True}]}))  # fmt: skip
    assert [(c["hook"], c["interface"]) for c in plugin.calls] == [
        ("mgm_disable_igmp", [3, "0.0.0.0"]), ("mgm_enable_igmp", [3, "0.0.0.0"])
    ]  # fmt: skip


# --- the context -------------------------------------------------------------------------------


def make_ctx() -> tuple[PluginContext, FakeClient]:
    client = FakeClient()
    return PluginContext(name="p", client=client, protocol=ClientId(100, 1), config={}, handle=7), client  # type: ignore[arg-type]


def test_masks_default_from_the_addresses() -> None:
    async def main() -> list[dict[str, Any]]:
        ctx, client = make_ctx()
        await ctx.add_membership("0.0.0.0", "239.1.1.1", Interface(3))
        await ctx.add_membership("10.0.0.1", "232.1.1.1", Interface(3, "10.0.0.2"), flags=2)
        await ctx.add_membership("0.0.0.0", "0.0.0.0", Interface(3), group_mask="0.0.0.0")
        return client.ops("add_group_membership")

    first, second, third = asyncio.run(main())
    assert first == {"source": "0.0.0.0", "source_mask": "0.0.0.0", "group": "239.1.1.1",
                     "group_mask": "255.255.255.255", "if_index": 3, "next_hop": "0.0.0.0", "flags": 1,
                     "handle": 7}  # fmt: skip
    assert (second["source_mask"], second["next_hop"], second["flags"]) == ("255.255.255.255", "10.0.0.2", 2)
    assert (third["group"], third["group_mask"]) == ("0.0.0.0", "0.0.0.0")


def test_the_ledger_keeps_what_is_in_force_and_replays_it() -> None:
    async def main() -> tuple[PluginContext, FakeClient]:
        ctx, client = make_ctx()
        await ctx.take_interface(Interface(3))
        await ctx.take_interface(Interface(4))
        await ctx.add_membership("0.0.0.0", "239.1.1.1", Interface(3))
        await ctx.add_membership("0.0.0.0", "239.2.2.2", Interface(3))
        await ctx.add_membership("0.0.0.0", "239.3.3.3", Interface(4))
        await ctx.set_boundaries(Interface(3), [("239.7.0.0", "255.255.0.0")])
        await ctx.set_boundaries(Interface(4), [("239.8.0.0", "255.255.0.0")])  # released below: not replayed
        await ctx.delete_membership("0.0.0.0", "239.2.2.2", Interface(3))
        await ctx.release_interface(Interface(4))  # takes 239.3.3.3 with it
        client.refuse["add_group_membership"] = MgmError(Status.ERROR_INVALID_PARAMETER, "no")
        with pytest.raises(MgmError):
            await ctx.add_membership("0.0.0.0", "239.9.9.9", Interface(3))
        del client.refuse["add_group_membership"]
        client.sent.clear()
        ctx.handle = 8
        await ctx.replay()
        return ctx, client

    ctx, client = asyncio.run(main())
    assert ctx.interfaces == (Interface(3),)
    assert [m[2] for m in ctx.memberships] == ["239.1.1.1"]
    assert client.sent == [
        ("take_interface_ownership", {"if_index": 3, "next_hop": "0.0.0.0", "handle": 8}),
        ("set_boundaries", {"if_index": 3, "next_hop": "0.0.0.0", "handle": 8,
                            "boundaries": [{"group": "239.7.0.0", "group_mask": "255.255.0.0"}]}),
        ("add_group_membership", {"source": "0.0.0.0", "source_mask": "0.0.0.0", "group": "239.1.1.1",
                                  "group_mask": "255.255.255.255", "if_index": 3, "next_hop": "0.0.0.0",
                                  "flags": 1, "handle": 8}),
    ]  # fmt: skip


def test_a_request_refused_because_the_manager_forgot_our_handle_stays_in_the_ledger_for_the_replay() -> None:
    """A restarted manager refuses the old handle with ERROR_INVALID_PARAMETER, the status of a bad argument
    too: a heartbeat with the same handle tells the two apart."""

    async def main() -> tuple[PluginContext, FakeClient]:
        ctx, client = make_ctx()
        unknown = MgmError(Status.ERROR_INVALID_PARAMETER, "handle 7 is not registered on this connection")
        client.refuse.update(add_group_membership=unknown, take_interface_ownership=unknown, heartbeat=unknown)
        for fut in (ctx.take_interface(Interface(3)), ctx.add_membership("0.0.0.0", "239.1.1.1", Interface(3))):
            with pytest.raises(MgmError):
                await fut
        await asyncio.sleep(0.01)  # the heartbeats' replies
        assert [op for op, _ in client.sent].count("heartbeat") == 2
        client.refuse.clear()
        bad = MgmError(Status.ERROR_INVALID_PARAMETER, "group 10.0.0.1 is not a multicast address")
        client.refuse["add_group_membership"] = bad
        with pytest.raises(MgmError):
            await ctx.add_membership("0.0.0.0", "10.0.0.1", Interface(3))
        await asyncio.sleep(0.01)  # this time the heartbeat is answered: the refusal was about the request
        return ctx, client

    ctx, _ = asyncio.run(main())
    assert ctx.interfaces == (Interface(3),)
    assert [m[2] for m in ctx.memberships] == ["239.1.1.1"]


def test_a_refusal_nobody_awaits_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        ctx, client = make_ctx()
        client.refuse["take_interface_ownership"] = MgmError(Status.ERROR_ALREADY_EXISTS, "owned by 200/1")
        await asyncio.wait([ctx.take_interface(Interface(3))])

    with caplog.at_level(logging.WARNING, logger="mgm.plugin.p"):
        asyncio.run(main())
    assert "plugin p: take_interface_ownership if_index=3 next_hop=0.0.0.0 failed: ERROR_ALREADY_EXISTS" in caplog.text


def test_request_fills_the_handle_only_where_the_op_takes_one() -> None:
    async def main() -> FakeClient:
        ctx, client = make_ctx()
        await ctx.request("get_mfe", {"source": "10.0.0.1", "group": "232.1.1.1"})
        await ctx.request("heartbeat")
        return client

    client = asyncio.run(main())
    assert client.sent == [("get_mfe", {"source": "10.0.0.1", "group": "232.1.1.1"}), ("heartbeat", {"handle": 7})]


def test_spawn_logs_a_failing_task_and_cancel_tasks_ends_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def main() -> asyncio.Task[None]:
        ctx, _ = make_ctx()
        ctx.spawn(fails())
        forever = ctx.spawn(asyncio.Event().wait())
        await asyncio.sleep(0)
        await ctx.cancel_tasks()
        return forever  # type: ignore[return-value]

    with caplog.at_level(logging.ERROR, logger="mgm.plugin.p"):
        forever = asyncio.run(main())
    assert "plugin p: task" in caplog.text and "ValueError: boom" in caplog.text
    assert forever.cancelled()


@pytest.mark.parametrize(
    ("returns", "words"),
    [((1, "2"), "not (protocol_id, component_id) ints"), (7, "returned 7"), (ValueError("no"), "raised ValueError")],
)
def test_a_broken_mgm_protocol_is_a_load_error(returns: Any, words: str) -> None:
    class Plugin:
        @hookimpl
        def mgm_protocol(self) -> Any:
            if isinstance(returns, Exception):
                raise returns
            return returns

    pm = plugin_manager("p", Plugin())
    config = loads("[plugins.p]\n")
    with pytest.raises(PluginLoadError, match=re.escape(words)):
        protocol_of(pm, config.plugin("p"), config)


class _JoinsOnly:
    """A plugin that answers no question: it only hears local joins."""

    @hookimpl
    def mgm_local_join(self, source: str, group: str, interface: Interface) -> None:
        pass


class _NarrowedToCreation:
    """Implements both hooks but, configured as it is, would only ever return the default to rpf."""

    questions = frozenset({"creation_alert"})

    @hookimpl
    def mgm_rpf(self) -> None:
        return None

    @hookimpl
    def mgm_creation_alert(self) -> None:
        return None


class _NarrowedBeyondItsHooks(_JoinsOnly):
    questions = frozenset({"rpf"})  # no mgm_rpf: an attribute cannot add a question the plugin cannot answer


@pytest.mark.parametrize(("plugin", "questions"), [
    (None, ["rpf", "creation_alert"]), (_JoinsOnly(), []), (_NarrowedToCreation(), ["creation_alert"]),
    (_NarrowedBeyondItsHooks(), []),
])  # fmt: skip
def test_registration_names_the_questions_the_plugin_answers(plugin: object | None, questions: list[str]) -> None:
    """The manager skips a question whose hook the plugin lacks, so the host must say which it has."""
    client = FakeClient()
    client.replies["register_protocol"] = {"handle": 9}
    host, _, _ = make_host(client=client)
    if plugin is not None:
        host.pm = plugin_manager("test-routing-a", plugin)
    asyncio.run(host.register())
    (args,) = client.ops("register_protocol")
    assert args["questions"] == questions
    assert host.ctx is not None and host.ctx.handle == 9


# --- SIGHUP: mgm_reload ---------------------------------------------------------------------------


def file_host(tmp_path: Path, name: str = "test-routing-a", text: str = CONFIG) -> tuple[Host, Any, Path]:
    path = tmp_path / "router.toml"
    path.write_text(text)
    host = Host(name, load(path), "ipc:///x", "ipc:///y")
    host.ctx = PluginContext(name=name, client=FakeClient(), protocol=host.protocol, config=host.plugin.table)  # type: ignore[arg-type]
    host.started = True
    return host, host.pm.get_plugin(name), path


def test_sighup_hands_the_file_read_again_to_mgm_reload(tmp_path: Path) -> None:
    host, plugin, path = file_host(tmp_path)
    path.write_text(CONFIG.replace("control =", 'label = "new"\ncontrol ='))

    async def main() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, host.on_sighup)  # as Host.run does
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for_async(lambda: plugin.calls, 10, "the reload hook to be called")

    asyncio.run(main())
    [call] = plugin.calls
    assert call["hook"] == "mgm_reload" and call["source"] == str(path)
    assert call["config"]["label"] == "new" and call["config"]["protocol_id"] == 100  # the plugin's own table


def test_a_file_that_does_not_load_is_logged_once_and_the_hook_not_called(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host, plugin, path = file_host(tmp_path)
    path.write_text(CONFIG.replace("component_id = 1", 'component_id = "one"'))
    with caplog.at_level(logging.ERROR):
        assert asyncio.run(host.reload()) is False
    [record] = caplog.records
    assert f"reload refused, what is in force stays: {path}:3: plugins.test-routing-a.component_id:" in (
        record.getMessage()
    )
    assert plugin.calls == []


def test_a_plugin_without_mgm_reload_and_a_config_without_a_file_ignore_sighup(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host, _, _ = file_host(tmp_path)
    host.pm = plugin_manager("test-routing-a", _JoinsOnly())
    embedded = Host("test-igmp", load(None), "ipc:///x", "ipc:///y")
    with caplog.at_level(logging.INFO, logger="mgm.plugins.host"):
        assert asyncio.run(host.reload()) is False
        assert asyncio.run(embedded.reload()) is False
    assert "SIGHUP ignored: it has no mgm_reload hook" in caplog.text
    assert "no file to read again, the configuration is the <embedded default config>" in caplog.text
    assert embedded.pm.get_plugin("test-igmp").calls == []


def test_two_quick_sighups_apply_one_after_the_other(tmp_path: Path) -> None:
    """An async mgm_reload is awaited before the next reload reads the file."""

    class SlowReload:
        def __init__(self) -> None:
            self.seen: list[tuple[str, int]] = []

        @hookimpl
        async def mgm_reload(self, config: Any) -> None:
            self.seen.append(("begin", config["n"]))
            await asyncio.sleep(0.02)
            self.seen.append(("end", config["n"]))

    host, _, path = file_host(tmp_path)
    plugin = SlowReload()
    host.pm = plugin_manager("test-routing-a", plugin)

    def with_n(n: int) -> str:
        return CONFIG.replace("control =", f"n = {n}\ncontrol =")

    async def main() -> None:
        path.write_text(with_n(1))
        host.on_sighup()
        while not plugin.seen:
            await asyncio.sleep(0)
        path.write_text(with_n(2))
        host.on_sighup()
        await wait_for_async(lambda: len(plugin.seen) >= 4, 10, "both reloads to end")

    asyncio.run(main())
    assert plugin.seen == [("begin", 1), ("end", 1), ("begin", 2), ("end", 2)]


class RestartingManagers(FakeClient):
    """Each registration gets a new handle; a heartbeat is accepted with the newest only; a second
    registration of the same protocol is refused (ERROR_ALREADY_EXISTS), as by one manager."""

    def __init__(self) -> None:
        super().__init__()
        self.newest = 0  # the plugin's handle 7 is the old manager's
        self.epoch = 3  # the manager that answers is the second restart's

    def request_nowait(self, op: str, args: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        self.refuse.pop(op, None)
        if op == "register_protocol":
            if self.newest:
                self.refuse[op] = MgmError(Status.ERROR_ALREADY_EXISTS, "protocol 100/1 is registered")
            else:
                self.newest = 8
                self.replies[op] = {"handle": self.newest}
        elif op == "heartbeat" and args.get("handle") != self.newest:
            self.refuse[op] = MgmError(Status.ERROR_INVALID_PARAMETER, f"handle {args.get('handle')} is not registered")
        return super().request_nowait(op, args)


def test_two_quick_manager_restarts_register_once_and_the_plugin_lives(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second restart's task finds the first's registration at the manager that now answers (CI saw a
    plugin stop: both registered, the second was refused as a duplicate until its patience ran out)."""
    import mgm.plugins.host as host_module

    monkeypatch.setattr(host_module, "RESTART_GRACE", 0.0)
    monkeypatch.setattr(host_module, "REGISTER_PATIENCE", 0.0)
    client = RestartingManagers()
    host, _, _ = make_host(client=client)

    async def main() -> None:
        await asyncio.gather(host.new_epoch(1, 2), host.new_epoch(2, 3))

    asyncio.run(main())
    assert len(client.ops("register_protocol")) == 1
    assert not host.stopping.is_set() and host.registered and host.ctx is not None and host.ctx.handle == 8
