"""Shared fixtures: a short ipc directory, a manager process, plugin processes.

Any test may use them:

* ``ipc_dir`` -- a fresh directory under /tmp with a short path (ipc paths
  are limited to 107 bytes, pytest's tmp_path can be longer), removed after.
* ``manager`` -- ``mgm manager`` running on ``ipc_dir``; a `ManagerProc` with
  ``api``, ``events``, ``request(op, args)`` (blocking) and ``log()``.
  ``start_manager(**options)`` starts one with other options
  (``question_deadline=0.3``...) or again after a stop;
  ``start_manager(directory)`` a further one on endpoints in that
  directory.  All run ``--resolver none`` unless given ``resolver="kernel"``
  (as `mgm_bus`).
* ``start_plugin(name, table)`` -- ``mgm plugin NAME`` with ``table`` as its
  ``[plugins.NAME]`` table.  For the recorder test plugins (names
  ``test-*``) a ``control`` endpoint is added and the call returns once the
  plugin's ``mgm_start`` has run; ``.control`` then drives it
  (mgm_testplugins.control.Control).  Other plugins: pass ``ready`` (a
  function polled until true) or nothing.
* ``start_up(config)`` -- ``mgm up --config CONFIG`` as a `Proc`.

Every process runs in its own process group and is killed, group and all,
at teardown, also when the test fails; the logs of every process are
printed on failure (pytest shows captured output of failing tests).

The processes come from mgm.plugins.testing, the pytest plugin mgmbus ships
for plugin authors (its fixture `mgm_bus` is available here too).  ``topology``
(network namespaces, removed at teardown) is tests/netns.py's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from mgm_testplugins.control import Control
from mgm_testplugins.processes import StartUp
from netns import topology

from mgm.plugins.testing import MGM, ManagerProc, PluginProc, Proc, manager_argv, toml_config, wait_for

__all__ = ["topology"]

# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mgm-", ignore_cleanup_errors=True) as path:
        yield Path(path)


@pytest.fixture
def procs(request: pytest.FixtureRequest, ipc_dir: Path) -> Iterator[list[Proc]]:
    """Every process a test started; all stopped at teardown (plugins' control sockets closed first), logs printed
    if the test failed."""
    started: list[Proc] = []
    yield started
    for proc in started:
        if isinstance(proc, PluginProc) and proc.control is not None:
            proc.control.close()
    for proc in sorted(reversed(started), key=lambda p: isinstance(p, ManagerProc)):  # plugins before managers
        proc.stop()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        for proc in started:
            print(f"----- log of {proc.name} (pid {proc.popen.pid if proc.popen else '-'}) -----\n{proc.log()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so fixtures can see whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def start_manager(ipc_dir: Path, procs: list[Proc]) -> Callable[..., ManagerProc]:
    count = 0

    def start(directory: Path | None = None, **options: Any) -> ManagerProc:
        nonlocal count
        directory = directory or ipc_dir
        api, events = f"ipc://{directory}/api", f"ipc://{directory}/events"
        running = [p for p in procs if isinstance(p, ManagerProc) and p.api == api and p.alive()]
        assert not running, "a manager of this test is still running on these endpoints: stop it first"
        count += 1
        proc = ManagerProc("manager", manager_argv(api, events, **options), directory / f"manager-{count}.log",
                           api=api, events=events)  # fmt: skip
        proc.start()
        procs.append(proc)
        proc.wait_ready()
        return proc

    return start


@pytest.fixture
def manager(start_manager: Callable[..., ManagerProc]) -> ManagerProc:
    return start_manager()


StartPlugin = Callable[..., PluginProc]


@pytest.fixture
def start_plugin(start_manager: Callable[..., ManagerProc], ipc_dir: Path, procs: list[Proc]) -> StartPlugin:
    """start_plugin(name, table=None, *, control=None, ready=None, wait=True) -> PluginProc.

    The plugin connects to the test's manager, started with default options
    if the test has not started one (with ``manager`` or ``start_manager``).
    """

    def start(
        name: str,
        table: Mapping[str, Any] | None = None,
        *,
        control: bool | None = None,
        ready: Callable[[], Any] | None = None,
        wait: bool = True,
    ) -> PluginProc:
        managers = [p for p in procs if isinstance(p, ManagerProc) and p.api == f"ipc://{ipc_dir}/api"]
        manager = managers[-1] if managers else start_manager()
        table = dict(table or {})
        if control is None:
            control = name.startswith("test-")
        ctl = None
        if control:
            table.setdefault("control", f"ipc://{ipc_dir}/{name}.ctl")
            ctl = Control(table["control"])
        config_path = ipc_dir / f"{name}.toml"
        config_path.write_text(toml_config({name: table}))
        argv = [*MGM, "plugin", name, "--config", str(config_path), "--api", manager.api, "--events",
                manager.events, "--log-level", "debug"]  # fmt: skip
        proc = PluginProc(name, argv, ipc_dir / f"{name}.log", control=ctl, config_path=config_path)
        proc.start()
        procs.append(proc)
        if wait and (ctl is not None or ready is not None):
            check = ready or (lambda: _pings(ctl))

            def up() -> Any:
                if not proc.alive():
                    raise AssertionError(f"plugin {name} exited with {proc.popen.returncode}:\n{proc.log()}")  # type: ignore[union-attr]
                return check()

            try:
                wait_for(up, 15, f"plugin {name} to start")
            except TimeoutError:
                raise AssertionError(f"plugin {name} did not start:\n{proc.log()}") from None
        return proc

    return start


@pytest.fixture
def start_up(ipc_dir: Path, procs: list[Proc]) -> StartUp:
    def start(config: Path) -> Proc:
        up = Proc("up", [*MGM, "up", "--config", str(config)], ipc_dir / "up.log")
        up.start()
        procs.append(up)
        return up

    return start


def _pings(ctl: Control | None) -> bool:
    assert ctl is not None
    probe = Control(ctl.endpoint, timeout=1.0)
    try:
        probe.call("ping")
        return True
    except TimeoutError:
        return False
    finally:
        probe.close()


@pytest.fixture(params=[pytest.param("mrt", marks=pytest.mark.mroute), "nft"])
def forwarder_backend(request: pytest.FixtureRequest) -> str:
    """Each forwarding test once per Linux forwarder backend; "mrt" needs IP_MROUTE (marked `mroute`)."""
    return str(request.param)
