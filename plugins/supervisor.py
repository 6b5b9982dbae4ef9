"""`mgm up`: the manager and every configured plugin, each its own process, kept running.

Order: start ``mgm manager``, wait until it answers ``ping``, then start one
``mgm plugin NAME`` per ``[plugins.NAME]`` table.  A child that exits is
started again after a backoff (0.1 s doubling to 30 s, back to 0.1 s once it
has run a minute: one crash costs little, a crash loop soon waits long); one
that exits with status 2 (a configuration or plugin mistake, which a restart
cannot fix) is left stopped and reported.  SIGTERM or Ctrl-C stops the
plugins first, then the manager, each with SIGTERM and, after a grace period,
SIGKILL; the exit status is then 0, or 1 if every plugin had failed, so that
a script can tell.

Children run in their own process groups, so the terminal's Ctrl-C reaches
only the supervisor, which then stops them in order; each child also gets
SIGTERM from the kernel if the supervisor dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from mgm.core.runtime.config import (
    DEFAULT_SOURCE,
    Config,
    ConfigError,
    DefaultChoice,
    default_config,
    effective_manager,
    load,
    loads,
    multicast_interfaces,
)
from mgm.core.runtime.keys import client_curve
from mgm.core.runtime.logs import setup_from as setup_logging
from mgm.plugins.links import LinkSubscriber, watcher

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.1
"""The first restart is prompt: e.g. a crashed forwarder's kernel entries forward again once its successor runs."""
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0
"""A child that ran this long before exiting starts again after BACKOFF_FIRST."""
GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL when stopping a child."""
MANAGER_READY_TIMEOUT = 60.0
"""How long a live but silent manager is waited for: its start can take tens of seconds on a slow or busy
machine (a VM on an emulated CPU). Every MANAGER_READY_NOTE seconds the log says it is still waited for."""
MANAGER_READY_NOTE = 10.0
EXIT_NO_RESTART = 2
"""A child exiting with this status made a mistake a restart cannot fix (config, plugin code)."""
EXIT_UNSUPPORTED = 3
"""A child exiting with this status runs on a machine that lacks what it needs (mgm.plugins.host)."""

_PR_SET_PDEATHSIG = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="configuration file (default: the embedded default)")


def run(args: argparse.Namespace) -> int:
    config_path: str | None = args.config
    choice: DefaultChoice | None = None
    try:
        if config_path is None:
            choice = default_config(*probe_machine())
            config = loads(choice.text, DEFAULT_SOURCE)
        else:
            config = load(config_path)
    except ConfigError as exc:
        return _refused(*exc.lines())
    if missing := missing_plugins(list(config.plugins)):
        return _refused(*(config.error(f"plugins.{name}", "no installed plugin has this name") for name in missing))

    settings = effective_manager(config, args.api, args.events, args.log_level)
    level, api, events = str(settings.log_level), str(settings.api), str(settings.events)
    setup_logging(args, tag="up", level=level)
    try:  # our own pings to a tcp manager need a key of the allow-list: the file's curve_client_key
        curve = client_curve(argparse.Namespace(), config)
    except ValueError as exc:
        return _refused(exc)
    if api.startswith("tcp://") and curve is None:
        return _refused("the manager's api is tcp, which needs CURVE: give [manager] curve_secret_key, "
                        "curve_server_public_key and curve_client_key (docs/security.md)")
    if choice is None:
        return asyncio.run(Supervisor(config, config_path, api, events, level, args.log_format, curve).run())
    log.log(logging.WARNING if choice.simulated else logging.INFO, "%s", choice.reason)
    # The children read the same choice from a private copy (a restarted one must not decide anew).
    workdir = tempfile.mkdtemp(prefix="mgm-up-")
    try:
        path = os.path.join(workdir, "default.toml")
        with open(path, "w", encoding="utf-8") as out:
            out.write(choice.text)
        return asyncio.run(Supervisor(config, path, api, events, level, args.log_format, curve).run())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _refused(*mistakes: object) -> int:
    """Say each mistake on stderr: `mgm up` exits 2 before it starts anything."""
    for mistake in mistakes:
        print(f"mgm up: {mistake}", file=sys.stderr)
    return EXIT_NO_RESTART


def probe_machine() -> tuple[bool, str | None, str | None, list[str]]:
    """(root?, the forwarding backend that works or None, why MRT was not taken (or why nothing works),
    multicast interfaces that are up): what `default_config` decides on."""
    is_root = os.geteuid() == 0
    backend = why = None
    if is_root:
        from mgm.plugins.forwarder.linux import KERNEL_LACKS
        from mgm.plugins.forwarder.mroute import MrouteError, MrouteSocket
        from mgm.plugins.forwarder.nftables import nf_tables_error

        try:
            MrouteSocket(upcall_filter=False).close()  # MRT_INIT then MRT_DONE: nothing left behind
            backend = "mrt"
        except (MrouteError, OSError) as exc:
            why = str(exc)
            if exc.errno in KERNEL_LACKS:
                nft_error = nf_tables_error()
                if nft_error is None:
                    backend, why = "nft", "the kernel has no multicast routing table (CONFIG_IP_MROUTE)"
                else:
                    why = f"{exc}; and nftables cannot be used: {nft_error}"
    return is_root, backend, why, multicast_interfaces(asyncio.run(interface_flags()))


async def interface_flags() -> dict[str, int]:
    """Each interface's flags (IFF_*) by name, as the process's link watcher dumped them (none if netlink failed)."""
    links = watcher()
    links.subscribe(LinkSubscriber())  # the first subscriber opens its socket
    await links.settled.wait()
    return {link.name: link.flags for link in links.links.values()}


def next_backoff(current: float, ran: float) -> tuple[float, float]:
    """(delay before this restart, delay for the next one) for a child that ran `ran` seconds."""
    delay = BACKOFF_FIRST if ran >= STABLE_AFTER else current
    return delay, min(delay * 2, BACKOFF_MAX)


def missing_plugins(names: list[str]) -> list[str]:
    """Configured plugin names that no installed entry point provides."""
    from importlib.metadata import entry_points

    installed = {ep.name for ep in entry_points(group="mgm.plugins")}
    return [name for name in names if name not in installed]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor goes away, whatever the reason."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    state: str = "waiting"  # waiting, running, backoff, failed, stopped
    restarts: int = 0
    backoff: float = BACKOFF_FIRST
    started: float = 0.0
    exits: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None


class Supervisor:
    def __init__(
        self, config: Config, config_path: str | None, api: str, events: str, log_level: str, log_format: str = "text",
        curve: Any = None,
    ) -> None:
        self.config = config
        self.curve = curve
        """CURVE keys (mgm.bus.sockets.Curve) for our pings when the manager is on tcp."""
        self.api = api
        self.events = events
        self.stopping = asyncio.Event()
        base = [sys.executable, "-m", "mgm.core.cli"]
        common = ["--api", api, "--events", events, "--log-level", log_level, "--log-format", log_format]
        self.log_format = log_format
        with_config = ["--config", config_path] if config_path else []
        self.manager = Child("manager", [*base, "manager", *common, *with_config])  # its CURVE key and allow-list
        self.plugins = [Child(name, [*base, "plugin", name, *common, *with_config]) for name in config.plugins]
        self.watchers: list[asyncio.Task[None]] = []

    # --- the run ------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        if not self.plugins:
            log.info("no [plugins.NAME] table in %s: running the manager alone", self.config.source)
        if await ping(self.api, 0.5, self.curve):
            log.error("a manager already answers on %s; mgm up runs its own (stop that one, or give other "
                      "endpoints in [manager] or with --api/--events)", self.api)  # fmt: skip
            return 1
        await self.start(self.manager)
        if not await self.manager_ready():
            await self.stop(self.manager)
            self.show()
            return 0 if self.stopping.is_set() else 1
        for child in self.plugins:
            await self.start(child)
        self.watchers = [loop.create_task(self.watch(c)) for c in [self.manager, *self.plugins]]
        self.show()
        await self.stopping.wait()
        log.info("stopping: plugins first, then the manager")
        for task in self.watchers:
            task.cancel()
        await asyncio.gather(*self.watchers, return_exceptions=True)
        await asyncio.gather(*(self.stop(c) for c in self.plugins))
        await self.stop(self.manager)
        self.show()
        failed = [c.name for c in self.plugins if c.state == "failed"]
        if failed and len(failed) == len(self.plugins):  # nothing ran but the manager: a script must tell
            log.error("every plugin had failed (%s; their messages are above): exiting with status 1",
                      ", ".join(failed))  # fmt: skip
            return 1
        return 0

    async def start(self, child: Child) -> None:
        child.proc = await asyncio.create_subprocess_exec(
            *child.argv, process_group=0, preexec_fn=_die_with_parent, stdin=asyncio.subprocess.DEVNULL
        )
        child.state = "running"
        child.started = time.monotonic()
        log.info("%s started (pid %d)", child.name, child.proc.pid)

    async def manager_ready(self) -> bool:
        """Ping until the manager answers; False (said why) if it exits or stays silent."""
        assert self.manager.proc is not None
        started = time.monotonic()
        deadline, note = started + MANAGER_READY_TIMEOUT, started + MANAGER_READY_NOTE
        wait_exit = asyncio.ensure_future(self.manager.proc.wait())
        try:
            while time.monotonic() < deadline and not self.stopping.is_set():
                if time.monotonic() >= note:
                    note += MANAGER_READY_NOTE
                    log.warning("the manager (pid %d) has not answered on %s for %.0f s; still waiting, up to %.0f s",
                                self.manager.proc.pid, self.api, time.monotonic() - started,
                                MANAGER_READY_TIMEOUT)  # fmt: skip
                if await ping(self.api, 0.25, self.curve) and not wait_exit.done():
                    log.info("manager answers on %s", self.api)
                    return True
                if wait_exit.done():
                    log.error(
                        "the manager exited with status %s before answering on %s (its messages are above); "
                        "nothing started",
                        wait_exit.result(),
                        self.api,
                    )
                    self.manager.state = "failed"
                    return False
            if not self.stopping.is_set():
                log.error("the manager did not answer ping on %s within %.0f s; nothing started", self.api,
                          MANAGER_READY_TIMEOUT)  # fmt: skip
            return False
        finally:
            wait_exit.cancel()

    async def watch(self, child: Child) -> None:
        """Start `child` again whenever it exits, with backoff, until the supervisor stops."""
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            child.exits.append(code)
            ran = time.monotonic() - child.started
            if code in (EXIT_NO_RESTART, EXIT_UNSUPPORTED):
                child.state = "failed"
                why = {EXIT_UNSUPPORTED: "this machine lacks what it needs"}.get(code, "a mistake a restart cannot fix")
                log.error("%s exited with status %d (%s, see its log); not restarting", child.name, code, why)
                self.show()
                return
            delay, child.backoff = next_backoff(child.backoff, ran)
            child.state = "backoff"
            log.warning("%s (pid %d) exited with status %d after %.1f s; starting it again in %.1f s",
                        child.name, child.proc.pid, code, ran, delay)  # fmt: skip
            self.show()
            await asyncio.sleep(delay)
            child.restarts += 1
            await self.start(child)
            self.show()

    async def stop(self, child: Child) -> None:
        proc = child.proc
        if proc is None or proc.returncode is not None:
            if child.state != "failed":
                child.state = "stopped"
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), GRACE)
        except TimeoutError:
            log.warning("%s (pid %d) still running %.0f s after SIGTERM: SIGKILL", child.name, proc.pid, GRACE)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        child.state = "stopped"
        log.info("%s (pid %d) stopped with status %s", child.name, proc.pid, proc.returncode)

    def show(self) -> None:
        """The status table, on stderr: one line per process (with --log-format json, one log line with them all)."""
        if self.log_format == "json":
            table = [{"name": c.name, "pid": c.pid, "state": c.state, "restarts": c.restarts}
                     for c in [self.manager, *self.plugins]]  # fmt: skip
            log.info("status: %s", ", ".join(f"{c['name']} {c['state']}" for c in table), extra={"processes": table})
            return
        lines = [f"{'NAME':<20} {'PID':>7}  {'STATE':<8} RESTARTS"]
        lines += [f"{c.name:<20} {c.pid if c.pid is not None else '-':>7}  {c.state:<8} {c.restarts}"
                  for c in [self.manager, *self.plugins]]  # fmt: skip
        print("\n".join(lines), file=sys.stderr, flush=True)


async def ping(api: str, timeout: float, curve: Any = None) -> bool:
    """One ``ping`` on a fresh DEALER (with CURVE keys for a tcp manager): True when it answers within `timeout`."""
    import zmq
    import zmq.asyncio

    from mgm.bus.codec import decode_reply, encode_request
    from mgm.bus.sockets import secure

    ctx = zmq.asyncio.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        secure(sock, api, curve, server=False)
        sock.connect(api)
        await sock.send_multipart([b"", encode_request("up-ping", "ping", {})])
        if not await sock.poll(int(timeout * 1000)):
            return False
        frames = await sock.recv_multipart()
        reply: dict[str, Any] = decode_reply(frames[-1])
        return reply.get("status") == 0
    except zmq.ZMQError as exc:
        log.debug("ping %s: %s", api, exc)
        await asyncio.sleep(timeout)
        return False
    finally:
        sock.close(0)
