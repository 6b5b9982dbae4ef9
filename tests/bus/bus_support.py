"""Raw ZeroMQ requests to a manager's api, for the bus tests that speak the wire without mgm.bus.client."""

from __future__ import annotations

from typing import Any

import zmq

from mgm.bus.codec import decode_reply, pack

T = 5.0


def dealer(ctx: zmq.Context[Any], api: str, identity: bytes | None = None) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.connect(api)
    return sock


def recv_reply(sock: zmq.Socket[bytes], timeout: float = T) -> dict[str, Any]:
    assert sock.poll(int(timeout * 1000)), "no reply"
    frames = sock.recv_multipart()
    assert frames[0] == b"" and len(frames) == 2, frames
    return decode_reply(frames[1])


def call(sock: zmq.Socket[bytes], req_id: Any, op: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    sock.send_multipart([b"", pack({"v": 1, "id": req_id, "op": op, "args": args or {}})])
    return recv_reply(sock)


def membership(handle: int, i: int, if_index: int = 1) -> dict[str, Any]:
    """The i-th of many (*,G) memberships on one interface."""
    return {"handle": handle, "source": "0.0.0.0", "source_mask": "0.0.0.0",
            "group": f"239.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", "group_mask": "255.255.255.255",
            "if_index": if_index, "next_hop": "0.0.0.0", "flags": 1}  # fmt: skip
