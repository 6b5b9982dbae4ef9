"""A small harness that drives mgm.core.state.Mgm the way the manager does (for test_rules_*).

`core` is an Mgm with a clock the test moves by hand and a route table for
the resolver; `core.register(pid)` returns a `Proto` that sends requests with
its handle on its own connection.  `ev(...)` builds the Event a test expects,
so tests compare exact event lists.
"""

from __future__ import annotations

from typing import Any

import pytest

from mgm.bus.status import MgmError, Status
from mgm.core.state import Mgm
from mgm.core.types import ClientId, Event, Interface

ANY = "0.0.0.0"
ONES = "255.255.255.255"
IGMP = 10
PIM = 20
DVMRP = 30
FWD = 99


def sgf(source: str, group: str) -> dict[str, Any]:
    """source/group with the masks a wildcard or an exact address takes."""
    return {
        "source": source,
        "source_mask": ANY if source == ANY else ONES,
        "group": group,
        "group_mask": ANY if group == ANY else ONES,
    }


def iff(if_index: int, next_hop: str = ANY) -> dict[str, Any]:
    return {"if_index": if_index, "next_hop": next_hop}


class Proto:
    """A registered client as a test sees it."""

    def __init__(self, core: Core, pid: int, cid: int, conn: bytes, handle: int) -> None:
        self.core = core
        self.pid = pid
        self.cid = cid
        self.conn = conn
        self.handle = handle
        self.id = ClientId(pid, cid)

    def __call__(self, op: str, **args: Any) -> Any:
        return self.core.req(self.conn, op, handle=self.handle, **args)

    def take(self, if_index: int, next_hop: str = ANY) -> Any:
        return self("take_interface_ownership", **iff(if_index, next_hop))

    def release(self, if_index: int, next_hop: str = ANY) -> Any:
        return self("release_interface_ownership", **iff(if_index, next_hop))

    def join(self, source: str, group: str, if_index: int, next_hop: str = ANY, flags: int = 1) -> Any:
        return self("add_group_membership", **sgf(source, group), **iff(if_index, next_hop), flags=flags)

    def leave(self, source: str, group: str, if_index: int, next_hop: str = ANY, flags: int = 1) -> Any:
        return self("delete_group_membership", **sgf(source, group), **iff(if_index, next_hop), flags=flags)

    def packet(self, source: str, group: str, if_index: int, next_hop: str = ANY, token: Any = None) -> Any:
        args = {"handle": self.handle, "source": source, "group": group, **iff(if_index, next_hop)}
        return self.core.mgm.handle(self.conn, "new_packet", args, self.core.now, token)

    def answer(self, question: int, **args: Any) -> Any:
        return self("answer", question=question, **args)


class Core:
    def __init__(self, **kwargs: Any) -> None:
        self.routes: dict[str, Interface] = {}
        kwargs.setdefault("resolver", self.routes.get)
        self.mgm = Mgm(**kwargs)
        self.now = 100.0

    def req(self, conn: bytes, op: str, **args: Any) -> Any:
        return self.mgm.handle(conn, op, args, self.now)

    def register(
        self, pid: int, cid: int = 1, conn: bytes | None = None, name: str | None = None,
        questions: list[str] | None = None,
    ) -> Proto:  # fmt: skip
        conn = conn if conn is not None else f"conn-{pid}-{cid}".encode()
        given = {k: v for k, v in (("name", name), ("questions", questions)) if v is not None}
        handle = self.req(conn, "register_protocol", protocol_id=pid, component_id=cid, **given)["handle"]
        return Proto(self, pid, cid, conn, handle)

    def protos(self, *pids: int) -> list[Proto]:
        """Register each protocol (component 1) in this order."""
        return [self.register(pid) for pid in pids]

    def events(self) -> list[Event]:
        return self.mgm.take_events()

    def types(self) -> list[tuple[ClientId | None, str]]:
        return [(e.to, e.type) for e in self.mgm.take_events()]

    def drop(self) -> None:
        """Forget the events so far (set-up noise)."""
        self.mgm.take_events()

    def tick(self, advance: float) -> None:
        self.now += advance
        self.mgm.tick(self.now)

    def refused(self, status: Status, call: Any, *args: Any, **kwargs: Any) -> MgmError:
        """The call fails with `status`, changes no state and emits no event."""
        self.drop()
        before = self.whole_state()
        with pytest.raises(MgmError) as info:
            call(*args, **kwargs)
        assert info.value.status == status, info.value
        assert self.events() == []
        assert self.whole_state() == before
        return info.value

    def whole_state(self) -> dict[str, Any]:
        return {stream: self.mgm.snapshot(stream) for stream in self.mgm.streams()}

    def questions(self, proto: Proto, kind: str | None = None) -> list[dict[str, Any]]:
        found = self.mgm.snapshot(f"proto/{proto.pid}/{proto.cid}")["questions"]
        return [q for q in found if kind is None or q["type"] == kind]


def ev(to: Proto | None, type_: str, **fields: Any) -> Event:
    return Event(None if to is None else to.id, type_, fields)
