"""Every argument is checked; a refused request changes nothing; no input crashes the core.

(MGM-SPEC: Terms, masks and groups; PROTOCOL.md: args of the wrong type or range are 87.)
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
from rules_harness import ANY, IGMP, ONES, PIM, Core, Proto, iff

from mgm.bus.status import MgmError, Status
from mgm.core import args as core_args
from mgm.core.args import ADDR_CACHE_MAX, format_addr, parse_addr
from mgm.core.types import CORE_OPS, Interface

G = "239.1.1.1"


def membership(**override: Any) -> dict[str, Any]:
    return {"source": ANY, "source_mask": ANY, "group": G, "group_mask": ONES, **iff(1), "flags": 1, **override}


@pytest.mark.parametrize(
    "text",
    ["1.2.3", "1.2.3.4.5", "256.0.0.1", "01.2.3.4", " 1.2.3.4", "1.2.3.4 ", "a.b.c.d", "", "1..2.3", "1.2.3.-4",
     "\u0661.2.3.4", "+1.2.3.4", "0x1.2.3.4", None, 1234, b"1.2.3.4", ["1.2.3.4"], True, 1.5],
)  # fmt: skip
def test_only_strict_dotted_quad_strings_are_addresses(text: Any) -> None:
    """Addresses are strings of four decimal numbers 0-255 without leading zeros; anything else is 87."""
    with pytest.raises(MgmError) as info:
        parse_addr(text, "source")
    assert info.value.status == Status.ERROR_INVALID_PARAMETER


def test_addresses_round_trip() -> None:
    """Each address has one spelling: parse and format are inverse."""
    for text in ("0.0.0.0", "255.255.255.255", "10.0.0.1", "239.1.2.3", "1.20.100.0"):
        assert format_addr(parse_addr(text, "a")) == text


def test_address_caches_cover_a_1m_core_and_stay_bounded() -> None:
    """[ours] The caches hold the ~200k addresses of a 1M-membership core; beyond the bound they refill, never grow.

    A cached parse must still refuse what the uncached one refuses, and both
    directions stay inverse whichever filled the cache.
    """
    assert ADDR_CACHE_MAX >= 200_000
    for i in range(ADDR_CACHE_MAX + 1000):
        n = (10 << 24) | i
        text = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        if i % 2:
            assert parse_addr(text, "a") == n
        else:
            assert format_addr(n) == text
        assert len(core_args._PARSED) <= ADDR_CACHE_MAX and len(core_args._FORMATTED) <= ADDR_CACHE_MAX
    assert format_addr(parse_addr("10.0.0.7", "a")) == "10.0.0.7"
    assert parse_addr(format_addr(0x0A000008), "a") == 0x0A000008
    with pytest.raises(MgmError):
        parse_addr("010.0.0.7", "a")


@pytest.mark.parametrize(
    "override",
    [
        {"source_mask": "255.255.255.0"},  # only 0.0.0.0 or all-ones
        {"group_mask": "255.0.0.0"},
        {"source": "10.0.0.1"},  # exact source with wildcard mask
        {"source_mask": ONES},  # wildcard source with exact mask
        {"group": ANY},  # wildcard group with exact mask
        {"group": "10.1.1.1"},  # not multicast
        {"group": "240.0.0.1"},  # just above 224.0.0.0/4
        {"group": "223.255.255.255"},  # just below
        {"source": "10.0.0.1", "source_mask": ONES, "group": ANY, "group_mask": ANY},  # (S,*)
        {"source": "239.9.9.9", "source_mask": ONES},  # multicast source
        {"if_index": -1},
        {"if_index": 1 << 32},
        {"if_index": True},
        {"if_index": "1"},
        {"next_hop": "1.2.3"},
        {"next_hop": None},
        {"flags": "1"},
        {"flags": 1.0},
    ],
)
def test_bad_membership_arguments_are_invalid(core: Core, pim: Proto, override: dict[str, Any]) -> None:
    """Masks are 0.0.0.0 or 255.255.255.255 matching their address; groups in 224.0.0.0/4 unless wildcard; etc."""
    core.refused(Status.ERROR_INVALID_PARAMETER, pim, "add_group_membership", **membership(**override))


@pytest.mark.parametrize(
    "shape",
    [
        {"source": ANY, "source_mask": ANY, "group": ANY, "group_mask": ANY},
        {"source": ANY, "source_mask": ANY, "group": "224.0.0.0", "group_mask": ONES},
        {"source": "10.0.0.1", "source_mask": ONES, "group": "239.255.255.255", "group_mask": ONES},
    ],
)
def test_good_membership_shapes_are_accepted(core: Core, pim: Proto, shape: dict[str, Any]) -> None:
    """(*,*), (*,G) and (S,G), with groups at the edges of 224.0.0.0/4, are accepted."""
    assert pim("add_group_membership", **membership(**shape)) == {}


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("register_protocol", {"protocol_id": True, "component_id": 1}),
        ("register_protocol", {"protocol_id": -1, "component_id": 1}),
        ("register_protocol", {"protocol_id": 1 << 32, "component_id": 1}),
        ("register_protocol", {"protocol_id": 1}),
        ("register_protocol", {"protocol_id": 1, "component_id": 1, "name": 5}),
        ("register_protocol", {"protocol_id": 1, "component_id": 1, "name": "x" * 1000}),
        ("get_protocol_on_interface", {"if_index": 1}),
        ("get_protocol_on_interface", {"if_index": 1, "next_hop": "0.0.0.256"}),
        ("get_mfe", {"source": ANY, "group": G}),  # an MFE has an exact source
        ("get_mfe", {"source": "10.0.0.1", "group": "10.0.0.2"}),
        ("get_mfe", {"source": "10.0.0.1", "group": G, "stats": 2}),
        ("get_mfe", {"source": "10.0.0.1", "group": G, "stats": False}),
        ("list_mfes", {"max_entries": 1, "after": "10.0.0.1"}),
        ("list_mfes", {"max_entries": 1, "after": {"source": "10.0.0.1"}}),
    ],
)
def test_bad_arguments_without_handle_are_invalid(core: Core, op: str, args: dict[str, Any]) -> None:
    """Every argument is checked for presence, type (bool is not int), range and syntax."""
    core.refused(Status.ERROR_INVALID_PARAMETER, core.req, b"x", op, **args)


@pytest.mark.parametrize(
    "op", sorted(CORE_OPS - {"register_protocol", "get_protocol_on_interface", "get_mfe", "list_mfes"})
)
def test_every_op_with_a_handle_refuses_a_missing_handle(core: Core, pim: Proto, op: str) -> None:
    """Operations on behalf of a client refuse a request without a (valid) handle: 87."""
    core.refused(Status.ERROR_INVALID_PARAMETER, core.req, pim.conn, op)
    core.refused(Status.ERROR_INVALID_PARAMETER, core.req, pim.conn, op, handle=str(pim.handle))


@pytest.mark.parametrize(
    "args",
    [
        {"source": ANY, "group": G, **iff(1)},  # wildcard source
        {"source": "10.0.0.1", "group": "10.0.0.2", **iff(1)},  # unicast group
        {"source": "10.0.0.1", "group": G, "if_index": 1},  # no next_hop
        {"source": "10.0.0.1", "group": G, "if_index": -1, "next_hop": ANY},
    ],
)
def test_new_packet_arguments(core: Core, pim: Proto, args: dict[str, Any]) -> None:
    """new_packet needs an exact source, a multicast group and a full interface."""
    core.refused(Status.ERROR_INVALID_PARAMETER, pim, "new_packet", **args)


@pytest.mark.parametrize(
    "entry",
    [
        "not a map",
        {"source": "10.0.0.1", "group": G, "in_packets": 1, "in_bytes": 1},
        {"source": "10.0.0.1", "group": G, "in_packets": 1, "in_bytes": 1, "wrong_if_packets": True},
        {"source": "10.0.0.1", "group": G, "in_packets": 1 << 64, "in_bytes": 1, "wrong_if_packets": 0},
        {"source": "10.0.0.1", "group": G, "in_packets": 1, "in_bytes": 1, "wrong_if_packets": 0, "oil": [{}]},
        {"source": "10.0.0.1", "group": G, "in_packets": 1, "in_bytes": 1, "wrong_if_packets": 0, "oil": "x"},
    ],
)
def test_mfe_counters_entries_are_checked(core: Core, pim: Proto, entry: Any) -> None:
    """Each counter report entry is a map of an exact (S,G), non-negative 64-bit counters and an OIL list."""
    core.refused(Status.ERROR_INVALID_PARAMETER, pim, "mfe_counters", entries=[entry])


def test_answer_arguments_are_checked(core: Core) -> None:
    """An answer's fields are checked like any request (rpf: interface and neighbour; creation: oil verdicts)."""
    core.routes["10.0.0.1"] = Interface(1)
    pim, igmp, fwd = core.protos(PIM, IGMP, 99)
    pim.take(1)
    pim.take(2)
    igmp.take(2)
    igmp.join(ANY, G, 2)
    fwd.packet("10.0.0.1", G, 1)
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.answer, 1, **iff(1))  # no upstream_neighbor
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.answer, 1, **iff(1), upstream_neighbor="x")
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.answer, True, **iff(1), upstream_neighbor=ANY)
    pim.answer(1, **iff(1), upstream_neighbor=ANY)
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.answer, 2, oil=[{**iff(2), "enabled": 0}])
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.answer, 2, oil={"if_index": 2})
    core.refused(Status.ERROR_INVALID_PARAMETER, pim.answer, 2)


# --- fuzz: random requests only ever produce results or MgmError ----------------------------------------

_VALUES: list[Any] = [
    None, True, False, 0, 1, 2, 3, -1, 7, 10, 20, 1 << 31, 1 << 32, 1 << 70, 0.0, 0.1, 1.5, -2.5,
    float("nan"), float("inf"), "", "x", "0.0.0.0", "255.255.255.255", "239.1.1.1", "224.0.0.1", "10.0.0.1",
    "10.0.0.2", "1.2.3", "300.1.1.1", "all_sources", "any_source", b"bytes", [], [1], {}, {"a": 1},
    [{"if_index": 1, "next_hop": "0.0.0.0", "enabled": False}],
]  # fmt: skip
_KEYS = [
    "handle", "protocol_id", "component_id", "name", "if_index", "next_hop", "source", "source_mask", "group",
    "group_mask", "flags", "type", "enum", "max_entries", "stats", "after", "upstream_neighbor", "entries",
    "question", "oil", "timeout", "in_if_index",
]  # fmt: skip


def _valid_args(rng: random.Random, op: str) -> dict[str, Any]:
    """Well-formed args for `op` over a small world (sources, groups, interfaces 1-4), so requests go deep."""
    source = rng.choice(["10.0.0.1", "10.0.0.2"])
    group = rng.choice([G, "239.1.1.2"])
    iface = iff(rng.randint(1, 4))
    if op == "register_protocol":
        return {"protocol_id": rng.choice([IGMP, PIM, 30, 40]), "component_id": rng.randint(1, 2)}
    if op in ("take_interface_ownership", "release_interface_ownership", "get_protocol_on_interface"):
        return iface
    if op in ("add_group_membership", "delete_group_membership"):
        s, g = rng.choice([(ANY, group), (source, group), (ANY, ANY)])
        masks = {"source_mask": ANY if s == ANY else ONES, "group_mask": ANY if g == ANY else ONES}
        return {"source": s, "group": g, **masks, **iface, "flags": rng.choice([1, 1, 1, 2])}
    if op == "group_enumeration_start":
        return {"type": rng.choice(["all_sources", "any_source"])}
    if op in ("group_enumeration_next", "group_enumeration_end"):
        return {"enum": rng.randint(1, 3), "max_entries": rng.randint(1, 3)}
    if op in ("get_mfe", "new_packet", "wrong_interface"):
        return {"source": source, "group": group, "stats": rng.choice([0, 1]), **iface}
    if op == "list_mfes":
        return {"max_entries": rng.randint(1, 3), "after": {"source": source, "group": group}}
    if op == "set_mfe":
        return {"source": source, "group": group, "upstream_neighbor": "10.0.0.254", **iface}
    if op == "mfe_counters":
        n = rng.randint(0, 5)
        entry = {"source": source, "group": group, "in_packets": n, "in_bytes": n, "wrong_if_packets": 0}
        return {"entries": [{**entry, "oil": [{**iface, "out_packets": n}]}]}
    if op == "answer":
        kind = rng.choice(
            [{**iface, "upstream_neighbor": ANY}, {"oil": [{**iface, "enabled": rng.random() < 0.5}]}, {"timeout": 5}]
        )
        return {"question": rng.randint(1, 40), **kind}
    return {}


def _fuzz(core: Core, seed: int, steps: int) -> tuple[dict[str, int], list[Any]]:
    """Requests from three clients, well-formed or mangled, with ticks and lost connections.

    Returns the outcome counts and every event and completion, in order.
    """
    rng = random.Random(seed)
    core.routes["10.0.0.1"] = Interface(1)
    clients = [core.register(IGMP), core.register(PIM), core.register(30)]
    busy = ["add_group_membership"] * 8 + ["delete_group_membership"] * 4 + ["take_interface_ownership"] * 3
    busy += ["new_packet", "answer"] * 3 + ["release_interface_ownership"]
    ops = sorted(CORE_OPS - {"deregister_protocol"}) + busy
    outcomes = {"ok": 0, "refused": 0}
    events: list[Any] = core.events()
    for step in range(steps):
        p = rng.choice(clients)
        op = "deregister_protocol" if rng.random() < 0.01 else rng.choice(ops)
        args = _valid_args(rng, op)
        for _ in range(rng.choice([0, 0, 0, 1, 2])):  # mangle some
            key = rng.choice(_KEYS)
            if rng.random() < 0.3:
                args.pop(key, None)
            else:
                args[key] = rng.choice(_VALUES)
        if op != "register_protocol" and rng.random() < 0.95:
            args.setdefault("handle", p.handle)
        try:
            core.mgm.handle(p.conn, op, args, core.now, token=step)
            outcomes["ok"] += 1
        except MgmError:
            outcomes["refused"] += 1
        if rng.random() < 0.05:
            core.tick(0.05)
        if rng.random() < 0.005:  # a client crashes
            core.mgm.connection_lost(p.conn, core.now)
        if f"proto/{p.pid}/{p.cid}" not in core.mgm.streams():  # gone: it comes back
            with contextlib.suppress(MgmError):  # unless its pair was registered meanwhile from elsewhere
                clients[clients.index(p)] = core.register(p.pid, p.cid, conn=p.conn)
        events += core.events()
        events += core.mgm.take_completions()
    return outcomes, events


def test_random_requests_never_crash_the_core(core: Core) -> None:
    """Nothing a client sends stops the core: random args give a result or MgmError, and state stays coherent."""
    outcomes, events = _fuzz(core, 20261123, 6000)
    assert outcomes["ok"] > 1200 and outcomes["refused"] > 1200
    kinds = {e.type for e in events if hasattr(e, "type")}
    assert {"mfe_created", "mfe_updated", "local_join", "join_alert", "prune_alert", "creation_alert"} <= kinds
    state = core.mgm.snapshot("state")
    owned = {(i["if_index"], i["next_hop"]): i for i in state["interfaces"]}
    for m in state["memberships"]:  # every membership sits on an interface its client owns
        i = owned[(m["if_index"], m["next_hop"])]
        who = {"protocol_id": m["protocol_id"], "component_id": m["component_id"]}
        assert i["owner"] == who or (m["protocol_id"] == IGMP and i["igmp"])
    for mfe in state["mfes"]:  # an OIL holds owned interfaces, never the incoming one
        for o in mfe["oil"]:
            assert (o["if_index"], o["next_hop"]) in owned
            assert (o["if_index"], o["next_hop"]) != (mfe["in_if_index"], mfe["in_next_hop"])
    for stream in core.mgm.streams():
        core.mgm.snapshot(stream)
    for conn in (b"conn-10-1", b"conn-20-1", b"conn-30-1"):
        core.mgm.connection_lost(conn, core.now)
    assert core.mgm.snapshot("state")["memberships"] == []
    assert core.mgm.streams() == ["state"]


def test_events_come_in_a_deterministic_order() -> None:
    """The same requests at the same times give the same events in the same order (handles aside)."""
    first = _fuzz(Core(), 7, 1500)
    assert first == _fuzz(Core(), 7, 1500)
    assert len(first[1]) > 300  # it did go deep
