"""A live `mgm manager` fed random and mutated frames over a DEALER (hypothesis, bounded).

What must hold for anything a client sends (PROTOCOL.md, Requests and replies):
the manager never dies; every message gets exactly one reply, and a request
whose id could be read gets it echoed exactly once; a batch whose requests
were all refused leaves the `state` snapshot and its sequence number as
they were.

The sans-I/O core has the same checks already: tests/core/test_stateful.py
(a refused request changes no snapshot and emits nothing) and
test_rules_validation.py (random args never crash the core); this file is
the process and the wire around it.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mgm_testplugins.processes import ManagerProc

from mgm.bus.codec import pack, unpack
from mgm.core.types import CORE_OPS

MAX_EXAMPLES = 250
REPLY_WAIT = 5.0
FUZZ_IFACE, VICTIM_IFACE = 5, 7

JUNK: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.sampled_from(["0.0.0.0", "255.255.255.255", "239.1.1.1", "10.0.0.1", "224.0.0.0", "1.2.3", "-1"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
"""Any msgpack value: wrong types, huge ints, nested junk."""


def templates(handle: int, victim: int) -> dict[str, dict[str, Any]]:
    """A well-formed args map for each op (which the mutations then spoil)."""
    iface = {"if_index": FUZZ_IFACE, "next_hop": "0.0.0.0"}
    member = {"source": "0.0.0.0", "source_mask": "0.0.0.0", "group": "239.1.1.1",
              "group_mask": "255.255.255.255", **iface, "flags": 1}  # fmt: skip
    sg = {"source": "10.0.0.1", "group": "239.1.1.1"}
    return {
        "ping": {},
        "sync": {"stream": "state"},
        "register_protocol": {"protocol_id": 300, "component_id": 1, "name": "fuzz", "questions": ["rpf"]},
        "deregister_protocol": {"handle": victim},
        "take_interface_ownership": {"handle": handle, **iface},
        "release_interface_ownership": {"handle": victim, "if_index": VICTIM_IFACE, "next_hop": "0.0.0.0"},
        "get_protocol_on_interface": iface,
        "add_group_membership": {"handle": handle, **member},
        "delete_group_membership": {"handle": victim, **member, "if_index": VICTIM_IFACE},
        "group_enumeration_start": {"handle": handle, "type": "all_sources"},
        "group_enumeration_next": {"handle": handle, "enum": 1, "max_entries": 10},
        "group_enumeration_end": {"handle": handle, "enum": 1},
        "get_mfe": {**sg, "stats": 1},
        "list_mfes": {"max_entries": 10, "after": sg},
        "set_mfe": {"handle": handle, **sg, "upstream_neighbor": "10.0.0.9", **iface},
        "set_mfe_oil": {"handle": handle, **sg, "oil": [{**iface, "enabled": False}]},
        "set_boundaries": {"handle": handle, **iface,
                           "boundaries": [{"group": "239.1.0.0", "group_mask": "255.255.0.0"}]},
        "new_packet": {"handle": handle, **sg, **iface},
        "wrong_interface": {"handle": handle, **sg, **iface},
        "mfe_counters": {"handle": handle, "entries": [{**sg, "in_packets": 1, "in_bytes": 1, "wrong_if_packets": 0,
                                                        "oil": [{**iface, "out_packets": 1}]}]},
        "answer": {"handle": handle, "question": 1, **iface, "upstream_neighbor": "0.0.0.0"},
        "heartbeat": {"handle": handle},
        "set_protocol_status": {"handle": handle, "status": {"metrics": {"neighbors": 1}, "neighbors": [sg]}},
        "get_protocol_status": {"protocol_id": 300, "component_id": 1},
    }


OPS = sorted(CORE_OPS | {"ping", "sync"})


Message = tuple[str, Any]
"""("request", a request map without its id) or ("frames", the frames as they go)."""


@st.composite
def message(draw: st.DrawFn, handles: tuple[int, int]) -> Message:
    """One thing a client might send: a request with spoilt args or envelope, or frames that are no request."""
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "junk_args", "envelope", "bytes", "truncated",
                                 "frames"]))  # fmt: skip
    op = draw(st.sampled_from(OPS))
    args: Any = dict(templates(*handles)[op])
    if kind in ("mutated", "truncated"):  # valid ops, some args of a wrong type or range, or missing
        for key in draw(st.lists(st.sampled_from([*args, "extra"]), max_size=3)):
            args[key] = draw(JUNK)
        if args and draw(st.booleans()):
            del args[draw(st.sampled_from(sorted(args)))]
    elif kind == "junk_args":
        args = draw(JUNK)
    request: dict[str, Any] = {"v": 1, "op": op, "args": args}
    if kind == "envelope":  # the request map itself spoilt: v, op, args of any type, keys missing or extra
        for key in draw(st.lists(st.sampled_from(["v", "op", "args", "x"]), min_size=1, max_size=3)):
            if draw(st.booleans()):
                request.pop(key, None)
            else:
                request[key] = draw(JUNK)
    if kind == "bytes":
        return "frames", [b"", draw(st.binary(max_size=200))]
    if kind == "truncated":
        body = pack({**request, "id": "truncated"})
        return "frames", [b"", body[: draw(st.integers(0, len(body) - 1))]]
    if kind == "frames":  # the envelope wrong: no delimiter, a non-empty one, extra frames
        body = pack({**request, "id": "frames"})
        return "frames", draw(st.sampled_from([[body], [b"x", body], [b"", body, b"extra"], [b"", b"", body],
                                               [b""]]))  # fmt: skip
    return "request", request


class Wire:
    """One DEALER to the manager; every reply counted by id."""

    def __init__(self, api: str) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(api)
        self.replies: Counter[Any] = Counter()
        self.statuses: dict[Any, int] = {}
        self.results: dict[Any, Any] = {}
        self.sent = 0
        self.received = 0
        self.ids = (f"fuzz-{n}" for n in itertools.count())

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)
        self.sent += 1

    def request(self, op: str, args: Any) -> str:
        """Send a request (pipelined: its reply is collected later); its id."""
        return self.send_map({"v": 1, "op": op, "args": args})

    def send_map(self, request: dict[str, Any]) -> str:
        """Send a (possibly spoilt) request map with a fresh id; the id."""
        req_id = next(self.ids)
        self.send([b"", pack({**request, "id": req_id})])
        return req_id

    def collect(self, until: Callable[[], bool], timeout: float = REPLY_WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.sock.poll(int(remaining * 1000)):
                raise AssertionError(f"replies missing: sent {self.sent}, received {self.received}")
            reply = unpack(self.sock.recv_multipart()[-1])
            self.received += 1
            rid = reply.get("id")
            self.replies[rid if isinstance(rid, str) else None] += 1
            if isinstance(rid, str):
                self.statuses[rid] = reply["status"]
                self.results[rid] = reply.get("result")

    def call(self, op: str, args: Any) -> dict[str, Any]:
        rid = self.request(op, args)
        self.collect(lambda: rid in self.statuses)
        assert self.statuses[rid] == 0, f"{op} refused"
        result: dict[str, Any] = self.results[rid]
        return result

    def close(self) -> None:
        self.sock.close(0)


def snapshot(manager: ManagerProc) -> tuple[int, dict[str, Any]]:
    result = manager.request("sync", {"stream": "state"})
    return result["seq"], result["state"]


@pytest.fixture
def wires(start_manager: Callable[..., ManagerProc]) -> Iterator[tuple[ManagerProc, Wire, tuple[int, int]]]:
    # A long liveness: the registered test clients send no heartbeats, and a cleanup would change the state.
    manager = start_manager(liveness=3600)
    fuzz, victim = Wire(manager.api), Wire(manager.api)
    try:
        handles = []
        for wire, pid, iface in ((fuzz, 300, FUZZ_IFACE), (victim, 301, VICTIM_IFACE)):
            handle = wire.call("register_protocol", {"protocol_id": pid, "component_id": 1})["handle"]
            wire.call("take_interface_ownership", {"handle": handle, "if_index": iface, "next_hop": "0.0.0.0"})
            wire.call("add_group_membership", {"handle": handle, "source": "0.0.0.0", "source_mask": "0.0.0.0",
                                               "group": "239.1.1.1", "group_mask": "255.255.255.255",
                                               "if_index": iface, "next_hop": "0.0.0.0", "flags": 1})  # fmt: skip
            handles.append(handle)
        yield manager, fuzz, (handles[0], handles[1])
    finally:
        fuzz.close()
        victim.close()


def test_random_and_mutated_frames_never_stop_the_manager_and_refusals_change_nothing(
    wires: tuple[ManagerProc, Wire, tuple[int, int]],
) -> None:
    manager, fuzz, handles = wires
    batches = {"all refused": 0, "some applied": 0}
    tracked: list[str] = []

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
    @given(st.lists(message(handles), min_size=1, max_size=6))
    def batch(messages: list[Message]) -> None:
        seq, before = snapshot(manager)
        ids: list[str] = []
        received_before = fuzz.received
        maybe_applied = False
        for kind, content in messages:
            if kind == "request":
                ids.append(fuzz.send_map(content))
            else:
                fuzz.send(content)
                maybe_applied |= len(content) == 2 and content[0] == b"" and _decodes(content[1])
        fuzz.collect(lambda: fuzz.received - received_before >= len(messages))
        assert all(fuzz.replies[i] == 1 for i in ids), "every request whose id can be read gets it back once"
        tracked.extend(ids)
        if all(fuzz.statuses[i] != 0 for i in ids) and not maybe_applied:
            batches["all refused"] += 1
            assert snapshot(manager) == (seq, before), "a refused request changed the state"
        else:
            batches["some applied"] += 1

    batch()
    # Late or duplicate replies would show up here: one more round trip after everything.
    fuzz.call("ping", {})
    assert fuzz.received == fuzz.sent, "exactly one reply per message, none late"
    assert all(fuzz.replies[i] == 1 for i in tracked)
    assert manager.alive() and manager.ping()
    print(f"\nfuzz: {fuzz.sent} messages, {batches}")
    assert batches["all refused"] > 0


def _decodes(payload: bytes) -> bool:
    """Could these random bytes have been a request the manager applied?  Only if they decode to a map with an op."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("op"), str) and obj.get("v") == 1


def test_a_frame_over_64_kib_drops_that_connection_and_nothing_else(
    wires: tuple[ManagerProc, Wire, tuple[int, int]],
) -> None:
    manager, fuzz, _ = wires
    seq, before = snapshot(manager)
    big: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    try:
        big.connect(manager.api)
        big.send_multipart([b"", pack({"v": 1, "id": 1, "op": "ping", "args": {"x": "y" * 70_000}})])
        assert not big.poll(300), "an oversized frame must not be read, so it gets no reply"
    finally:
        big.close(0)
    assert snapshot(manager) == (seq, before)
    fuzz.call("ping", {})
    assert manager.alive()
