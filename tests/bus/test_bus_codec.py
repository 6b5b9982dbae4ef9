"""The codec, the envelope and the server's bookkeeping, without sockets."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mgm.bus.codec import (
    MAX_ID_LEN,
    BadRequest,
    EventEncoder,
    decode_request,
    encode_error,
    encode_result,
    pack,
    unpack,
)
from mgm.bus.server import ReplayCache, paginate
from mgm.bus.status import Status

# --- requests ---------------------------------------------------------------------------------


def test_a_good_request_decodes() -> None:
    assert decode_request(pack({"v": 1, "id": 7, "op": "ping", "args": {"a": 1}})) == (7, "ping", {"a": 1})


def test_args_may_be_absent() -> None:
    assert decode_request(pack({"v": 1, "id": "x", "op": "ping"})) == ("x", "ping", {})


@pytest.mark.parametrize(
    ("payload", "echo", "why"),
    [
        (b"\xc1", None, "msgpack"),  # 0xc1 is never used in msgpack
        (b"\x92\x01", None, "msgpack"),  # truncated array
        (pack({"v": 1, "id": 1, "op": "ping"}) + b"\x00", None, "msgpack"),  # extra data
        (pack([1, 2, 3]), None, "map"),
        (pack("ping"), None, "map"),
        (pack({1: 2}), None, "msgpack"),  # strict_map_key refuses int keys
        (pack({"v": 1, "op": "ping"}), None, "id"),
        (pack({"v": 1, "id": 1.5, "op": "ping"}), None, "id"),
        (pack({"v": 1, "id": True, "op": "ping"}), None, "id"),
        (pack({"v": 1, "id": [1], "op": "ping"}), None, "id"),
        (pack({"v": 1, "id": b"bytes", "op": "ping"}), None, "id"),
        (pack({"v": 1, "id": "x" * (MAX_ID_LEN + 1), "op": "ping"}), None, "id"),
        (pack({"v": 2, "id": 3, "op": "ping"}), 3, "version"),
        (pack({"id": 3, "op": "ping"}), 3, "version"),
        (pack({"v": True, "id": 3, "op": "ping"}), 3, "version"),
        (pack({"v": 1, "id": "r", "args": {}}), "r", "op"),
        (pack({"v": 1, "id": "r", "op": 5}), "r", "op"),
        (pack({"v": 1, "id": 4, "op": "ping", "args": [1]}), 4, "args"),
    ],
)
def test_bad_requests_are_refused_with_the_id_where_readable(payload: bytes, echo: Any, why: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_request(payload)
    assert info.value.req_id == echo
    assert why in info.value.message


def test_nothing_is_evaluated_ext_types_stay_data() -> None:
    payload = msgpack.packb({"v": 1, "id": 1, "op": "ping", "args": {"x": msgpack.ExtType(5, b"evil")}})
    _, _, args = decode_request(payload)
    assert args["x"] == msgpack.ExtType(5, b"evil")


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_anything_but_bad_request(data: bytes) -> None:
    try:
        _, op, args = decode_request(data)
    except BadRequest as exc:
        assert exc.req_id is None or isinstance(exc.req_id, int | str)
    else:
        assert isinstance(op, str) and isinstance(args, dict)


# --- replies and events ------------------------------------------------------------------------


def test_success_reply_is_the_full_envelope() -> None:
    result = {"handle": 5, "list": [1, 2]}
    assert unpack(encode_result("a", result)) == {
        "v": 1, "id": "a", "status": 0, "error": "NO_ERROR", "message": "", "result": result,
    }


def test_error_reply_names_the_status() -> None:
    assert unpack(encode_error(None, Status.ERROR_NOT_SUPPORTED, "no such op")) == {
        "v": 1, "id": None, "status": 50, "error": "ERROR_NOT_SUPPORTED", "message": "no such op", "result": {},
    }
    assert unpack(encode_error(9, 4242, "odd"))["error"] == "STATUS_4242"


@pytest.mark.parametrize("nfields", [0, 1, 10, 11, 20, 70000])
def test_event_envelope_is_spliced_onto_the_fields_without_touching_them(nfields: int) -> None:
    fields = {f"k{i}": i for i in range(nfields)}
    before = dict(fields)
    decoded = unpack(EventEncoder(epoch=(1 << 62) + 3).encode("proto/10/1", 12, "local_join", fields))
    assert decoded == {"v": 1, "stream": "proto/10/1", "seq": 12, "epoch": (1 << 62) + 3, "type": "local_join",
                       **before}
    assert fields == before


# --- replay cache ------------------------------------------------------------------------------


def test_replay_cache_expires_after_its_window() -> None:
    cache = ReplayCache(window=60.0)
    cache.accept((b"c", 1), now=0.0)
    assert cache.fill((b"c", 1), b"reply", now=0.0) == 1
    cache.prune(59.0)
    assert cache.entries[(b"c", 1)] == (0.0, b"reply")
    cache.prune(60.5)
    assert (b"c", 1) not in cache.entries


def test_replay_cache_is_bounded_in_entries_and_bytes() -> None:
    cache = ReplayCache(window=60.0, max_entries=100, max_bytes=1000)
    for i in range(1000):
        cache.accept((b"c", i), now=0.0)
        cache.fill((b"c", i), b"x" * 50, now=0.0)
    assert len(cache) <= 20  # 1000 bytes of 50-byte replies
    assert (b"c", 999) in cache.entries and (b"c", 0) not in cache.entries
    for i in range(1000, 1300):
        cache.accept((b"c", i), now=0.0)  # pending ones count as entries
    assert len(cache) <= 100


def test_duplicates_of_a_pending_request_get_the_reply_too() -> None:
    cache = ReplayCache()
    cache.accept((b"c", 1), now=0.0)
    cache.waiting[(b"c", 1)] = 2
    assert cache.fill((b"c", 1), b"r", now=0.0) == 3
    assert cache.fill((b"c", 2), b"r", now=0.0) == 1


# --- paging ------------------------------------------------------------------------------------


def test_paginate_splits_lists_and_keeps_scalars_on_every_page() -> None:
    state = {"registered": True, "a": list(range(5)), "b": [], "c": ["x" * 100] * 3}
    pages = paginate(state, items=2, budget=10_000)
    assert all(p["registered"] is True and set(p) == set(state) for p in pages)
    for key in ("a", "b", "c"):
        assert [x for p in pages for x in p[key]] == state[key]
    assert all(sum(len(p[k]) for k in ("a", "b", "c")) <= 2 for p in pages)


def test_paginate_respects_the_byte_budget_but_always_makes_progress() -> None:
    state = {"m": ["y" * 400] * 10, "big": ["z" * 5000]}
    pages = paginate(state, items=2000, budget=1000)
    assert [x for p in pages for x in p["m"]] == state["m"]
    assert all(len(pack(p)) < 1000 + 600 for p in pages if not p["big"])
    assert any(p["big"] for p in pages)


def test_a_small_snapshot_is_one_page() -> None:
    assert paginate({"protocols": [], "mfes": []}, 2000, 48 * 1024) == [{"protocols": [], "mfes": []}]


def test_sync_cursors_are_bounded_expire_and_belong_to_their_connection() -> None:
    from mgm.bus.server import BusServer, Paging
    from mgm.bus.status import MgmError

    server = BusServer("ipc:///nonexistent/api", "ipc:///nonexistent/events",
                       paging=Paging(items=1, bytes=1000, max_cursors=2, cursor_ttl=30.0))
    try:
        def snapshot(stream: str) -> dict[str, Any]:
            return {"items": [1, 2, 3]}

        server.seqs["state"] = 7
        server.now = 100.0
        a = server.sync(b"a", {"stream": "state"}, snapshot)
        assert (a["seq"], a["state"], a["more"]) == (7, {"items": [1]}, True)
        server.seqs["state"] = 8  # later events do not change the pages of an open cursor
        b = server.sync(b"b", {"stream": "state"}, snapshot)
        c = server.sync(b"c", {"stream": "state"}, snapshot)  # the third evicts the oldest (a's)
        with pytest.raises(MgmError) as info:
            server.sync(b"a", {"stream": "state", "cursor": a["cursor"]}, snapshot)
        assert info.value.status == Status.ERROR_NOT_FOUND
        with pytest.raises(MgmError) as info:
            server.sync(b"a", {"stream": "state", "cursor": b["cursor"]}, snapshot)
        assert info.value.status == Status.ERROR_INVALID_PARAMETER
        page = server.sync(b"b", {"stream": "state", "cursor": b["cursor"]}, snapshot)
        assert (page["seq"], page["state"], page["more"]) == (8, {"items": [2]}, True)
        server.now = 131.0  # c's cursor was last used at 100: expired
        with pytest.raises(MgmError) as info:
            server.sync(b"c", {"stream": "state", "cursor": c["cursor"]}, snapshot)
        assert info.value.status == Status.ERROR_NOT_FOUND
    finally:
        server.close()
