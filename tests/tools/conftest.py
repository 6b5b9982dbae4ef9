"""Fixtures for the tool tests: `mgm show` runs, `mgm monitor` processes, and a relay that loses events.

* ``show(*args)`` -- ``mgm show ARGS`` against the test's manager as a
  subprocess; the CompletedProcess (text stdout and stderr).
* ``start_monitor(*args, events=None)`` -- ``mgm monitor ARGS`` as a process
  in its own group (stopped at teardown); `MonitorProc` reads its stdout
  and stderr apart, parses ``--json`` lines and polls them with a deadline.
* ``relay`` -- `DroppingRelay`: an XSUB/XPUB pair between the manager's
  event endpoint and a monitor that forwards everything (subscriptions up,
  events down) except the ``state`` events whose seq the test put in
  ``drop``: a deterministic gap, while requests and `sync` still go to the
  real manager.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mgm_testplugins.processes import MGM, ManagerProc, Proc
from tool_procs import DroppingRelay, MonitorProc

TOOL_TIMEOUT = 60.0
"""A ceiling for one `mgm show` run, so a hung tool fails the test instead of hanging it."""


@pytest.fixture
def show(ipc_dir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs against the endpoints `start_manager` binds in ipc_dir (a manager the test started)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [*MGM, "show", *args, "--api", f"ipc://{ipc_dir}/api", "--events", f"ipc://{ipc_dir}/events"]
        return subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)

    return run


@pytest.fixture
def start_monitor(manager: ManagerProc, ipc_dir: Path, procs: list[Proc]) -> Callable[..., MonitorProc]:
    count = 0

    def start(*args: str, events: str | None = None, api: str | None = None) -> MonitorProc:
        nonlocal count
        count += 1
        argv = [*MGM, "monitor", *args, "--api", api or manager.api, "--events", events or manager.events]
        proc = MonitorProc(f"monitor-{count}", argv, ipc_dir / f"monitor-{count}.out",
                           err_path=ipc_dir / f"monitor-{count}.err")  # fmt: skip
        proc.start()
        procs.append(proc)
        return proc

    return start


@pytest.fixture
def relay(manager: ManagerProc, ipc_dir: Path) -> Iterator[DroppingRelay]:
    r = DroppingRelay(manager.events, f"ipc://{ipc_dir}/relay")
    r.start()
    try:
        yield r
    finally:
        r.close()
