"""`mgm up` as the operator runs it: everything starts, a killed plugin comes back, SIGTERM stops all."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mgm_testplugins.control import Control, wait_for
from mgm_testplugins.processes import ManagerProc, StartUp, pids_gone, toml_config

from mgm.plugins.supervisor import BACKOFF_FIRST, next_backoff


@pytest.fixture
def up_config(ipc_dir: Path) -> tuple[Path, dict[str, Control]]:
    plugins: dict[str, dict[str, Any]] = {
        "test-igmp": {"interfaces": [11]},
        "test-routing-a": {"protocol_id": 100, "component_id": 1, "interfaces": [12]},
        "test-routing-b": {"protocol_id": 101, "component_id": 1, "interfaces": [11]},
    }
    for name, table in plugins.items():
        table["control"] = f"ipc://{ipc_dir}/{name}.ctl"
    manager = {"api": f"ipc://{ipc_dir}/api", "events": f"ipc://{ipc_dir}/events", "log_level": "debug"}
    path = ipc_dir / "mgm.toml"
    path.write_text(toml_config(plugins, manager))
    return path, {name: Control(table["control"], timeout=2.0) for name, table in plugins.items()}


@pytest.fixture
def controls(up_config: tuple[Path, dict[str, Control]]) -> Iterator[dict[str, Control]]:
    yield up_config[1]
    for c in up_config[1].values():
        c.close()


def pid_of(control: Control) -> int | None:
    try:
        pid: int = control.call("ping")["pid"]
        return pid
    except TimeoutError:
        return None


def started_pids(log: str) -> list[int]:
    return sorted({int(p) for p in re.findall(r" started \(pid (\d+)\)", log)})


def test_up_starts_everything_restarts_a_killed_plugin_and_stops_on_sigterm(
    ipc_dir: Path, start_up: StartUp, up_config: tuple[Path, dict[str, Control]], controls: dict[str, Control]
) -> None:
    path, _ = up_config
    up = start_up(path)

    pids = {name: wait_for(lambda c=c: pid_of(c), 20, f"{name} under mgm up") for name, c in controls.items()}
    assert len(set(pids.values())) == 3
    manager = ManagerProc("probe", [], ipc_dir / "unused.log", api=f"ipc://{ipc_dir}/api")
    assert manager.request("get_protocol_on_interface", {"if_index": 12, "next_hop": "0.0.0.0"}) == {
        "protocol_id": 100, "component_id": 1}  # fmt: skip
    assert "test-routing-b" in up.log() and "running" in up.log()  # the status table

    os.kill(pids["test-routing-a"], signal.SIGKILL)
    new_pid = wait_for(lambda: (p := pid_of(controls["test-routing-a"])) not in (None, pids["test-routing-a"]) and p,
                       20, "test-routing-a started again")  # fmt: skip
    assert new_pid != pids["test-routing-a"]
    assert re.search(r"test-routing-a \(pid \d+\) exited with status -9", up.log())
    # the new instance registered (after the manager dropped the old one) and took its interface back
    wait_for(lambda: manager.request("get_protocol_on_interface", {"if_index": 12, "next_hop": "0.0.0.0"})
             == {"protocol_id": 100, "component_id": 1}, 10, "interface 12 owned again")  # fmt: skip
    assert pid_of(controls["test-igmp"]) == pids["test-igmp"]  # the others were left alone

    children = started_pids(up.log())
    assert len(children) == 5  # manager, three plugins, one restart
    os.kill(up.pid, signal.SIGTERM)  # the supervisor alone: it stops its children in order
    assert up.wait(30) == 0, up.log()
    assert pids_gone(children), up.log()
    log = up.log()
    assert log.index("test-routing-b (pid") < log.rindex("manager (pid")  # plugins stopped before the manager
    assert "SIGKILL" not in log  # everyone stopped within the grace period


def test_up_refuses_to_run_beside_a_manager_it_did_not_start(
    manager: ManagerProc, ipc_dir: Path, start_up: StartUp, up_config: tuple[Path, dict[str, Control]]
) -> None:
    path, _ = up_config
    up = start_up(path)
    assert up.wait(30) == 1
    assert "a manager already answers on ipc://" in up.log()
    assert manager.alive() and manager.ping()


def test_up_exits_non_zero_when_the_manager_cannot_start(ipc_dir: Path, start_up: StartUp) -> None:
    blocked = ipc_dir / "file"
    blocked.write_text("a file where the manager wants a directory")
    path = ipc_dir / "mgm.toml"
    path.write_text(toml_config({}, {"api": f"ipc://{blocked}/api", "events": f"ipc://{blocked}/events"}))
    up = start_up(path)
    assert up.wait(30) == 1, up.log()
    assert "the manager exited with status 1 before answering" in up.log()
    assert pids_gone(started_pids(up.log()))


@pytest.mark.parametrize(("text", "error"), [
    ('[manager]\nlog_level = "chatty"\n', "2: manager.log_level: must be one of"),
    ('[plugins.test-igmp]\n\n[plugins.test-rooting-a]\nprotocol_id = 100\n',
     "3: plugins.test-rooting-a: no installed plugin has this name"),
], ids=["a config error with its line", "a plugin name nobody installed"])  # fmt: skip
def test_up_refuses_a_bad_config_naming_the_line(ipc_dir: Path, start_up: StartUp, text: str, error: str) -> None:
    path = ipc_dir / "bad.toml"
    path.write_text(text)
    up = start_up(path)
    assert up.wait(30) == 2
    assert f"{path}:{error}" in up.log()
    assert "started" not in up.log()


def test_up_exits_non_zero_on_ctrl_c_when_every_plugin_had_failed(ipc_dir: Path, start_up: StartUp) -> None:
    """Plugins that stop on a mistake (status 2) stay stopped; a script still learns of it from mgm up's status."""
    manager = {"api": f"ipc://{ipc_dir}/api", "events": f"ipc://{ipc_dir}/events"}
    path = ipc_dir / "router.toml"
    path.write_text(toml_config({"test-igmp": {"interfaces": ["nosuchif0", "nosuchif1"]},
                                 "test-routing-a": {"protocol_id": 100, "component_id": 1,
                                                    "interfaces": ["nosuchif2"]}}, manager))  # fmt: skip
    up = start_up(path)
    wait_for(lambda: up.log().count("not restarting") == 2, 30, "both plugins to fail")
    log = up.log()
    for i, name in enumerate(["nosuchif0", "nosuchif1"]):  # each mistake, not only the first
        assert f"plugins.test-igmp.interfaces[{i}]: no interface named '{name}' here" in log, log
    os.kill(up.pid, signal.SIGINT)  # Ctrl-C
    assert up.wait(30) == 1, up.log()
    assert "every plugin had failed (test-igmp, test-routing-a" in up.log()


@pytest.mark.parametrize(
    ("current", "ran", "delay", "following"),
    [
        (0.5, 1.0, 0.5, 1.0),  # a crash right away: the delay doubles
        (8.0, 3.0, 8.0, 16.0),
        (30.0, 10.0, 30.0, 30.0),  # capped
        (16.0, 60.0, BACKOFF_FIRST, BACKOFF_FIRST * 2),  # it ran a stable minute: start over
    ],
)
def test_backoff_doubles_to_a_cap_and_resets_after_a_stable_minute(
    current: float, ran: float, delay: float, following: float
) -> None:
    assert next_backoff(current, ran) == (delay, following)
