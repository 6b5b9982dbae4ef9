"""The static plugin under `mgm up`, as an operator runs it: routes in force, SIGHUP to the plugin, refusal at load."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

from mgm_testplugins.control import wait_for
from mgm_testplugins.processes import ManagerProc, StartUp, toml_config

STATIC = {"protocol_id": 10006, "component_id": 1}


def write_config(ipc_dir: Path, routes: list[dict[str, Any]]) -> Path:
    manager = {"api": f"ipc://{ipc_dir}/api", "events": f"ipc://{ipc_dir}/events", "log_level": "debug"}
    path = ipc_dir / "mgm.toml"
    path.write_text(toml_config({"static": {"interfaces": [21, 22, 23], "routes": routes}}, manager))
    return path


def probe(ipc_dir: Path) -> ManagerProc:
    return ManagerProc("probe", [], ipc_dir / "unused.log", api=f"ipc://{ipc_dir}/api")


def static_memberships(manager: ManagerProc) -> set[tuple[str, str, int]]:
    try:
        reply = manager.request("sync", {"stream": "state"})
    except TimeoutError:
        return set()
    assert not reply.get("more"), "a handful of memberships fits one page"
    return {(m["source"], m["group"], m["if_index"]) for m in reply["state"]["memberships"]
            if m["protocol_id"] == STATIC["protocol_id"]}  # fmt: skip


def test_under_mgm_up_the_routes_are_in_force_and_sighup_reloads(ipc_dir: Path, start_up: StartUp) -> None:
    path = write_config(ipc_dir, [{"source": "10.0.0.1", "group": "239.1.1.1", "from": 21, "to": [22, 23]}])
    up, manager = start_up(path), probe(ipc_dir)
    want = {("10.0.0.1", "239.1.1.1", 22), ("10.0.0.1", "239.1.1.1", 23)}
    wait_for(lambda: static_memberships(manager) == want, 30, "the static memberships under mgm up")
    assert manager.request("get_protocol_on_interface", {"if_index": 21, "next_hop": "0.0.0.0"}) == STATIC

    pid = int(re.findall(r"static started \(pid (\d+)\)", up.log())[0])
    path.write_text(path.read_text().replace('"to" = [22, 23]', '"to" = [23]'))
    os.kill(pid, signal.SIGHUP)
    wait_for(lambda: static_memberships(manager) == {("10.0.0.1", "239.1.1.1", 23)}, 20, "the reloaded memberships")
    assert re.findall(r"static started \(pid (\d+)\)", up.log()) == [str(pid)]  # reloaded, not restarted


def test_under_mgm_up_conflicting_routes_stop_the_plugin_with_both_lines(ipc_dir: Path, start_up: StartUp) -> None:
    path = write_config(ipc_dir, [{"source": "10.0.0.1", "group": "239.1.1.1", "from": 21, "to": [22]}])
    # the second route on a line of its own, so the two lines differ
    text = path.read_text().replace(
        "}]\n", '},\n  {"source" = "10.0.0.1", "group" = "239.1.1.1", "from" = 22, "to" = [23]},\n]\n'
    )
    path.write_text(text)
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines, 1) if line.startswith("routes"))
    second = first + 1
    up, manager = start_up(path), probe(ipc_dir)
    wait_for(lambda: "not restarting" in up.log(), 30, "mgm up to report the static plugin's refusal")
    log = up.log()
    assert f"{path}:{second}: plugins.static.routes[1]: route for (10.0.0.1, 239.1.1.1) from 22" in log
    assert f"conflicts with plugins.static.routes[0] at line {first}, from 21" in log
    assert re.search(r"static exited with status 2 .*not restarting", log)
    assert manager.ping()  # the manager runs on; only the plugin with the mistake stopped
