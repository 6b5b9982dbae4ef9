"""`mgm plugin NAME` as a process: refusals at start, a raising hook, the state stream, a clean stop."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from mgm_testplugins.control import ctl, wait_for
from mgm_testplugins.processes import MGM, ManagerProc, PluginProc, Proc, toml_config

from mgm.bus.status import MgmError, Status


def run_plugin(ipc_dir: Path, procs: list[Proc], manager: ManagerProc, name: str, config: str | None) -> Proc:
    argv = [*MGM, "plugin", name, "--api", manager.api, "--events", manager.events]
    if config is not None:
        path = ipc_dir / f"{name}.toml"
        path.write_text(config)
        argv += ["--config", str(path)]
    proc = Proc(name, argv, ipc_dir / f"{name}.log")
    proc.start()
    procs.append(proc)
    return proc


@pytest.mark.parametrize(
    ("name", "config", "words"),
    [
        ("test-misspelled", None, "plugin 'test-misspelled' does not fit the hook specs: "),
        ("test-wrong-argument", None, "iface"),
        ("no-such-plugin", None, "no plugin named 'no-such-plugin' in entry point group mgm.plugins (installed: "),
        ("test-routing-a", "[plugins.test-routing-a]\nprotocol_id = 100\n", "test-routing-a.toml:1: "
         "plugins.test-routing-a.component_id: plugin 'test-routing-a' has no mgm_protocol hook (or it returned None)"),
        ("test-igmp", "[plugins.test-igmp]\n\ninterfaces = ['nosuchif0']\n",
         "test-igmp.toml:3: plugins.test-igmp.interfaces[0]: no interface named 'nosuchif0' here"),
        ("test-igmp", "[plugins.test-igmp]\ninterfaces = 'x'\n", "plugins.test-igmp.interfaces: must be a list"),
        # every missing interface is named, and the plugin's own checks' mistakes beside them
        ("test-igmp", "[plugins.test-igmp]\ninterfaces = ['nosuchif0', 1, 'nosuchif1']\n",
         "test-igmp.toml:2: plugins.test-igmp.interfaces[0]: no interface named 'nosuchif0' here\n"),
        ("test-igmp", "[plugins.test-igmp]\ninterfaces = ['nosuchif0', 1, 'nosuchif1']\n",
         "test-igmp.toml:2: plugins.test-igmp.interfaces[2]: no interface named 'nosuchif1' here\n"),
        ("test-routing-a", "[plugins.test-routing-a]\nprotocol_id = 100\ninterfaces = ['nosuchif0']\n",
         "test-routing-a.toml:3: plugins.test-routing-a.interfaces[0]: no interface named 'nosuchif0' here"),
    ],
)  # fmt: skip
def test_mistakes_stop_the_host_at_start_with_status_2(
    manager: ManagerProc, ipc_dir: Path, procs: list[Proc], name: str, config: str | None, words: str
) -> None:
    proc = run_plugin(ipc_dir, procs, manager, name, config)
    assert proc.wait(30) == 2
    assert words in proc.log()
    # Nothing was registered (a crashed registration would linger until the manager's liveness ran out).
    assert manager.request("sync", {"stream": "state"})["state"]["protocols"] == []


def test_a_taken_interface_fails_the_start_and_leaves_nothing_registered(
    manager: ManagerProc, start_plugin: Any, ipc_dir: Path, procs: list[Proc]
) -> None:
    start_plugin("test-routing-a", {"protocol_id": 100, "component_id": 1, "interfaces": [12]})
    config = toml_config({"test-routing-b": {"protocol_id": 101, "component_id": 1, "interfaces": [12],
                                             "control": f"ipc://{ipc_dir}/b.ctl"}})  # fmt: skip
    proc = run_plugin(ipc_dir, procs, manager, "test-routing-b", config)
    assert proc.wait(30) == 1
    assert "ERROR_ALREADY_EXISTS" in proc.log()
    # 101/1 was deregistered on the way out: it can register again
    assert "handle" in manager.request("register_protocol", {"protocol_id": 101, "component_id": 1})


def test_a_raising_hook_is_logged_and_the_host_goes_on(manager: ManagerProc, start_plugin: Any) -> None:
    igmp = start_plugin("test-igmp", {"interfaces": [12]})
    a: PluginProc = start_plugin("test-routing-a", {"protocol_id": 100, "component_id": 1, "interfaces": [12]})
    ctl(a).call("raise_in", hook="mgm_local_join")
    ctl(igmp).call("add_membership", source="0.0.0.0", group="239.1.1.1", if_index=12)
    ctl(igmp).call("add_membership", source="0.0.0.0", group="239.2.2.2", if_index=12)
    ctl(a).wait_for_call("mgm_local_join", group="239.2.2.2")  # the second one arrived too
    assert "plugin test-routing-a: hook mgm_local_join raised on local_join 0.0.0.0/239.1.1.1 on 12" in a.log()
    assert "RuntimeError: mgm_local_join raises because the test said so" in a.log()
    assert a.alive()


def test_an_observer_gets_the_state_snapshot_then_events(manager: ManagerProc, start_plugin: Any) -> None:
    a = start_plugin("test-routing-a", {"protocol_id": 100, "component_id": 1, "interfaces": [12]})
    observer = start_plugin("test-observer", {"protocol_id": 900, "component_id": 1})
    resync = ctl(observer).wait_for_call("mgm_state_resync")
    assert {(p["protocol_id"], p["component_id"]) for p in resync["state"]["protocols"]} >= {(100, 1)}
    ctl(a).call("take", if_index=13)

    def owned() -> list[dict[str, Any]]:
        return [c["event"] for c in ctl(observer).calls("mgm_state_event")
                if c["event"]["type"] == "interface_owned" and c["event"]["if_index"] == 13]  # fmt: skip

    (event,) = wait_for(owned, 10, "interface_owned for 13")
    assert (event["protocol_id"], event["component_id"]) == (100, 1)
    hooks = [c["hook"] for c in ctl(observer).calls()]
    assert hooks.index("mgm_state_resync") < hooks.index("mgm_state_event")
    assert ctl(a).calls("mgm_state_event") == []  # only plugins with the hooks follow `state`


def test_sigterm_releases_deregisters_and_exits_0(manager: ManagerProc, start_plugin: Any) -> None:
    a = start_plugin("test-routing-a", {"protocol_id": 100, "component_id": 1, "interfaces": [12, 13]})
    assert manager.request("get_protocol_on_interface", {"if_index": 13, "next_hop": "0.0.0.0"})["protocol_id"] == 100
    a.send_signal(signal.SIGTERM)
    assert a.wait(10) == 0
    assert "plugin test-routing-a stopping" in a.log()
    for if_index in (12, 13):
        with pytest.raises(MgmError) as info:
            manager.request("get_protocol_on_interface", {"if_index": if_index, "next_hop": "0.0.0.0"})
        assert info.value.status == Status.ERROR_NOT_FOUND
    assert "handle" in manager.request("register_protocol", {"protocol_id": 100, "component_id": 1})


def test_sighup_reloads_the_file_once_and_a_broken_one_is_logged_not_applied(
    manager: ManagerProc, start_plugin: Any
) -> None:
    a: PluginProc = start_plugin("test-routing-a", {"protocol_id": 100, "component_id": 1, "label": "old"})
    assert a.config_path is not None
    text = a.config_path.read_text()
    a.config_path.write_text(text.replace('"old"', '"new"'))
    a.send_signal(signal.SIGHUP)
    assert ctl(a).wait_for_call("mgm_reload")["config"]["label"] == "new"
    a.config_path.write_text(text.replace('"old"', ""))  # not TOML
    a.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in a.log(), 10, "the refusal in the log")
    assert f"plugin test-routing-a: reload refused, what is in force stays: {a.config_path}:" in a.log()
    assert len(ctl(a).calls("mgm_reload")) == 1 and a.alive()


def test_sigterm_while_waiting_for_the_manager_exits_0(ipc_dir: Path, procs: list[Proc]) -> None:
    absent = f"ipc://{ipc_dir}/nobody"
    proc = Proc("waiting", [*MGM, "plugin", "test-igmp", "--api", absent, "--events", absent + "-ev",
                            "--log-level", "debug"], ipc_dir / "waiting.log")  # fmt: skip
    proc.start()
    procs.append(proc)
    wait_for(lambda: "connecting to the manager" in proc.log(), 20, "the host to start connecting")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0  # status 1 and "cannot reach the manager" if the 10 s connect timeout ended it instead
    assert "cannot reach the manager" not in proc.log()
    # stopped for good before mgm_start: the plugin still hears mgm_stop, to release what mgm_protocol opened
    assert "plugin test-igmp: mgm_stop on stop" in proc.log()
    assert "mgm_start" not in proc.log()


def test_a_tcp_manager_without_curve_keys_is_refused_at_once_with_status_2(ipc_dir: Path, procs: list[Proc]) -> None:
    """tcp needs CURVE (docs/security.md): without keys no ping would ever be answered, so say so instead of waiting."""
    proc = Proc("tcp-nokey", [*MGM, "plugin", "test-igmp", "--api", "tcp://127.0.0.1:1", "--events",
                              "tcp://127.0.0.1:2"], ipc_dir / "tcp-nokey.log")  # fmt: skip
    proc.start()
    procs.append(proc)
    assert proc.wait(30) == 2
    assert "the manager is on tcp, which needs CURVE: give --curve-key FILE and --server-key KEY" in proc.log()
    assert "connecting to the manager" not in proc.log()  # refused before any attempt, not after a timeout


def test_a_stalled_plugin_the_manager_dropped_registers_again_with_what_it_held(
    manager: ManagerProc, start_plugin: Any
) -> None:
    """A plugin whose loop stalls past the manager's liveness (3 s) is dropped with all it held; once it runs
    again, its next heartbeat is refused and it registers again and takes its interfaces back."""
    a = start_plugin("test-routing-a", {"protocol_id": 100, "component_id": 1, "interfaces": [12, 13]})
    ctl(a).call("add_membership", source="0.0.0.0", group="239.5.5.5", if_index=12)

    def owner() -> int | None:
        try:
            return int(manager.request("get_protocol_on_interface", {"if_index": 12, "next_hop": "0.0.0.0"})[
                "protocol_id"])  # fmt: skip
        except MgmError:
            return None

    def groups() -> list[dict[str, Any]]:
        state = manager.request("sync", {"stream": "state"})["state"]
        return [m for m in state["memberships"] if m["group"] == "239.5.5.5"]

    wait_for(lambda: groups(), 10, "the membership")
    a.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: owner() is None, 15, "the manager to drop the stalled plugin")
        assert groups() == []
    finally:
        a.send_signal(signal.SIGCONT)
    wait_for(lambda: owner() == 100, 15, "the plugin to register again and take its interfaces")
    wait_for(groups, 10, "its membership replayed")
    assert "our registration lapsed" in a.log() and "registering again" in a.log()
    assert a.alive()
