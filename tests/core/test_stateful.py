"""Random sequences of every core operation, checked against MGM-SPEC after every step.

A hypothesis state machine drives mgm.core.state.Mgm (and a twin fed the very
same requests) with small pools of clients, connections, interfaces, sources
and groups, so that owners collide, memberships overlap and MFEs share
groups.  After every step:

* the core agrees with the reference model in tests/core/model.py (state
  snapshot, every proto snapshot, the callbacks each client got, deferred
  replies completed);
* spec invariants hold on the core's own snapshot: one routing owner and one
  IGMP per interface, memberships only on owned interfaces, every OIL is what
  the memberships imply plus forward-only adds minus vetoes and the incoming
  interface;
* an observer replaying the `state` stream sees what snapshot("state") says;
* no event goes to a client that is not registered at that point of the
  stream, and disable_igmp/enable_igmp bracket the ownership change;
* a refused request changed no snapshot and emitted nothing;
* the twin produced the same events and replies (the core is deterministic).

CI settings: derandomized (a fixed seed), 200 examples of up to 50 steps.
MGM_STATEFUL_EXAMPLES=N raises the count; MGM_STATEFUL_RANDOM=1 draws fresh
random examples (and prints the seed on failure) for a longer local hunt;
MGM_STATEFUL_NOSHRINK=1 reports the first failing example as found (shrinking
a 50-step failure can take minutes).  Hunt, e.g.:

    cd tests/core && MGM_STATEFUL_RANDOM=1 MGM_STATEFUL_EXAMPLES=3000 \
        ../../.venv/bin/python -m pytest -q test_stateful.py --hypothesis-show-statistics
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule
from model import ANY, ONES, SG, Iface, Mfe, Model, Question, Refused, if_fields, iface_order, norm, sg_fields, sg_order

from mgm.bus.status import MgmError
from mgm.core.state import DEFERRED, Mgm
from mgm.core.types import ClientId, Event, Interface

DEADLINE = 0.1
MFE_TIMEOUT = 2.0
LIVENESS = 3.0

S1, S2, S3 = "10.0.0.1", "10.0.0.2", "10.0.0.3"
G1, G2 = "239.1.1.1", "239.1.1.2"
ROUTES = {S1: Interface(1, ANY), S3: Interface(3, "10.1.1.1")}  # S2 has no route: arrival interface
IFACES: list[Iface] = [(1, ANY), (2, ANY), (3, ANY), (3, "10.1.1.1")]
CIDS = [ClientId(10, 1), ClientId(20, 1), ClientId(30, 1), ClientId(40, 2)]
CONNS = [b"conn-a", b"conn-b", b"conn-c"]
SHAPES: list[SG] = [(ANY, ANY), (ANY, G1), (ANY, G2), (S1, G1), (S2, G1), (S3, G2), (S1, G2)]
EXACT: list[SG] = [(S1, G1), (S2, G1), (S3, G2), (S1, G2), (S2, G2)]
UPSTREAMS = [ANY, "10.9.9.9"]

FOREIGN = st.sampled_from([False, False, False, True])  # now and then from another connection: refused
EXAMPLES = int(os.environ.get("MGM_STATEFUL_EXAMPLES", "200"))
RANDOM = os.environ.get("MGM_STATEFUL_RANDOM") == "1"


def resolve(source: str) -> Interface | None:
    return ROUTES.get(source)


def model_resolve(source: str) -> Iface | None:
    found = ROUTES.get(source)
    return None if found is None else (found.if_index, found.next_hop)


def new_core() -> Mgm:
    return Mgm(resolver=resolve, question_deadline=DEADLINE, mfe_timeout=MFE_TIMEOUT, liveness=LIVENESS)


def membership_args(sg: SG, iface: Iface, flags: int) -> dict[str, Any]:
    return {**sg_fields(sg), **if_fields(iface), "flags": flags}


def at(fields: dict[str, Any]) -> Iface:
    return fields["if_index"], fields["next_hop"]


def mfe_iface(mfe: dict[str, Any]) -> Iface:
    return mfe["in_if_index"], mfe["in_next_hop"]


def oil_of(mfe: dict[str, Any]) -> list[Iface]:
    return [at(o) for o in mfe["oil"]]


def cid_of(fields: dict[str, Any]) -> ClientId:
    return ClientId(fields["protocol_id"], fields["component_id"])


def proto_stream(cid: ClientId) -> str:
    return f"proto/{cid.protocol_id}/{cid.component_id}"


def snap_interfaces(snap: dict[str, Any]) -> dict[Iface, tuple[ClientId | None, bool]]:
    """A state snapshot's interfaces: (owner, igmp) of each."""
    return {at(i): (None if i["owner"] is None else cid_of(i["owner"]), i["igmp"]) for i in snap["interfaces"]}


def snap_members(snap: dict[str, Any]) -> set[tuple[ClientId, SG, Iface]]:
    return {(cid_of(m), (m["source"], m["group"]), at(m)) for m in snap["memberships"]}


UNREGISTERED = {"registered": False, "interfaces": [], "local_members": [], "questions": []}


# --- an observer of the state stream --------------------------------------------------------------


class StateMirror:
    """What a subscriber knows from the `state` events alone."""

    def __init__(self) -> None:
        self.protocols: dict[ClientId, str] = {}
        self.routing: dict[Iface, ClientId] = {}
        self.igmp: dict[Iface, ClientId] = {}
        self.members: set[tuple[ClientId, SG, Iface]] = set()
        self.mfes: dict[SG, dict[str, Any]] = {}

    def apply(self, e: Event) -> None:
        f = e.fields
        if e.type == "protocol_registered":
            assert cid_of(f) not in self.protocols, e
            self.protocols[cid_of(f)] = f["name"]
        elif e.type == "protocol_deregistered":
            del self.protocols[cid_of(f)]
        elif e.type in ("interface_owned", "interface_released"):
            cid, iface = cid_of(f), at(f)
            table = self.igmp if cid.protocol_id == 10 else self.routing
            if e.type == "interface_owned":
                assert iface not in table, e
                table[iface] = cid
            else:
                assert table.pop(iface) == cid, e
        elif e.type in ("membership_added", "membership_deleted"):
            item = (cid_of(f), (f["source"], f["group"]), at(f))
            assert f["flags"] == 1, e
            if e.type == "membership_added":
                assert item not in self.members, e
                self.members.add(item)
            else:
                self.members.remove(item)
        elif e.type in ("mfe_created", "mfe_updated", "mfe_deleted"):
            mfe = f["mfe"]
            key = (mfe["source"], mfe["group"])
            assert (key in self.mfes) == (e.type != "mfe_created"), e
            if e.type == "mfe_deleted":
                del self.mfes[key]
            else:
                self.mfes[key] = mfe
        else:
            raise AssertionError(f"unknown state event {e}")

    def check(self, snap: dict[str, Any]) -> None:
        assert {cid_of(p): p["name"] for p in snap["protocols"]} == self.protocols
        told = {i: self.routing.get(i) or self.igmp.get(i) for i in {*self.routing, *self.igmp}}
        assert snap_interfaces(snap) == {i: (told[i], i in self.igmp) for i in told}
        assert snap_members(snap) == self.members

        # "expires" moves with mfe_counters, which publishes nothing (core/state.py's header): everything else
        # agrees, and traffic only ever pushes expiry later than the last event said
        def strip(m: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in m.items() if k != "expires"}

        assert {(m["source"], m["group"]): strip(m) for m in snap["mfes"]} == {
            k: strip(m) for k, m in self.mfes.items()
        }
        for m in snap["mfes"]:
            assert m["expires"] >= self.mfes[(m["source"], m["group"])]["expires"], m


# --- the machine ----------------------------------------------------------------------------------


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.core = new_core()
        self.twin = new_core()
        self.model = Model(model_resolve, DEADLINE, MFE_TIMEOUT, LIVENESS)
        self.mirror = StateMirror()
        self.twin_handle: dict[int, int] = {}  # core handle -> twin handle (kept after deregistration)
        self.stale: list[int] = []  # handles of deregistered clients
        self.waiting: dict[int, SG] = {}  # tokens of deferred new_packet replies
        self.next_token = 1
        self.qids: set[int] = set()

    # --- plumbing -----------------------------------------------------------------------------

    def handle_of(self, cid: ClientId, foreign: bool) -> tuple[bytes, int]:
        """The connection and handle a request of `cid` carries (foreign: from another connection)."""
        c = self.model.clients.get(cid)
        if c is None:
            return CONNS[CIDS.index(cid) % len(CONNS)], self.stale[-1] if self.stale else self.bogus_handle()
        return (next(x for x in CONNS if x != c.conn) if foreign else c.conn), c.handle

    def bogus_handle(self) -> int:
        h = 4242
        while h in self.twin_handle or h in self.twin_handle.values():
            h += 1
        return h

    def snapshots(self) -> dict[str, Any]:
        return {s: self.core.snapshot(s) for s in self.core.streams()}

    def request(self, conn: bytes, op: str, args: dict[str, Any], model_op: Callable[[], Any] | int,
                token: Any = None) -> tuple[Any, Any]:  # fmt: skip
        """Send one request to the core and the twin; `model_op` predicts it (an int: refused with that status).

        Returns (core result, model result); the result is None when refused.
        """
        before = self.snapshots()
        self.model.begin(self.now)
        self.model.touch(conn)
        expected: Any = None
        refusal: int | None = None
        if isinstance(model_op, int):
            refusal = model_op
        else:
            try:
                expected = model_op()
            except Refused as r:
                refusal = r.status
        try:
            result: Any = self.core.handle(conn, op, args, self.now, token)
            error: MgmError | None = None
        except MgmError as e:
            result, error = None, e
        twin_args = dict(args)
        if type(args.get("handle")) is int:
            twin_args["handle"] = self.twin_handle.get(args["handle"], args["handle"])
        try:
            twin_result: Any = self.twin.handle(conn, op, twin_args, self.now, token)
            twin_error: int | None = None
        except MgmError as e:
            twin_result, twin_error = None, int(e.status)
        if op == "register_protocol" and result is not None:
            self.twin_handle[result["handle"]] = twin_result["handle"]
            assert set(twin_result) == set(result) == {"handle"}
        else:
            assert (twin_result, twin_error) == (result, None if error is None else int(error.status)), (
                f"twin disagrees on {op} {args}"
            )
        events = self.core.take_events()
        completions = self.core.take_completions()
        event(f"{op}: {'ok' if error is None else error.error_name}")
        if error is not None:
            assert refusal is not None, f"{op} {args} refused by the core ({error}), the model accepts it"
            assert int(error.status) == refusal, f"{op} {args}: core says {error}, model says {refusal}"
            assert events == [], f"refused {op} emitted {events}"
            assert completions == []
            assert self.snapshots() == before, f"refused {op} changed state"
            self.twin.take_events()
            self.twin.take_completions()
            return None, None
        assert refusal is None, f"{op} {args} accepted by the core ({result}), the model refuses with {refusal}"
        self.after(events, completions)
        return result, expected

    def after(self, events: list[Event], completions: list[tuple[Any, Any]]) -> None:
        """Every check that follows a transition (request, tick or connection_lost)."""
        assert self.twin.take_events() == events, "the twin emitted other events"
        assert self.twin.take_completions() == completions, "the twin completed other replies"
        for e in events:
            event(f"event {e.type}" + ("" if e.type != "prune_alert" else f" delete={e.fields['member_delete']}"))
        self.check_stream_order(events)
        self.match_questions(events)
        self.check_completions(completions)
        self.check_state()

    def check_stream_order(self, events: list[Event]) -> None:
        registered = set(self.mirror.protocols)
        bracket: dict[Iface, str] = {}  # interfaces between disable_igmp and enable_igmp
        for e in events:
            if e.to is None:
                self.mirror.apply(e)
                registered = set(self.mirror.protocols)
                owner_change = e.type in ("interface_owned", "interface_released") and e.fields["protocol_id"] != 10
                if owner_change and at(e.fields) in bracket:
                    bracket[at(e.fields)] = "changed"
                continue
            assert e.to in registered, f"{e} addressed to a client not registered at that point"
            iface = (e.fields.get("if_index"), e.fields.get("next_hop"))
            if e.type == "disable_igmp":
                assert iface not in bracket, e
                bracket[iface] = "disabled"
            elif e.type == "enable_igmp":
                assert bracket.pop(iface, None) == "changed", f"{e} without disable_igmp and a change before it"
        assert not bracket, f"disable_igmp without enable_igmp: {bracket}"
        got = Counter(norm(e.to, e.type, e.fields) for e in events if e.to is not None)
        want = Counter(self.model.out)
        assert got == want, f"callbacks differ:\n core only: {got - want}\n model only: {want - got}"

    def match_questions(self, events: list[Event]) -> None:
        """Learn the ids of the questions the model expected (matched by content)."""
        unmatched: list[Question] = list(self.model.asked)
        for e in events:
            if e.to is None or "question" not in e.fields:
                continue
            assert e.type in ("rpf", "creation_alert") or (e.type == "prune_alert" and not e.fields["member_delete"])
            assert e.fields["deadline"] == DEADLINE
            qid = e.fields["question"]
            assert type(qid) is int and qid not in self.qids, f"question id {qid} reused"
            self.qids.add(qid)
            n = norm(e.to, e.type, e.fields)
            q = next(q for q in unmatched if q.norm == n)
            q.qid = qid
            unmatched.remove(q)
        assert not unmatched

    def check_completions(self, completions: list[tuple[Any, Any]]) -> None:
        expected = {token: (key, rendered) for token, key, rendered in self.model.completed}
        assert {t for t, _ in completions} == set(expected)
        for token, result in completions:
            assert not isinstance(result, MgmError)
            key, rendered = expected[token]
            assert self.waiting.pop(token) == key
            assert self.bare(result["mfe"]) == rendered

    @staticmethod
    def bare(mfe: dict[str, Any]) -> dict[str, Any]:
        """A wire MFE without statistics."""
        stats = ("in_packets", "in_bytes", "wrong_if_packets")
        oil = [{"if_index": o["if_index"], "next_hop": o["next_hop"]} for o in mfe["oil"]]
        return {**{k: v for k, v in mfe.items() if k not in stats}, "oil": oil}

    def check_mfe(self, got: dict[str, Any], mfe: Mfe) -> None:
        assert self.bare(got) == self.model.render(mfe), mfe

    def check_state(self) -> None:
        m = self.model
        snap = self.core.snapshot("state")
        self.mirror.check(snap)
        assert self.core.streams() == ["state"] + [proto_stream(c) for c in m.clients]
        assert [cid_of(p) for p in snap["protocols"]] == list(m.clients)
        owned = {i: (m.told(i), i in m.igmp) for i in {*m.routing, *m.igmp}}
        assert snap_interfaces(snap) == owned
        members = snap_members(snap)
        assert members == m.memberships()
        assert [(x["source"], x["group"]) for x in snap["mfes"]] == sorted(m.mfes, key=lambda k: (k[1], k[0]))
        assert len(snap["mfes"]) == len(m.mfes)
        protos = {cid: self.core.snapshot(proto_stream(cid)) for cid in m.clients}
        # spec invariants, on the core's own snapshots: one routing owner and one IGMP per interface
        assert all(p["registered"] is True for p in protos.values())
        owners = Counter((cid.protocol_id == 10, at(i)) for cid, p in protos.items() for i in p["interfaces"])
        assert all(n == 1 for n in owners.values()), owners
        proto_ifaces = {cid: {at(i) for i in p["interfaces"]} for cid, p in protos.items()}
        for cid, _, iface in members:
            assert iface in proto_ifaces[cid], f"{cid} has a membership on {iface} which it does not own"
        for x in snap["mfes"]:
            mfe = m.mfes[(x["source"], x["group"])]
            s, g = mfe.key
            implied = {i for _, k, i in members if k in ((s, g), (ANY, g), (ANY, ANY))}
            want = sorted((implied | mfe.forced_ifaces) - mfe.disabled - {mfe_iface(x)}, key=iface_order)
            assert oil_of(x) == want, f"OIL of {mfe.key}: {x['oil']}, memberships imply {want}"
            self.check_mfe(x, mfe)
        # per client: owned interfaces in take order, local receivers, open questions
        for cid, p in protos.items():
            c = m.clients[cid]
            assert [(at(i), i["igmp_enabled"]) for i in p["interfaces"]] == [(i, i in m.igmp) for i in c.ifaces]
            local = {(k, i) for i in c.ifaces if m.routing.get(i) == cid and i in m.igmp
                     for k in m.clients[m.igmp[i]].members.get(i, ())}  # fmt: skip
            assert {((x["source"], x["group"]), at(x)) for x in p["local_members"]} == local
            got_q = Counter(
                (x["question"], norm(cid, x["type"], {k: v for k, v in x.items() if k != "type"}))
                for x in p["questions"]
            )
            assert got_q == Counter((q.qid, q.norm) for q in m.open_questions(cid))
        # next_deadline() may wake the manager early, never late: not after a question deadline, an MFE
        # expiry or a client's liveness limit
        due = [q.deadline for q in m.open_questions()]
        due += [x.last_activity + x.timeout for x in m.mfes.values()]
        due += [seen + LIVENESS for seen in m.conn_seen.values()]
        wake = self.core.next_deadline()
        if due:
            assert wake is not None and wake <= min(due), f"next_deadline() {wake}, but {min(due)} is due"
        for other in CIDS:
            if other not in m.clients:
                assert self.core.snapshot(proto_stream(other)) == UNREGISTERED

    def transition(self, apply: Callable[[Mgm], None], model_apply: Callable[[], None]) -> None:
        """tick or connection_lost: applied to core and twin alike, then every check."""
        self.model.begin(self.now)
        model_apply()
        apply(self.core)
        apply(self.twin)
        self.after(self.core.take_events(), self.core.take_completions())

    # --- set-up: a few clients, owners and receivers, so that every example starts somewhere ---

    @initialize(data=st.data())
    def setup(self, data: st.DataObject) -> None:
        self.register(CIDS[0], CONNS[0])
        for cid in CIDS[1:]:
            self.register(cid, data.draw(st.sampled_from(CONNS), "conn"))
        for _ in range(data.draw(st.integers(2, 8), "takes")):
            self.take(data.draw(st.sampled_from(CIDS)), data.draw(st.sampled_from(IFACES)), False)
        for _ in range(data.draw(st.integers(0, 8), "joins")):
            self.join_owned(data)
        if data.draw(st.booleans(), "mfes"):  # start with some MFEs: most MFE rules need one
            for _ in range(data.draw(st.integers(1, 4), "packets")):
                self.packet_from_forwarder(data)
            self.tick(DEADLINE + 0.01)
            self.tick(DEADLINE + 0.01)

    def owned_pair(self, data: st.DataObject) -> tuple[ClientId, Iface] | None:
        pairs = [(c.cid, i) for c in self.model.clients.values() for i in c.ifaces]
        return data.draw(st.sampled_from(pairs), "owned") if pairs else None

    @rule(data=st.data())
    def join_owned(self, data: st.DataObject) -> None:
        """A join on an interface the client owns (the random `join` is mostly refused)."""
        pair = self.owned_pair(data)
        if pair is not None:
            flags = data.draw(st.sampled_from([1, 1, 1, 2]), "flags")
            self.join(pair[0], data.draw(st.sampled_from(SHAPES), "shape"), pair[1], flags, False)

    @rule(data=st.data())
    def release_owned(self, data: st.DataObject) -> None:
        pair = self.owned_pair(data)
        if pair is not None:
            self.release(pair[0], pair[1], False)

    @rule(data=st.data())
    def set_mfe_as_owner(self, data: st.DataObject) -> None:
        """set_mfe by the owner of the MFE's incoming interface (the random `set_mfe` is mostly refused)."""
        if not self.model.mfes:
            return
        mfe = self.model.mfes[data.draw(st.sampled_from(sorted(self.model.mfes)), "mfe")]
        told = self.model.told(mfe.in_iface)
        if told is not None and told in self.model.clients:
            iface = data.draw(st.sampled_from([None, *self.model.clients[told].ifaces]), "new incoming")
            self.set_mfe(told, mfe.key, data.draw(st.sampled_from(UPSTREAMS)), iface, False)

    # --- registration and liveness ---------------------------------------------------------------

    @rule(cid=st.sampled_from(CIDS), conn=st.sampled_from(CONNS), named=st.booleans())
    def register(self, cid: ClientId, conn: bytes, named: bool = False) -> None:
        args: dict[str, Any] = {"protocol_id": cid.protocol_id, "component_id": cid.component_id}
        if named:
            args["name"] = f"p{cid.protocol_id}"
        result, _ = self.request(conn, "register_protocol", args, lambda: self.model.register(conn, cid))
        if result is not None:
            assert type(result["handle"]) is int
            self.model.clients[cid].handle = result["handle"]

    @rule(cid=st.sampled_from(CIDS), foreign=FOREIGN)
    def deregister(self, cid: ClientId, foreign: bool) -> None:
        conn, handle = self.handle_of(cid, foreign)
        args = {"handle": handle}
        result, _ = self.request(conn, "deregister_protocol", args, lambda: self.model.deregister(conn, handle))
        if result is not None:
            assert result == {}
            self.stale.append(handle)

    @rule(cid=st.sampled_from(CIDS), foreign=FOREIGN)
    def heartbeat(self, cid: ClientId, foreign: bool) -> None:
        conn, handle = self.handle_of(cid, foreign)
        self.request(conn, "heartbeat", {"handle": handle}, lambda: self.model.heartbeat(conn, handle))

    @rule(dt=st.sampled_from([0.02, 0.05, DEADLINE, 0.11, 0.3, 1.0, 2.1, LIVENESS + 0.1]))
    def tick(self, dt: float) -> None:
        self.now += dt
        now = self.now
        self.transition(lambda core: core.tick(now), self.model.tick)
        nd = self.core.next_deadline()
        if nd is not None:
            assert nd > now, "next_deadline() is in the past after tick()"

    @rule(conn=st.sampled_from(CONNS))
    def connection_lost(self, conn: bytes) -> None:
        now = self.now
        self.transition(lambda core: core.connection_lost(conn, now), lambda: self.model.connection_lost(conn))

    # --- ownership ----------------------------------------------------------------------------------

    @rule(cid=st.sampled_from(CIDS), iface=st.sampled_from(IFACES), foreign=FOREIGN)
    def take(self, cid: ClientId, iface: Iface, foreign: bool) -> None:
        conn, handle = self.handle_of(cid, foreign)
        args = {"handle": handle, **if_fields(iface)}
        self.request(conn, "take_interface_ownership", args, lambda: self.model.take(conn, handle, iface))

    @rule(cid=st.sampled_from(CIDS), iface=st.sampled_from(IFACES), foreign=FOREIGN)
    def release(self, cid: ClientId, iface: Iface, foreign: bool) -> None:
        conn, handle = self.handle_of(cid, foreign)
        args = {"handle": handle, **if_fields(iface)}
        self.request(conn, "release_interface_ownership", args, lambda: self.model.release(conn, handle, iface))

    @rule(iface=st.sampled_from(IFACES))
    def get_protocol(self, iface: Iface) -> None:
        result, expected = self.request(
            CONNS[0], "get_protocol_on_interface", if_fields(iface), lambda: self.model.get_protocol(iface)
        )
        assert result == expected

    # --- memberships -----------------------------------------------------------------------------------

    @rule(
        cid=st.sampled_from(CIDS),
        sg=st.sampled_from(SHAPES),
        iface=st.sampled_from(IFACES),
        flags=st.sampled_from([1, 2]),
        foreign=FOREIGN,
    )
    def join(self, cid: ClientId, sg: SG, iface: Iface, flags: int, foreign: bool) -> None:
        conn, handle = self.handle_of(cid, foreign)
        args = {"handle": handle, **membership_args(sg, iface, flags)}
        result, _ = self.request(
            conn, "add_group_membership", args, lambda: self.model.add(conn, handle, sg, iface, flags)
        )
        assert result in (None, {})

    @rule(data=st.data(), flags=st.sampled_from([1, 1, 1, 2]), foreign=FOREIGN)
    def leave(self, data: st.DataObject, flags: int, foreign: bool) -> None:
        existing = sorted(self.model.memberships())
        use_existing: bool = data.draw(st.booleans(), "existing")
        if existing and use_existing:
            cid, sg, iface = data.draw(st.sampled_from(existing), "membership")
        else:
            cid = data.draw(st.sampled_from(CIDS))
            sg, iface = data.draw(st.sampled_from(SHAPES)), data.draw(st.sampled_from(IFACES))
        conn, handle = self.handle_of(cid, foreign)
        args = {"handle": handle, **membership_args(sg, iface, flags)}
        self.request(conn, "delete_group_membership", args, lambda: self.model.delete(conn, handle, sg, iface, flags))

    @rule(
        cid=st.sampled_from(CIDS),
        op=st.sampled_from(["add_group_membership", "delete_group_membership"]),
        bad=st.sampled_from(
            [
                {"source_mask": "255.255.255.0"},
                {"source": S1, "source_mask": ANY},
                {"source": ANY, "source_mask": ONES},
                {"group": "10.1.1.1"},
                {"group": G1, "group_mask": ANY},
                {"group": ANY, "group_mask": ANY, "source": S1, "source_mask": ONES},  # (S,*)
                {"source": "239.9.9.9", "source_mask": ONES},
                {"source": "1.2.3"},
                {"source": "010.0.0.1"},
                {"group": 0xEF010101},
                {"flags": 0},
                {"flags": 3},
                {"flags": True},
                {"flags": "1"},
                {"if_index": -1},
                {"if_index": True},
                {"if_index": 1.0},
                {"next_hop": "x"},
                {"next_hop": None},
                {"group": None},
                {"handle": True},
                {"handle": "1"},
                {"handle": -5},
            ]
        ),
        iface=st.sampled_from(IFACES),
    )
    def bad_membership(self, cid: ClientId, op: str, bad: dict[str, Any], iface: Iface) -> None:
        conn, handle = self.handle_of(cid, False)
        args = {"handle": handle, **membership_args((ANY, G1), iface, 1), **bad}
        self.request(conn, op, {k: v for k, v in args.items() if v is not None}, 87)

    @rule(data=st.data())
    def enumerate(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(list(self.model.clients) or CIDS))
        kind = data.draw(st.sampled_from(["all_sources", "any_source"]))
        page = data.draw(st.integers(1, 4))
        conn, handle = self.handle_of(cid, False)
        ok = lambda: self.model.client(conn, handle)  # noqa: E731
        start, _ = self.request(conn, "group_enumeration_start", {"handle": handle, "type": kind}, ok)
        if start is None:
            return
        enum = start["enum"]
        expected = self.model.enumeration(kind)
        seen: list[dict[str, Any]] = []
        args = {"handle": handle, "enum": enum, "max_entries": page}
        while True:
            left = len(expected) - len(seen)
            result, _ = self.request(conn, "group_enumeration_next", args, ok if left else 259)
            if result is None:
                break
            assert 1 <= len(result["entries"]) <= page
            seen += result["entries"]
            assert result["more"] == (len(seen) < len(expected))
            if not result["more"]:
                self.request(conn, "group_enumeration_next", args, 259)
                break
        assert seen == expected
        self.request(conn, "group_enumeration_end", {"handle": handle, "enum": enum}, ok)
        self.request(conn, "group_enumeration_next", args, 87)
        self.request(conn, "group_enumeration_end", {"handle": handle, "enum": enum}, 87)

    # --- MFEs ----------------------------------------------------------------------------------------------

    @rule(cid=st.sampled_from(CIDS), sg=st.sampled_from(EXACT), arrival=st.sampled_from(IFACES), foreign=FOREIGN)
    def new_packet(self, cid: ClientId, sg: SG, arrival: Iface, foreign: bool) -> None:
        conn, handle = self.handle_of(cid, foreign)
        token = self.next_token
        self.next_token += 1
        args = {"handle": handle, "source": sg[0], "group": sg[1], **if_fields(arrival)}
        result, expected = self.request(
            conn, "new_packet", args, lambda: self.model.new_packet(conn, handle, sg, arrival, token), token
        )
        if result is None and expected is None:
            return  # refused (the request checked that the model refused too)
        if expected is None:
            assert result is DEFERRED, f"new_packet {sg}: the model defers, the core replied {result}"
            self.waiting[token] = sg
        else:
            assert result is not DEFERRED, f"new_packet {sg}: the model has the MFE, the core deferred"
            self.check_mfe(result["mfe"], expected)

    @rule(data=st.data())
    def packet_from_forwarder(self, data: st.DataObject) -> None:
        """new_packet / wrong_interface from a registered client on its own connection (random ones are mostly 87)."""
        if not self.model.clients:
            return
        cid = data.draw(st.sampled_from(list(self.model.clients)), "forwarder")
        sg = data.draw(st.sampled_from(EXACT), "sg")
        iface = data.draw(st.sampled_from(IFACES), "arrival")
        if sg in self.model.mfes and data.draw(st.booleans(), "wrong_if"):
            self.wrong_interface(cid, sg, iface)
        else:
            self.new_packet(cid, sg, iface, False)

    def answerer(self, q: Question, wrong: bool) -> tuple[bytes, int] | None:
        if wrong:
            others = [c for c in self.model.clients if c != q.to]
            return None if not others else self.handle_of(others[0], False)
        return None if q.to not in self.model.clients else self.handle_of(q.to, False)

    @rule(data=st.data())
    def answer_open(self, data: st.DataObject) -> None:
        self.answer(data, only_open=True)

    @rule(data=st.data())
    def answer(self, data: st.DataObject, only_open: bool = False) -> None:
        asked = [q for q in self.model.questions if q.qid is not None and (q.open or not only_open)]
        if not asked:
            return
        q = data.draw(st.sampled_from(asked[-12:]), "question")  # mostly recent ones: open or just closed
        who = self.answerer(q, data.draw(st.sampled_from([False, False, False, True]), "wrong client"))
        if who is None:
            return
        conn, handle = who
        qid = q.qid
        assert qid is not None
        args: dict[str, Any] = {"handle": handle, "question": qid}
        model_op: Callable[[], Any]
        if q.kind == "rpf":
            iface = data.draw(st.sampled_from(IFACES))
            upstream = data.draw(st.sampled_from(UPSTREAMS))
            args.update(if_fields(iface), upstream_neighbor=upstream)
            model_op = lambda: self.model.answer_rpf(conn, handle, qid, iface, upstream)  # noqa: E731
        elif q.kind == "creation_alert":
            asked_oil = list(q.asked_oil)
            if data.draw(st.integers(0, 9)) == 0:
                asked_oil.append(data.draw(st.sampled_from(IFACES)))  # maybe an interface not asked about
            chosen = data.draw(st.lists(st.sampled_from(asked_oil), unique=True))
            verdicts = {i: data.draw(st.booleans()) for i in chosen}
            args["oil"] = [{**if_fields(i), "enabled": v} for i, v in verdicts.items()]
            model_op = lambda: self.model.answer_creation(conn, handle, qid, verdicts)  # noqa: E731
        else:
            timeout = data.draw(st.sampled_from([None, 0.05, 0.5, 5.0, 2]))
            if timeout is not None:
                args["timeout"] = timeout
            model_op = lambda: self.model.answer_prune(conn, handle, qid, timeout)  # noqa: E731
        self.request(conn, "answer", args, model_op)

    @rule(
        cid=st.sampled_from(CIDS),
        bad=st.sampled_from(
            [
                ("answer", {"question": 10**6, "timeout": 1.0}, 1168),
                ("answer", {"question": -1}, 87),
                ("answer", {"question": True}, 87),
                ("answer", {}, 87),
                ("take_interface_ownership", {"if_index": 1, "next_hop": "0.0.0.0.0"}, 87),
                ("take_interface_ownership", {"if_index": 1 << 40, "next_hop": ANY}, 87),
                ("new_packet", {"source": ANY, "group": G1, "if_index": 1, "next_hop": ANY}, 87),
                ("new_packet", {"source": S1, "group": "10.0.0.9", "if_index": 1, "next_hop": ANY}, 87),
                ("new_packet", {"source": "224.1.1.1", "group": G1, "if_index": 1, "next_hop": ANY}, 87),
                ("new_packet", {"source": S1, "group": G1, "if_index": "1", "next_hop": ANY}, 87),
                ("set_mfe", {"source": S1, "group": G1, "upstream_neighbor": ANY, "next_hop": ANY}, 87),
                ("set_mfe", {"source": S1, "group": G1, "upstream_neighbor": "nope"}, 87),
                ("set_mfe", {"source": S1, "group": G1}, 87),
                ("wrong_interface", {"source": S1, "group": G1, "if_index": 1}, 87),
                ("mfe_counters", {"entries": {"source": S1}}, 87),
                (
                    "mfe_counters",
                    {"entries": [{"source": S1, "group": G1, "in_packets": -1, "in_bytes": 0, "wrong_if_packets": 0}]},
                    87,
                ),
                ("group_enumeration_start", {"type": "ALL_SOURCES"}, 87),
                ("group_enumeration_next", {"enum": 999, "max_entries": 1}, 87),
                ("deregister_protocol", {"handle": None}, 87),
                ("register_protocol", {"protocol_id": "20", "component_id": 1}, 87),
                ("register_protocol", {"protocol_id": 20, "component_id": True}, 87),
                ("get_mfe", {"source": S1, "group": G1, "stats": 2}, 87),
                ("list_mfes", {"max_entries": 0}, 87),
                ("list_mfes", {"max_entries": 1, "after": {"source": S1}}, 87),
                ("get_protocol_on_interface", {"if_index": 1}, 87),
                ("no_such_op", {}, 50),
            ]
        ),
    )
    def bad_request(self, cid: ClientId, bad: tuple[str, dict[str, Any], int]) -> None:
        op, extra, status = bad
        conn, handle = self.handle_of(cid, False)
        args = {"handle": handle, **extra}
        if args.get("handle") is None:
            del args["handle"]
        if status == 1168 and cid not in self.model.clients:
            status = 87  # the bad handle is what the core sees first
        self.request(conn, op, args, status)

    @rule(
        cid=st.sampled_from(CIDS),
        sg=st.sampled_from(EXACT),
        upstream=st.sampled_from(UPSTREAMS),
        iface=st.sampled_from([None, *IFACES]),
        foreign=FOREIGN,
    )
    def set_mfe(self, cid: ClientId, sg: SG, upstream: str, iface: Iface | None, foreign: bool) -> None:
        conn, handle = self.handle_of(cid, foreign)
        args: dict[str, Any] = {"handle": handle, "source": sg[0], "group": sg[1], "upstream_neighbor": upstream}
        if iface is not None:
            args.update(if_fields(iface))
        self.request(conn, "set_mfe", args, lambda: self.model.set_mfe(conn, handle, sg, upstream, iface))

    @rule(cid=st.sampled_from(CIDS), sg=st.sampled_from(EXACT), iface=st.sampled_from(IFACES))
    def wrong_interface(self, cid: ClientId, sg: SG, iface: Iface) -> None:
        conn, handle = self.handle_of(cid, False)
        args = {"handle": handle, "source": sg[0], "group": sg[1], **if_fields(iface)}
        self.request(conn, "wrong_interface", args, lambda: self.model.wrong_interface(conn, handle, sg, iface))

    @rule(cid=st.sampled_from(CIDS), report=st.lists(st.tuples(st.sampled_from(EXACT), st.integers(-1, 3)), max_size=3))
    def mfe_counters(self, cid: ClientId, report: list[tuple[SG, int]]) -> None:
        conn, handle = self.handle_of(cid, False)
        reports: list[tuple[SG, int, int, int]] = []
        entries = []
        for sg, delta in report:
            mfe = self.model.mfes.get(sg)
            packets = max(0, (mfe.in_packets if mfe else 0) + delta)
            reports.append((sg, packets, packets * 100, delta & 1))
            oil = [{**if_fields(i), "out_packets": packets} for i in (mfe.oil if mfe else ())]
            counts = {"in_packets": packets, "in_bytes": packets * 100, "wrong_if_packets": delta & 1}
            entries.append({"source": sg[0], "group": sg[1], **counts, "oil": oil})
        args = {"handle": handle, "entries": entries}
        done, _ = self.request(conn, "mfe_counters", args, lambda: self.model.counters(conn, handle, reports))
        final = {sg: (packets, octets, wrong) for sg, packets, octets, wrong in reports}  # the last report counts
        for sg, (packets, octets, wrong) in final.items() if done is not None else ():
            if sg in self.model.mfes:
                got, _ = self.request(conn, "get_mfe", {"source": sg[0], "group": sg[1], "stats": 1}, lambda: None)
                mfe = got["mfe"]
                assert (mfe["in_packets"], mfe["in_bytes"], mfe["wrong_if_packets"]) == (packets, octets, wrong)
                assert all(o["out_packets"] == packets and o["discards"] == 0 for o in mfe["oil"])

    @rule(sg=st.sampled_from(EXACT), stats=st.sampled_from([None, 0, 1]))
    def get_mfe(self, sg: SG, stats: int | None) -> None:
        args = {"source": sg[0], "group": sg[1], **({} if stats is None else {"stats": stats})}
        mfe = self.model.mfes.get(sg)
        result, _ = self.request(CONNS[1], "get_mfe", args, 1168 if mfe is None else (lambda: None))
        if mfe is not None:
            self.check_mfe(result["mfe"], mfe)
            assert ("in_packets" in result["mfe"]) == (stats is not None)
            assert all(("discards" in o) == (stats == 1) for o in result["mfe"]["oil"])

    @rule(page=st.integers(1, 3), after=st.sampled_from([None, *EXACT]))
    def list_mfes(self, page: int, after: SG | None) -> None:
        expected = sorted(self.model.mfes, key=sg_order)
        args: dict[str, Any] = {"max_entries": page}
        if after is not None:
            args["after"] = {"source": after[0], "group": after[1]}
            expected = [k for k in expected if sg_order(k) > sg_order(after)]
        result, _ = self.request(CONNS[2], "list_mfes", args, lambda: None)
        assert [(m["source"], m["group"]) for m in result["entries"]] == expected[:page]
        assert result["more"] == (len(expected) > page)
        for got in result["entries"]:
            self.check_mfe(got, self.model.mfes[(got["source"], got["group"])])

    def teardown(self) -> None:
        """Every deferred new_packet completes once the deadlines pass (rpf, then creation_alert)."""
        for _ in range(3):
            if not self.model.pending:
                break
            self.tick(DEADLINE + 0.01)
        assert not self.model.pending
        assert not self.waiting, f"new_packet replies never completed: {self.waiting}"


CoreMachine.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=50,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    print_blob=RANDOM,
    # no explain phase: its line tracer makes a failing run take minutes on Python 3.11
    phases=[
        Phase.explicit,
        Phase.generate,
        *([] if os.environ.get("MGM_STATEFUL_NOSHRINK") == "1" else [Phase.shrink]),
    ],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCoreStateful = CoreMachine.TestCase
