"""Plugins and tools over tcp+CURVE, as on another host: `mgm plugin`, `mgm show`, `mgm monitor`."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from sec_support import ALLOWED_INDEX, STATIC_PROTOCOL_ID, TcpManager, log_has

from mgm.plugins.testing import MGM, PluginProc, Proc, wait_for

GROUP = "239.1.2.3"


def plugin_config(m: TcpManager, directory: Path, interfaces: list[int], key: str = "static") -> Path:
    """A plugin host's file: the manager's tcp endpoints and public key, this plugin's key pair (relative path)."""
    path = directory / f"plugin-{key}.toml"
    path.write_text(f"""
[manager]
api = "{m.api}"
events = "{m.events}"
curve_server_public_key = "{m.keys.public['manager']}"

[plugins.static]
curve_key = "keys/{key}.key_secret"
interfaces = {interfaces}
routes = [{{ group = "{GROUP}", from = {interfaces[0]}, to = {interfaces[1:]} }}]
""")
    return path


def start_static(m: TcpManager, directory: Path, procs: list[Any], interfaces: list[int],
                 key: str = "static") -> PluginProc:
    config = plugin_config(m, directory, interfaces, key)
    proc = PluginProc("static", [*MGM, "plugin", "static", "--config", str(config), "--log-level", "debug"],
                      directory / f"plugin-{key}.log", config_path=config)
    proc.start()
    procs.append(proc)
    return proc


def test_a_plugin_over_tcp_and_curve_registers_owns_and_joins(tcp_manager: TcpManager, ipc_dir: Path,
                                                               procs: list[Any]) -> None:
    plugin = start_static(tcp_manager, ipc_dir, procs, [ALLOWED_INDEX, 8])
    members = wait_for(lambda: [g for g in tcp_manager.state()["memberships"] if g["group"] == GROUP], 20,
                       "the static plugin's membership over tcp")
    assert [m["if_index"] for m in members] == [8]
    now = tcp_manager.state()
    assert [(p["protocol_id"], p.get("name")) for p in now["protocols"]] == [(STATIC_PROTOCOL_ID, "static")]
    assert sorted(i["if_index"] for i in now["interfaces"]) == [ALLOWED_INDEX, 8]
    assert plugin.alive(), plugin.log()

    # the tools over tcp take the same kind of keys on the command line
    keys = tcp_manager.keys
    shown = subprocess.run([*MGM, "show", "groups", "--json", "--api", tcp_manager.api, "--events", tcp_manager.events,
                            "--curve-key", str(keys.secret("observer")),
                            "--server-key", str(keys.folder / "manager.key")],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert GROUP in shown.stdout
    monitor = Proc("monitor", [*MGM, "monitor", "--api", tcp_manager.api, "--events", tcp_manager.events,
                               "--curve-key", str(keys.secret("observer")), "--server-key", keys.public["manager"]],
                   ipc_dir / "monitor.log")
    monitor.start()
    procs.append(monitor)
    wait_for(lambda: "state SNAPSHOT" in monitor.log(), 20, "mgm monitor's snapshot of the state over tcp")
    assert "1 memberships" in monitor.log()

    # without keys the tool does not get in, and says so
    refused = subprocess.run([*MGM, "show", "groups", "--timeout", "1", "--api", tcp_manager.api,
                              "--events", tcp_manager.events], capture_output=True, text=True, timeout=30)
    assert refused.returncode == 1
    assert "no manager answers" in refused.stderr and "allow-list" in refused.stderr, refused.stderr


def test_a_plugin_claiming_an_interface_it_may_not_is_refused(tcp_manager: TcpManager, ipc_dir: Path,
                                                               procs: list[Any]) -> None:
    plugin = start_static(tcp_manager, ipc_dir, procs, [ALLOWED_INDEX, 9])
    log_has(tcp_manager.proc, "key 'static' may not own interface 9/0.0.0.0")
    wait_for(lambda: "ERROR_ACCESS_DENIED" in plugin.log() or "may not own interface 9" in plugin.log(), 15,
             "the plugin to report the refusal")
    assert all(i["if_index"] != 9 for i in tcp_manager.state()["interfaces"])


def test_a_plugin_with_a_key_not_in_the_allow_list_never_registers(tcp_manager: TcpManager, ipc_dir: Path,
                                                                    procs: list[Any]) -> None:
    start_static(tcp_manager, ipc_dir, procs, [ALLOWED_INDEX, 8], key="stranger")
    log_has(tcp_manager.proc, f"(unknown CURVE key): {tcp_manager.keys.public['stranger']}")
    assert tcp_manager.state()["protocols"] == []
