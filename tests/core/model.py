"""A reference model of the MGM rules, written from MGM-SPEC.md, for test_stateful.py.

It is deliberately naive: sets and dicts, every OIL recomputed from scratch
from the memberships (matching (S,G), (*,G) and (*,*)), forward-only adds
and vetoes, so that it shares no index or shortcut with mgm.core.state.
Each operation checks everything first and raises `Refused(status)` before
it changes anything.  What a step should tell the clients is collected in
`out` (proto-stream callbacks as normalized tuples, see `norm`), `asked`
(the questions, whose ids the test learns from the core's events) and
`completed` (tokens of deferred new_packet replies).

Where the spec leaves a choice open, the model takes the one the core
documents, and says so next to it (grep "[choice]").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mgm.core.types import IGMP_PROTOCOL_ID, ClientId

ANY = "0.0.0.0"
ONES = "255.255.255.255"

Iface = tuple[int, str]
SG = tuple[str, str]  # (source, group); ANY is the wildcard
Norm = tuple[Any, ...]


class Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(f"{status}: {why}")
        self.status = status


def addr(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


def iface_order(i: Iface) -> tuple[int, int]:
    return i[0], addr(i[1])


def sg_order(sg: SG) -> tuple[int, int]:
    return addr(sg[1]), addr(sg[0])


def freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


QUESTION_KEYS = ("question", "deadline")


def norm(to: ClientId | None, type_: str, fields: dict[str, Any]) -> Norm:
    """An event as a hashable value, without the question id and deadline (the test matches those)."""
    return (to, type_, freeze({k: v for k, v in fields.items() if k not in QUESTION_KEYS}))


def sg_fields(sg: SG) -> dict[str, Any]:
    s, g = sg
    return {"source": s, "source_mask": ANY if s == ANY else ONES, "group": g, "group_mask": ANY if g == ANY else ONES}


def if_fields(i: Iface) -> dict[str, Any]:
    return {"if_index": i[0], "next_hop": i[1]}


def incoming(key: SG, i: Iface) -> dict[str, Any]:
    return {"source": key[0], "group": key[1], "in_if_index": i[0], "in_next_hop": i[1]}


@dataclass
class Client:
    cid: ClientId
    conn: bytes
    handle: int
    ifaces: dict[Iface, None] = field(default_factory=dict)  # take order
    members: dict[Iface, set[SG]] = field(default_factory=dict)  # first-membership order

    @property
    def is_igmp(self) -> bool:
        return self.cid.protocol_id == IGMP_PROTOCOL_ID


@dataclass(eq=False)
class Pending:
    key: SG
    in_iface: Iface
    upstream: str = ANY
    open: list[Question] = field(default_factory=list)
    disabled: set[Iface] = field(default_factory=set)
    tokens: list[Any] = field(default_factory=list)


@dataclass(eq=False)
class Question:
    kind: str
    to: ClientId
    key: SG
    deadline: float
    norm: Norm
    pending: Pending | None = None
    asked_oil: tuple[Iface, ...] = ()
    qid: int | None = None
    open: bool = True
    forgotten: bool = False  # its client went: an answer to it is 1168


@dataclass
class Mfe:
    key: SG
    in_iface: Iface
    upstream: str
    created: float
    last_activity: float
    timeout: float
    disabled: set[Iface] = field(default_factory=set)
    forced: set[tuple[Iface, ClientId]] = field(default_factory=set)  # forward-only adds: (interface, adder)
    oil: tuple[Iface, ...] = ()
    in_packets: int = 0
    in_bytes: int = 0
    wrong_if_packets: int = 0
    out: dict[Iface, tuple[int, int]] = field(default_factory=dict)

    @property
    def forced_ifaces(self) -> set[Iface]:
        return {i for i, _ in self.forced}


class Model:
    def __init__(
        self, resolve: Callable[[str], Iface | None], deadline: float, mfe_timeout: float, liveness: float
    ) -> None:
        self.resolve = resolve
        self.deadline = deadline
        self.mfe_timeout = mfe_timeout
        self.liveness = liveness
        self.now = 0.0
        self.clients: dict[ClientId, Client] = {}  # registration order
        self.conn_seen: dict[bytes, float] = {}  # connections with registered clients
        self.routing: dict[Iface, ClientId] = {}
        self.igmp: dict[Iface, ClientId] = {}
        self.mfes: dict[SG, Mfe] = {}
        self.pending: dict[SG, Pending] = {}
        self.questions: list[Question] = []  # every question ever asked (open or closed)
        self.out: list[Norm] = []
        self.asked: list[Question] = []
        self.completed: list[tuple[Any, SG, dict[str, Any]]] = []  # token, key, the MFE as it was created

    # --- bookkeeping ------------------------------------------------------------

    def begin(self, now: float) -> None:
        self.now = now
        self.out = []
        self.asked = []
        self.completed = []

    def touch(self, conn: bytes) -> None:
        """Any request refreshes its connection's liveness (PROTOCOL: heartbeat or any request)."""
        if conn in self.conn_seen and self.now > self.conn_seen[conn]:
            self.conn_seen[conn] = self.now

    def client(self, conn: bytes, handle: int) -> Client:
        for c in self.clients.values():
            if c.handle == handle:
                if c.conn != conn:
                    raise Refused(87, "a handle of another connection")
                return c
        raise Refused(87, "unknown handle")

    def told(self, iface: Iface | None) -> ClientId | None:
        """The owner questions and alerts go to: the routing protocol, else IGMP alone."""
        return None if iface is None else self.routing.get(iface) or self.igmp.get(iface)

    def owns(self, c: Client, iface: Iface) -> bool:
        return self.routing.get(iface) == c.cid or self.igmp.get(iface) == c.cid

    def emit(self, to: ClientId, type_: str, fields: dict[str, Any]) -> None:
        self.out.append(norm(to, type_, fields))

    def ask(self, to: ClientId, kind: str, key: SG, fields: dict[str, Any], pending: Pending | None = None) -> Question:
        q = Question(kind, to, key, self.now + self.deadline, norm(to, kind, fields), pending)
        self.questions.append(q)
        self.asked.append(q)
        self.out.append(q.norm)
        if pending is not None:
            pending.open.append(q)
        return q

    def open_questions(self, to: ClientId | None = None) -> list[Question]:
        return [q for q in self.questions if q.open and (to is None or q.to == to)]

    def with_receivers(self, key: SG) -> list[ClientId]:
        """The clients with a membership of `key` on some interface, in registration order."""
        return [c.cid for c in self.clients.values() if any(key in keys for keys in c.members.values())]

    def memberships(self) -> set[tuple[ClientId, SG, Iface]]:
        return {(c.cid, k, i) for c in self.clients.values() for i, ks in c.members.items() for k in ks}

    # --- OIL: recomputed from scratch every time ----------------------------------

    def wanted(self, key: SG) -> set[Iface]:
        s, g = key
        keys = {(s, g), (ANY, g), (ANY, ANY)}
        return {i for c in self.clients.values() for i, ks in c.members.items() if ks & keys}

    def expected_oil(self, mfe: Mfe) -> tuple[Iface, ...]:
        oil = (self.wanted(mfe.key) | mfe.forced_ifaces) - mfe.disabled - {mfe.in_iface}
        return tuple(sorted(oil, key=iface_order))

    def refresh(self, mfe: Mfe) -> None:
        """Recompute one MFE's OIL; its incoming owner hears of empty <-> non-empty."""
        old, new = mfe.oil, self.expected_oil(mfe)
        mfe.oil = new
        told = self.told(mfe.in_iface)
        if told is not None and not old and new:
            self.emit(told, "join_alert", {**sg_fields(mfe.key), "member_update": False})
        elif old and not new:
            self.ask_prune(mfe)  # which asks nobody where nobody owns the incoming interface

    def ask_prune(self, mfe: Mfe) -> None:
        told = self.told(mfe.in_iface)
        if told is not None:
            fields = {**sg_fields(mfe.key), **if_fields(mfe.in_iface), "member_delete": False}
            self.ask(told, "prune_alert", mfe.key, fields)

    def matching(self, key: SG) -> list[Mfe]:
        s, g = key
        return [m for m in self.mfes.values() if (s in (ANY, m.key[0])) and (g in (ANY, m.key[1]))]

    # --- registration -----------------------------------------------------------------

    def register(self, conn: bytes, cid: ClientId) -> None:
        if cid in self.clients:
            raise Refused(183, "registered")
        self.clients[cid] = Client(cid, conn, handle=-1)
        self.conn_seen.setdefault(conn, self.now)

    def deregister(self, conn: bytes, handle: int) -> None:
        c = self.client(conn, handle)
        if c.ifaces:
            raise Refused(1003, "still owns interfaces")
        self._deregister(c)

    def _deregister(self, c: Client) -> None:
        del self.clients[c.cid]
        if not any(o.conn == c.conn for o in self.clients.values()):
            del self.conn_seen[c.conn]
        # [choice] a client that goes answers nothing more: its open questions take their defaults at once,
        # in the order they were asked, and all its questions are forgotten (late answers: 1168)
        for q in self.questions:
            if q.to == c.cid and not q.forgotten:
                q.forgotten = True
                if q.open:
                    self.close(q)
                    self.default(q)

    def heartbeat(self, conn: bytes, handle: int) -> None:
        self.client(conn, handle)

    # --- ownership ---------------------------------------------------------------------

    def take(self, conn: bytes, handle: int, iface: Iface) -> None:
        c = self.client(conn, handle)
        if self.owns(c, iface):
            raise Refused(183, "already owns it")
        if iface in (self.igmp if c.is_igmp else self.routing):
            raise Refused(183, "a second owner of the same kind")
        beside = None if c.is_igmp else self.igmp.get(iface)
        if beside is not None:
            self.emit(beside, "disable_igmp", if_fields(iface))
        (self.igmp if c.is_igmp else self.routing)[iface] = c.cid
        c.ifaces[iface] = None
        if beside is not None:
            self.emit(beside, "enable_igmp", if_fields(iface))

    def release(self, conn: bytes, handle: int, iface: Iface) -> None:
        c = self.client(conn, handle)
        if not self.owns(c, iface):
            raise Refused(87, "not its interface")
        self._release(c, iface)

    def _release(self, c: Client, iface: Iface) -> None:
        was_told = self.told(iface) == c.cid
        beside = self.igmp.get(iface) if self.routing.get(iface) == c.cid else None
        if beside is not None:
            self.emit(beside, "disable_igmp", if_fields(iface))
        for key in sorted(c.members.get(iface, ()), key=sg_order):
            self._delete_membership(c, key, iface)
        # [choice] its own forward-only adds there go, whoever else owns the interface; another's stay
        for mfe in sorted(self.mfes.values(), key=lambda m: sg_order(m.key)):
            if (iface, c.cid) in mfe.forced:
                mfe.forced.discard((iface, c.cid))
                self.refresh(mfe)
        if was_told:
            # the MFEs kept on the owner's behalf go: those coming in there
            for key in [k for k, m in self.mfes.items() if m.in_iface == iface]:
                del self.mfes[key]
        if self.routing.get(iface) == c.cid:
            del self.routing[iface]
        else:
            del self.igmp[iface]
        del c.ifaces[iface]
        if beside is not None:
            self.emit(beside, "enable_igmp", if_fields(iface))

    def get_protocol(self, iface: Iface) -> dict[str, int]:
        told = self.told(iface)
        if told is None:
            raise Refused(1168, "nobody owns it")
        return {"protocol_id": told.protocol_id, "component_id": told.component_id}

    # --- memberships ----------------------------------------------------------------------

    def add(self, conn: bytes, handle: int, key: SG, iface: Iface, flags: int) -> None:
        c = self.client(conn, handle)
        if not self.owns(c, iface):
            raise Refused(87, "not its interface")
        if flags == 2:
            for mfe in self.matching(key):
                if iface != mfe.in_iface:
                    mfe.forced.add((iface, c.cid))
                    mfe.disabled.discard(iface)  # an explicit add overrides an earlier veto
                    self.refresh(mfe)
            return
        if key in c.members.get(iface, ()):
            # [ours] a re-add changes nothing but still tells the current owner
            self.local(c, iface, key, "local_join")
            return
        first_of_client = c.cid not in self.with_receivers(key)
        c.members.setdefault(iface, set()).add(key)
        self.local(c, iface, key, "local_join")
        if first_of_client:
            self.alert(key, "join", c, iface)
        for mfe in self.matching(key):
            if iface != mfe.in_iface:
                # [choice] any new membership matching the MFE on an interface lifts a creation veto there,
                # whether or not it is the first of its key on that interface
                mfe.disabled.discard(iface)
            self.refresh(mfe)

    def delete(self, conn: bytes, handle: int, key: SG, iface: Iface, flags: int) -> None:
        c = self.client(conn, handle)
        if not self.owns(c, iface):
            raise Refused(87, "not its interface")
        if flags == 2:
            for mfe in self.matching(key):
                if (iface, c.cid) in mfe.forced:  # [choice] only the caller's own add; none there is 0
                    mfe.forced.discard((iface, c.cid))
                    self.refresh(mfe)
            return
        if key not in c.members.get(iface, ()):
            raise Refused(1168, "no such membership")
        self._delete_membership(c, key, iface)

    def _delete_membership(self, c: Client, key: SG, iface: Iface) -> None:
        keys = c.members[iface]
        keys.discard(key)
        if not keys:
            del c.members[iface]
        self.local(c, iface, key, "local_leave")
        if c.cid not in self.with_receivers(key):
            self.alert(key, "leave", c, iface)
        for mfe in self.matching(key):
            self.refresh(mfe)

    def local(self, c: Client, iface: Iface, key: SG, type_: str) -> None:
        owner = self.routing.get(iface)
        if c.is_igmp and owner is not None:
            self.emit(owner, type_, {**sg_fields(key), **if_fields(iface)})

    def alert(self, key: SG, change: str, c: Client, iface: Iface) -> None:
        """The join/prune alert rules of MGM-SPEC (IGMP counts as a client)."""
        with_receivers = self.with_receivers(key)
        n = len(with_receivers)
        to: list[ClientId] = []
        if key[0] == ANY:  # (*,G) and (*,*)
            if (change, n) in (("join", 1), ("leave", 0)):
                to = [o for o in self.clients if o != c.cid]
            elif (change, n) in (("join", 2), ("leave", 1)):
                to = [o for o in with_receivers if o != c.cid]
        elif (change, n) in (("join", 1), ("leave", 0)):
            towards = self.told(self.resolve(key[0]))
            # [choice] never to the client whose own change it is
            to = [] if towards is None or towards == c.cid else [towards]
        for o in to:
            if change == "join":
                self.emit(o, "join_alert", {**sg_fields(key), "member_update": True})
            else:
                self.emit(o, "prune_alert", {**sg_fields(key), **if_fields(iface), "member_delete": True})

    # --- enumeration -------------------------------------------------------------------------

    def enumeration(self, kind: str) -> list[dict[str, Any]]:
        keys = {k for c in self.clients.values() for ks in c.members.values() for k in ks}
        if kind == "any_source":  # [ours] one (*,G) per group with any membership, (*,*) included
            keys = {(ANY, g) for _, g in keys}
        return [sg_fields(k) for k in sorted(keys, key=sg_order)]

    # --- MFEs --------------------------------------------------------------------------------

    def new_packet(self, conn: bytes, handle: int, key: SG, arrival: Iface, token: Any) -> Mfe | None:
        """The MFE at once, or None: deferred (the token completes later)."""
        self.client(conn, handle)
        if key in self.mfes:
            return self.mfes[key]
        if key in self.pending:
            self.pending[key].tokens.append(token)
            return None
        towards = self.resolve(key[0])
        p = self.pending[key] = Pending(key, towards if towards is not None else arrival)
        told = self.told(p.in_iface)
        if told is not None:
            fields = {"source": key[0], "group": key[1], **if_fields(p.in_iface), "upstream_neighbor": ANY}
            self.ask(told, "rpf", key, fields, p)
        else:
            self.ask_creation(p)
        if key in self.mfes:
            return self.mfes[key]
        p.tokens.append(token)
        return None

    def ask_creation(self, p: Pending) -> None:
        by_owner: dict[ClientId, list[Iface]] = {}
        for i in sorted(self.wanted(p.key) - {p.in_iface}, key=iface_order):
            told = self.told(i)
            if told is not None:
                by_owner.setdefault(told, []).append(i)
        for told, ifaces in by_owner.items():
            fields = {**incoming(p.key, p.in_iface), "oil": [if_fields(i) for i in ifaces]}
            self.ask(told, "creation_alert", p.key, fields, p).asked_oil = tuple(ifaces)
        if not p.open:
            self.create(p)

    def create(self, p: Pending) -> None:
        del self.pending[p.key]
        wanted = self.wanted(p.key) - {p.in_iface}
        mfe = Mfe(p.key, p.in_iface, p.upstream, self.now, self.now, self.mfe_timeout, disabled=p.disabled & wanted)
        mfe.oil = self.expected_oil(mfe)
        self.mfes[p.key] = mfe
        self.completed += [(t, p.key, self.render(mfe)) for t in p.tokens]
        if not mfe.oil:
            self.ask_prune(mfe)

    def render(self, mfe: Mfe) -> dict[str, Any]:
        """The fields of the wire MFE the model predicts."""
        told = self.told(mfe.in_iface)
        return {
            **incoming(mfe.key, mfe.in_iface),
            "upstream_neighbor": mfe.upstream,
            "in_protocol_id": 0 if told is None else told.protocol_id,
            "oil": [if_fields(i) for i in mfe.oil],
            "created": mfe.created,
            "expires": mfe.last_activity + mfe.timeout,
            "timeout": mfe.timeout,
        }

    def set_incoming(self, mfe: Mfe, iface: Iface, upstream: str) -> None:
        if iface == mfe.in_iface and upstream == mfe.upstream:
            return
        mfe.upstream = upstream
        mfe.in_iface = iface
        self.refresh(mfe)

    def question(self, conn: bytes, handle: int, qid: int) -> tuple[Client, Question]:
        c = self.client(conn, handle)
        found = [q for q in self.questions if q.qid == qid and not q.forgotten]
        if not found:
            raise Refused(1168, "no such question")
        q = found[0]
        if q.to != c.cid:
            raise Refused(87, "asked to another client")
        return c, q

    def close(self, q: Question) -> None:
        q.open = False
        if q.pending is not None and q in q.pending.open:
            q.pending.open.remove(q)

    def answer_rpf(self, conn: bytes, handle: int, qid: int, iface: Iface, upstream: str) -> None:
        _, q = self.question(conn, handle, qid)
        if not q.open:  # late: an update of the stored MFE, or of the one still being created
            if q.key in self.mfes:
                self.set_incoming(self.mfes[q.key], iface, upstream)
            elif q.pending is not None and self.pending.get(q.key) is q.pending:
                q.pending.in_iface, q.pending.upstream = iface, upstream
            return
        p = q.pending
        assert p is not None
        self.close(q)
        p.in_iface, p.upstream = iface, upstream
        self.ask_creation(p)

    def answer_creation(self, conn: bytes, handle: int, qid: int, verdicts: dict[Iface, bool]) -> None:
        _, q = self.question(conn, handle, qid)
        if not set(verdicts) <= set(q.asked_oil):
            raise Refused(87, "a verdict on an interface not asked about")
        if not q.open:
            mfe = self.mfes.get(q.key)
            if mfe is not None:
                for i, enabled in sorted(verdicts.items()):  # one interface at a time
                    (mfe.disabled.discard if enabled else mfe.disabled.add)(i)
                    self.refresh(mfe)
            return
        p = q.pending
        assert p is not None
        self.close(q)
        p.disabled |= {i for i, enabled in verdicts.items() if not enabled}
        if not p.open:
            self.create(p)

    def answer_prune(self, conn: bytes, handle: int, qid: int, timeout: float | None) -> None:
        _, q = self.question(conn, handle, qid)
        self.close(q)
        mfe = self.mfes.get(q.key)
        if timeout is not None and mfe is not None:
            mfe.timeout = timeout

    def set_mfe(self, conn: bytes, handle: int, key: SG, upstream: str, iface: Iface | None) -> None:
        c = self.client(conn, handle)
        mfe = self.mfes.get(key)
        if mfe is None:
            raise Refused(1168, "no MFE")
        told = self.told(mfe.in_iface)
        if told is not None and told != c.cid:
            raise Refused(87, "not the incoming owner")
        if iface is not None and iface != mfe.in_iface and self.told(iface) != c.cid:
            raise Refused(87, "does not own the new incoming interface")
        self.set_incoming(mfe, mfe.in_iface if iface is None else iface, upstream)

    def wrong_interface(self, conn: bytes, handle: int, key: SG, iface: Iface) -> None:
        self.client(conn, handle)
        mfe = self.mfes.get(key)
        if mfe is None:
            raise Refused(1168, "no MFE")
        if iface == mfe.in_iface:
            raise Refused(87, "that is the incoming interface")
        told = self.told(iface)
        if told is not None:
            self.emit(told, "wrong_if", {"source": key[0], "group": key[1], **if_fields(iface)})

    def counters(self, conn: bytes, handle: int, reports: list[tuple[SG, int, int, int]]) -> None:
        self.client(conn, handle)
        for key, packets, octets, wrong in reports:
            mfe = self.mfes.get(key)
            if mfe is None:
                continue
            if packets > mfe.in_packets:
                mfe.last_activity = self.now
            mfe.in_packets, mfe.in_bytes, mfe.wrong_if_packets = packets, octets, wrong

    # --- time ------------------------------------------------------------------------------------

    def tick(self) -> None:
        now = self.now
        due = sorted((q for q in self.questions if q.open and q.deadline <= now), key=lambda q: (q.deadline, q.qid))
        for q in due:
            self.close(q)
            self.default(q)
        for key in [k for k, m in self.mfes.items() if m.last_activity + m.timeout <= now]:
            del self.mfes[key]
        for conn in [c for c, seen in self.conn_seen.items() if seen + self.liveness <= now]:
            self.connection_lost(conn)

    def default(self, q: Question) -> None:
        """An unanswered (closed) question takes its default."""
        p = q.pending
        if p is None or self.pending.get(p.key) is not p:
            return
        if q.kind == "rpf":
            self.ask_creation(p)  # the default: the proposed incoming interface
        elif not p.open:
            self.create(p)  # the default: every interface enabled

    def connection_lost(self, conn: bytes) -> None:
        """Leave as a well-behaved client would: memberships, interfaces, registration."""
        if conn not in self.conn_seen:
            return
        for c in [c for c in self.clients.values() if c.conn == conn]:
            for iface in list(c.ifaces):  # [choice] interface take order, then (group, source)
                for key in sorted(c.members.get(iface, ()), key=sg_order):
                    self._delete_membership(c, key, iface)
            for iface in list(c.ifaces):
                self._release(c, iface)
            self._deregister(c)
