"""A manager on loopback tcp with CURVE, its keys and allow-list, and a blocking CURVE client for the tests."""

from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from mgm.bus.auth import client_curve, generate, load_public_key
from mgm.bus.codec import decode_reply, encode_request
from mgm.bus.sockets import Curve, secure
from mgm.plugins.testing import MGM, ManagerProc, wait_for

_IDS = itertools.count(1)
"""Request ids unique in the test process: the manager replays the reply of an id it saw on a connection."""
ROUTING_PROTOCOL = 21
STATIC_PROTOCOL_ID = 10006
ALLOWED_INDEX = 7
"""An interface index the `east` key may own (no such interface needs to exist: the core does not check)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def dealer(endpoint: str, curve: Curve | None, identity: bytes | None = None) -> zmq.Socket[bytes]:
    """A connected DEALER that keeps its connection (and so its handles) across requests."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity)
    secure(sock, endpoint, curve, server=False)
    sock.connect(endpoint)
    return sock


def reply_to(endpoint: str, curve: Curve | None, op: str, args: dict[str, Any] | None = None,
             timeout: float = 5.0, sock: zmq.Socket[bytes] | None = None) -> dict[str, Any] | None:
    """One request on a DEALER (fresh unless `sock`); the decoded reply, or None when none came within `timeout`."""
    own = sock is None
    if sock is None:
        sock = dealer(endpoint, curve)
    try:
        sock.send_multipart([b"", encode_request(next(_IDS), op, args or {})])
        if not sock.poll(int(timeout * 1000)):
            return None
        return decode_reply(sock.recv_multipart()[-1])
    finally:
        if own:
            sock.close(0)


@dataclass
class Keys:
    """A key folder: the manager's pair and client pairs, made with mgm.bus.auth.generate (what `mgm keys` runs)."""

    folder: Path
    public: dict[str, str] = field(default_factory=dict)

    def make(self, *names: str) -> None:
        for name in names:
            generate(self.folder, name)
            self.public[name] = load_public_key(self.folder / f"{name}.key").decode()

    def secret(self, name: str) -> Path:
        return self.folder / f"{name}.key_secret"

    def curve(self, name: str) -> Curve:
        """Client CURVE settings for key `name`, trusting the manager's public key."""
        return client_curve(self.secret(name), self.public["manager"].encode())


def allow_list(keys: Keys) -> str:
    """east: protocol 21 on lo and index 7; west: protocol 22 on index 8; observer: nothing to claim;
    static: the static plugin on 7 and 8; stranger is not listed."""
    return f"""
[[manager.clients]]
name = "east"
public_key = "{keys.public['east']}"
protocol_ids = [{ROUTING_PROTOCOL}]
interfaces = ["lo", {ALLOWED_INDEX}]

[[manager.clients]]
name = "west"
public_key = "{keys.public['west']}"
protocol_ids = [22]
interfaces = [8]

[[manager.clients]]
name = "observer"
public_key = "{keys.public['observer']}"

[[manager.clients]]
name = "static"
public_key = "{keys.public['static']}"
protocol_ids = [{STATIC_PROTOCOL_ID}]
interfaces = [{ALLOWED_INDEX}, 8]
"""


@dataclass
class TcpManager:
    proc: ManagerProc
    api: str
    events: str
    keys: Keys
    config: Path

    def request(self, key: str | None, op: str, args: dict[str, Any] | None = None,
                timeout: float = 5.0) -> dict[str, Any] | None:
        return reply_to(self.api, self.keys.curve(key) if key else None, op, args, timeout)

    def state(self) -> dict[str, Any]:
        """The state snapshot, read with the observer key."""
        reply = self.request("observer", "sync", {"stream": "state"})
        assert reply is not None and reply["status"] == 0, reply
        state: dict[str, Any] = reply["result"]["state"]
        return state


def manager_argv(api: str, events: str, config: Path, curve_key: Path | None, *extra: str) -> list[str]:
    argv = [*MGM, "manager", "--api", api, "--events", events, "--config", str(config), "--log-level", "debug",
            *extra]
    if curve_key is not None:
        argv += ["--curve-key", str(curve_key)]
    return argv


def start_tcp_manager(directory: Path, keys: Keys, procs: list[Any], *extra: str) -> TcpManager:
    """The manager on loopback tcp with `keys` and their allow_list."""
    config = directory / "manager.toml"
    config.write_text(allow_list(keys))
    api, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    proc = ManagerProc("manager", manager_argv(api, events, config, keys.secret("manager"), *extra),
                       directory / "manager.log", api=api, events=events)
    proc.start()
    procs.append(proc)
    manager = TcpManager(proc, api, events, keys, config)
    proc.wait_ready(lambda: manager.request("observer", "ping", timeout=0.5),
                    "the tcp manager to answer an allowed key's ping")
    return manager


def log_has(proc: ManagerProc, text: str, timeout: float = 10.0) -> str:
    """Wait until the process's log holds `text`; the log."""
    return wait_for(lambda: text in proc.log() and proc.log(), timeout, f"{text!r} in the log of {proc.name}")

