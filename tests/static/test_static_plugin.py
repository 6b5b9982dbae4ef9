"""The static plugin in its host, without a manager: a fake client records what the plugin sends.

These pin what the plugin asks of the manager at start, on an RPF question
and on SIGHUP (a real signal to this process, the host's handler calling
`mgm_reload`); the multi-process
test runs the same against a real manager.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeClient

from mgm.bus.status import MgmError, Status
from mgm.core.runtime.config import ConfigError, load
from mgm.core.types import Interface
from mgm.plugins.context import PluginContext
from mgm.plugins.host import Host
from mgm.plugins.static.plugin import STATIC_COMPONENT_ID, STATIC_PROTOCOL_ID, StaticPlugin, read
from mgm.plugins.testing import wait_for_async

CONFIG = """\
[plugins.static]
interfaces = [10, 11, 12, 13]
routes = [
  { source = "10.0.0.1", group = "239.1.1.1", from = 10, to = [11, 12] },
  { group = "239.2.2.2", from = 13, to = [11] },
]
"""

RELOADED = """\
[plugins.static]
interfaces = [10, 11, 12, 14]
routes = [
  { source = "10.0.0.1", group = "239.1.1.1", from = 12, to = [11] },
  { group = "239.3.3.3", from = 10, to = [14] },
]
"""


def membership(op: str, source: str, group: str, if_index: int) -> tuple[str, dict[str, Any]]:
    mask = "0.0.0.0" if source == "0.0.0.0" else "255.255.255.255"
    return op, {"handle": 7, "source": source, "source_mask": mask, "group": group,
                "group_mask": "255.255.255.255", "if_index": if_index, "next_hop": "0.0.0.0", "flags": 1}  # fmt: skip


def make_host(path: Path) -> tuple[Host, FakeClient, StaticPlugin]:
    host = Host("static", load(path), "ipc:///x", "ipc:///y")
    client = FakeClient()
    host.ctx = PluginContext(name="static", client=client, protocol=host.protocol, config=host.plugin.table, handle=7)  # type: ignore[arg-type]
    for interface in host.interfaces:  # what the host took before mgm_start
        host.ctx._interfaces[interface] = None
    host.registered = True
    host.started = True  # as after mgm_start: events are delivered, not queued
    plugin = host.pm.get_plugin("static")
    assert isinstance(plugin, StaticPlugin)
    return host, client, plugin


def run(config_file: Path, body: Callable[[Host, FakeClient, StaticPlugin], Coroutine[Any, Any, None]]) -> None:
    """`body` on a host made from `config_file` (see make_host), in an event loop."""
    asyncio.run(body(*make_host(config_file)))


async def settle() -> None:
    """Let the fake replies (call_soon) and their callbacks run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def start(host: Host, client: FakeClient) -> None:
    """mgm_start, and wait until what it sent (memberships, then a look at existing MFEs) is answered."""
    host.call("mgm_start", "start", mgm=host.ctx, config=host.plugin.table)
    await wait_for_async(lambda: bool(client.ops("list_mfes")), 5, "the start's look at existing MFEs")
    await settle()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "static.toml"
    path.write_text(CONFIG)
    return path


# --- load ------------------------------------------------------------------------------------


def test_the_plugin_registers_as_rras_static(config_file: Path) -> None:
    host, _, _ = make_host(config_file)
    assert (host.protocol.protocol_id, host.protocol.component_id) == (STATIC_PROTOCOL_ID, STATIC_COMPONENT_ID)
    assert (STATIC_PROTOCOL_ID, STATIC_COMPONENT_ID) == (10006, 1)


DUPLICATE = CONFIG.replace('{ group = "239.2.2.2", from = 13, to = [11] }',
                           '{ source = "10.0.0.1", group = "239.1.1.1", from = 13, to = [11] }')  # fmt: skip


def test_the_host_refuses_a_conflicting_table_at_load(tmp_path: Path) -> None:
    path = tmp_path / "dup.toml"
    path.write_text(DUPLICATE)
    with pytest.raises(ConfigError) as info:
        Host("static", load(path), "ipc:///x", "ipc:///y")
    assert str(info.value).startswith(f"{path}:5: plugins.static.routes[1]: route for (10.0.0.1, 239.1.1.1) from 13")
    assert "plugins.static.routes[0] at line 4, from 10" in str(info.value)


MISSING = """\
[plugins.static]
interfaces = [10, "mgm-none0", "mgm-none1"]
routes = [{ group = "239.1.1.1", from = 10, to = ["mgm-none0", "mgm-none1"] }]
"""


def missing(path: Path) -> list[str]:
    return [f"{path}:2: plugins.static.interfaces[{i + 1}]: no interface named 'mgm-none{i}' here" for i in (0, 1)]


def test_at_load_each_missing_interface_is_named_once(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    path.write_text(MISSING)
    with pytest.raises(ConfigError) as info:
        Host("static", load(path), "ipc:///x", "ipc:///y")
    assert info.value.lines() == missing(path)


def test_a_reload_names_bad_routes_and_missing_interfaces_together(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    path.write_text(MISSING.replace("239.1.1.1", "10.1.1.1"))
    with pytest.raises(ConfigError) as info:
        read(load(path), "static")  # what mgm_reload applies
    group = f"{path}:3: plugins.static.routes[0].group: 10.1.1.1 is not a multicast group (224.0.0.0/4)"
    assert info.value.lines() == [group, *missing(path)]


def test_mgm_plugin_exits_with_the_error_and_both_lines_before_connecting(tmp_path: Path) -> None:
    path = tmp_path / "dup.toml"
    path.write_text(DUPLICATE)
    done = subprocess.run(
        [sys.executable, "-m", "mgm.core.cli", "plugin", "static", "--config", str(path),
         "--api", f"ipc://{tmp_path}/none-api", "--events", f"ipc://{tmp_path}/none-events"],
        capture_output=True, text=True, timeout=60, start_new_session=True,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"{path}:5: plugins.static.routes[1]" in done.stderr
    assert "at line 4" in done.stderr


# --- start, RPF, creation alert ---------------------------------------------------------------


def test_start_adds_each_routes_memberships(config_file: Path) -> None:
    async def body(host: Host, client: FakeClient, plugin: StaticPlugin) -> None:
        host.call("mgm_start", "start", mgm=host.ctx, config=host.plugin.table)
        await settle()
        assert client.sent == [
            membership("add_group_membership", "10.0.0.1", "239.1.1.1", 11),
            membership("add_group_membership", "10.0.0.1", "239.1.1.1", 12),
            membership("add_group_membership", "0.0.0.0", "239.2.2.2", 11),
            ("list_mfes", {"after": None, "max_entries": 256}),  # flows from before we owned the interfaces
        ]
        assert host.ctx is not None and len(host.ctx.memberships) == 3  # in the ledger, replayed on restart

    run(config_file, body)


def rpf_event(source: str, group: str, if_index: int, question: int = 5) -> dict[str, Any]:
    return {"type": "rpf", "question": question, "source": source, "group": group, "if_index": if_index,
            "next_hop": "0.0.0.0", "upstream_neighbor": "0.0.0.0"}  # fmt: skip


def test_the_rpf_answer_is_the_routes_incoming_interface(config_file: Path) -> None:
    async def body(host: Host, client: FakeClient, plugin: StaticPlugin) -> None:
        await start(host, client)  # the host holds questions back until mgm_start
        host.on_event(rpf_event("10.0.0.1", "239.1.1.1", 13, question=5))  # (S,G) route: from 10
        host.on_event(rpf_event("10.0.0.9", "239.2.2.2", 10, question=6))  # (*,G) route: from 13
        host.on_event(rpf_event("10.0.0.9", "239.9.9.9", 12, question=7))  # no route: the manager's choice
        await settle()
        answers = {a["question"]: (a["if_index"], a["upstream_neighbor"]) for a in client.ops("answer")}
        assert answers == {5: (10, "0.0.0.0"), 6: (13, "0.0.0.0"), 7: (12, "0.0.0.0")}

    run(config_file, body)


def test_creation_alerts_keep_every_interface(config_file: Path) -> None:
    async def body(host: Host, client: FakeClient, plugin: StaticPlugin) -> None:
        oil = [{"if_index": 11, "next_hop": "0.0.0.0"}, {"if_index": 12, "next_hop": "0.0.0.0"}]
        host.on_event({"type": "creation_alert", "question": 9, "source": "10.0.0.1", "group": "239.1.1.1",
                       "in_if_index": 10, "in_next_hop": "0.0.0.0", "oil": oil})  # fmt: skip
        await settle()
        [answer] = client.ops("answer")
        assert [e["enabled"] for e in answer["oil"]] == [True, True]

    run(config_file, body)


# --- SIGHUP ------------------------------------------------------------------------------------


def mfe(source: str, group: str, if_index: int) -> dict[str, Any]:
    return {"source": source, "group": group, "in_if_index": if_index, "in_next_hop": "0.0.0.0",
            "upstream_neighbor": "0.0.0.0", "oil": []}  # fmt: skip


def test_at_start_flows_from_before_are_moved_to_the_routes_incoming_interface(config_file: Path) -> None:
    async def body(host: Host, client: FakeClient, plugin: StaticPlugin) -> None:
        client.mfes = [mfe("10.0.0.1", "239.1.1.1", 11), mfe("10.0.0.1", "239.2.2.2", 13)]
        client.mfes.append(mfe("10.0.0.1", "239.1.1.1", 99))
        host.call("mgm_start", "start", mgm=host.ctx, config=host.plugin.table)
        await wait_for_async(lambda: bool(client.ops("set_mfe")), 5, "the MFE to be moved")
        await settle()
        # the first is ours and disagrees with its route; the second agrees; the third's interface is not ours
        assert [(a["source"], a["group"], a["if_index"]) for a in client.ops("set_mfe")] == [
            ("10.0.0.1", "239.1.1.1", 10)
        ]
        host.call("mgm_stop", "stop", mgm=host.ctx)

    run(config_file, body)


def test_sighup_applies_the_difference_in_order_and_moves_mfes(config_file: Path) -> None:
    async def body(host: Host, client: FakeClient, plugin: StaticPlugin) -> None:
        await start(host, client)
        client.mfes = [mfe("10.0.0.1", "239.1.1.1", 10), mfe("10.0.0.5", "239.2.2.2", 13)]
        client.mfes.append(mfe("10.0.0.1", "239.7.7.7", 99))  # not on our interfaces: left alone
        client.sent.clear()
        config_file.write_text(RELOADED)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, host.on_sighup)  # as Host.run does
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for_async(lambda: bool(client.ops("set_mfe")), 5, "the reload to finish")
        await settle()
        assert [(op, a.get("if_index"), a.get("group")) for op, a in client.sent] == [
            ("take_interface_ownership", 14, None),
            ("delete_group_membership", 12, "239.1.1.1"),
            ("delete_group_membership", 11, "239.2.2.2"),
            ("release_interface_ownership", 13, None),
            ("add_group_membership", 14, "239.3.3.3"),
            ("list_mfes", None, None),
            ("set_mfe", 12, "239.1.1.1"),  # the (S,G) route now comes in on 12
        ]
        [moved] = client.ops("set_mfe")
        assert moved == {"handle": 7, "source": "10.0.0.1", "group": "239.1.1.1", "upstream_neighbor": "0.0.0.0",
                         "if_index": 12, "next_hop": "0.0.0.0"}  # fmt: skip
        assert plugin.applied is not None and len(plugin.applied.table.routes) == 2
        assert host.ctx is not None
        assert set(host.ctx.interfaces) == {Interface(i) for i in (10, 11, 12, 14)}
        assert sorted((m[2], m[4].if_index) for m in host.ctx.memberships) == [("239.1.1.1", 11), ("239.3.3.3", 14)]
        host.call("mgm_stop", "stop", mgm=host.ctx)

    run(config_file, body)


def test_a_bad_file_on_sighup_keeps_the_routes_in_force_and_logs_file_and_line(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(host: Host, client: FakeClient, plugin: StaticPlugin) -> None:
        assert host.ctx is not None
        await start(host, client)
        before = plugin.applied
        client.sent.clear()
        config_file.write_text(DUPLICATE)
        with caplog.at_level(logging.ERROR, logger="mgm.plugins.host"):
            assert await host.reload() is False
        assert client.sent == []
        assert plugin.applied is before
        [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "plugin static: reload refused, what is in force stays" in record.getMessage()
        assert f"{config_file}:5: plugins.static.routes[1]" in record.getMessage()
        assert "at line 4" in record.getMessage()
        # a good file afterwards applies
        config_file.write_text(RELOADED)
        assert await host.reload() is True
        assert client.ops("add_group_membership")
        host.call("mgm_stop", "stop", mgm=host.ctx)

    run(config_file, body)


def test_an_interface_that_cannot_be_taken_keeps_the_old_routes(config_file: Path) -> None:
    async def body(host: Host, client: FakeClient, plugin: StaticPlugin) -> None:
        client.refuse["take_interface_ownership"] = MgmError(Status.ERROR_ALREADY_EXISTS, "owned by 200/1")
        assert host.ctx is not None
        await start(host, client)
        before = plugin.applied
        client.sent.clear()
        config_file.write_text(RELOADED)
        await host.reload()
        assert [op for op, _ in client.sent] == ["take_interface_ownership"]
        assert plugin.applied is before
        host.call("mgm_stop", "stop", mgm=host.ctx)

    run(config_file, body)
