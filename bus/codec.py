"""The one codec of the wire: msgpack with safe defaults, and the envelope.

Every payload is one msgpack map with string keys.  Decoding never unpickles
or evaluates anything: `raw=False` (strings are text), `strict_map_key=True`
(keys are str or bytes), and msgpack bounds every container by the size of the
buffer it came in.  Requests are at most `MAX_FRAME` bytes; the ROUTER refuses
bigger frames before we see them (ZMQ_MAXMSGSIZE).

Replies and events are built by concatenating pre-packed envelope pieces with
the packed body (a msgpack map is its header followed by its key/value pairs),
so the hot path neither copies nor mutates the result or event dict.
"""

from __future__ import annotations

from typing import Any

import msgpack

from mgm.bus.status import MgmError, Status

VERSION = 1
"""The wire protocol version every payload carries as "v"."""

MAX_FRAME = 64 * 1024
"""ZMQ_MAXMSGSIZE on the manager's ROUTER: a bigger request frame drops the connection."""

MAX_ID_LEN = 256
"""A string request id longer than this is refused: ids are kept for replay."""

BUS_OPS = frozenset({"ping", "sync"})
"""Ops the manager's bus layer answers itself; every other op is the MGM's (the core's)."""


def pack(obj: Any) -> bytes:
    """Encode one payload."""
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


def unpack(data: bytes) -> Any:
    """Decode one payload with safe defaults; raises ValueError on anything malformed."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several types (ExtraData, FormatError, TypeError, ...)
        raise ValueError(f"not a valid msgpack payload: {exc}") from exc


# --- map splicing -----------------------------------------------------------


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x80 | n,))
    if n < 0x10000:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")


def _split_map(packed: bytes) -> tuple[int, bytes]:
    """(entry count, the packed key/value pairs) of a packed map."""
    first = packed[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F, packed[1:]
    if first == 0xDE:
        return int.from_bytes(packed[1:3], "big"), packed[3:]
    if first == 0xDF:
        return int.from_bytes(packed[1:5], "big"), packed[5:]
    raise TypeError("not a packed map")


def _pair(key: str, value: Any) -> bytes:
    return pack(key) + pack(value)


# --- requests ---------------------------------------------------------------


def encode_request(req_id: int | str, op: str, args: dict[str, Any]) -> bytes:
    return pack({"v": VERSION, "id": req_id, "op": op, "args": args})


class BadRequest(Exception):
    """A request payload that cannot be served: the reply says why (status 87)."""

    def __init__(self, req_id: int | str | None, message: str) -> None:
        super().__init__(message)
        self.req_id = req_id
        self.message = message


def valid_id(value: Any) -> bool:
    """Request ids are ints (not bools) or short strings, so they can be echoed and kept."""
    t = type(value)
    return t is int or (t is str and len(value) <= MAX_ID_LEN)


def decode_request(payload: bytes) -> tuple[int | str, str, dict[str, Any]]:
    """(id, op, args) of a request payload, or BadRequest with the id where it could be read.

    "args" may be absent (ops without arguments); when present it must be a map.
    """
    try:
        msg = unpack(payload)
    except ValueError as exc:
        raise BadRequest(None, str(exc)) from None
    if type(msg) is not dict:
        raise BadRequest(None, f"a request is a msgpack map, not {type(msg).__name__}")
    req_id = msg.get("id")
    if not valid_id(req_id):
        raise BadRequest(None, f"request id must be an int or a string of at most {MAX_ID_LEN} chars")
    v = msg.get("v")
    if type(v) is not int or v != VERSION:
        raise BadRequest(req_id, f"unsupported protocol version {v!r}; this manager speaks v={VERSION}")
    op = msg.get("op")
    if type(op) is not str:
        raise BadRequest(req_id, "request has no op (a string)")
    args = msg.get("args", None)
    if args is None:
        args = {}
    elif type(args) is not dict:
        raise BadRequest(req_id, f"args must be a map, not {type(args).__name__}")
    return req_id, op, args  # type: ignore[return-value]  # valid_id() checked its type


# --- replies ----------------------------------------------------------------

_REPLY_HEAD = _map_header(6) + _pair("v", VERSION) + pack("id")
_REPLY_OK_TAIL = _pair("status", 0) + _pair("error", "NO_ERROR") + _pair("message", "") + pack("result")


def encode_result(req_id: int | str | None, result: dict[str, Any]) -> bytes:
    """A success reply; `result` is packed as is (not copied)."""
    return _REPLY_HEAD + pack(req_id) + _REPLY_OK_TAIL + pack(result)


def encode_error(req_id: int | str | None, status: Status | int, message: str) -> bytes:
    name = status.name if isinstance(status, Status) else MgmError(status, message).error_name
    return pack(
        {"v": VERSION, "id": req_id, "status": int(status), "error": name, "message": message, "result": {}}
    )


def decode_reply(payload: bytes) -> dict[str, Any]:
    msg = unpack(payload)
    if type(msg) is not dict:
        raise ValueError(f"a reply is a msgpack map, not {type(msg).__name__}")
    return msg


# --- events -----------------------------------------------------------------


class EventEncoder:
    """Packs events of one epoch: {v, stream, seq, epoch, type, **fields} without copying fields."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._epoch_pair = _pair("epoch", epoch)
        self._stream_pairs: dict[str, bytes] = {}
        self._type_pairs: dict[str, bytes] = {}

    def encode(self, stream: str, seq: int, type_: str, fields: dict[str, Any]) -> bytes:
        sp = self._stream_pairs.get(stream)
        if sp is None:
            sp = self._stream_pairs[stream] = _pair("v", VERSION) + _pair("stream", stream)
        tp = self._type_pairs.get(type_)
        if tp is None:
            tp = self._type_pairs[type_] = _pair("type", type_)
        n, body = _split_map(pack(fields))
        return b"".join((_map_header(n + 5), sp, b"\xa3seq", pack(seq), self._epoch_pair, tp, body))


def encode_heartbeat(epoch: int, streams: dict[str, int]) -> bytes:
    return pack({"v": VERSION, "type": "heartbeat", "epoch": epoch, "streams": streams})
