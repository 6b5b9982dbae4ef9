"""Shared fixtures: a short ipc directory, a manager process, plugin processes.

Any test may use them:

* ``ipc_dir`` -- a fresh directory under /tmp with a short path (ipc paths
  are limited to 107 bytes, pytest's tmp_path can be longer), removed after.
* ``manager`` -- ``mgm manager`` running on ``ipc_dir``; a `ManagerProc` with
  ``api``, ``events``, ``request(op, args)`` (blocking) and ``log()``.
  ``start_manager(**options)`` starts one with other options
  (``question_deadline=0.3``...) or again after a stop.
* ``start_plugin(name, table)`` -- ``mgm plugin NAME`` with ``table`` as its
  ``[plugins.NAME]`` table.  For the recorder test plugins (names
  ``test-*``) a ``control`` endpoint is added and the call returns once the
  plugin's ``mgm_start`` has run; ``.control`` then drives it
  (mgm_testplugins.control.Control).  Other plugins: pass ``ready`` (a
  function polled until true) or nothing.

Every process runs in its own process group and is killed, group and all,
at teardown, also when the test fails; the logs of every process are
printed on failure (pytest shows captured output of failing tests).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq
from mgm.bus.codec import decode_reply, encode_request
from mgm.bus.status import MgmError
from mgm_testplugins.control import Control, wait_for

MGM = [sys.executable, "-m", "mgm.core.cli"]
STOP_GRACE = 5.0


# --- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process in its own process group, with its output in a file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log_path, "ab")  # noqa: SIM115 -- the child holds it; closed below
        try:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM the group, wait, SIGKILL what is left; the exit status of the leader."""
        if self.popen is None:
            return None
        self.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers of the group, too
        return self.popen.wait()

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)


@dataclass
class ManagerProc(Proc):
    api: str = ""
    events: str = ""
    _sock: zmq.Socket[bytes] | None = field(default=None, repr=False)
    _next: int = 0

    def request(self, op: str, args: Mapping[str, Any] | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """One request, as a client without a handle; MgmError on refusal, TimeoutError if silent."""
        reply = self.raw([b"", encode_request(self._id(), op, dict(args or {}))], timeout)
        if reply.get("status") != 0:
            raise MgmError(reply["status"], reply.get("message", ""))
        result: dict[str, Any] = reply.get("result") or {}
        return result

    def raw(self, frames: list[bytes], timeout: float = 5.0) -> dict[str, Any]:
        """Send frames as they are on a fresh DEALER; the decoded reply."""
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.api)
            sock.send_multipart(frames)
            if not sock.poll(int(timeout * 1000)):
                raise TimeoutError(f"no reply from the manager on {self.api} within {timeout} s")
            return decode_reply(sock.recv_multipart()[-1])
        finally:
            sock.close(0)

    def _id(self) -> int:
        self._next += 1
        return self._next

    def ping(self) -> bool:
        try:
            self.request("ping", timeout=0.5)
            return True
        except TimeoutError:
            return False


@dataclass
class PluginProc(Proc):
    control: Control | None = None
    config_path: Path | None = None


# --- TOML for the test configs ----------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_config(plugins: Mapping[str, Mapping[str, Any]], manager: Mapping[str, Any] | None = None) -> str:
    """A config file's text: [manager] and one [plugins."NAME"] table per plugin."""
    lines = []
    if manager:
        lines.append("[manager]")
        lines += [f"{k} = {toml_value(v)}" for k, v in manager.items()]
    for name, table in plugins.items():
        lines.append(f'[plugins."{name}"]')
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="mgm-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def procs(request: pytest.FixtureRequest) -> Iterator[list[Proc]]:
    """Every process a test started; all stopped at teardown, logs printed if the test failed."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):  # plugins before the manager
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

    def start(**options: Any) -> ManagerProc:
        nonlocal count
        count += 1
        api, events = f"ipc://{ipc_dir}/api", f"ipc://{ipc_dir}/events"
        argv = [*MGM, "manager", "--api", api, "--events", events, "--log-level", "debug"]
        for key, value in options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        proc = ManagerProc("manager", argv, ipc_dir / f"manager-{count}.log", api=api, events=events)
        proc.start()
        procs.append(proc)
        try:
            wait_for(lambda: proc.ping() or not proc.alive(), 15, "the manager to answer ping")
        except TimeoutError:
            raise AssertionError(f"the manager did not answer ping:\n{proc.log()}") from None
        assert proc.alive(), f"the manager exited with {proc.popen.returncode if proc.popen else '?'}:\n{proc.log()}"
        return proc

    return start


@pytest.fixture
def manager(start_manager: Callable[..., ManagerProc]) -> ManagerProc:
    return start_manager()


StartPlugin = Callable[..., PluginProc]


@pytest.fixture
def start_plugin(manager: ManagerProc, ipc_dir: Path, procs: list[Proc]) -> StartPlugin:
    """start_plugin(name, table=None, *, control=None, ready=None, wait=True) -> PluginProc."""

    def start(
        name: str,
        table: Mapping[str, Any] | None = None,
        *,
        control: bool | None = None,
        ready: Callable[[], Any] | None = None,
        wait: bool = True,
    ) -> PluginProc:
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


@pytest.fixture(autouse=True)
def _close_controls(procs: list[Proc]) -> Iterator[None]:
    yield
    for proc in procs:
        if isinstance(proc, PluginProc) and proc.control is not None:
            proc.control.close()


def pids_gone(pids: list[int]) -> bool:
    """True when none of `pids` is a live process (zombies of others' children count as gone)."""
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state != "Z":
            return False
    return True
