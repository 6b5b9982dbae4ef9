"""Socket options both ends share, and the one place transport security will plug in.

Over tcp both sides set ZMTP heartbeats so a dead peer is torn down in seconds.
CURVE arrives in a later issue: `Curve` is where its keys will travel and
`secure()` is where they will be applied; today asking for it is refused
loudly rather than ignored.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from mgm.bus.endpoints import check_ipc_endpoint

HEARTBEAT_IVL_MS = 2000
HEARTBEAT_TIMEOUT_MS = 6000
HEARTBEAT_TTL_MS = 6000


@dataclass(frozen=True, slots=True)
class Curve:
    """CURVE keys for tcp endpoints (not implemented yet: a later issue)."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes | None = None


def secure(sock: zmq.Socket[Any], endpoint: str, curve: Curve | None, *, server: bool) -> None:
    """Apply transport options for `endpoint` to `sock` before it binds or connects."""
    if curve is not None:
        raise NotImplementedError("CURVE is not implemented yet; use ipc:// endpoints or plain tcp:// on loopback")
    if endpoint.startswith("tcp://"):
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)


def ipc_path(endpoint: str) -> Path | None:
    """The filesystem path of an ipc:// endpoint (checked for length), None for other transports."""
    if not endpoint.startswith("ipc://"):
        return None
    check_ipc_endpoint(endpoint)
    return Path(endpoint[len("ipc://"):])


def is_socket_file(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is waiting; reading EVENTS also re-arms the socket's edge-like FD."""
    events: int = sock.getsockopt(zmq.EVENTS)  # type: ignore[assignment]
    return bool(events & zmq.POLLIN)


# The hot paths call the backend's send/recv directly: pyzmq's send_multipart/recv_multipart wrappers
# cost about 5 us a message (Python-level flag enums and an RCVMORE getsockopt per frame), more
# than the manager spends on a request.  A frame received with copy=False tells `more` for free.
send_frame = zmq.backend.Socket.send
recv_frame = zmq.backend.Socket.recv
NOBLOCK = int(zmq.NOBLOCK)
MORE = int(zmq.SNDMORE | zmq.NOBLOCK)


def recv_rest(sock: zmq.Socket[Any], frame: zmq.Frame) -> int:
    """Discard the remaining frames of a message after `frame`; how many there were."""
    n = 0
    while frame.more:
        frame = recv_frame(sock, NOBLOCK, False)
        n += 1
    return n
