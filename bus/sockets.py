"""Socket options both ends share, and the one place transport security will plug in.

Over tcp both sides set ZMTP heartbeats so a dead peer is torn down in seconds,
and CURVE: a manager refuses to bind tcp without its key pair, and its ZAP
handler (mgm.bus.auth.Guard) admits only the allow-listed client keys.
ipc endpoints carry no CURVE: RUNDIR's permissions are their gate.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from mgm.bus.endpoints import check_ipc_endpoint

HEARTBEAT_IVL_MS = 2000
HEARTBEAT_TIMEOUT_MS = 6000
HEARTBEAT_TTL_MS = 6000


ZAP_DOMAIN = "mgm"
"""The ZAP domain of the manager's tcp sockets (its handler answers for this domain only)."""


class InsecureEndpoint(ValueError):
    """A tcp endpoint the manager was asked to bind without a CURVE key pair."""


@dataclass(frozen=True, slots=True)
class Curve:
    """CURVE keys (z85) for tcp endpoints: our key pair, and either the manager's public key (a client)
    or the allow-list of client public keys to client names (the manager)."""

    public_key: bytes
    secret_key: bytes
    server_key: bytes | None = None
    clients: Mapping[bytes, str] | None = None


def require_curve(endpoint: str, curve: Curve | None, *, server: bool) -> None:
    """The manager never binds tcp without CURVE: raise InsecureEndpoint (a clear error) where it would."""
    if server and curve is None and endpoint.startswith("tcp://"):
        raise InsecureEndpoint(
            f"refusing to bind {endpoint} without CURVE: a tcp endpoint needs the manager's key pair "
            "([manager] curve_secret_key in the configuration, or --curve-key FILE; "
            "`mgm keys generate manager` makes one)")


def secure(sock: zmq.Socket[Any], endpoint: str, curve: Curve | None, *, server: bool) -> None:
    """Apply transport options for `endpoint` to `sock` before it binds or connects.

    tcp: ZMTP heartbeats, and CURVE.  The manager's side (`server`) refuses
    tcp without keys; a client without keys may try (the manager will not
    answer it).  ipc: nothing, the directory's permissions are the gate.
    """
    if not endpoint.startswith("tcp://"):
        return
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TTL_MS)
    if server:
        require_curve(endpoint, curve, server=True)
        assert curve is not None
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public_key)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
    elif curve is not None:
        if curve.server_key is None:
            raise ValueError(f"CURVE to {endpoint} needs the manager's public key")
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret_key)


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


# The hot paths call the backend's send/recv directly: pyzmq's send_multipart/recv_multipart wrappers
# cost about 5 us a message (Python-level flag enums and an RCVMORE getsockopt per frame), more
# than the manager spends on a request.  A frame received with copy=False tells `more` for free.
send_frame = zmq.backend.Socket.send
recv_frame = zmq.backend.Socket.recv
NOBLOCK = int(zmq.NOBLOCK)
MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_get_option = zmq.backend.Socket.get
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def readable(sock: zmq.Socket[Any]) -> bool:
    """Whether a message is waiting; reading EVENTS also re-arms the socket's edge-like FD.

    Asked of the backend with plain ints: pyzmq's getsockopt turns EVENTS into a flag enum, which
    made this cost 2.3 us instead of 1.4 (it runs a few times per message on every hop).
    """
    events: int = _get_option(sock, _EVENTS)  # type: ignore[assignment]  # an int for EVENTS
    return bool(events & _POLLIN)


def recv_rest(sock: zmq.Socket[Any], frame: zmq.Frame) -> int:
    """Discard the remaining frames of a message after `frame`; how many there were."""
    n = 0
    while frame.more:
        frame = recv_frame(sock, NOBLOCK, False)
        n += 1
    return n
