"""The asyncio client of the manager: one DEALER for requests, one SUB for events.

Requests are pipelined: each gets an id, replies are matched by it, many may
be in flight.  Events are followed per stream with the snapshot-and-sequence
pattern (the ZeroMQ guide's Clone): for every stream under a followed prefix
the client keeps (epoch, seq); on first contact, on a gap, or on a new epoch
it fetches the stream's snapshot with `sync` (paged), drops the buffered
events the snapshot already covers, and delivers the rest in order.  If the
first event after a snapshot at seq S is later than S+1, the subscription was
not live when the snapshot was taken, and it syncs again.  The manager's `hb`
(every second, and at once for a new subscriber) names the last seq of every
stream, which reveals streams we have not met yet and losses at the tail.

Receiving is a callback on the loop per socket (add_reader on its FD) that
drains it without blocking, so a burst of thousands of messages costs one
wakeup, not one await each; callbacks (on_event, on_snapshot, on_new_epoch,
on_manager_lost) are plain functions called from it.  ZeroMQ's FD is
edge-like: it fires again only after the socket's pending commands were
processed, which every recv, every EVENTS read and also every send does.  So
a drain reads until zmq.Again or EVENTS says the socket is empty, and a send
that finds a reply waiting (EVENTS) queues a drain itself.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from mgm.bus.codec import BUS_OPS, encode_request, unpack
from mgm.bus.endpoints import default_api, default_events
from mgm.bus.sockets import MORE, NOBLOCK, Curve, readable, recv_frame, recv_rest, secure, send_frame
from mgm.bus.status import MgmError, Status
from mgm.bus.topics import HB

log = logging.getLogger(__name__)

MIN_TIMEOUT = 0.02
"""Message tails reach 10 ms: a shorter timeout would report healthy managers as gone."""

HEARTBEAT_AFTER = 0.75
"""Send `heartbeat` when no other request went out for this long (the manager allows 3 s)."""

MANAGER_LOST_AFTER = 3.0
TIMER_PERIOD = 0.25
HWM = 100_000
EXPIRY_SLACK = 0.05
"""Deadlines this close together are handled by one wakeup: a timeout may fire up to 50 ms late."""
BURST = 5000
"""Messages read per socket before other tasks get a turn."""
# The manager counts BUS_OPS (ping, sync) as a sign of life too (core/manager/mgmd.py calls the rules' `seen`), but the
# client does not rely on that: after only these it still sends its heartbeat.

_PROCESS_TOKEN = secrets.token_hex(4)
_SLOTS: set[int] = set()
_REQUEST_IDS = itertools.count(1)
"""Request ids are unique in the process, not per Client: a Client made again takes over the identity of
a closed one, and the manager replays the reply of any id it saw on that identity in the last 60 s."""


def _take_slot() -> int:
    """The lowest slot no open Client of this process uses: a client closed and made again keeps its
    identity (and so the handles bound to it), while clients open side by side get distinct ones."""
    slot = 1
    while slot in _SLOTS:
        slot += 1
    _SLOTS.add(slot)
    return slot


EventCallback = Callable[[dict[str, Any]], None]
SnapshotCallback = Callable[[str, dict[str, Any]], None]


def _callback(name: str, callback: Callable[..., None] | None, *args: Any, stream: str | None = None) -> None:
    """Call the owner's callback (if it set one); what it raises is logged, and the client carries on."""
    if callback is not None:
        try:
            callback(*args)
        except Exception:
            log.exception("%s callback%s failed", name, "" if stream is None else f" for {stream}")


@dataclass(slots=True)
class _Stream:
    name: str
    epoch: int | None = None
    seq: int = 0
    synced: bool = False
    syncing: bool = False
    again: bool = False
    buffer: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class _Follow:
    prefix: str
    on_event: EventCallback
    on_snapshot: SnapshotCallback
    streams: dict[str, _Stream] = field(default_factory=dict)


class Client:
    """A connection to the manager (see the module docstring and docs/protocol.md)."""

    def __init__(
        self,
        api: str | None = None,
        events: str | None = None,
        identity: bytes | None = None,
        *,
        connect_timeout: float = 10.0,
        request_timeout: float = 5.0,
        events_hwm: int = HWM,
        context: zmq.Context[Any] | None = None,
        curve: Curve | None = None,
    ) -> None:
        if request_timeout < MIN_TIMEOUT:
            raise ValueError(f"request_timeout must be at least {MIN_TIMEOUT} s")
        self.api = api or default_api()
        self.events = events or default_events()
        self._slot = 0
        if identity is None:
            self._slot = _take_slot()
            identity = f"{os.getpid()}-{_PROCESS_TOKEN}-{self._slot}".encode()
        self.identity = identity
        if not self.identity or self.identity[0] == 0:
            raise ValueError("identity must be non-empty and must not start with a zero byte")
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.events_hwm = events_hwm
        self.curve = curve
        self.heartbeat_handle: Any = None
        self.on_new_epoch: Callable[[int | None, int], None] | None = None
        self.on_manager_lost: Callable[[], None] | None = None
        self.on_registration_lost: Callable[[], None] | None = None
        """Called once when the manager refuses our heartbeat's handle: it forgot us (our liveness lapsed while
        this process was stalled) although it did not restart.  The owner registers again."""
        self.epoch: int | None = None
        self.manager_lost = False
        self._own_context = context is None
        self._ctx: zmq.Context[Any] = context or zmq.Context()
        # Plain sockets read from add_reader callbacks: a burst costs one wakeup, not a future per message.
        self._d: zmq.Socket[bytes] | None = None
        self._s: zmq.Socket[bytes] | None = None
        self._outbox: deque[bytes] = deque()
        self._drain_scheduled = False
        self._pending: dict[int, tuple[asyncio.Future[dict[str, Any]], str, float]] = {}  # id -> (future, op, timeout)
        # Timeouts: one heap of (deadline, id) and one timer for the earliest, instead of a TimerHandle per
        # request (which cost a fifth of a pipelining client's time); answered ids are dropped lazily.
        self._deadlines: list[tuple[float, int]] = []
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = math.inf
        self._follows: list[_Follow] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Future[Any]] = set()
        self._last_sent = 0.0
        self._last_hb = 0.0
        self._closed = False
        self._started = False
        self._heartbeat_failing = False

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Connect both sockets and return once the manager answers `ping` (else close and raise)."""
        try:
            self._connect()
            result = await self._first_ping()
        except BaseException:
            await self.close()
            raise
        self._last_hb = time.monotonic()
        self._started = True  # from now on a silent manager is reported (not while we wait for it to answer)
        self._note_epoch(result.get("epoch"))
        log.debug("connected to %s (epoch %s) as %r", self.api, self.epoch, self.identity)

    def _connect(self) -> None:
        dealer: zmq.Socket[bytes] = zmq.Socket(self._ctx, zmq.DEALER)
        self._d = dealer
        dealer.setsockopt(zmq.ROUTING_ID, self.identity)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, HWM)
        dealer.setsockopt(zmq.RCVHWM, HWM)
        secure(dealer, self.api, self.curve, server=False)
        sub: zmq.Socket[bytes] = zmq.Socket(self._ctx, zmq.SUB)
        self._s = sub
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, self.events_hwm)
        secure(sub, self.events, self.curve, server=False)
        sub.setsockopt(zmq.SUBSCRIBE, HB.encode())  # subscribe before connecting: no early message is missed
        for f in self._follows:
            sub.setsockopt(zmq.SUBSCRIBE, f.prefix.encode())
        dealer.connect(self.api)
        sub.connect(self.events)
        loop = asyncio.get_running_loop()
        self._last_hb = time.monotonic()
        loop.add_reader(dealer.FD, self._drain_dealer)
        loop.add_reader(sub.FD, self._drain_sub)
        loop.call_soon(self._drain_sub)  # connecting processed commands too: look once
        self._drain_soon(loop)
        self._tasks = [loop.create_task(self._timers())]

    async def _first_ping(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.connect_timeout
        while True:
            left = deadline - time.monotonic()
            if left < MIN_TIMEOUT:
                raise TimeoutError(f"no manager answered ping on {self.api} within {self.connect_timeout} s")
            try:
                return await self.request("ping", timeout=min(1.0, left))
            except TimeoutError:
                continue

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for bg in list(self._background):
            bg.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        if self._expiry is not None:
            self._expiry.cancel()
        for fut, _, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("client closed"))
                fut.exception()  # retrieved: nobody may be waiting for it any more
        self._pending.clear()
        _SLOTS.discard(self._slot)
        loop = asyncio.get_running_loop()
        for sock in (self._d, self._s):
            if sock is not None and not sock.closed:
                loop.remove_reader(sock.FD)
                sock.close(linger=0)
        if self._own_context:
            self._ctx.term()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- requests -------------------------------------------------------------

    def request_nowait(
        self, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """Send a request now; the future gets the result, MgmError, or TimeoutError."""
        if self._d is None or self._closed:
            raise RuntimeError("client is not started (await client.start()) or already closed")
        timeout = self.request_timeout if timeout is None else timeout
        if timeout < MIN_TIMEOUT:
            raise ValueError(f"timeout must be at least {MIN_TIMEOUT} s")
        loop = asyncio.get_running_loop()
        req_id = next(_REQUEST_IDS)
        payload = encode_request(req_id, op, args if args is not None else {})
        # Sent before the bookkeeping: a reply is read only by a callback of the loop, after this
        # returns, so making the future and the deadline need not delay the request.
        if self._outbox:
            self._outbox.append(payload)
        else:
            try:
                send_frame(self._d, b"", MORE)
                send_frame(self._d, payload, NOBLOCK)
            except zmq.Again:  # our queue towards the manager is full: keep order, send when there is room
                self._outbox.append(payload)
                self._spawn(self._flush_outbox())
            self._after_send(loop)
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[req_id] = (fut, op, timeout)
        deadline = loop.time() + timeout
        heapq.heappush(self._deadlines, (deadline, req_id))
        if deadline < self._expiry_at:
            self._schedule_expiry(loop, deadline)
        if op not in BUS_OPS:
            self._last_sent = time.monotonic()
        elif op == "ping":
            fut.add_done_callback(self._on_ping)
        return fut

    def _on_ping(self, fut: asyncio.Future[dict[str, Any]]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            self._note_epoch(fut.result().get("epoch"))

    async def request(
        self, op: str, args: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send a request and wait for its result; raises MgmError on a non-zero status."""
        return await self.request_nowait(op, args, timeout=timeout)

    def _schedule_expiry(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = when
        self._expiry = loop.call_at(when, self._expire_due)

    def _expire_due(self) -> None:
        """Fail the requests whose deadline passed; wake again for the next (at most 20 times a second)."""
        self._expiry, self._expiry_at = None, math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap, pending = self._deadlines, self._pending
        while heap and heap[0][0] <= now + EXPIRY_SLACK:
            _, req_id = heapq.heappop(heap)
            entry = pending.pop(req_id, None)
            if entry is not None and not entry[0].done():
                fut, op, timeout = entry
                fut.set_exception(TimeoutError(f"no reply to {op} (id {req_id}) from {self.api} within {timeout} s"))
        if heap:
            self._schedule_expiry(loop, max(heap[0][0], now + EXPIRY_SLACK))

    def _spawn(self, aw: Any) -> None:
        fut = asyncio.ensure_future(aw)
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)

    # --- events ---------------------------------------------------------------

    def follow(self, prefix: str, on_event: EventCallback, on_snapshot: SnapshotCallback) -> None:
        """Follow every stream whose name starts with `prefix` (see the module docstring)."""
        f = _Follow(prefix, on_event, on_snapshot)
        self._follows.append(f)
        if self._s is not None:
            self._s.setsockopt(zmq.SUBSCRIBE, prefix.encode())  # the manager answers with an hb

    def _note_epoch(self, epoch: Any) -> None:
        if type(epoch) is not int or epoch == self.epoch:
            return
        old, self.epoch = self.epoch, epoch
        if old is None:
            return
        log.info("manager restarted (epoch %d -> %d): resyncing every stream", old, epoch)
        for f in self._follows:
            for st in f.streams.values():
                st.synced = False
                st.buffer = [m for m in st.buffer if m.get("epoch") == epoch]
                self._start_sync(f, st)
        _callback("on_new_epoch", self.on_new_epoch, old, epoch)

    def _on_heartbeat(self, payload: bytes) -> None:
        self._last_hb = time.monotonic()
        if self.manager_lost:
            self.manager_lost = False
            log.info("manager heartbeat is back on %s", self.events)
        try:
            msg = unpack(payload)
            epoch, streams = msg["epoch"], msg["streams"]
        except (ValueError, KeyError, TypeError):
            log.warning("malformed heartbeat ignored")
            return
        self._note_epoch(epoch)
        if type(streams) is not dict:
            return
        for f in self._follows:
            prefix = f.prefix
            for name, last in streams.items():
                if type(name) is not str or not name.startswith(prefix):
                    continue
                st = f.streams.get(name)
                if st is None:
                    st = f.streams[name] = _Stream(name)
                    self._start_sync(f, st)  # first contact
                elif st.syncing:
                    continue
                elif not st.synced or (type(last) is int and last > st.seq):
                    log.debug("%s: heartbeat says seq %s, we have %d: resync", name, last, st.seq)
                    self._start_sync(f, st)

    def _on_event(self, payload: bytes) -> None:
        try:
            msg = unpack(payload)
            stream = msg["stream"]
            seq = msg["seq"]
            epoch = msg["epoch"]
        except (ValueError, KeyError, TypeError):
            log.warning("malformed event ignored")
            return
        if type(stream) is not str or type(seq) is not int:
            log.warning("event without a proper stream and seq ignored")
            return
        if epoch != self.epoch:
            self._note_epoch(epoch)
        for f in self._follows:
            if not stream.startswith(f.prefix):
                continue
            st = f.streams.get(stream)
            if st is None:
                st = f.streams[stream] = _Stream(stream)
            if st.syncing:
                st.buffer.append(msg)
            elif st.synced and epoch == st.epoch and seq == st.seq + 1:
                st.seq = seq
                _callback("on_event", f.on_event, msg, stream=stream)
            elif st.synced and epoch == st.epoch and seq <= st.seq:
                continue  # the snapshot covered it
            else:
                if st.synced:
                    log.debug("%s: got seq %d after %d: resync", stream, seq, st.seq)
                st.buffer.append(msg)
                self._start_sync(f, st)

    def _start_sync(self, f: _Follow, st: _Stream) -> None:
        if st.syncing:
            st.again = True
            return
        st.syncing = True
        st.again = False
        self._spawn(self._sync(f, st))

    async def _sync(self, f: _Follow, st: _Stream) -> None:
        try:
            while True:
                st.again = False
                try:
                    seq, epoch, state = await self.fetch_snapshot(st.name)
                except (MgmError, TimeoutError, ConnectionError) as exc:
                    log.warning("sync of %s failed (%s); the next heartbeat retries", st.name, exc)
                    st.synced = False
                    return
                if epoch != self.epoch:
                    self._note_epoch(epoch)
                later = sorted((m for m in st.buffer if m["epoch"] == epoch and m["seq"] > seq),
                               key=lambda m: int(m["seq"]))
                expect = seq + 1
                contiguous = True
                for m in later:
                    if m["seq"] != expect:
                        contiguous = False
                        break
                    expect += 1
                if not contiguous or st.again:
                    st.buffer = later  # the subscription was not live yet, or events were lost meanwhile
                    continue
                st.epoch, st.seq, st.synced, st.buffer = epoch, seq, True, []
                _callback("on_snapshot", f.on_snapshot, st.name, state, stream=st.name)
                for m in later:
                    st.seq = m["seq"]
                    _callback("on_event", f.on_event, m, stream=st.name)
                return
        finally:
            st.syncing = False

    async def fetch_snapshot(self, stream: str) -> tuple[int, int, dict[str, Any]]:
        """(seq, epoch, state) of one stream, all pages joined (lists concatenated in order)."""
        for _attempt in range(3):
            res = await self.request("sync", {"stream": stream})
            state: dict[str, Any] = res["state"]
            try:
                while res.get("more"):
                    res = await self.request("sync", {"stream": stream, "cursor": res["cursor"]})
                    for k, v in res["state"].items():
                        if isinstance(v, list):
                            state[k].extend(v)
            except MgmError as exc:
                if exc.status == Status.ERROR_NOT_FOUND:  # the cursor expired: start over
                    continue
                raise
            return int(res["seq"]), int(res["epoch"]), state
        raise MgmError(Status.ERROR_CAN_NOT_COMPLETE, f"sync of {stream} kept losing its cursor")

    # --- I/O ------------------------------------------------------------------

    async def _flush_outbox(self) -> None:
        loop = asyncio.get_running_loop()
        while self._outbox and self._d is not None:
            try:
                self._d.send_multipart((b"", self._outbox[0]), zmq.NOBLOCK)
            except zmq.Again:
                await asyncio.sleep(0.005)
                continue
            finally:
                self._after_send(loop)
            self._outbox.popleft()

    def _after_send(self, loop: asyncio.AbstractEventLoop) -> None:
        """A send processes the DEALER's commands and may take the FD's edge of a reply that came meanwhile:
        ask EVENTS (cheaper than a pass of the loop) and drain when one is waiting."""
        if not self._drain_scheduled and self._d is not None and readable(self._d):
            self._drain_soon(loop)

    def _drain_soon(self, loop: asyncio.AbstractEventLoop) -> None:
        self._drain_scheduled = True
        loop.call_soon(self._drain_dealer)

    def _drain_dealer(self) -> None:
        """Read the replies queued on the DEALER (its add_reader callback, also queued after a send)."""
        self._drain_scheduled = False
        d = self._d
        if d is None or self._closed:
            return
        if self._drain_replies(d):  # a long burst: let other tasks run, then continue
            self._drain_soon(asyncio.get_running_loop())

    def _drain_sub(self) -> None:
        """Read the events queued on the SUB (its add_reader callback); nothing else reads or sends on it."""
        s = self._s
        if s is None or self._closed:
            return
        if self._drain_events(s):
            asyncio.get_running_loop().call_soon(self._drain_sub)

    def _drain_replies(self, d: zmq.Socket[bytes]) -> bool:
        pending = self._pending
        for n in range(BURST):
            if n == 1 and not readable(d):
                return False  # one reply, the usual case when idle: EVENTS costs less than a recv's zmq.Again
            try:
                delim = recv_frame(d, NOBLOCK, False)
            except zmq.Again:
                return False
            body = recv_frame(d, NOBLOCK, False) if delim.more else delim
            if body.more:
                recv_rest(d, body)
                log.warning("reply with extra frames ignored")
                continue
            try:
                msg = unpack(body.bytes)
                entry = pending.pop(msg["id"], None)
            except (ValueError, KeyError, TypeError):
                log.warning("malformed reply ignored")
                continue
            if entry is None:
                continue  # its request timed out already
            fut = entry[0]
            if fut.done():
                continue
            status = msg.get("status")
            if status == 0:
                fut.set_result(msg.get("result") or {})
            else:
                fut.set_exception(MgmError(status if type(status) is int else Status.ERROR_CAN_NOT_COMPLETE,
                                           str(msg.get("message", ""))))
        return True

    def _drain_events(self, s: zmq.Socket[bytes]) -> bool:
        hb_topic = HB.encode()
        for n in range(BURST):
            if n == 1 and not readable(s):
                return False  # as in _drain_replies
            try:
                topic = recv_frame(s, NOBLOCK, False)
            except zmq.Again:
                return False
            if not topic.more:
                continue
            payload = recv_frame(s, NOBLOCK, False)
            if payload.more:
                recv_rest(s, payload)
                continue
            if topic.bytes == hb_topic:
                self._on_heartbeat(payload.bytes)
            else:
                self._on_event(payload.bytes)
        return True

    async def _timers(self) -> None:
        while True:
            await asyncio.sleep(TIMER_PERIOD)
            now = time.monotonic()
            handle = self.heartbeat_handle
            if handle is not None and now - self._last_sent >= HEARTBEAT_AFTER:
                fut = self.request_nowait("heartbeat", {"handle": handle})
                fut.add_done_callback(functools.partial(self._heartbeat_done, handle))
            if self._started and not self.manager_lost and now - self._last_hb > MANAGER_LOST_AFTER:
                self.manager_lost = True
                log.warning("no heartbeat from the manager on %s for %.0f s", self.events, MANAGER_LOST_AFTER)
                _callback("on_manager_lost", self.on_manager_lost)

    def _heartbeat_done(self, handle: Any, fut: asyncio.Future[dict[str, Any]]) -> None:
        """Say when heartbeats start failing and when they work again, not every second in between."""
        if fut.cancelled():
            return
        exc = fut.exception()
        lapsed = isinstance(exc, MgmError) and exc.status == Status.ERROR_INVALID_PARAMETER
        if lapsed and handle == self.heartbeat_handle:  # not a handle the owner has replaced since
            log.warning("the manager no longer knows our handle (%s): our registration lapsed", exc)
            self.heartbeat_handle = None  # no more heartbeats with it; the owner registers again
            _callback("on_registration_lost", self.on_registration_lost)
            return
        if exc is not None and not self._heartbeat_failing:
            self._heartbeat_failing = True
            log.warning("heartbeat failed: %s", exc)
        elif exc is None and self._heartbeat_failing:
            self._heartbeat_failing = False
            log.info("heartbeats are answered again")
