"""The MGM state machine, sans I/O: requests in, replies and events out."""

# Rules of this file
# ------------------
# Rule 1: every rule of the Multicast Group Manager lives here.  The helpers
#   it imports hold no rule: core/args.py checks wire arguments, core/mfe.py
#   holds a forwarding entry, core/sortedview.py keeps listed keys in order.  The
#   manager process only moves bytes and calls Mgm.
# Rule 2: no I/O and no clock.  Time comes in as `now` (monotonic seconds);
#   events go out through take_events(), deferred replies through
#   take_completions().  Tests drive Mgm directly, thousands of times a second.
# Rule 3: check everything, then change.  Each operation reads and checks all
#   of its arguments before it touches state, so a refused request (MgmError)
#   changes nothing and emits nothing.
# Rule 4: deterministic order.  Events come out in the order the changes are
#   made; where one change fans out (cleanup, a (*,G) change over many MFEs),
#   the order is registration order, take order, or (group, source) order.
# Rule 5: one operation costs the same at 1k or 1M memberships: every lookup
#   goes through an index, and the keys listings page through are kept in
#   sorted containers (core/sortedview.py: O(log n) per change and per page).
#
# Theory of operation
# -------------------
# Clients.  A client is a registered protocol, ClientId(protocol_id,
#   component_id), known by an opaque handle bound to the connection that
#   registered it.  A connection that sends nothing for `liveness` seconds, or
#   that the manager reports lost, is cleaned up as a well-behaved client would
#   leave: its memberships are deleted one by one, its interfaces released,
#   then it is deregistered -- each step with all of its usual events.  A
#   client that goes (deregistered, silent, or its connection lost) answers
#   nothing more: right after protocol_deregistered its open questions take
#   their defaults (so no MFE waits out a deadline for it), and every
#   question it was asked is forgotten: a late answer is ERROR_NOT_FOUND, and
#   a new registration of the same (protocol_id, component_id) starts with
#   no questions.
#   Cost of a departure: each membership deleted makes 2-5 events
#   (membership_deleted, local_leave, alerts, mfe_updated), so a client with
#   700k memberships makes ~2M events, ~1 GiB held until take_events().  So
#   the cleanup goes in batches: connection_lost() and each tick() delete at
#   most `cleanup_batch` (CLEANUP_BATCH, 10,000) memberships, next_deadline()
#   returns the current time while a cleanup is under way, and the manager's
#   usual loop (tick when due, then take_events) drains it batch by batch,
#   serving other requests in between.  The events come out in exactly the
#   order one pass would give; meanwhile the departing client stays
#   registered (its ids are taken: 183), its handle is refused (87), and the
#   memberships it has left keep their effects.
#
# Owners.  An interface (if_index, next_hop) has at most one routing protocol
#   (`owner`) and at most one IGMP (`igmp`, protocol 10) beside it.  "The
#   owner" whom questions and alerts reach is the routing protocol, or IGMP
#   where IGMP is alone.  A routing protocol taking or releasing an interface
#   IGMP also owns brackets the change with disable_igmp ... enable_igmp to
#   IGMP, all in the same transition.
#
# Memberships.  (client, source, group, interface), recorded with
#   MGM_JOIN_STATE_FLAG on interfaces the client owns.  Source 0 is (*,G),
#   group 0 is (*,*).  IGMP's memberships are mirrored to the routing owner of
#   the interface as local_join / local_leave.  Who gets join_alert and
#   prune_alert when the set of clients with receivers for a (source, group)
#   changes is the ALERTS table below.  MGM_FORWARD_STATE_FLAG adds or removes
#   an interface in the OIL of existing matching MFEs without recording a
#   membership; that forward state is the adding client's own (client.forwards).
#
# MFEs.  A forwarder reports a packet of a new (S,G) (new_packet).  The core
#   opens a *pending* entry and asks questions with deadlines: rpf to the
#   owner of the interface towards S, then creation_alert to the owner of
#   each interface of the OIL (only to clients that answer that question;
#   with nobody to ask, the MFE is stored within the new_packet request).
#   Unanswered questions take their default at the deadline (tick); late
#   answers are applied to the stored MFE as an update.  Once stored, an MFE
#   follows the memberships: its OIL gains and loses interfaces at once
#   (mfe_updated; never one whose boundaries cover the group), and the owner
#   of its incoming interface hears join_alert / prune_alert (member_update /
#   member_delete false) when the OIL turns non-empty / empty.  The forwarder's counters
#   (mfe_counters) feed statistics and expiry: an MFE whose in_packets did not
#   grow for `timeout` seconds is deleted.  mfe_counters publishes nothing:
#   the state stream carries changes of state, not per-counter refreshes, so
#   an MFE's statistics and its `expires` (last growth + timeout) move
#   silently; observers that need them read get_mfe / list_mfes.  Apart from
#   `expires`, the MFE in the `state` snapshot always equals the last
#   mfe_created / mfe_updated event for it, and expiry itself is published
#   (mfe_deleted).
#
# Who is told what
#   state stream (to=None): every change of state, for observers.
#   proto stream of a client: its callbacks (local_join/leave, alerts,
#   enable/disable_igmp, wrong_if) and the questions addressed to it.
#
# Where MGM-SPEC.md leaves a choice, this file takes these (tests mark them [ours])
#   - Handles: a salted bijective scramble of a counter (unique, never 0, not
#     sequential).  Enumeration ids are per client; at most 1024 open (then 8).
#   - One IGMP component per interface; a second gets ERROR_ALREADY_EXISTS.
#   - Addresses: strict dotted quads only.  A membership is (S,G), (*,G) or
#     (*,*); (S,*) and multicast sources are 87.  new_packet, get_mfe, set_mfe,
#     wrong_interface and counters name an exact (S,G).
#   - Alerts never go to the client whose own change caused them.
#   - MGM_FORWARD_STATE_FLAG with no matching MFE is a no-op (NO_ERROR).
#     Forward state belongs to the client that added it, as a membership
#     does: its delete removes only that client's own add (NO_ERROR when it
#     has none there), and it ends when that client releases the interface
#     (or goes), never when another owner of the interface does.  The
#     interface stays in the OIL while a membership or another client's add
#     wants it.
#   - A creation_alert veto keeps an interface out of that MFE's OIL until a
#     membership is newly added on that interface, by any client, for a key
#     matching the MFE ((S,G), (*,G) or (*,*)), first there for its key or
#     not: new receiver interest the vetoing owner may weigh at the next
#     creation.  A forward-only add naming the interface lifts it too; a
#     re-add of an existing membership does not (it changes nothing).
#   - Boundaries (after RRAS's per-interface multicast boundaries): an owner
#     of an interface may set group ranges (any prefix inside 224.0.0.0/4, or
#     0.0.0.0/0 for every group) that are never forwarded out of it.  The
#     interface leaves, and stays out of, the OIL of every MFE whose group is
#     in a range, whatever memberships or forward-state adds it has; the
#     memberships themselves are recorded as usual.  set_boundaries replaces
#     that client's ranges on that interface (boundaries_set on `state`); they
#     go when it releases the interface.  Its cost grows with the MFEs in the
#     ranges that changed (a sorted range read), an administrative act.
#   - A client may say at registration which questions it answers
#     (`questions`, a subset of rpf and creation_alert; all when absent), as
#     an RRAS protocol registers a NULL callback it does not have.  A question
#     it does not answer is not asked: its default applies at once, so a new
#     flow waits for no round trip that cannot change it.
#   - An unanswered rpf keeps the proposed interface (the route towards S, else
#     the arrival interface); an unanswered creation_alert enables everything;
#     an unanswered prune_alert keeps the timeout.  Answers are checked against
#     the question (interfaces not asked about are 87).
#   - in_protocol_id is 0 while nobody owns the incoming interface; it follows
#     ownership changes (mfe_updated).  Only the owner of the incoming
#     interface (anyone, while it has no owner) may set_mfe; moving the
#     incoming interface also needs the new one owned by the caller.
#   - Releasing deletes the MFEs coming in on the interface only when the
#     releasing client was its owner (IGMP leaving beside a routing protocol
#     deletes none).
#   - wrong_interface for the MFE's own incoming interface is 87; for an
#     unknown MFE 1168.  Counter reports for unknown MFEs are skipped.
#   - any_source enumeration gives one (*,G) entry per group with any
#     membership; list_mfes past the end is an empty page, not 259.

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from mgm.bus.status import MgmError, Status, invalid
from mgm.bus.topics import PROTO_PREFIX, STATE, proto
from mgm.core.args import (
    format_addr,
    opt_int,
    parse_addr,
    req_addr,
    req_bool,
    req_int,
    req_interface,
    req_list,
    req_map,
    req_membership_key,
    req_number,
    req_source_group,
    req_str,
)
from mgm.core.mfe import Mfe, interface_order, sg_key
from mgm.core.sortedview import SortedKeys
from mgm.core.types import (
    ANY,
    CORE_OPS,
    HOST_MASK,
    IGMP_PROTOCOL_ID,
    MGM_FORWARD_STATE_FLAG,
    ClientId,
    Event,
    Interface,
)

Resolver = Callable[[str], Interface | None]
Args = Mapping[str, Any]
"""A request's arguments, as they came off the wire."""
Reply = dict[str, Any]
K = TypeVar("K")
J = TypeVar("J")
V = TypeVar("V")

QUESTIONS: Final = frozenset({"rpf", "creation_alert"})
STATUS_MAX_ITEMS: Final = 500_000
"""The most values (map entries and list items, at any depth) one protocol status may hold."""
STATUS_MAX_DEPTH: Final = 8
"""The questions a client may say it answers at registration (all of them when it does not say)."""


class _Deferred:
    """The reply to this new_packet comes later, from take_completions()."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFERRED"


DEFERRED: Final = _Deferred()


QUESTION_DEADLINE = 0.1
"""Seconds an rpf or creation_alert question waits for its answer before the default is taken."""
MFE_TIMEOUT = 900.0
"""Seconds an MFE lives without traffic, unless a client set another timeout."""
LIVENESS = 3.0
"""Seconds of silence after which a connection's clients are cleaned up (a heartbeat each second keeps it)."""
MAX_COUNTER = (1 << 64) - 1
MAX_TIMEOUT = 10.0**9  # seconds; anything larger is a client bug, not a wish
MAX_OPEN_ENUMERATIONS = 1024  # per client: a forgetful client cannot grow the core without end
MAX_BOUNDARIES = 256  # group ranges per client and interface
CLOSED_QUESTIONS_KEPT = 4096  # answered or expired questions remembered for late answers
CLEANUP_BATCH = 10_000  # memberships a departing client loses per transition (connection_lost, tick)
ENUMERATION_TYPES = ("all_sources", "any_source")

_WILDCARD_MASK = ANY
_SG_ARGS = ("source", "source_mask", "group", "group_mask")


# --- the alert table -----------------------------------------------------------
#
# When the number of clients with receivers for a (source, group) changes
# (a client's first interface joins, or its last interface leaves), the
# recipients are looked up by (shape, change, clients with receivers after the
# change).  IGMP counts as a client like any other.  (*,*) is (*,G) with "all
# groups" as the one group.
#
#   shape   change  after  who hears it                              event
#   -----   ------  -----  ----------------------------------------  -----------
#   (*,G)   join    1      every other registered client              join_alert
#   (*,G)   join    2      the first client                           join_alert
#   (*,G)   join    3+     nobody
#   (*,G)   leave   1      the one remaining client                   prune_alert
#   (*,G)   leave   0      every other registered client              prune_alert
#   (*,G)   leave   2+     nobody
#   (S,G)   join    1      the owner of the interface towards S       join_alert
#   (S,G)   leave   0      the owner of the interface towards S       prune_alert
#
# Independently of clients, an MFE's OIL turning non-empty sends join_alert
# (member_update=false) and turning empty sends prune_alert (member_delete=
# false, a question whose answer may set the timeout) to the owner of the
# MFE's incoming interface.

EVERY_OTHER = "every other registered client"
THE_OTHER = "the other client with receivers"
TOWARDS_SOURCE = "the owner of the interface towards S"

ALERTS: Final[dict[tuple[str, str, int], str]] = {
    ("(*,G)", "join", 1): EVERY_OTHER,
    ("(*,G)", "join", 2): THE_OTHER,
    ("(*,G)", "leave", 1): THE_OTHER,
    ("(*,G)", "leave", 0): EVERY_OTHER,
    ("(S,G)", "join", 1): TOWARDS_SOURCE,
    ("(S,G)", "leave", 0): TOWARDS_SOURCE,
}


# --- records -------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Client:
    id: ClientId
    handle: int
    conn: bytes
    name: str
    questions: frozenset[str] = QUESTIONS  # the questions it answers; the others take their default unasked
    interfaces: dict[Interface, None] = field(default_factory=dict)  # owned, in take order
    members: dict[Interface, set[int]] = field(default_factory=dict)  # recorded memberships: interface -> sg keys
    forwards: dict[Interface, dict[int, Mfe]] = field(default_factory=dict)  # its MGM_FORWARD_STATE_FLAG adds
    enums: dict[int, _Enumeration] = field(default_factory=dict)
    next_enum: int = 1
    asked: set[int] = field(default_factory=set)  # ids of the open questions addressed to it
    leaving: bool = False  # gone (silent or connection lost), its cleanup under way: its handle is refused
    status: Mapping[str, Any] | None = None  # what set_protocol_status last said, for `mgm show` and metrics
    status_at: float = 0.0

    @property
    def is_igmp(self) -> bool:
        return self.id.protocol_id == IGMP_PROTOCOL_ID


@dataclass(slots=True, eq=False)
class _Conn:
    last_seen: float
    clients: dict[ClientId, _Client] = field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Owners:
    """Who owns one interface: one routing protocol and/or IGMP."""

    iface: Interface
    owner: _Client | None = None
    igmp: _Client | None = None

    @property
    def told(self) -> _Client | None:
        """The client questions and alerts about this interface go to."""
        return self.owner if self.owner is not None else self.igmp


@dataclass(slots=True, eq=False)
class _Joined:
    """The memberships of one (source, group): per interface and per client."""

    ifaces: dict[Interface, int] = field(default_factory=dict)  # interface -> clients with a membership there
    clients: dict[_Client, int] = field(default_factory=dict)  # client -> its interfaces, in order of who came first


@dataclass(slots=True, eq=False)
class _Enumeration:
    kind: str
    cursor: int = -1  # last key (or group) returned


@dataclass(slots=True, eq=False)
class _Pending:
    """An MFE being created: waiting for rpf, then for creation_alert answers."""

    key: int
    in_iface: Interface
    upstream: int = 0
    tokens: list[Any] = field(default_factory=list)
    open: set[int] = field(default_factory=set)  # question ids still unanswered
    disabled: set[Interface] = field(default_factory=set)


@dataclass(slots=True, eq=False)
class _Question:
    qid: int
    kind: str  # "rpf", "creation_alert" or "prune_alert"
    to: ClientId
    deadline: float
    key: int
    fields: dict[str, Any]
    pending: _Pending | None = None


def _count(counts: dict[K, int], key: K, step: int) -> int:
    """Add `step` (1 or -1) to counts[key], absent as 0 and dropped at 0; the new count."""
    count = counts.get(key, 0) + step
    if count:
        counts[key] = count
    else:
        del counts[key]
    return count


def _unindex(index: dict[K, dict[J, V]], outer: K, inner: J) -> None:
    """Delete index[outer][inner], and index[outer] when that leaves it empty."""
    entries = index[outer]
    del entries[inner]
    if not entries:
        del index[outer]


def _sg_fields(key: int) -> dict[str, Any]:
    source = key & 0xFFFFFFFF
    group = key >> 32
    return {
        "source": format_addr(source),
        "source_mask": HOST_MASK if source else _WILDCARD_MASK,
        "group": format_addr(group),
        "group_mask": HOST_MASK if group else _WILDCARD_MASK,
    }


def _client_fields(client: _Client) -> dict[str, Any]:
    return {"protocol_id": client.id.protocol_id, "component_id": client.id.component_id}


def _registration_fields(client: _Client) -> dict[str, Any]:
    return {**_client_fields(client), "name": client.name, "questions": sorted(client.questions)}


def _iface_fields(iface: Interface) -> dict[str, Any]:
    return {"if_index": iface.if_index, "next_hop": iface.next_hop}


class Mgm:
    """The whole MGM state; see the rules and the theory of operation above."""

    def __init__(
        self,
        resolver: Resolver | None = None,
        question_deadline: float = QUESTION_DEADLINE,
        mfe_timeout: float = MFE_TIMEOUT,
        liveness: float = LIVENESS,
        cleanup_batch: int = CLEANUP_BATCH,
        handle_salt: int = 0,
    ) -> None:
        self.resolver = resolver
        self.question_deadline = question_deadline
        self.mfe_timeout = mfe_timeout
        self.liveness = liveness
        self.cleanup_batch = cleanup_batch
        self.wall_offset = 0.0
        self._now = 0.0  # the time of the transition being applied (set by every entry point)

        self._events: list[Event] = []
        self._completions: list[tuple[Any, dict[str, Any] | MgmError]] = []

        # clients
        self._clients: dict[ClientId, _Client] = {}  # registration order
        self._by_handle: dict[int, _Client] = {}
        self._conns: dict[bytes, _Conn] = {}
        self._handle_salt = handle_salt  # the manager draws one at random: a restarted one's handles differ
        self._notes: list[str] = []
        # departed clients still being cleaned up, in order, each with its remaining membership deletions
        self._leaving: deque[tuple[_Client, Iterator[tuple[Interface, int]]]] = deque()
        self._handle_count = 0

        # interfaces (the Interface objects here are the interned ones every other index shares)
        self._owners: dict[tuple[int, str], _Owners] = {}

        # memberships
        self._joined: dict[int, _Joined] = {}  # sg key -> who joined where
        self._group_keys: dict[int, int] = {}  # group -> number of sg keys with that group
        self._sorted_keys = SortedKeys()  # of _joined, for enumeration
        self._sorted_groups = SortedKeys()  # of _group_keys

        # MFEs
        self._mfes: dict[int, Mfe] = {}
        self._mfes_by_group: dict[int, dict[int, Mfe]] = {}
        self._mfes_by_in_iface: dict[Interface, dict[int, Mfe]] = {}
        self._vetoed_by_iface: dict[Interface, dict[int, Mfe]] = {}  # creation_alert vetoes in force
        self._sorted_mfes = SortedKeys()  # of _mfes, for list_mfes
        # group ranges never forwarded out of an interface, set by its owners: iface -> client -> prefixes
        self._boundaries: dict[Interface, dict[_Client, tuple[tuple[int, int], ...]]] = {}
        self._expiry: list[tuple[float, int]] = []  # heap of (expires, key), one live slot per MFE
        self._pending: dict[int, _Pending] = {}

        # questions
        self._questions: dict[int, _Question] = {}
        self._closed: dict[int, _Question] = {}  # recent answered/expired ones, oldest first
        self._deadlines: list[tuple[float, int]] = []
        self._next_question = 1

        self._ops: dict[str, Callable[[bytes, Args, float, Any], Any]] = {
            op: getattr(self, "_op_" + op) for op in CORE_OPS
        }

    # --- the contract --------------------------------------------------------

    def seen(self, conn: bytes, now: float) -> None:
        """The connection sent something: a sign of life (also the bus's ping and sync, which the rules never see)."""
        known = self._conns.get(conn)
        if known is not None and now > known.last_seen:
            known.last_seen = now

    def handle(self, conn: bytes, op: str, args: Mapping[str, Any], now: float, token: Any = None) -> Any:
        """Apply one request: its result dict, DEFERRED, or MgmError (nothing changed)."""
        self.seen(conn, now)
        method = self._ops.get(op) if type(op) is str else None
        if method is None:
            raise MgmError(Status.ERROR_NOT_SUPPORTED, f"the core has no operation {str(op)[:40]!r}")
        if not isinstance(args, Mapping):
            raise invalid(f"args must be a map, not {type(args).__name__}")
        self._now = now
        return method(conn, args, now, token)

    def take_events(self) -> list[Event]:
        """The events since the last call, in order.  Their fields are read-only: one map may be shared."""
        events, self._events = self._events, []
        return events

    def take_notes(self) -> list[str]:
        """What the shell should log since the last call (the rules do no I/O, logging included)."""
        notes, self._notes = self._notes, []
        return notes

    def take_completions(self) -> list[tuple[Any, dict[str, Any] | MgmError]]:
        done, self._completions = self._completions, []
        return done

    def tick(self, now: float) -> None:
        """Question deadlines (defaults), then MFE expiry, then client liveness."""
        self._now = now
        while self._deadlines and self._deadlines[0][0] <= now:
            _, qid = heapq.heappop(self._deadlines)
            question = self._questions.get(qid)
            if question is not None:
                self._close(question)
                self._move_on(question, now)
        while self._expiry and self._expiry[0][0] <= now:
            at, key = heapq.heappop(self._expiry)
            mfe = self._mfes.get(key)
            if mfe is None or at != mfe.scheduled:
                continue  # deleted, or a stale slot superseded by a shorter timeout
            if mfe.expires <= now:
                self._delete_mfe(mfe)
            else:
                self._schedule_expiry(mfe)
        for conn in [c for c, s in self._conns.items() if s.last_seen + self.liveness <= now]:
            self._notes.append(f"connection {conn!r} silent for {self.liveness:.1f} s: cleaning up its clients")
            self._lose(conn)
        self._clean_up()

    def next_deadline(self) -> float | None:
        if self._leaving:
            return self._now  # a cleanup is under way: tick() again at once
        while self._deadlines and self._deadlines[0][1] not in self._questions:
            heapq.heappop(self._deadlines)
        times = [s.last_seen + self.liveness for s in self._conns.values()]
        times += [heap[0][0] for heap in (self._deadlines, self._expiry) if heap]
        return min(times, default=None)

    def connection_lost(self, conn: bytes, now: float) -> None:
        """Leave on the clients' behalf: memberships, then interfaces, then registration.

        At most `cleanup_batch` memberships go per call; the rest go in the
        following tick() calls, which next_deadline() asks for at once.
        """
        self._now = now
        self._lose(conn)
        self._clean_up()

    def _lose(self, conn: bytes) -> None:
        """The connection is gone: its clients refuse requests from now on and queue for cleanup."""
        seen = self._conns.pop(conn, None)
        if seen is None:
            return
        for client in seen.clients.values():
            client.leaving = True
            self._leaving.append((client, self._leave_steps(client)))

    @staticmethod
    def _leave_steps(client: _Client) -> Iterator[tuple[Interface, int]]:
        """The memberships a departing client loses: interfaces in take order, each in (group, source) order."""
        for iface in list(client.interfaces):
            yield from ((iface, key) for key in sorted(client.members.get(iface, ())))

    def _clean_up(self) -> None:
        """Advance the queued cleanups by at most `cleanup_batch` membership deletions.

        The events come out in the same order as one unbounded pass would
        give them; only the transition they belong to changes.  Bounding the
        batch bounds the events the manager holds (a client with 700k
        memberships makes ~2M) and the time one transition takes.
        """
        budget = self.cleanup_batch
        while self._leaving:
            client, steps = self._leaving[0]
            if budget <= 0:
                return
            for iface, key in steps:
                keys = client.members.get(iface)
                if keys is not None and key in keys:
                    self._delete_membership(client, key, iface)
                budget -= 1
                if budget <= 0:
                    break
            else:
                for iface in list(client.interfaces):
                    self._release(client, self._owners[iface])
                self._leaving.popleft()
                self._deregister(client)

    def snapshot(self, stream: str) -> dict[str, Any]:
        if stream == STATE:
            return self._state_snapshot()
        client = self._clients.get(self._parse_stream(stream))
        if client is None:
            return {"registered": False, "interfaces": [], "local_members": [], "questions": []}
        return self._proto_snapshot(client)

    def streams(self) -> list[str]:
        return [STATE] + [proto(*cid) for cid in self._clients]

    # --- read-only views for observers in the manager's process (metrics) -------

    def census(self) -> dict[str, int]:
        """Table sizes, counted without building a listing (clients x interfaces, not memberships)."""
        return {
            "protocols": len(self._clients),
            "interfaces": len(self._owners),
            "memberships": sum(len(keys) for c in self._clients.values() for keys in c.members.values()),
            "mfes": len(self._mfes),
            "pending_mfes": len(self._pending),
            "questions": len(self._questions),
        }

    def mfe_entries(self) -> Iterable[Mfe]:
        """The stored MFEs in no order; read-only, and valid only until the next transition."""
        return self._mfes.values()

    # --- helpers every operation uses ------------------------------------------

    def _emit(self, to: _Client | None, type_: str, fields: dict[str, Any]) -> None:
        self._events.append(Event(None if to is None else to.id, type_, fields))

    def _client(self, conn: bytes, args: Args) -> _Client:
        handle = req_int(args, "handle")
        client = self._by_handle.get(handle)
        if client is None or client.conn != conn:
            raise invalid(f"handle {handle} is not registered on this connection")
        if client.leaving:
            raise invalid(f"handle {handle} belongs to {client.id}, which is being cleaned up (it went silent)")
        return client

    def _owned(self, client: _Client, args: Args) -> _Owners:
        """The interface of the request, which the client must own."""
        key = req_interface(args)
        owners = self._owners.get(key)
        if owners is None or (owners.owner is not client and owners.igmp is not client):
            raise invalid(f"interface {key[0]}/{key[1]} is not owned by {client.id}")
        return owners

    def _interface(self, key: tuple[int, str]) -> Interface:
        """The interned Interface for a key (the owned one if the interface is known)."""
        owners = self._owners.get(key)
        return owners.iface if owners is not None else Interface(*key)

    def _told(self, iface: Interface) -> _Client | None:
        owners = self._owners.get(iface)
        return None if owners is None else owners.told

    def _towards(self, source: int) -> Interface | None:
        """The interface of the unicast route to the source, per the resolver."""
        if self.resolver is None:
            return None
        try:
            found = self.resolver(format_addr(source))
        except Exception as exc:  # the resolver's own failure: the arrival interface stands in
            self._notes.append(f"route resolver failed for {format_addr(source)}: {exc!r}")
            return None
        return None if found is None else self._interface((found[0], found[1]))

    # --- registration ------------------------------------------------------------

    def _op_register_protocol(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        cid = ClientId(req_int(args, "protocol_id"), req_int(args, "component_id"))
        name = req_str(args, "name") if args.get("name") is not None else ""
        questions = QUESTIONS
        if args.get("questions") is not None:
            asked = req_list(args, "questions", len(QUESTIONS))
            unknown = [q for q in asked if type(q) is not str or q not in QUESTIONS]
            if unknown:
                raise invalid(f"questions: {unknown[0]!r} is not one of {', '.join(sorted(QUESTIONS))}")
            questions = frozenset(asked)
        if cid in self._clients:
            raise MgmError(Status.ERROR_ALREADY_EXISTS, f"protocol {cid.protocol_id}/{cid.component_id} is registered")
        handle = self._new_handle()
        client = _Client(cid, handle, conn, name, questions)
        self._clients[cid] = client
        self._by_handle[handle] = client
        self._conns.setdefault(conn, _Conn(now)).clients[cid] = client
        self._emit(None, "protocol_registered", _registration_fields(client))
        return {"handle": handle}

    def _new_handle(self) -> int:
        """Opaque: a bijective scramble of a counter, salted per Mgm, never 0."""
        while True:
            self._handle_count += 1
            handle = ((self._handle_count * 0x9E3779B1) & 0xFFFFFFFF) ^ self._handle_salt
            if handle and handle not in self._by_handle:
                return handle

    def _op_deregister_protocol(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        client = self._client(conn, args)
        if client.interfaces:
            raise MgmError(
                Status.ERROR_CAN_NOT_COMPLETE,
                f"{client.id} still owns {len(client.interfaces)} interface(s); release them first",
            )
        self._deregister(client)
        return {}

    def _deregister(self, client: _Client) -> None:
        del self._clients[client.id]
        del self._by_handle[client.handle]
        seen = self._conns.get(client.conn)
        if seen is not None and seen.clients.get(client.id) is client:  # not when it left with its connection
            del seen.clients[client.id]
            if not seen.clients:
                del self._conns[client.conn]
        self._emit(None, "protocol_deregistered", _client_fields(client))
        self._forget_questions(client)

    def _forget_questions(self, client: _Client) -> None:
        """A client that goes answers nothing more: its open questions take their defaults now, in the
        order they were asked, and none of its questions is kept for a late answer (they become unknown,
        so a new registration of the same protocol and component neither sees nor answers them)."""
        for qid in sorted(client.asked):
            self._move_on(self._questions.pop(qid), self._now)
        client.asked.clear()
        for qid in [qid for qid, q in self._closed.items() if q.to == client.id]:
            del self._closed[qid]

    def _op_heartbeat(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        self._client(conn, args)  # the connection's liveness was refreshed by handle()
        return {}

    # --- protocol status (an extension: the protocol's own state, shown by `mgm show`) ----

    def _op_set_protocol_status(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        client = self._client(conn, args)
        status = req_map(args.get("status"), "status")
        _check_status(status)
        client.status, client.status_at = status, now
        return {}

    def _op_get_protocol_status(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        cid = ClientId(req_int(args, "protocol_id"), req_int(args, "component_id"))
        client = self._clients.get(cid)
        if client is None:
            raise MgmError(Status.ERROR_NOT_FOUND, f"protocol {cid.protocol_id}/{cid.component_id} is not registered")
        if client.status is None:
            raise MgmError(Status.ERROR_NOT_FOUND, f"protocol {cid.protocol_id}/{cid.component_id} has set no status")
        return {"name": client.name, "status": client.status, "age": max(0.0, now - client.status_at)}

    def protocol_statuses(self) -> Iterable[tuple[ClientId, str, Mapping[str, Any]]]:
        """(client, name, status) of every client that set one; read-only, valid until the next transition."""
        return ((c.id, c.name, c.status) for c in self._clients.values() if c.status is not None)

    # --- interface ownership ---------------------------------------------------

    def _op_take_interface_ownership(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        client = self._client(conn, args)
        key = req_interface(args)
        owners = self._owners.get(key)
        if owners is not None:
            if owners.owner is client or owners.igmp is client:
                raise MgmError(Status.ERROR_ALREADY_EXISTS, f"{client.id} already owns {key[0]}/{key[1]}")
            taken = owners.igmp if client.is_igmp else owners.owner
            if taken is not None:
                raise MgmError(Status.ERROR_ALREADY_EXISTS, f"{key[0]}/{key[1]} is owned by {taken.id}")
        else:
            owners = self._owners[key] = _Owners(Interface(*key))
        iface = owners.iface
        told_before = owners.told
        igmp_beside = owners.igmp if not client.is_igmp else None
        if igmp_beside is not None:
            self._emit(igmp_beside, "disable_igmp", _iface_fields(iface))
        if client.is_igmp:
            owners.igmp = client
        else:
            owners.owner = client
        client.interfaces[iface] = None
        self._emit(None, "interface_owned", {**_client_fields(client), **_iface_fields(iface)})
        if owners.told is not told_before:
            # MFEs coming in here now belong to the new owner (in_protocol_id)
            for mfe in sorted(self._mfes_by_in_iface.get(iface, {}).values(), key=lambda m: m.key):
                mfe.in_protocol_id = client.id.protocol_id
                self._emit(None, "mfe_updated", {"mfe": mfe.render(self.wall_offset)})
        if igmp_beside is not None:
            self._emit(igmp_beside, "enable_igmp", _iface_fields(iface))
        return {}

    def _op_release_interface_ownership(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        client = self._client(conn, args)
        owners = self._owned(client, args)
        self._release(client, owners)
        return {}

    def _release(self, client: _Client, owners: _Owners) -> None:
        """Delete the client's memberships and forward state here and, if it was the owner, the MFEs coming in here."""
        iface = owners.iface
        was_told = owners.told is client
        igmp_beside = owners.igmp if owners.owner is client else None
        if igmp_beside is not None:
            self._emit(igmp_beside, "disable_igmp", _iface_fields(iface))
        for key in sorted(client.members.get(iface, ())):
            self._delete_membership(client, key, iface)
        if iface in self._boundaries and client in self._boundaries[iface]:
            self._set_boundaries(client, iface, ())  # they go with the ownership: what IGMP keeps may flow again
        for mfe in sorted(client.forwards.get(iface, {}).values(), key=lambda m: m.key):
            self._unforce(client, mfe, iface)  # its own forward state only: another owner's add stays
        if was_told:
            for mfe in sorted(self._mfes_by_in_iface.get(iface, {}).values(), key=lambda m: m.key):
                self._delete_mfe(mfe)
        if owners.owner is client:
            owners.owner = None
        else:
            owners.igmp = None
        del client.interfaces[iface]
        if owners.owner is None and owners.igmp is None:
            del self._owners[(iface.if_index, iface.next_hop)]
        self._emit(None, "interface_released", {**_client_fields(client), **_iface_fields(iface)})
        if igmp_beside is not None:
            self._emit(igmp_beside, "enable_igmp", _iface_fields(iface))

    def _op_get_protocol_on_interface(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        key = req_interface(args)
        told = self._told(Interface(*key))
        if told is None:
            raise MgmError(Status.ERROR_NOT_FOUND, f"nobody owns interface {key[0]}/{key[1]}")
        return _client_fields(told)

    # --- memberships -------------------------------------------------------------

    def _membership_request(self, conn: bytes, args: Args) -> tuple[_Client, int, _Owners]:
        """The client, the (group << 32 | source) key and the owned interface of an add or delete."""
        client = self._client(conn, args)
        source, group = req_membership_key(args)
        owners = self._owned(client, args)
        return client, (group << 32) | source, owners

    def _op_add_group_membership(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        client, key, owners = self._membership_request(conn, args)
        iface = owners.iface
        if self._flags(args) == MGM_FORWARD_STATE_FLAG:
            self._forward(client, key, iface, add=True)
            return {}
        # The addresses were checked to be canonical, so the request's own strings are the event's.
        sg = {k: args[k] for k in _SG_ARGS}
        keys = client.members.get(iface)
        if keys is not None and key in keys:
            # A re-add changes nothing, but tells the current owner (how a new owner learns receivers).
            self._local(client, owners, sg, "local_join")
            return {}
        self._add_membership(client, key, owners, sg)
        return {}

    def _op_delete_group_membership(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        client, key, owners = self._membership_request(conn, args)
        iface = owners.iface
        if self._flags(args) == MGM_FORWARD_STATE_FLAG:
            self._forward(client, key, iface, add=False)
            return {}
        keys = client.members.get(iface)
        if keys is None or key not in keys:
            raise MgmError(Status.ERROR_NOT_FOUND, f"{client.id} has no such membership on {iface}")
        # as in add: the addresses were checked to be canonical, so the request's strings are the event's
        self._delete_membership(client, key, iface, {k: args[k] for k in _SG_ARGS})
        return {}

    @staticmethod
    def _flags(args: Args) -> int:
        flags = req_int(args, "flags")
        if flags not in (1, 2):
            raise invalid(f"flags must be 1 (MGM_JOIN_STATE_FLAG) or 2 (MGM_FORWARD_STATE_FLAG), not {flags}")
        return flags

    def _add_membership(self, client: _Client, key: int, owners: _Owners, sg: dict[str, Any]) -> None:
        iface = owners.iface
        client.members.setdefault(iface, set()).add(key)
        joined = self._joined.get(key)
        if joined is None:
            joined = self._joined[key] = _Joined()
            self._new_key(key)
        on_iface = _count(joined.ifaces, iface, 1)
        client_ifaces = _count(joined.clients, client, 1)

        self._emit(
            None,
            "membership_added",
            {
                "protocol_id": client.id.protocol_id,
                "component_id": client.id.component_id,
                **sg,
                "if_index": iface.if_index,
                "next_hop": iface.next_hop,
                "flags": 1,
            },
        )
        self._local(client, owners, sg, "local_join")
        if client_ifaces == 1:  # its first interface with this key
            self._alert(key, sg, "join", joined, client, iface)
        if on_iface == 1:
            for mfe in self._matching_mfes(key):
                self._oil_add(mfe, iface)
        else:
            # the interface is in these OILs already, except where a veto keeps it out: new interest lifts it
            for mfe in self._vetoed_matching(key, iface):
                self._oil_add(mfe, iface)

    def _delete_membership(
        self, client: _Client, key: int, iface: Interface, sg: dict[str, Any] | None = None
    ) -> None:
        keys = client.members[iface]
        keys.discard(key)
        if not keys:
            del client.members[iface]
        joined = self._joined[key]
        on_iface = _count(joined.ifaces, iface, -1)
        left = _count(joined.clients, client, -1)
        if not joined.ifaces:
            del self._joined[key]
            self._gone_key(key)

        if sg is None:
            sg = _sg_fields(key)
        self._emit(None, "membership_deleted", {**_client_fields(client), **sg, **_iface_fields(iface), "flags": 1})
        owners = self._owners[(iface.if_index, iface.next_hop)]
        self._local(client, owners, sg, "local_leave")
        if left == 0:
            self._alert(key, sg, "leave", joined, client, iface)
        if on_iface == 0:
            for mfe in self._matching_mfes(key):
                if iface in mfe.oil and not self._wanted(mfe, iface):
                    self._oil_remove(mfe, iface)

    def _local(self, client: _Client, owners: _Owners, sg: dict[str, Any], type_: str) -> None:
        """IGMP's membership is the routing owner's local receiver (never IGMP's own news)."""
        if client.is_igmp and owners.owner is not None:
            self._emit(owners.owner, type_, {**sg, **_iface_fields(owners.iface)})

    def _alert(
        self, key: int, sg: dict[str, Any], change: str, joined: _Joined, client: _Client, iface: Interface
    ) -> None:
        """join_alert / prune_alert by the ALERTS table."""
        shape = "(*,G)" if key & 0xFFFFFFFF == 0 else "(S,G)"
        rule = ALERTS.get((shape, change, len(joined.clients)))
        if rule is None:
            return
        if rule == EVERY_OTHER:
            recipients: Iterable[_Client] = [c for c in self._clients.values() if c is not client]
        elif rule == THE_OTHER:
            recipients = [c for c in joined.clients if c is not client]
        else:
            towards = self._towards(key & 0xFFFFFFFF)
            told = None if towards is None else self._told(towards)
            if towards is None:
                self._notes.append(f"no route towards {format_addr(key & 0xFFFFFFFF)}: {change} not sent")
            recipients = [] if told is None or told is client else [told]
        if change == "join":
            type_, fields = "join_alert", {**sg, "member_update": True}
        else:
            type_, fields = "prune_alert", {**sg, **_iface_fields(iface), "member_delete": True}
        for to in recipients:
            self._emit(to, type_, fields)

    def _new_key(self, key: int) -> None:
        self._sorted_keys.add(key)
        if _count(self._group_keys, key >> 32, 1) == 1:
            self._sorted_groups.add(key >> 32)

    def _gone_key(self, key: int) -> None:
        self._sorted_keys.remove(key)
        if not _count(self._group_keys, key >> 32, -1):
            self._sorted_groups.remove(key >> 32)

    # --- group enumeration -------------------------------------------------------

    def _op_group_enumeration_start(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        client = self._client(conn, args)
        kind = req_str(args, "type")
        if kind not in ENUMERATION_TYPES:
            raise invalid(f"type must be one of {', '.join(ENUMERATION_TYPES)}, not {kind[:40]!r}")
        if len(client.enums) >= MAX_OPEN_ENUMERATIONS:
            raise MgmError(Status.ERROR_NOT_ENOUGH_MEMORY, f"{client.id} has {MAX_OPEN_ENUMERATIONS} open enumerations")
        enum = client.next_enum
        client.next_enum += 1
        client.enums[enum] = _Enumeration(kind)
        return {"enum": enum}

    def _op_group_enumeration_next(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        client = self._client(conn, args)
        enum = client.enums.get(req_int(args, "enum"))
        max_entries = req_int(args, "max_entries", 1)
        if enum is None:
            raise invalid(f"enumeration {args['enum']} is not open for {client.id}")
        all_sources = enum.kind == "all_sources"  # else any_source: the groups, as (*,G) keys
        page, more = (self._sorted_keys if all_sources else self._sorted_groups).page_after(enum.cursor, max_entries)
        if not page:
            raise MgmError(Status.ERROR_NO_MORE_ITEMS, "the enumeration has no more entries")
        enum.cursor = page[-1]
        return {"entries": [_sg_fields(k if all_sources else k << 32) for k in page], "more": more}

    def _op_group_enumeration_end(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        client = self._client(conn, args)
        enum = req_int(args, "enum")
        if enum not in client.enums:
            raise invalid(f"enumeration {enum} is not open for {client.id}")
        del client.enums[enum]
        return {}

    # --- MFEs: matching, OIL changes ---------------------------------------------

    def _matching_mfes(self, key: int) -> list[Mfe]:
        """The MFEs a membership of this (source, group) applies to."""
        if key & 0xFFFFFFFF:
            mfe = self._mfes.get(key)
            return [] if mfe is None else [mfe]
        if key:
            by_group = self._mfes_by_group.get(key >> 32, {})
            return [by_group[k] for k in sorted(by_group)]
        return [self._mfes[k] for k in sorted(self._mfes)]  # (*,*): every MFE, a rare and costly change

    def _wanted(self, mfe: Mfe, iface: Interface) -> bool:
        """Does a membership (or a forward-only add) put this interface in the MFE's OIL?"""
        if iface == mfe.in_iface or (self._boundaries and self._bounded(iface, mfe.key >> 32)):
            return False
        for key in (mfe.key, mfe.key & ~0xFFFFFFFF, 0):
            joined = self._joined.get(key)
            if joined is not None and iface in joined.ifaces:
                return True
        return mfe.forced is not None and iface in mfe.forced

    def _wanted_interfaces(self, key: int, in_iface: Interface) -> list[Interface]:
        """The OIL a new MFE would get from the memberships, in interface order."""
        found: set[Interface] = set()
        for k in (key, key & ~0xFFFFFFFF, 0):
            joined = self._joined.get(k)
            if joined is not None:
                found.update(joined.ifaces)
        found.discard(in_iface)
        if self._boundaries:
            found = {iface for iface in found if not self._bounded(iface, key >> 32)}
        return sorted(found, key=interface_order)

    def _oil_add(self, mfe: Mfe, iface: Interface) -> None:
        if iface in mfe.oil or iface == mfe.in_iface or (self._boundaries and self._bounded(iface, mfe.key >> 32)):
            return
        was_empty = not mfe.oil
        mfe.oil[iface] = None
        if mfe.disabled is not None and iface in mfe.disabled:
            self._lift_veto(mfe, iface)
        self._emit(None, "mfe_updated", {"mfe": mfe.render(self.wall_offset)})
        if was_empty:
            told = self._told(mfe.in_iface)
            if told is not None:
                self._emit(told, "join_alert", {**_sg_fields(mfe.key), "member_update": False})

    def _oil_remove(self, mfe: Mfe, iface: Interface) -> None:
        del mfe.oil[iface]
        self._emit(None, "mfe_updated", {"mfe": mfe.render(self.wall_offset)})
        if not mfe.oil:
            self._ask_prune(mfe)

    def _ask_prune(self, mfe: Mfe) -> None:
        """The OIL is empty: ask the incoming owner (its answer may set the timeout)."""
        told = self._told(mfe.in_iface)
        if told is not None:
            fields = {**_sg_fields(mfe.key), **_iface_fields(mfe.in_iface), "member_delete": False}
            self._ask(told, "prune_alert", mfe.key, fields)

    def _forward(self, client: _Client, key: int, iface: Interface, add: bool) -> None:
        """MGM_FORWARD_STATE_FLAG: the client's own forward state in existing matching MFEs, no membership."""
        for mfe in self._matching_mfes(key):
            if iface == mfe.in_iface:
                continue
            if add:
                if mfe.forced is None:
                    mfe.forced = {}
                mfe.forced.setdefault(iface, set()).add(client.id)
                client.forwards.setdefault(iface, {})[mfe.key] = mfe
                self._oil_add(mfe, iface)
            elif mfe.forced is not None and client.id in mfe.forced.get(iface, ()):
                self._unforce(client, mfe, iface)

    def _unforce(self, client: _Client, mfe: Mfe, iface: Interface) -> None:
        """End one client's forward state; the interface leaves the OIL unless something else wants it."""
        assert mfe.forced is not None
        adders = mfe.forced[iface]
        adders.discard(client.id)
        if not adders:
            del mfe.forced[iface]
            if not mfe.forced:
                mfe.forced = None
        _unindex(client.forwards, iface, mfe.key)
        if iface in mfe.oil and not self._wanted(mfe, iface):
            self._oil_remove(mfe, iface)

    def _veto(self, mfe: Mfe, iface: Interface) -> None:
        """A creation_alert answer keeps the interface out of this MFE's OIL (indexed for _vetoed_matching)."""
        if mfe.disabled is None:
            mfe.disabled = set()
        mfe.disabled.add(iface)
        self._vetoed_by_iface.setdefault(iface, {})[mfe.key] = mfe

    def _lift_veto(self, mfe: Mfe, iface: Interface) -> None:
        assert mfe.disabled is not None
        mfe.disabled.discard(iface)
        if not mfe.disabled:
            mfe.disabled = None
        _unindex(self._vetoed_by_iface, iface, mfe.key)

    def _vetoed_matching(self, key: int, iface: Interface) -> list[Mfe]:
        """The MFEs a membership of this (source, group) applies to that keep `iface` out by a veto."""
        vetoed = self._vetoed_by_iface.get(iface)
        if not vetoed:
            return []
        if key & 0xFFFFFFFF:
            mfe = vetoed.get(key)
            return [] if mfe is None else [mfe]
        group = key >> 32
        return [vetoed[k] for k in sorted(vetoed) if not group or k >> 32 == group]

    # --- MFEs: storing and deleting -----------------------------------------------

    def _store_mfe(self, mfe: Mfe) -> None:
        self._mfes[mfe.key] = mfe
        self._mfes_by_group.setdefault(mfe.key >> 32, {})[mfe.key] = mfe
        self._mfes_by_in_iface.setdefault(mfe.in_iface, {})[mfe.key] = mfe
        self._sorted_mfes.add(mfe.key)
        self._schedule_expiry(mfe)

    def _schedule_expiry(self, mfe: Mfe) -> None:
        mfe.scheduled = mfe.expires
        heapq.heappush(self._expiry, (mfe.scheduled, mfe.key))

    def _delete_mfe(self, mfe: Mfe) -> None:
        key = mfe.key
        del self._mfes[key]
        _unindex(self._mfes_by_group, key >> 32, key)
        _unindex(self._mfes_by_in_iface, mfe.in_iface, key)
        for iface, adders in (mfe.forced or {}).items():
            for cid in adders:  # an adder is registered: its forward state goes when it releases, before it goes
                _unindex(self._clients[cid].forwards, iface, key)
        for iface in mfe.disabled or ():
            _unindex(self._vetoed_by_iface, iface, key)
        self._sorted_mfes.remove(key)
        self._emit(None, "mfe_deleted", {"mfe": mfe.render(self.wall_offset)})

    def _set_incoming(self, mfe: Mfe, iface: Interface, upstream: int) -> None:
        """Move the MFE's incoming interface and upstream neighbour, publishing the change.

        The OIL loses the new incoming interface and regains the old one where
        memberships want it; the incoming owner hears of an OIL turning
        non-empty or empty as after any other OIL change.
        """
        if iface == mfe.in_iface and upstream == mfe.upstream:
            return
        was_empty = not mfe.oil
        mfe.upstream = upstream
        if iface != mfe.in_iface:
            old = mfe.in_iface
            _unindex(self._mfes_by_in_iface, mfe.in_iface, mfe.key)
            mfe.in_iface = iface
            self._mfes_by_in_iface.setdefault(iface, {})[mfe.key] = mfe
            told = self._told(iface)
            mfe.in_protocol_id = 0 if told is None else told.id.protocol_id
            mfe.oil.pop(iface, None)
            if self._wanted(mfe, old) and not (mfe.disabled and old in mfe.disabled):
                mfe.oil[old] = None
        self._emit(None, "mfe_updated", {"mfe": mfe.render(self.wall_offset)})
        if was_empty and mfe.oil:
            told = self._told(mfe.in_iface)
            if told is not None:
                self._emit(told, "join_alert", {**_sg_fields(mfe.key), "member_update": False})
        elif mfe.oil == {} and not was_empty:
            self._ask_prune(mfe)

    # --- boundaries ----------------------------------------------------------------

    def _op_set_boundaries(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        client = self._client(conn, args)
        owners = self._owned(client, args)
        prefixes: list[tuple[int, int]] = []
        for i, raw in enumerate(req_list(args, "boundaries", MAX_BOUNDARIES)):
            entry = req_map(raw, f"boundaries[{i}]")
            group, mask = req_addr(entry, "group"), req_addr(entry, "group_mask")
            length = mask.bit_count()
            if mask != (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF:
                raise invalid(f"boundaries[{i}]: group_mask {format_addr(mask)} is not a prefix mask")
            if group & ~mask:
                raise invalid(f"boundaries[{i}]: {format_addr(group)} has bits outside {format_addr(mask)}")
            if length and (length < 4 or group >> 28 != 0xE):
                raise invalid(f"boundaries[{i}]: {format_addr(group)}/{length} is not inside 224.0.0.0/4 "
                              "(0.0.0.0/0.0.0.0 is every group)")  # fmt: skip
            prefixes.append((group, mask))
        self._set_boundaries(client, owners.iface, tuple(sorted(set(prefixes))))
        return {}

    def _bounded(self, iface: Interface, group: int) -> bool:
        """Is `group` inside a boundary of `iface` (never forwarded out of it)?"""
        by_client = self._boundaries.get(iface, {})
        return any(group & mask == net for prefixes in by_client.values() for net, mask in prefixes)

    def _set_boundaries(self, client: _Client, iface: Interface, prefixes: tuple[tuple[int, int], ...]) -> None:
        """Replace the client's boundaries on `iface`, then bring the OILs of the MFEs in the ranges it
        gained or lost in line: out where a boundary now covers the group, in where one was lifted and
        a membership wants the interface (a creation_alert veto stays in force)."""
        by_client = self._boundaries.setdefault(iface, {})
        old = by_client.get(client, ())
        if prefixes:
            by_client[client] = prefixes
        else:
            by_client.pop(client, None)
            if not by_client:
                del self._boundaries[iface]
        if prefixes == old:
            return
        self._emit(None, "boundaries_set", {
            **_client_fields(client), **_iface_fields(iface),
            "boundaries": [{"group": format_addr(n), "group_mask": format_addr(m)} for n, m in prefixes],
        })  # fmt: skip
        keys: set[int] = set()
        for net, mask in set(old) ^ set(prefixes):
            last = net | (~mask & 0xFFFFFFFF)
            keys.update(self._sorted_mfes.between(net << 32, (last << 32) | 0xFFFFFFFF))
        for key in sorted(keys):
            mfe = self._mfes[key]
            if iface in mfe.oil:
                if self._bounded(iface, key >> 32):
                    self._oil_remove(mfe, iface)
            elif self._wanted(mfe, iface) and not (mfe.disabled is not None and iface in mfe.disabled):
                self._oil_add(mfe, iface)

    # --- MFE operations -------------------------------------------------------------

    def _op_new_packet(self, conn: bytes, args: Args, now: float, token: Any) -> Any:
        self._client(conn, args)
        source, group = req_source_group(args)
        arrival = self._interface(req_interface(args))
        key = (group << 32) | source
        mfe = self._mfes.get(key)
        if mfe is not None:
            return {"mfe": mfe.render(self.wall_offset)}
        pending = self._pending.get(key)
        if pending is not None:
            pending.tokens.append(token)
            return DEFERRED
        towards = self._towards(source)
        pending = self._pending[key] = _Pending(key, towards if towards is not None else arrival)
        told = self._told(pending.in_iface)
        if told is not None and "rpf" in told.questions:
            fields = {
                "source": format_addr(source),
                "group": format_addr(group),
                **_iface_fields(pending.in_iface),
                "upstream_neighbor": ANY,
            }
            pending.open.add(self._ask(told, "rpf", key, fields, pending))
        else:
            self._ask_creation(pending, now)
        stored = self._mfes.get(key)
        if stored is not None and key not in self._pending:
            return {"mfe": stored.render(self.wall_offset)}
        pending.tokens.append(token)
        return DEFERRED

    def _ask_creation(self, pending: _Pending, now: float) -> None:
        """Step 3: each owner of OIL interfaces may veto its own (creation_alert)."""
        by_owner: dict[_Client, list[Interface]] = {}
        for iface in self._wanted_interfaces(pending.key, pending.in_iface):
            told = self._told(iface)
            if told is not None and "creation_alert" in told.questions:
                by_owner.setdefault(told, []).append(iface)
        for told, ifaces in by_owner.items():
            fields = {
                "source": format_addr(pending.key & 0xFFFFFFFF),
                "group": format_addr(pending.key >> 32),
                "in_if_index": pending.in_iface.if_index,
                "in_next_hop": pending.in_iface.next_hop,
                "oil": [_iface_fields(i) for i in ifaces],
            }
            pending.open.add(self._ask(told, "creation_alert", pending.key, fields, pending))
        if not pending.open:
            self._create(pending, now)

    def _create(self, pending: _Pending, now: float) -> None:
        """Step 4: store and publish the MFE, answer the waiting new_packet requests."""
        del self._pending[pending.key]
        told = self._told(pending.in_iface)
        in_protocol_id = 0 if told is None else told.id.protocol_id
        mfe = Mfe(pending.key, pending.in_iface, pending.upstream, in_protocol_id, now, self.mfe_timeout)
        for iface in self._wanted_interfaces(pending.key, pending.in_iface):
            if iface in pending.disabled:
                self._veto(mfe, iface)
            else:
                mfe.oil[iface] = None
        self._store_mfe(mfe)
        rendered = mfe.render(self.wall_offset)
        self._emit(None, "mfe_created", {"mfe": rendered})
        for waiting in pending.tokens:
            self._completions.append((waiting, {"mfe": rendered}))
        if not mfe.oil:
            self._ask_prune(mfe)

    def _op_get_mfe(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        source, group = req_source_group(args)
        stats = opt_int(args, "stats", 0, 1)
        return {"mfe": self._stored_mfe(source, group).render(self.wall_offset, stats)}

    def _op_set_mfe_oil(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        """[ours] The owner of OIL interfaces disables or enables them in one stored MFE, as a late creation_alert
        answer does: what PIM's Assert loser and (S,G,rpt) prunes need once the flow runs."""
        client = self._client(conn, args)
        source, group = req_source_group(args)
        mfe = self._stored_mfe(source, group)
        verdicts: dict[tuple[int, str], bool] = {}
        for i, raw in enumerate(req_list(args, "oil", 4096)):
            entry = req_map(raw, f"oil[{i}]")
            iface_key = req_interface(entry)
            if self._told(self._interface(iface_key)) is not client:
                raise invalid(f"oil[{i}]: interface {iface_key[0]}/{iface_key[1]} is not the caller's to decide")
            verdicts[iface_key] = req_bool(entry, "enabled")
        self._apply_verdicts(mfe, verdicts)
        return {}

    def _stored_mfe(self, source: int, group: int) -> Mfe:
        mfe = self._mfes.get((group << 32) | source)
        if mfe is None:
            raise MgmError(Status.ERROR_NOT_FOUND, f"no MFE for ({format_addr(source)}, {format_addr(group)})")
        return mfe

    def _op_list_mfes(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        after_key = -1
        if args.get("after") is not None:
            after = req_map(args["after"], "after")
            after_key = sg_key(req_addr(after, "source"), req_addr(after, "group"))
        max_entries = req_int(args, "max_entries", 1)
        stats = opt_int(args, "stats", 0, 1)
        page, more = self._sorted_mfes.page_after(after_key, max_entries)
        return {"entries": [self._mfes[key].render(self.wall_offset, stats) for key in page], "more": more}

    def _op_set_mfe(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        client = self._client(conn, args)
        source, group = req_source_group(args)
        upstream = req_addr(args, "upstream_neighbor")
        new_in: Interface | None = None
        if args.get("if_index") is not None:
            if_index = req_int(args, "if_index")
            next_hop = args["next_hop"] if args.get("next_hop") is not None else ANY
            parse_addr(next_hop, "next_hop")
            new_in = self._interface((if_index, next_hop))
        elif args.get("next_hop") is not None:
            raise invalid("next_hop without if_index")
        mfe = self._stored_mfe(source, group)
        told = self._told(mfe.in_iface)
        if told is not None and told is not client:
            raise invalid(f"{client.id} does not own the incoming interface of this MFE")
        if new_in is not None and new_in != mfe.in_iface and self._told(new_in) is not client:
            raise invalid(f"{client.id} does not own interface {new_in.if_index}/{new_in.next_hop}")
        self._set_incoming(mfe, mfe.in_iface if new_in is None else new_in, upstream)
        return {}

    def _op_wrong_interface(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        self._client(conn, args)
        source, group = req_source_group(args)
        arrival = self._interface(req_interface(args))
        mfe = self._stored_mfe(source, group)
        if arrival == mfe.in_iface:
            raise invalid("that is the MFE's incoming interface, not a wrong one")
        told = self._told(arrival)
        if told is not None:
            fields = {"source": format_addr(source), "group": format_addr(group), **_iface_fields(arrival)}
            self._emit(told, "wrong_if", fields)
        return {}

    def _op_mfe_counters(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        self._client(conn, args)
        reports = []
        for i, raw in enumerate(req_list(args, "entries")):
            entry = req_map(raw, f"entries[{i}]")
            source, group = req_source_group(entry)
            counters = (
                req_int(entry, "in_packets", 0, MAX_COUNTER),
                req_int(entry, "in_bytes", 0, MAX_COUNTER),
                req_int(entry, "wrong_if_packets", 0, MAX_COUNTER),
            )
            out = {}
            for j, raw_oil in enumerate(req_list(entry, "oil", 4096) if entry.get("oil") is not None else []):
                oil_entry = req_map(raw_oil, f"entries[{i}].oil[{j}]")
                iface = req_interface(oil_entry)
                out[iface] = (
                    req_int(oil_entry, "out_packets", 0, MAX_COUNTER),
                    opt_int(oil_entry, "discards", 0, MAX_COUNTER) or 0,
                )
            reports.append(((group << 32) | source, counters, out))
        for key, (in_packets, in_bytes, wrong_if), out in reports:
            mfe = self._mfes.get(key)
            if mfe is None:
                continue  # deleted while the report was on its way
            if in_packets > mfe.in_packets:
                mfe.last_activity = now
            mfe.in_packets, mfe.in_bytes, mfe.wrong_if_packets = in_packets, in_bytes, wrong_if
            if out:
                mfe.out = {self._interface(k): v for k, v in out.items()}
        return {}

    # --- questions --------------------------------------------------------------------

    def _ask(self, to: _Client, kind: str, key: int, fields: dict[str, Any], pending: _Pending | None = None) -> int:
        qid = self._next_question
        self._next_question += 1
        fields = {"question": qid, "deadline": self.question_deadline, **fields}
        question = _Question(qid, kind, to.id, self._now + self.question_deadline, key, fields, pending)
        self._questions[qid] = question
        to.asked.add(qid)
        heapq.heappush(self._deadlines, (question.deadline, qid))
        self._emit(to, kind, fields)
        return qid

    def _close(self, question: _Question) -> None:
        del self._questions[question.qid]
        self._clients[question.to].asked.discard(question.qid)
        self._closed[question.qid] = question
        if len(self._closed) > CLOSED_QUESTIONS_KEPT:
            del self._closed[next(iter(self._closed))]

    def _move_on(self, question: _Question, now: float) -> None:
        """The question closed, answered or not (unanswered, rpf keeps the proposed interface and creation_alert
        enables all): its pending MFE goes on to creation_alert after rpf, to creation after the last of those."""
        pending = question.pending
        if pending is None or self._pending.get(pending.key) is not pending:
            return
        pending.open.discard(question.qid)
        if question.kind == "rpf":
            self._ask_creation(pending, now)
        elif not pending.open:
            self._create(pending, now)

    def _op_answer(self, conn: bytes, args: Args, now: float, token: Any) -> Reply:
        client = self._client(conn, args)
        qid = req_int(args, "question", 0, 1 << 63)
        question = self._questions.get(qid)
        late = question is None
        if question is None:
            question = self._closed.get(qid)
            if question is None:
                raise MgmError(Status.ERROR_NOT_FOUND, f"no question {qid}")
        if question.to != client.id:
            raise invalid(f"question {qid} was not asked to {client.id}")
        if question.kind == "prune_alert":  # member_delete=false: the answer may set the MFE's timeout
            timeout = req_number(args, "timeout", 0.0, MAX_TIMEOUT) if args.get("timeout") is not None else None
            if not late:
                self._close(question)
            mfe = self._mfes.get(question.key)
            if timeout is not None and mfe is not None and timeout != mfe.timeout:
                mfe.timeout = timeout
                if mfe.expires < mfe.scheduled:
                    self._schedule_expiry(mfe)
                self._emit(None, "mfe_updated", {"mfe": mfe.render(self.wall_offset)})
            return {}
        if question.kind == "rpf":
            in_iface = self._interface(req_interface(args))
            upstream = req_addr(args, "upstream_neighbor")
            if late:
                mfe = self._mfes.get(question.key)
                still = self._pending.get(question.key)
                if mfe is not None:
                    self._set_incoming(mfe, in_iface, upstream)
                elif still is not None and still is question.pending:
                    # creation is under way (its alerts went out): the MFE will come in here
                    still.in_iface, still.upstream = in_iface, upstream
                return {}
            assert question.pending is not None
            question.pending.in_iface, question.pending.upstream = in_iface, upstream
        else:  # creation_alert
            asked = {(o["if_index"], o["next_hop"]) for o in question.fields["oil"]}
            verdicts: dict[tuple[int, str], bool] = {}
            for i, raw in enumerate(req_list(args, "oil", 4096)):
                entry = req_map(raw, f"oil[{i}]")
                iface_key = req_interface(entry)
                if iface_key not in asked:
                    raise invalid(f"oil[{i}] names an interface question {qid} did not ask about")
                verdicts[iface_key] = req_bool(entry, "enabled")
            if late:  # all creation alerts of an MFE share one deadline: the MFE is stored by now
                mfe = self._mfes.get(question.key)
                if mfe is not None:
                    self._apply_verdicts(mfe, verdicts)
                return {}
            assert question.pending is not None
            question.pending.disabled.update(self._interface(k) for k, enabled in verdicts.items() if not enabled)
        self._close(question)
        self._move_on(question, now)
        return {}

    def _apply_verdicts(self, mfe: Mfe, verdicts: dict[tuple[int, str], bool]) -> None:
        """A late creation_alert answer: disable and re-enable interfaces of a stored MFE."""
        for iface_key, enabled in sorted(verdicts.items()):
            iface = self._interface(iface_key)
            if enabled:
                if mfe.disabled is not None and iface in mfe.disabled:
                    self._lift_veto(mfe, iface)
                    if self._wanted(mfe, iface):
                        self._oil_add(mfe, iface)
            else:
                self._veto(mfe, iface)
                if iface in mfe.oil:
                    self._oil_remove(mfe, iface)

    # --- snapshots -------------------------------------------------------------------

    @staticmethod
    def _parse_stream(stream: object) -> ClientId:
        if type(stream) is str and stream.startswith(PROTO_PREFIX):
            parts = stream[len(PROTO_PREFIX) :].split("/")
            if len(parts) == 2 and all(p.isascii() and p.isdigit() and len(p) <= 10 for p in parts):
                return ClientId(int(parts[0]), int(parts[1]))
        raise invalid(f"no stream {str(stream)[:60]!r}")

    def _state_snapshot(self) -> dict[str, Any]:
        protocols = [_registration_fields(c) for c in self._clients.values()]
        interfaces = [
            {
                **_iface_fields(owners.iface),
                "owner": None if owners.told is None else _client_fields(owners.told),
                "igmp": owners.igmp is not None,
                "boundaries": [
                    {**_client_fields(c), "group": format_addr(n), "group_mask": format_addr(m)}
                    for c, prefixes in self._boundaries.get(owners.iface, {}).items()
                    for n, m in prefixes
                ],
            }
            for owners in sorted(self._owners.values(), key=lambda o: interface_order(o.iface))
        ]
        memberships = [
            {**_client_fields(client), **_sg_fields(key), **_iface_fields(iface), "flags": 1}
            for client in self._clients.values()
            for iface in client.interfaces
            for key in sorted(client.members.get(iface, ()))
        ]
        mfes = [self._mfes[key].render(self.wall_offset) for key in sorted(self._mfes)]
        return {"protocols": protocols, "interfaces": interfaces, "memberships": memberships, "mfes": mfes}

    def _proto_snapshot(self, client: _Client) -> dict[str, Any]:
        interfaces = []
        local_members = []
        for iface in client.interfaces:
            owners = self._owners[(iface.if_index, iface.next_hop)]
            interfaces.append({**_iface_fields(iface), "igmp_enabled": owners.igmp is not None})
            if owners.owner is client and owners.igmp is not None:
                for key in sorted(owners.igmp.members.get(iface, ())):
                    local_members.append({**_sg_fields(key), **_iface_fields(iface)})
        questions = [{"type": q.kind, **q.fields} for q in self._questions.values() if q.to == client.id]
        return {"registered": True, "interfaces": interfaces, "local_members": local_members, "questions": questions}


def _check_status(status: Mapping[str, Any]) -> None:
    """87 unless `status` is maps with string keys, lists and scalars, at most STATUS_MAX_DEPTH deep and
    STATUS_MAX_ITEMS values in all: a status is kept in memory and served whole."""
    items = 0
    pending: list[tuple[object, int]] = [(status, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, Mapping):
            if any(type(key) is not str for key in value):
                raise invalid("status: map keys must be strings")
            children: Iterable[object] = value.values()
        elif isinstance(value, list | tuple):
            children = value
        elif value is None or isinstance(value, str | int | float | bool | bytes):
            continue
        else:
            raise invalid(f"status: a {type(value).__name__} is not a status value")
        if depth > STATUS_MAX_DEPTH:
            raise invalid(f"status: nested deeper than {STATUS_MAX_DEPTH}")
        for child in children:
            items += 1
            pending.append((child, depth + 1))
        if items > STATUS_MAX_ITEMS:
            raise invalid(f"status: more than {STATUS_MAX_ITEMS} values")
