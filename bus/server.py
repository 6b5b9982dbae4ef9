"""The manager's side of the bus: a ROUTER for requests, an XPUB for events.

Generic: nothing here knows MGM semantics.  The process that owns a
`BusServer` (mgmd) runs the loop: it awaits readiness of both sockets, calls
`drain()` to get a batch of decoded requests, answers each with `reply()` or
`reply_error()` (queued, sent by `send_replies()` at the end of the turn),
publishes events with `publish()`, and calls `heartbeat()` when
`drain_subscriptions()` saw a new subscriber and every second.

What this module guarantees (PROTOCOL v1):
- every request gets exactly one reply; malformed ones get 87 here, with the id
  echoed where it could be read;
- a request repeated with the same id on the same connection within
  `replay_window` seconds gets the first reply again and is not handed to the
  caller twice (bounded: see `ReplayCache`);
- each stream's seq counts from 1 and grows by exactly 1; the epoch is random
  per server, so a restart is visible;
- `sync` freezes a stream's snapshot at the first page and serves later pages
  from that copy through a cursor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from mgm.bus.codec import (
    MAX_FRAME,
    VERSION,
    BadRequest,
    EventEncoder,
    decode_request,
    encode_error,
    encode_heartbeat,
    encode_request,
    encode_result,
    pack,
    unpack,
)
from mgm.bus.endpoints import rundir
from mgm.bus.sockets import (
    MORE,
    NOBLOCK,
    Curve,
    ipc_path,
    is_socket_file,
    readable,
    recv_frame,
    recv_rest,
    require_curve,
    secure,
    send_frame,
)
from mgm.bus.status import MgmError, Status, invalid

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 0.3
"""How long to wait for a live manager to answer on an existing ipc path (tails reach 10 ms)."""

ROUTER_HWM = 100_000
XPUB_HWM = 1_000_000

RequestId = int | str
Request = tuple[bytes, RequestId, str, dict[str, Any]]
"""(connection routing id, request id, op, args) as handed to the server's owner."""
Gate = Callable[[bytes, str | None, str, dict[str, Any]], None]
"""(connection, CURVE client name from ZAP, op, args): raises MgmError to refuse a request on a tcp api."""


class ManagerRunning(RuntimeError):
    """A live manager already answers on the endpoint we were asked to bind."""


class ReplayCache:
    """Replies by (connection, request id) for `window` seconds, bounded in entries and bytes.

    An entry is created when a request is accepted (reply pending) and filled
    when its reply is sent.  A duplicate of a pending request is counted and
    gets the reply too when it comes.  Entries leave in arrival order: after
    `window` seconds, or earlier when the cache holds more than `max_entries`
    requests or `max_bytes` of replies (the oldest go first).
    """

    def __init__(self, window: float = 60.0, max_entries: int = 200_000, max_bytes: int = 32 << 20) -> None:
        self.window = window
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: dict[tuple[bytes, RequestId], tuple[float, bytes | None]] = {}
        self._order: deque[tuple[bytes, RequestId]] = deque()
        self._bytes = 0
        self.waiting: dict[tuple[bytes, RequestId], int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def _evict_one(self) -> None:
        key = self._order.popleft()
        ent = self.entries.pop(key, None)
        if ent is not None and ent[1] is not None:
            self._bytes -= len(ent[1])
        self.waiting.pop(key, None)

    def accept(self, key: tuple[bytes, RequestId], now: float) -> None:
        self.entries[key] = (now, None)
        self._order.append(key)
        if len(self._order) > self.max_entries:
            self._evict_one()

    def fill(self, key: tuple[bytes, RequestId], payload: bytes, now: float) -> int:
        """Record the reply; returns how many copies to send (1 + duplicates that waited)."""
        ent = self.entries.get(key)
        if ent is None:  # refused before acceptance (bad payload), or evicted while pending
            self.entries[key] = (now, payload)
            self._order.append(key)
            if len(self._order) > self.max_entries:
                self._evict_one()
        else:
            self.entries[key] = (ent[0], payload)
        self._bytes += len(payload)
        while self._bytes > self.max_bytes and self._order:
            self._evict_one()
        if self.waiting:
            return 1 + self.waiting.pop(key, 0)
        return 1

    def prune(self, now: float) -> None:
        """Drop entries older than the window."""
        limit = now - self.window
        order, entries = self._order, self.entries
        while order:
            ent = entries.get(order[0])
            if ent is not None and ent[0] >= limit:
                break
            self._evict_one()


@dataclass(slots=True)
class _Cursor:
    conn: bytes
    stream: str
    seq: int
    pages: list[dict[str, Any]]
    expires: float
    next_page: int = 1


@dataclass(slots=True)
class Paging:
    """How `sync` pages a snapshot: at most `items` list entries and about `bytes` per page."""

    items: int = 2000
    bytes: int = 48 * 1024
    max_cursors: int = 64
    cursor_ttl: float = 30.0


def paginate(state: dict[str, Any], items: int, budget: int) -> list[dict[str, Any]]:
    """Split a snapshot map into pages.

    Every page has every key of the snapshot; list values are split across
    pages (concatenating them in page order gives the original list), other
    values are repeated on every page.  A page holds at most `items` list
    entries and, unless one entry alone is bigger, at most `budget` bytes of them.
    """
    scalars = {k: v for k, v in state.items() if not isinstance(v, list)}
    list_keys = [k for k, v in state.items() if isinstance(v, list)]

    def new_page() -> dict[str, Any]:
        page = dict(scalars)
        for k in list_keys:
            page[k] = []
        return page

    pages = [new_page()]
    count = size = 0
    for k in list_keys:
        for item in state[k]:
            isz = len(pack(item))
            if count and (count >= items or size + isz > budget):
                pages.append(new_page())
                count = size = 0
            pages[-1][k].append(item)
            count += 1
            size += isz
    return pages


@dataclass(slots=True)
class _Bound:
    path: Path
    inode: int


@dataclass
class BusServer:
    """The ROUTER + XPUB pair of the manager, with replay, sequencing, paging and heartbeats."""

    api: str
    events: str
    context: zmq.Context[Any] | None = None
    epoch: int = field(default_factory=lambda: secrets.randbits(63) or 1)
    curve: Curve | None = None
    replay: ReplayCache = field(default_factory=ReplayCache)
    paging: Paging = field(default_factory=Paging)
    batch: int = 4096
    events_hwm: int = XPUB_HWM
    gate: Gate | None = None
    refusals: dict[str, int] = field(default_factory=dict)
    """tcp refusals by reason: bad_handshake and unknown_key (counted by the Guard), access_denied (the gate)."""

    def __post_init__(self) -> None:
        self._own_context = self.context is None
        self.ctx: zmq.Context[Any] = self.context or zmq.Context()
        # Plain sockets: the owner waits for readability on their FDs (add_reader) and drains them
        # without blocking; zmq.asyncio futures per message would cap the rate.
        self.router: zmq.Socket[bytes] | None = None
        self.xpub: zmq.Socket[bytes] | None = None
        self.seqs: dict[str, int] = {}
        self._topics: dict[str, bytes] = {}
        self._enc = EventEncoder(self.epoch)
        self._cursors: dict[int, _Cursor] = {}
        self._next_cursor = 1
        self._bound: list[_Bound] = []
        self.now = 0.0
        self._outbox: list[tuple[bytes, bytes]] = []
        self.lost: set[bytes] = set()
        self.xpub_sent = False
        """Set by every send on the XPUB: it may have taken the FD's edge of a subscription, so the owner
        asks EVENTS (`readable`) before it waits again, and clears this."""
        """Connections a reply could not reach (ROUTER_MANDATORY said the peer is gone)."""
        self.guard: Any = None
        """mgm.bus.auth.Guard (ZAP and handshake watch) while a tcp endpoint is bound."""
        self._gate: Gate | None = None

    # --- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        """Refuse to start over a live manager, remove stale socket files, bind both sockets."""
        prepared: set[Path] = set()
        for endpoint in (self.api, self.events):
            path = ipc_path(endpoint)  # raises ValueError for a path too long to bind
            if path is not None and path.parent not in prepared:
                _prepare_ipc_dir(path.parent)
                prepared.add(path.parent)
            require_curve(endpoint, self.curve, server=True)  # before any socket exists: nothing to clean up
        await self._refuse_live(self.api, probe_api)
        await self._refuse_live(self.events, probe_events)

        router: zmq.Socket[bytes] = zmq.Socket(self.ctx, zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME)
        router.setsockopt(zmq.SNDHWM, ROUTER_HWM)
        router.setsockopt(zmq.RCVHWM, ROUTER_HWM)
        secure(router, self.api, self.curve, server=True)
        xpub: zmq.Socket[bytes] = zmq.Socket(self.ctx, zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.setsockopt(zmq.SNDHWM, self.events_hwm)
        xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscribe reaches us, so every newcomer gets an hb at once
        secure(xpub, self.events, self.curve, server=True)
        self.router, self.xpub = router, xpub
        tcp = [s for s, ep in ((router, self.api), (xpub, self.events)) if ep.startswith("tcp://")]
        if tcp and self.curve is not None:
            from mgm.bus.auth import Guard

            self.guard = Guard(self.ctx, self.curve, self.refusals)
            self.guard.start()  # before bind: a CURVE server without a ZAP handler would admit any key
            self.guard.watch(tcp)
            self._gate = self.gate if self.api.startswith("tcp://") else None
        try:
            router.bind(self.api)
            self._remember(self.api)
            xpub.bind(self.events)
            self._remember(self.events)
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(exc.errno, f"cannot bind: {exc.strerror}") from exc
        log.info("bound api %s and events %s, epoch %d", self.api, self.events, self.epoch)

    async def _refuse_live(self, endpoint: str, probe: Callable[[zmq.Context[Any], str], Any]) -> None:
        path = ipc_path(endpoint)
        if path is None or not os.path.lexists(path):
            return
        if not is_socket_file(path):
            raise FileExistsError(f"{path} exists and is not a socket; refusing to replace it")
        if await probe(self.ctx, endpoint):
            raise ManagerRunning(f"a manager is already running on {endpoint}; refusing to start a second one")
        log.info("removing stale socket %s (nobody answered within %.0f ms)", path, PROBE_TIMEOUT * 1000)
        path.unlink(missing_ok=True)

    def _remember(self, endpoint: str) -> None:
        path = ipc_path(endpoint)
        if path is not None:
            self._bound.append(_Bound(path, os.lstat(path).st_ino))

    def close(self) -> None:
        """Close both sockets and remove the ipc socket files we created (not a successor's)."""
        if self.guard is not None:
            self.guard.close()
            self.guard = None
        for sock in (self.router, self.xpub):
            if sock is not None and not sock.closed:
                sock.close(linger=0)
        self.router = self.xpub = None
        for b in self._bound:
            try:
                if os.lstat(b.path).st_ino == b.inode:
                    b.path.unlink()
            except FileNotFoundError:
                pass
        self._bound.clear()
        if self._own_context:
            self.ctx.term()

    # --- requests -----------------------------------------------------------

    def drain(self, now: float) -> list[Request]:
        """Receive what is queued on the ROUTER (non-blocking, at most `batch`), return the new requests.

        Malformed requests are answered here (87); duplicates of a request seen
        within the replay window get its reply (or wait for it) and are not returned.
        """
        assert self.router is not None
        self.now = now
        router = self.router
        entries = self.replay.entries
        accept = self.replay.accept
        out: list[Request] = []
        for n in range(self.batch):
            if n == 1 and not readable(router):
                break  # one request, the usual case when idle: EVENTS costs less than the zmq.Again of a recv
            try:
                conn = recv_frame(router, NOBLOCK)
            except zmq.Again:
                break
            # a ROUTER always delivers at least one frame after the routing id
            delim = recv_frame(router, NOBLOCK, False)
            body = recv_frame(router, NOBLOCK, False) if delim.more else None
            if body is None or body.more or len(delim):
                if body is not None:
                    recv_rest(router, body)
                self._send(conn, encode_error(None, Status.ERROR_INVALID_PARAMETER,
                                              "a request is two frames: an empty delimiter and the payload"))
                continue
            try:
                req_id, op, args = decode_request(body.bytes)
            except BadRequest as exc:
                self._refuse(conn, exc)
                continue
            key = (conn, req_id)
            ent = entries.get(key)
            if ent is not None:
                if ent[1] is None:
                    self.replay.waiting[key] = self.replay.waiting.get(key, 0) + 1
                else:
                    self._send(conn, ent[1])
                continue
            accept(key, now)
            if self._gate is not None and not self._admit(conn, body, req_id, op, args):
                continue
            out.append((conn, req_id, op, args))
        return out

    def _admit(self, conn: bytes, body: zmq.Frame, req_id: RequestId, op: str, args: dict[str, Any]) -> bool:
        """Ask the gate about a request on the tcp api (only there: the ipc hot path never comes here)."""
        assert self._gate is not None
        try:
            prop = body.get("User-Id")
        except zmq.ZMQError:
            prop = None
        user = prop if isinstance(prop, str) else None
        try:
            self._gate(conn, user, op, args)
        except MgmError as exc:
            self.refusals["access_denied"] = self.refusals.get("access_denied", 0) + 1
            self.reply_error(conn, req_id, exc.status, exc.message)
            return False
        return True

    def _refuse(self, conn: bytes, exc: BadRequest) -> None:
        log.debug("refused a request from %r: %s", conn, exc.message)
        payload = encode_error(exc.req_id, Status.ERROR_INVALID_PARAMETER, exc.message)
        if exc.req_id is None:
            self._send(conn, payload)
            return
        key = (conn, exc.req_id)
        ent = self.replay.entries.get(key)
        if ent is not None:  # a duplicate id with a broken payload: the first reply stands
            if ent[1] is not None:
                self._send(conn, ent[1])
            else:
                self.replay.waiting[key] = self.replay.waiting.get(key, 0) + 1
            return
        for _ in range(self.replay.fill(key, payload, self.now)):
            self._send(conn, payload)

    def reply(self, conn: bytes, req_id: RequestId, result: dict[str, Any]) -> None:
        payload = encode_result(req_id, result)
        for _ in range(self.replay.fill((conn, req_id), payload, self.now)):
            self._send(conn, payload)

    def reply_error(self, conn: bytes, req_id: RequestId, status: Status | int, message: str) -> None:
        payload = encode_error(req_id, status, message)
        for _ in range(self.replay.fill((conn, req_id), payload, self.now)):
            self._send(conn, payload)

    def _send(self, conn: bytes, payload: bytes) -> None:
        self._outbox.append((conn, payload))

    def send_replies(self) -> None:
        """Send the replies of this turn back to back.

        Sent one by one between requests, each reply would find the I/O
        thread idle and pay for waking it; in a burst only the first does.
        """
        router = self.router
        assert router is not None
        out, self._outbox = self._outbox, []
        for conn, payload in out:
            try:
                send_frame(router, conn, MORE)  # raises here (full, or peer gone): nothing was sent
                send_frame(router, b"", MORE)
                send_frame(router, payload, NOBLOCK)
            except zmq.Again:
                log.warning("reply to %r dropped: its queue is full (%d replies)", conn, ROUTER_HWM)
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                if conn not in self.lost:
                    log.info("connection %r is gone (reply undeliverable)", conn)
                self.lost.add(conn)

    # --- events -------------------------------------------------------------

    def publish(self, stream: str, type_: str, fields: dict[str, Any]) -> int:
        """Publish one event on `stream` (its topic); returns its seq. `fields` is packed, not copied."""
        assert self.xpub is not None
        seq = self.seqs.get(stream, 0) + 1
        payload = self._enc.encode(stream, seq, type_, fields)  # may raise: then the seq is not spent
        self.seqs[stream] = seq
        topic = self._topics.get(stream)
        if topic is None:
            topic = self._topics[stream] = stream.encode()
        self.xpub_sent = True
        with contextlib.suppress(zmq.Again):  # XPUB drops at its HWM anyway; subscribers resync from seq gaps
            send_frame(self.xpub, topic, MORE)
            send_frame(self.xpub, payload, NOBLOCK)
        return seq

    def drain_subscriptions(self) -> bool:
        """Read subscription messages from the XPUB; True when someone (re)subscribed."""
        assert self.xpub is not None
        fresh = False
        while True:
            try:
                msg = self.xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return fresh
            if msg[:1] == b"\x01":
                fresh = True
                log.debug("subscription to %r", msg[1:])

    def heartbeat(self, streams: Iterable[str] = ()) -> None:
        """Publish {type: heartbeat, epoch, streams: {stream: last seq}} on `hb`."""
        assert self.xpub is not None
        last = dict(self.seqs)
        for s in streams:
            last.setdefault(s, 0)
        self.xpub_sent = True
        with contextlib.suppress(zmq.Again):
            self.xpub.send_multipart((b"hb", encode_heartbeat(self.epoch, last)), zmq.NOBLOCK)

    # --- the server's own ops -----------------------------------------------

    def ping(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "version": VERSION}

    def sync(self, conn: bytes, args: dict[str, Any], snapshot: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """Serve one page of a stream's snapshot.

        Without `cursor`: take the snapshot now (the caller must have published
        every event that precedes it), freeze it, answer the first page.  With
        `cursor`: the next page of that frozen copy.  `more` says whether pages
        remain; `cursor` is present exactly when `more` is true.
        """
        stream = args.get("stream")
        if type(stream) is not str or not stream:
            raise invalid("sync needs stream, a non-empty string")
        cursor = args.get("cursor")
        now = self.now
        self._expire_cursors(now)
        if cursor is None:
            seq = self.seqs.get(stream, 0)
            frozen = unpack(pack(snapshot(stream)))  # a deep copy: later changes cannot leak into pages
            if type(frozen) is not dict:
                raise MgmError(Status.ERROR_CAN_NOT_COMPLETE, f"snapshot of {stream} is not a map")
            pages = paginate(frozen, self.paging.items, self.paging.bytes)
            result: dict[str, Any] = {"seq": seq, "epoch": self.epoch, "state": pages[0], "more": len(pages) > 1}
            if len(pages) > 1:
                cid = self._next_cursor
                self._next_cursor += 1
                while len(self._cursors) >= self.paging.max_cursors:
                    old = next(iter(self._cursors))
                    log.info("sync cursor %d of %s dropped: too many open cursors", old, self._cursors[old].stream)
                    del self._cursors[old]
                self._cursors[cid] = _Cursor(conn, stream, seq, pages, now + self.paging.cursor_ttl)
                result["cursor"] = cid
            return result
        if type(cursor) is not int:
            raise invalid("sync cursor must be the int a previous sync returned")
        cur = self._cursors.get(cursor)
        if cur is None:
            raise MgmError(Status.ERROR_NOT_FOUND, f"sync cursor {cursor} is unknown or expired; start the sync again")
        if cur.conn != conn or cur.stream != stream:
            raise invalid(f"sync cursor {cursor} belongs to another connection or stream")
        page = cur.pages[cur.next_page]
        cur.next_page += 1
        more = cur.next_page < len(cur.pages)
        result = {"seq": cur.seq, "epoch": self.epoch, "state": page, "more": more}
        if more:
            cur.expires = now + self.paging.cursor_ttl
            result["cursor"] = cursor
        else:
            del self._cursors[cursor]
        return result

    def _expire_cursors(self, now: float) -> None:
        if self._cursors:
            for cid in [c for c, cur in self._cursors.items() if cur.expires < now]:
                del self._cursors[cid]


def _prepare_ipc_dir(directory: Path) -> None:
    """RUNDIR is created 0700 and checked; any other directory must exist already."""
    from mgm.bus.endpoints import ensure_rundir

    if directory == rundir():
        ensure_rundir(directory)
    elif not directory.is_dir():
        raise FileNotFoundError(f"directory {directory} of the ipc endpoint does not exist")
    elif (mode := directory.stat().st_mode) & 0o077:
        # ipc has no CURVE: the directory is the only gate (docs/security.md)
        log.warning("the directory %s of an ipc endpoint is open to others (mode %o): anyone who can enter it "
                    "can connect as any protocol; use a 0700 directory such as RUNDIR", directory, mode & 0o7777)


async def probe_api(ctx: zmq.Context[Any], endpoint: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """True when something answers a ping on `endpoint` within `timeout` seconds."""
    sock = zmq.asyncio.Socket(ctx, zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        await sock.send_multipart([b"", encode_request("probe", "ping", {})])
        return bool(await sock.poll(int(timeout * 1000)))
    finally:
        sock.close(linger=0)


async def probe_events(ctx: zmq.Context[Any], endpoint: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """True when a publisher on `endpoint` sends a heartbeat within `timeout` (ours do on subscribe)."""
    sock = zmq.asyncio.Socket(ctx, zmq.SUB)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"hb")
        sock.connect(endpoint)
        return bool(await sock.poll(int(timeout * 1000)))
    finally:
        sock.close(linger=0)

