"""The pytest plugin shipped with mgmbus: run a manager and plugin processes for a test.

Installed with mgmbus (entry point ``pytest11``, name ``mgm``), so any
project's tests can use the fixture `mgm_bus` without importing anything::

    def test_hello_answers_rpf(mgm_bus):
        plugin = mgm_bus.start_plugin("hello", {"interfaces": [5]})
        mgm_bus.wait_for_event(lambda e: e["type"] == "interface_owned" and e["if_index"] == 5)
        assert mgm_bus.state()["interfaces"][0]["owner"]["protocol_id"] == plugin.protocol[0]

What it gives (`MgmBus`):

- ``start_manager(**options)``: ``mgm manager`` on ``ipc://`` endpoints in a
  short directory under /tmp (ipc paths are limited to 107 bytes);
  ``question_deadline=0.3`` becomes ``--question-deadline 0.3``.  Started
  on first use by everything below.  It runs ``--resolver none`` unless
  told ``resolver="kernel"``: a test's interfaces are numbers of its own,
  not the host's routes, so an MFE comes in where its first packet arrived.
- ``start_plugin(name, table)``: ``mgm plugin NAME --config FILE`` with
  ``table`` as the file's ``[plugins.NAME]`` table; returns once the plugin
  registered and took its configured interfaces (its `protocol` is then set).
- ``client``: a blocking `BusClient` (one DEALER, so a handle it registered
  stays valid; one SUB on every topic, subscribed before any plugin starts)
  with ``request``, ``register``, ``events()``, ``wait_for_event`` and
  ``state()`` (a `sync` of a stream, pages joined).
- ``wait_for_event(predicate, timeout)``, ``state(stream)``, ``request(op,
  args)``: the client's, for short tests.

Every process runs in its own process group and is killed with its group at
teardown, also when the test fails; the processes' logs are printed then.
The building blocks (`Proc`, `ManagerProc` and its `wait_ready`,
`manager_argv`, `toml_config`, `wait_for`, `wait_for_async`) serve fixtures
of one's own; the mgmbus repository's conftest uses them too.

Every timeout here (waits, replies, a stopping process's grace) is multiplied
by ``$MGM_TEST_TIME_SCALE`` (default 1; `scaled(seconds)` for waits of one's
own): set it where processes are slower than usual, e.g. 6 under User-mode
Linux.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

MGM = [sys.executable, "-m", "mgm.core.cli"]
STOP_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when a test's process is stopped."""
POLL = 0.02
"""Seconds between two looks in `wait_for`; never below 20 ms (ipc tails reach 10 ms)."""
START_TIMEOUT = 15.0
TEST_MANAGER_OPTIONS = {"resolver": "none"}
"""A test's manager takes the arrival interface, not the host's routes (its interfaces are the test's own)."""
TIME_SCALE_VAR = "MGM_TEST_TIME_SCALE"


def _time_scale() -> float:
    raw = os.environ.get(TIME_SCALE_VAR, "").strip() or "1"
    try:
        scale = float(raw)
    except ValueError:
        scale = 0.0
    if not 0 < scale < float("inf"):
        raise ValueError(f"{TIME_SCALE_VAR}={raw!r}: want a positive number (1 = as on this machine, 6 = UML)")
    return scale


TIME_SCALE = _time_scale()  # read here and nowhere else


def scaled(seconds: float) -> float:
    """`seconds` times MGM_TEST_TIME_SCALE: how long to wait for something that takes `seconds` here."""
    return seconds * TIME_SCALE


def _waited(seconds: float) -> str:
    """How long a wait of `seconds` lasted, for messages: "60 s (10 s x MGM_TEST_TIME_SCALE=6)"."""
    if TIME_SCALE == 1:
        return f"{seconds} s"
    return f"{scaled(seconds):g} s ({seconds} s x {TIME_SCALE_VAR}={TIME_SCALE:g})"


def wait_for(predicate: Callable[[], T | None], timeout: float = 10.0, what: str = "a condition") -> T:
    """Poll `predicate` every 20 ms until it returns something true, else raise TimeoutError naming `what`.

    `timeout` is scaled by MGM_TEST_TIME_SCALE.
    """
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {_waited(timeout)} for {what}; last value {value!r}")
        time.sleep(POLL)


async def wait_for_async(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0, what: str = "a condition"
) -> T:
    """`wait_for` inside an event loop: the loop runs between looks; `predicate` may be a coroutine function.

    `timeout` is scaled by MGM_TEST_TIME_SCALE.
    """
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {_waited(timeout)} for {what}; last value {value!r}")
        await asyncio.sleep(POLL)


# --- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process in its own process group, with its stdout and stderr in a file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:  # the child has its own copy of the descriptor
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

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
            self.popen.wait(scaled(grace))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers of the group, too
        return self.popen.wait()

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit (`timeout` scaled by MGM_TEST_TIME_SCALE); its exit status."""
        assert self.popen is not None
        return self.popen.wait(scaled(timeout))


@dataclass
class ManagerProc(Proc):
    """`mgm manager`; `request` sends one request on a fresh connection (no handle survives it)."""

    api: str = ""
    events: str = ""
    _next: int = 0

    def request(self, op: str, args: Mapping[str, Any] | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """One request, as a client without a handle; MgmError on refusal, TimeoutError if silent."""
        from mgm.bus.codec import encode_request

        self._next += 1
        return _result(self.raw([b"", encode_request(self._next, op, dict(args or {}))], timeout))

    def raw(self, frames: list[bytes], timeout: float = 5.0) -> dict[str, Any]:
        """Send frames as they are on a fresh DEALER; the decoded reply."""
        import zmq

        from mgm.bus.codec import decode_reply

        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.api)
            sock.send_multipart(frames)
            if not sock.poll(int(scaled(timeout) * 1000)):
                raise TimeoutError(f"no reply from the manager on {self.api} within {_waited(timeout)}")
            return decode_reply(sock.recv_multipart()[-1])
        finally:
            sock.close(0)

    def ping(self) -> bool:
        try:
            self.request("ping", timeout=0.5)
            return True
        except TimeoutError:
            return False

    def wait_ready(self, ready: Callable[[], Any] | None = None, what: str = "the manager to answer ping") -> None:
        """Return once the started manager answers ping (or `ready()` is true); AssertionError with its log if it
        exits first or is not ready within START_TIMEOUT (scaled)."""
        check = ready or self.ping
        try:
            wait_for(lambda: not self.alive() or check(), START_TIMEOUT, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}:\n{self.log()}") from None
        if not self.alive():
            raise AssertionError(f"{self.name} exited with {self.popen.returncode if self.popen else '?'}:\n"
                                 f"{self.log()}")  # fmt: skip


def _result(reply: Mapping[str, Any]) -> dict[str, Any]:
    """A decoded reply's result; MgmError where it is a refusal."""
    from mgm.bus.status import MgmError

    if reply.get("status") != 0:
        raise MgmError(reply["status"], reply.get("message", ""))
    result: dict[str, Any] = reply.get("result") or {}
    return result


def manager_argv(api: str, events: str, log_level: str = "debug", **options: Any) -> list[str]:
    """`mgm manager` on `api` and `events` for a test: TEST_MANAGER_OPTIONS, then `options` as --options
    (``question_deadline=0.3`` becomes ``--question-deadline 0.3``)."""
    argv = [*MGM, "manager", "--api", api, "--events", events, "--log-level", log_level]
    for key, value in {**TEST_MANAGER_OPTIONS, **options}.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


@dataclass
class PluginProc(Proc):
    """`mgm plugin NAME`; `protocol` is (protocol_id, component_id) once it registered."""

    config_path: Path | None = None
    protocol: tuple[int, int] | None = None
    control: Any = None
    """A test-specific handle to the plugin (mgmbus's own recorder plugins put their control socket here)."""


# --- TOML for generated configs ---------------------------------------------------------------


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


# --- a blocking client --------------------------------------------------------------------------


@dataclass
class BusClient:
    """A blocking client for tests: one DEALER (handles stay valid) and one SUB that records every event.

    Events are kept in arrival order in `received` (each the decoded payload
    plus ``topic``); heartbeats on ``hb`` are not kept.
    """

    api: str
    events_endpoint: str
    received: list[dict[str, Any]] = field(default_factory=list)
    handle: int | None = None
    _dealer: Any = None
    _sub: Any = None
    _next: int = 0

    def __post_init__(self) -> None:
        import zmq

        ctx: zmq.Context[Any] = zmq.Context.instance()
        self._dealer = ctx.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.LINGER, 0)
        self._dealer.connect(self.api)
        self._sub = ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(self.events_endpoint)
        # The manager sends a heartbeat as soon as it sees a subscription: then ours is live.
        self._live = False
        wait_for(self._poll_live, START_TIMEOUT, f"the first heartbeat on {self.events_endpoint}")

    def _poll_live(self) -> bool:
        self._drain()
        return self._live

    def close(self) -> None:
        for sock in (self._dealer, self._sub):
            if sock is not None:
                sock.close(0)
        self._dealer = self._sub = None

    def request(self, op: str, args: Mapping[str, Any] | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """One request; its result, MgmError when refused, TimeoutError when the manager is silent."""
        from mgm.bus.codec import decode_reply, encode_request

        self._next += 1
        req_id = self._next
        self._dealer.send_multipart([b"", encode_request(req_id, op, dict(args or {}))])
        deadline = time.monotonic() + scaled(timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._dealer.poll(int(left * 1000)):
                raise TimeoutError(f"no reply to {op} from the manager on {self.api} within {_waited(timeout)}")
            reply = decode_reply(self._dealer.recv_multipart()[-1])
            if reply.get("id") == req_id:  # else the late reply of an earlier request that timed out
                return _result(reply)

    def register(self, protocol_id: int, component_id: int, name: str = "") -> int:
        """Register a protocol on this connection; the handle (also kept as `handle`).

        A registered client must send something at least every second or the
        manager removes it after `--liveness` seconds: tests that keep one
        longer call `heartbeat()`.
        """
        args: dict[str, Any] = {"protocol_id": protocol_id, "component_id": component_id}
        if name:
            args["name"] = name
        self.handle = int(self.request("register_protocol", args)["handle"])
        return self.handle

    def heartbeat(self) -> None:
        self.request("heartbeat", {"handle": self.handle})

    def _drain(self) -> None:
        import zmq

        from mgm.bus.codec import unpack

        while True:
            try:
                topic, payload = self._sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if topic == b"hb":
                self._live = True
                continue
            event = unpack(payload)
            if isinstance(event, dict):
                event["topic"] = topic.decode(errors="replace")
                self.received.append(event)

    def events(self) -> list[dict[str, Any]]:
        """Every event received so far (after reading what is queued)."""
        self._drain()
        return list(self.received)

    def wait_for_event(
        self, predicate: Callable[[dict[str, Any]], Any], timeout: float = 10.0, since: int = 0
    ) -> dict[str, Any]:
        """The first event (from index `since` of `received`) for which `predicate` is true; TimeoutError if none."""

        def found() -> dict[str, Any] | None:
            self._drain()
            return next((e for e in self.received[since:] if predicate(e)), None)

        return wait_for(found, timeout, "an event matching the predicate")

    def state(self, stream: str = "state") -> dict[str, Any]:
        """The stream's snapshot from `sync`, all pages joined (lists concatenated in order)."""
        res = self.request("sync", {"stream": stream})
        state: dict[str, Any] = res["state"]
        while res.get("more"):
            res = self.request("sync", {"stream": stream, "cursor": res["cursor"]})
            for key, value in res["state"].items():
                if isinstance(value, list):
                    state[key].extend(value)
        return state


# --- the bus of one test -------------------------------------------------------------------------


class MgmBus:
    """A manager, plugins and a client for one test; see the module docstring."""

    def __init__(self, directory: Path, log_level: str = "debug", log_format: str = "text") -> None:
        self.dir = directory
        self.log_level = log_level
        self.log_format = log_format
        """--log-format of every process started from now on ("json": one object per line)."""
        self.api = f"ipc://{directory}/api"
        self.events = f"ipc://{directory}/events"
        self.manager: ManagerProc | None = None
        self.plugins: list[PluginProc] = []
        self._client: BusClient | None = None
        self._managers = 0

    # processes

    def start_manager(self, **options: Any) -> ManagerProc:
        """`mgm manager` on this test's endpoints; keyword options become --options (after a stop, again)."""
        if self.manager is not None and self.manager.alive():
            raise RuntimeError("this test's manager is still running: stop it first (mgm_bus.manager.stop())")
        self._managers += 1
        argv = manager_argv(self.api, self.events, self.log_level, **{"log_format": self.log_format, **options})
        proc = ManagerProc("manager", argv, self.dir / f"manager-{self._managers}.log", api=self.api,
                           events=self.events)  # fmt: skip
        proc.start()
        self.manager = proc
        proc.wait_ready()
        return proc

    def _running_manager(self) -> ManagerProc:
        return self.manager if self.manager is not None else self.start_manager()

    def start_plugin(
        self, name: str, table: Mapping[str, Any] | None = None, *, registered_as: str | None = None,
        wait: bool = True, timeout: float = START_TIMEOUT,
    ) -> PluginProc:  # fmt: skip
        """`mgm plugin NAME --config FILE`, FILE holding `table` as [plugins.NAME].

        With `wait`, returns once the plugin registered (under `registered_as`,
        default NAME) and owns every interface its table names; `protocol` is then set.
        """
        manager = self._running_manager()
        client = self.client  # subscribed before the plugin starts, so no event of it is missed
        mark = len(client.events())
        table = dict(table or {})
        config_path = self.dir / f"{name}.toml"
        config_path.write_text(toml_config({name: table}))
        argv = [*MGM, "plugin", name, "--config", str(config_path), "--api", manager.api, "--events",
                manager.events, "--log-level", self.log_level, "--log-format", self.log_format]  # fmt: skip
        proc = PluginProc(name, argv, self.dir / f"{name}.log", config_path=config_path)
        proc.start()
        self.plugins.append(proc)
        if not wait:
            return proc
        label = registered_as or name

        def seen(type_: str) -> list[dict[str, Any]]:
            if not proc.alive():
                raise AssertionError(f"plugin {name} exited with {proc.wait(0)}:\n{proc.log()}")
            return [e for e in client.events()[mark:] if e.get("type") == type_]

        try:
            event = wait_for(lambda: next((e for e in seen("protocol_registered") if e.get("name") == label), None),
                             timeout, f"plugin {name} to register as {label!r}")  # fmt: skip
            protocol = proc.protocol = (int(event["protocol_id"]), int(event["component_id"]))
            wanted = len(table.get("interfaces", []))
            wait_for(lambda: sum((e.get("protocol_id"), e.get("component_id")) == protocol
                                 for e in seen("interface_owned")) >= wanted,
                     timeout, f"plugin {name} to take its {wanted} interface(s)")  # fmt: skip
        except TimeoutError as exc:
            raise AssertionError(f"{exc}:\n{proc.log()}") from None
        if not proc.alive():
            raise AssertionError(f"plugin {name} exited with {proc.wait(0)}:\n{proc.log()}")
        return proc

    # the client

    @property
    def client(self) -> BusClient:
        if self._client is None:
            manager = self._running_manager()
            self._client = BusClient(manager.api, manager.events)
        return self._client

    def request(self, op: str, args: Mapping[str, Any] | None = None, timeout: float = 5.0) -> dict[str, Any]:
        return self.client.request(op, args, timeout)

    def wait_for_event(self, predicate: Callable[[dict[str, Any]], Any], timeout: float = 10.0) -> dict[str, Any]:
        return self.client.wait_for_event(predicate, timeout)

    def state(self, stream: str = "state") -> dict[str, Any]:
        return self.client.state(stream)

    # teardown

    def logs(self) -> str:
        procs: list[Proc] = [*self.plugins, *([self.manager] if self.manager else [])]
        return "\n".join(f"----- log of {p.name} (pid {p.popen.pid if p.popen else '-'}) -----\n{p.log()}"
                         for p in procs)  # fmt: skip

    def close(self) -> None:
        """Plugins first (they release and deregister), then the client, then the manager."""
        for proc in reversed(self.plugins):
            proc.stop()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.manager is not None:
            self.manager.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember whether the test itself failed, so `mgm_bus` prints the processes' logs only then."""
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def mgm_bus(request: pytest.FixtureRequest) -> Iterator[MgmBus]:
    """A manager (started on first use), plugins and a client; all stopped at teardown."""
    directory = Path(tempfile.mkdtemp(prefix="mgm-"))
    bus = MgmBus(directory)
    try:
        yield bus
    finally:
        bus.close()
        if request.node.stash.get(_FAILED, False):
            print(bus.logs())
        shutil.rmtree(directory, ignore_errors=True)
