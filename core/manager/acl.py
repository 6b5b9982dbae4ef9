"""Who may claim what over tcp: the per-key check of register_protocol and take_interface_ownership.

ZAP (mgm.bus.auth) already refused every connection whose CURVE key is not in
[[manager.clients]], and named each admitted connection after its entry; the
manager's bus hands every request on its tcp api to `Acl.check` before the
core sees it.  Two ops claim something and are checked against the entry:
register_protocol (the protocol id must be in `protocol_ids`) and
take_interface_ownership (the interface must be in `interfaces`; a name there
is the manager's interface name, looked up at the time of the request, so an
interface that appears later is found).  Everything else a client does acts
on its own handles, which are bound to its connection.  A refusal is
ERROR_ACCESS_DENIED with a sentence, logged as a warning and counted.

A connection keeps the key it first spoke with: a request that arrives on the
same routing id under another key (a peer taking over someone else's identity
to use their handles) is refused.  ipc connections never come here.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from mgm.bus.sockets import Curve
from mgm.bus.status import MgmError, Status
from mgm.core.runtime.config import ClientKey, InterfaceRef, ManagerConfig

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 100_000
"""Connections whose key is remembered; the oldest is forgotten beyond this."""


def _if_index(name: str) -> int | None:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


class Acl:
    """The allow-list's permissions, as the bus's gate for requests on the tcp api."""

    def __init__(self, clients: Sequence[ClientKey], if_index: Callable[[str], int | None] = _if_index) -> None:
        self.clients = {c.name: c for c in clients}
        self.if_index = if_index
        self.denied: dict[tuple[str, str], int] = {}
        """Refusals by (client name, op)."""
        self._keys: dict[bytes, str] = {}

    def check(self, conn: bytes, user: str | None, op: str, args: dict[str, Any]) -> None:
        """Raise MgmError(ERROR_ACCESS_DENIED) where the key named `user` may not do this."""
        client = self.clients.get(user) if user is not None else None
        if client is None or user is None:  # ZAP admitted nothing else; refuse rather than trust a surprise
            self._deny(str(user), op, "this connection has no allowed CURVE key")
        first = self._keys.setdefault(conn, user)
        if first != user:
            self._deny(user, op, f"this connection identity belongs to key {first!r}")
        if len(self._keys) > MAX_CONNECTIONS:
            del self._keys[next(iter(self._keys))]
        if op == "register_protocol":
            pid = args.get("protocol_id")
            if isinstance(pid, int) and not isinstance(pid, bool) and pid not in client.protocol_ids:
                allowed = ", ".join(map(str, sorted(client.protocol_ids))) or "none"
                self._deny(user, op, f"key {user!r} may not register protocol id {pid} (allowed: {allowed})")
        elif op == "take_interface_ownership":
            if_index, next_hop = args.get("if_index"), args.get("next_hop")
            if isinstance(if_index, int) and isinstance(next_hop, str) and not self._may_own(client, if_index,
                                                                                              next_hop):
                self._deny(user, op, f"key {user!r} may not own interface {if_index}/{next_hop} "
                                     f"(allowed: {_describe(client.interfaces)})")

    def _may_own(self, client: ClientKey, if_index: int, next_hop: str) -> bool:
        for ref in client.interfaces:
            if ref.next_hop != next_hop:
                continue
            want = ref.name_or_index if isinstance(ref.name_or_index, int) else self.if_index(ref.name_or_index)
            if want == if_index:
                return True
        return False

    def _deny(self, user: str, op: str, message: str) -> NoReturn:
        key = (user, op)
        self.denied[key] = self.denied.get(key, 0) + 1
        log.warning("access denied: %s: %s", op, message, extra={"client": user, "op": op})
        raise MgmError(Status.ERROR_ACCESS_DENIED, message)


def _describe(refs: Sequence[InterfaceRef]) -> str:
    return ", ".join(f"{r.name_or_index}" + ("" if r.next_hop == "0.0.0.0" else f"/{r.next_hop}")
                     for r in refs) or "none"


def manager_security(manager: ManagerConfig, key_file: Path | None = None) -> tuple[Curve | None, Acl]:
    """The manager's CURVE settings (None without a key pair: then it binds ipc only) and its Acl.

    `key_file` (--curve-key) wins over [manager] curve_secret_key.  Raises
    ValueError (mgm.bus.auth.KeyFileError) for a key that cannot be used.
    """
    from mgm.bus.auth import server_curve

    acl = Acl(manager.clients)
    key = key_file or manager.curve_secret_key
    if key is None:
        return None, acl
    return server_curve(key, {c.public_key: c.name for c in manager.clients}), acl
