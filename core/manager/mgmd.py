"""mgmd, the manager process: the sans-I/O core (mgm.core.state.Mgm) on the bus.

One asyncio loop, one thread.  A turn runs straight from the callback that
found work to do: the ROUTER's or the XPUB's reader, the one timer (the next
heartbeat or core deadline, at most one second away), or a continuation
queued with call_soon when a turn left work behind.  Each turn:
- drain a batch of requests without awaiting per message; each goes to the
  core (`ping` and `sync` are answered here), and every request gets its one
  reply, also when the core raises something it should not have (1003);
- publish the events the batch caused (state -> `state`, a client's callbacks
  -> `proto/P/C`) and send the replies of deferred requests that completed;
- send `hb` to a new subscriber at once and to everyone every second;
- run the core's timers (`tick`) when `next_deadline()` says so.

The core never sees a clock: mgmd passes `time.monotonic()` as `now` and
sets `core.wall_offset` so the core can render wall-clock times.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from mgm.bus import topics
from mgm.bus.codec import BUS_OPS
from mgm.bus.server import XPUB_HWM, BusServer, Gate, ManagerRunning
from mgm.bus.sockets import Curve, InsecureEndpoint, readable
from mgm.bus.status import MgmError, Status
from mgm.core.manager.metrics import DEFAULT_TOP_MFES, Counts, MetricsServer, MgmCollector, parse_address
from mgm.core.runtime.logs import fields as log_fields
from mgm.core.runtime.logs import setup_from as setup_logging
from mgm.core.runtime.routes import KernelRoutes
from mgm.core.state import DEFERRED, LIVENESS, MFE_TIMEOUT, QUESTION_DEADLINE, Mgm
from mgm.core.types import CORE_OPS, ClientId, Event, Interface

log = logging.getLogger(__name__)


HB_INTERVAL = 1.0
MAX_SLEEP = 1.0


class Manager:
    """The manager on two endpoints; `await start()`, then `await run()` until cancelled or `stop()`."""

    def __init__(
        self,
        api: str,
        events: str,
        *,
        core: Mgm | None = None,
        question_deadline: float = QUESTION_DEADLINE,
        mfe_timeout: float = MFE_TIMEOUT,
        liveness: float = LIVENESS,
        resolver: Callable[[str], Interface | None] | None = None,
        context: zmq.Context[Any] | None = None,
        curve: Curve | None = None,
        gate: Gate | None = None,
        events_hwm: int = XPUB_HWM,
        clock: Callable[[], float] = time.monotonic,
        metrics: tuple[str, int] | None = None,
        top_mfes: int = DEFAULT_TOP_MFES,
    ) -> None:
        if core is None:  # a test may give one (with a fault in it)
            core = Mgm(resolver=resolver, question_deadline=question_deadline, mfe_timeout=mfe_timeout,
                       liveness=liveness, handle_salt=random.getrandbits(32))  # fmt: skip
        self.core = core
        self.clock = clock
        core.wall_offset = time.time() - clock()
        self.counts = Counts()
        """Requests, events, removals and syncs as plain ints; core/manager/metrics.py reads them at scrape time."""
        self.server = BusServer(api, events, context=context, curve=curve, gate=gate, events_hwm=events_hwm,
                                refusals=self.counts.refused)
        self._topics: dict[ClientId, str] = {}
        self._stopping = asyncio.Event()
        self._new_stream = False
        # the loop's state between turns (see _loop)
        self._failed: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._again: asyncio.Handle | None = None
        self._xpub_due = True
        """The XPUB's FD fired, or a send on it may have taken the FD's edge of a subscription: read it."""
        self._next_hb = 0.0
        self._core_due: float | None = None
        self._known_ops = CORE_OPS | BUS_OPS  # the rest are refused with 50
        self.metrics = metrics
        self.top_mfes = top_mfes
        self.metrics_server: Any = None

    @property
    def epoch(self) -> int:
        return self.server.epoch

    async def start(self) -> None:
        await self.server.open()
        log.info("manager started (pid %d): api %s, events %s, epoch %d",
                 os.getpid(), self.server.api, self.server.events, self.server.epoch)
        if self.metrics is not None:
            self.metrics_server = MetricsServer(MgmCollector(self.counts, self.core, self.top_mfes))
            try:
                host, port = await self.metrics_server.start(*self.metrics)
            except OSError:
                self.server.close()
                raise
            url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/metrics"
            log.info("metrics at %s", url, extra={"metrics_url": url})

    def stop(self) -> None:
        self._stopping.set()

    def close(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.server.close()
        log.info("manager stopped: sockets closed")

    async def run(self) -> None:
        """Serve until stop(); closes the sockets on the way out (also when cancelled)."""
        loop_task = asyncio.ensure_future(self._loop())
        stop_task = asyncio.ensure_future(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({loop_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if loop_task in done:
                loop_task.result()  # a bug in the loop itself: surface it
        finally:
            for t in (loop_task, stop_task):
                t.cancel()
            await asyncio.gather(loop_task, stop_task, return_exceptions=True)
            self.close()

    # --- the loop -------------------------------------------------------------

    async def _loop(self) -> None:
        """Run turns from the sockets' reader callbacks and the timer until cancelled or a turn fails.

        A turn runs inside the callback that found the work: waking a task
        through a future instead would cost a pass of the event loop per
        request, about a tenth of a ping's round trip.  Other callbacks, tasks
        and signal handlers run between turns: a turn that leaves work behind
        queues the next one with call_soon instead of looping.
        """
        server = self.server
        router, xpub = server.router, server.xpub
        assert router is not None and xpub is not None
        loop = asyncio.get_running_loop()
        self._failed = loop.create_future()
        self._next_hb = self.clock()
        self._core_due = None
        # ZeroMQ's FD only says "look at EVENTS"; it is edge-like, so after each turn we ask EVENTS
        # ourselves (which also re-arms the FD) instead of trusting the FD alone.
        self._xpub_due = True
        loop.add_reader(router.FD, self._on_router)
        loop.add_reader(xpub.FD, self._on_xpub)
        self._again = loop.call_soon(self._on_again)  # what came before the readers, and the first hb
        try:
            await self._failed
        finally:
            loop.remove_reader(router.FD)
            loop.remove_reader(xpub.FD)
            for handle in (self._timer, self._again):
                if handle is not None:
                    handle.cancel()
            self._timer, self._timer_at, self._again = None, math.inf, None

    def _on_router(self) -> None:
        if self._again is None:  # else the queued turn drains it anyway
            self._run_turn()

    def _on_xpub(self) -> None:
        self._xpub_due = True
        if self._again is None:
            self._run_turn()

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if self._again is None:
            self._run_turn()

    def _on_again(self) -> None:
        self._again = None
        self._run_turn()

    def _run_turn(self) -> None:
        failed = self._failed
        if failed is None or failed.done():
            return
        try:
            self._turn()
        except Exception as exc:  # a bug in the loop itself: run() surfaces it
            failed.set_exception(exc)

    def _turn(self) -> None:
        """Serve a batch, publish, tick when due, heartbeat, send replies; then say when to come back."""
        server = self.server
        router, xpub = server.router, server.xpub
        assert router is not None and xpub is not None
        now = self.clock()
        self._serve_batch(now)
        fresh = False
        if self._xpub_due:  # a turn that did not touch the XPUB since need not read it
            self._xpub_due = False
            fresh = server.drain_subscriptions()
        if fresh or self._new_stream:
            # a newcomer learns at once that its subscription is live, a new client's
            # follower that its stream exists
            self._new_stream = False
            server.heartbeat(self._streams())
        core_due = self._core_due
        if core_due is not None and now >= core_due:
            self._tick(now)
        if now >= self._next_hb:
            self._next_hb = now + HB_INTERVAL
            server.heartbeat(self._streams())
            server.replay.prune(now)
        server.send_replies()
        if server.lost:
            self._connections_lost(now)
        self._core_due = core_due = self._next_deadline()
        wake = min(self._next_hb, now + MAX_SLEEP, core_due if core_due is not None else math.inf)
        loop = asyncio.get_running_loop()
        if server.xpub_sent:
            server.xpub_sent = False
            if readable(xpub):
                self._xpub_due = True
        if wake <= now or self._xpub_due or readable(router):
            self._again = loop.call_soon(self._on_again)
        elif wake < self._timer_at:  # else the timer comes earlier than needed, and sets itself again then
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = wake
            self._timer = loop.call_later(wake - now, self._on_timer)

    def _next_deadline(self) -> float | None:
        try:
            return self.core.next_deadline()
        except Exception:
            log.exception("core.next_deadline failed; checking again in a second")
            return None

    def _streams(self) -> list[str]:
        try:
            return self.core.streams()
        except Exception:
            log.exception("core.streams failed; the heartbeat lists only streams with events")
            return []

    def _serve_batch(self, now: float) -> None:
        server = self.server
        requests = server.drain(now)
        if not requests:
            return
        handle = self.core.handle
        reply, reply_error = server.reply, server.reply_error
        counted, known = self.counts.requests, self._known_ops
        for conn, req_id, op, args in requests:
            status = 0
            try:
                if op in CORE_OPS:
                    result = handle(conn, op, args, now, (conn, req_id, op))
                    if result is DEFERRED:
                        continue  # counted when it completes
                    reply(conn, req_id, result)
                elif op == "ping":
                    self.core.seen(conn, now)
                    reply(conn, req_id, server.ping())
                elif op == "sync":
                    self.core.seen(conn, now)
                    self._flush()  # the snapshot's seq must count every event that precedes it
                    reply(conn, req_id, server.sync(conn, args, self.core.snapshot))
                    if args.get("cursor") is None:
                        self._count_sync(args.get("stream"))
                else:
                    status = Status.ERROR_NOT_SUPPORTED
                    reply_error(conn, req_id, Status.ERROR_NOT_SUPPORTED, f"unknown op {op!r}")
            except MgmError as exc:
                status = exc.status
                reply_error(conn, req_id, exc.status, exc.message)
            except Exception as exc:
                status = Status.ERROR_CAN_NOT_COMPLETE
                log.exception("request %r (op %r) from %r failed inside the manager", req_id, op, conn)
                reply_error(conn, req_id, Status.ERROR_CAN_NOT_COMPLETE,
                            f"internal error while handling {op}: {type(exc).__name__}: {exc}")
            key = (op if op in known else "other", int(status))
            counted[key] = counted.get(key, 0) + 1
        self._flush()

    def _count_sync(self, stream: object) -> None:
        kind = "state" if stream == topics.STATE else "proto" if str(stream).startswith("proto/") else "other"
        self.counts.syncs[kind] = self.counts.syncs.get(kind, 0) + 1

    def _connections_lost(self, now: float) -> None:
        server = self.server
        lost, server.lost = server.lost, set()
        for conn in lost:
            log.info("connection %r lost: releasing what its clients held", conn)
            try:
                self.core.connection_lost(conn, now)
            except Exception:
                log.exception("connection_lost(%r) failed", conn)
            self._flush(reason="connection lost")
        server.send_replies()

    def _tick(self, now: float) -> None:
        try:
            self.core.tick(now)
        except Exception:
            log.exception("core.tick failed")
        self._flush(reason="timeout")

    def _flush(self, reason: str = "") -> None:
        """Publish the events the core produced, then send the replies of completed deferred requests."""
        core, server = self.core, self.server
        for note in core.take_notes():
            log.info("%s", note)
        events = core.take_events()
        if events:
            publish, topic_of, by_type = server.publish, self._topics, self.counts.events
            for ev in events:
                to = ev.to
                by_type[ev.type] = by_type.get(ev.type, 0) + 1
                stream: str | None
                if to is None:
                    stream = topics.STATE
                    if ev.type in _LOGGED:
                        _log_state_event(ev, reason)
                        self._new_stream = self._new_stream or ev.type == "protocol_registered"
                        if ev.type == "protocol_deregistered" and reason in _REMOVALS:
                            removed = self.counts.clients_removed
                            removed[_REMOVALS[reason]] = removed.get(_REMOVALS[reason], 0) + 1
                else:
                    stream = topic_of.get(to)
                    if stream is None:
                        stream = topic_of[to] = topics.proto(to.protocol_id, to.component_id)
                try:
                    publish(stream, ev.type, ev.fields)
                except Exception:
                    log.exception("event %s on %s could not be published", ev.type, stream)
        for token, outcome in core.take_completions():
            conn, req_id, op = token
            key = (op, int(outcome.status) if isinstance(outcome, MgmError) else 0)
            self.counts.requests[key] = self.counts.requests.get(key, 0) + 1
            try:
                if isinstance(outcome, MgmError):
                    server.reply_error(conn, req_id, outcome.status, outcome.message)
                else:
                    server.reply(conn, req_id, outcome)
            except Exception as exc:
                log.exception("deferred reply to %r failed", req_id)
                server.reply_error(conn, req_id, Status.ERROR_CAN_NOT_COMPLETE, f"internal error: {exc}")


_LOGGED = frozenset({"protocol_registered", "protocol_deregistered", "interface_owned", "interface_released"})
_REMOVALS = {"timeout": "silence", "connection lost": "connection_lost"}
"""Flush reasons under which a deregistration is the manager removing a client (for clients_removed)."""


def _log_state_event(ev: Event, reason: str) -> None:
    f = ev.fields
    extra = log_fields(protocol=(f.get("protocol_id"), f.get("component_id")), event=ev.type)
    who = extra["protocol"]
    why = f" ({reason})" if reason else ""
    if reason:
        extra["reason"] = reason
    if ev.type == "protocol_registered":
        log.info("client %s registered%s", who, f" as {f['name']!r}" if f.get("name") else "", extra=extra)
    elif ev.type == "protocol_deregistered":
        log.info("client %s gone%s", who, why, extra=extra)
    else:  # an interface taken (never with a reason: only a request takes one) or released
        extra["interface"] = f"{f.get('if_index')}/{f.get('next_hop')}"
        verb = "owns" if ev.type == "interface_owned" else "released"
        log.info("client %s %s interface %s%s", who, verb, extra["interface"], why, extra=extra)


async def serve(
    api: str,
    events: str,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = False,
    **options: Any,
) -> None:
    """Run a manager (`options` are `Manager`'s) until `stop` is set (or SIGTERM/SIGINT with `handle_signals`)."""
    manager = Manager(api, events, **options)
    await manager.start()
    loop = asyncio.get_running_loop()
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, manager, sig)
    if stop is not None:
        stop_watch = asyncio.ensure_future(stop.wait())
        stop_watch.add_done_callback(lambda _: manager.stop())
    if ready is not None:
        ready.set()
    try:
        await manager.run()
    finally:
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def _on_signal(manager: Manager, sig: signal.Signals) -> None:
    log.info("%s received: stopping", sig.name)
    manager.stop()


RESOLVERS: dict[str, Callable[[], Callable[[str], Interface | None] | None]] = {
    "none": lambda: None,
    "kernel": KernelRoutes,
}
DEFAULT_RESOLVER = "kernel" if sys.platform.startswith("linux") else "none"
"""MGM-SPEC: the interface towards S comes from the kernel's routing table; elsewhere there is none to ask."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None,
                        help="configuration file: [manager] endpoints, log level, CURVE key and allow-list "
                             "(default: the embedded default)")
    parser.add_argument("--question-deadline", type=float, default=QUESTION_DEADLINE, metavar="SECONDS",
                        help="how long rpf and creation_alert questions wait for an answer (default %(default)s)")
    parser.add_argument("--mfe-timeout", type=float, default=MFE_TIMEOUT, metavar="SECONDS",
                        help="default MFE timeout without traffic (default %(default)s)")
    parser.add_argument("--liveness", type=float, default=LIVENESS, metavar="SECONDS",
                        help="a registered client silent this long is treated as gone (default 3)")
    parser.add_argument("--resolver", choices=sorted(RESOLVERS), default=DEFAULT_RESOLVER,
                        help="how the interface towards a source (the incoming interface of its MFEs, the owner "
                             "its (S,G) alerts go to) is found: kernel, its unicast routing table; or none, the "
                             f"interface the first packet arrived on, and no (S,G) alerts (default {DEFAULT_RESOLVER})")
    parser.add_argument("--events-hwm", type=int, default=XPUB_HWM, metavar="N",
                        help=f"events queued per subscriber before the newest are dropped (default {XPUB_HWM:,}); "
                             "subscribers resync from the seq gap")
    parser.add_argument("--metrics", default=None, metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off; port 0 picks one, "
                             "logged at start); see mgm.core.manager.metrics for the list")
    parser.add_argument("--metrics-top-mfes", type=int, default=DEFAULT_TOP_MFES, metavar="N",
                        help=f"per-MFE packet series only for the N busiest MFEs (default {DEFAULT_TOP_MFES}; "
                             "the sums cover all)")


def run(args: argparse.Namespace) -> int:
    from mgm.core.manager.acl import manager_security
    from mgm.core.runtime.config import ConfigError, effective_manager, load

    try:
        config = load(args.config)
    except ConfigError as exc:
        setup_logging(args)
        for line in exc.lines():
            log.error("%s", line)
        return 2
    settings = effective_manager(config, args.api, args.events, args.log_level)
    args.api, args.events = str(settings.api), str(settings.events)
    setup_logging(args, level=str(settings.log_level))
    try:
        metrics = parse_address(args.metrics) if args.metrics is not None else None
        if args.metrics_top_mfes < 0:
            raise ValueError(f"--metrics-top-mfes must be >= 0, not {args.metrics_top_mfes}")
        for option, seconds in (("--question-deadline", args.question_deadline), ("--mfe-timeout", args.mfe_timeout),
                                ("--liveness", args.liveness)):
            if not (math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"{option} must be a number of seconds > 0, not {seconds}")
        if args.events_hwm < 1:
            raise ValueError(f"--events-hwm must be >= 1, not {args.events_hwm}")
        curve, acl = manager_security(config.manager, getattr(args, "curve_key", None))
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:
        resolver = RESOLVERS[args.resolver]()
    except OSError as exc:  # e.g. a sandbox without AF_NETLINK: a restart cannot help
        log.error("--resolver %s: cannot open a netlink socket (%s); give --resolver none to run without routes",
                  args.resolver, exc)  # fmt: skip
        return 2
    try:
        asyncio.run(serve(args.api, args.events, question_deadline=args.question_deadline,
                          curve=curve, gate=acl.check,
                          metrics=metrics, top_mfes=args.metrics_top_mfes,
                          mfe_timeout=args.mfe_timeout, liveness=args.liveness, events_hwm=args.events_hwm,
                          resolver=resolver,
                          handle_signals=True))
    except ManagerRunning as exc:
        log.error("%s", exc)
        return 1
    except InsecureEndpoint as exc:  # a configuration mistake: restarting cannot help
        log.error("%s", exc)
        return 2
    except (ValueError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
