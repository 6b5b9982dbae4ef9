"""CURVE on tcp endpoints: key files, z85 public keys, and the manager's ZAP gatekeeper.

The rules (docs/security.md): ipc endpoints are trusted, because only the
service user can enter RUNDIR (0700); a tcp endpoint is bound only with the
manager's CURVE key pair, and only clients whose public key is in the
allow-list get through the handshake.  ZeroMQ asks the ZAP handler (pyzmq's
`ThreadAuthenticator`, one thread, on the manager's context) for every new
tcp connection; the handler accepts a listed key and names the connection
after it (the ZMQ "User-Id" property of every message that connection
sends), and refuses every other key.  A client that speaks no CURVE at all
fails the handshake before ZAP is asked: a socket monitor on the manager's
sockets sees those failures, so every refusal is logged and counted.

Key files are ZeroMQ's certificate format (`zmq.auth.create_certificates`):
NAME.key holds the public key, NAME.key_secret both keys; a secret file that
others may read is refused, like ssh does.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from mgm.bus.sockets import ZAP_DOMAIN, Curve

log = logging.getLogger(__name__)

Z85_KEY_LEN = 40
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"

WATCH_POLL_MS = 200
"""How often the handshake watch looks whether it should stop."""
_HANDSHAKE_FAILURES = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


class KeyFileError(ValueError):
    """A key that cannot be used: where and why (a ValueError, so callers report it like bad input)."""


def parse_public_key(value: str, what: str = "public key") -> bytes:
    """A z85 public key (40 characters, as `mgm keys list` prints it), or the path of a NAME.key file.

    Returns the z85 form (bytes), which is what ZeroMQ's socket options and ZAP use.
    """
    if value.endswith(PUBLIC_SUFFIX):
        return load_public_key(Path(value))
    if len(value) != Z85_KEY_LEN:
        raise KeyFileError(f"{what} must be a z85 key of {Z85_KEY_LEN} characters or a path ending in "
                        f"{PUBLIC_SUFFIX}, not {value!r}")
    try:
        z85.decode(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise KeyFileError(f"{what} {value!r} is not z85 text: {exc}") from None
    return value.encode("ascii")


def load_public_key(path: Path) -> bytes:
    """The z85 public key of a NAME.key (or NAME.key_secret) file."""
    public, _ = _load(path)
    return public


def load_key_pair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) in z85 from a NAME.key_secret file that only its owner may read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read the secret key file {path}: {exc.strerror}") from None
    public, secret = _load(path)
    if secret is None:  # before the mode: a public NAME.key (mode 644) is the wrong file, not one to chmod
        raise KeyFileError(f"{path} holds no secret key (give the NAME{SECRET_SUFFIX} file, not NAME{PUBLIC_SUFFIX})")
    if stat.S_IMODE(mode) & 0o077:
        raise KeyFileError(f"secret key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); "
                        f"chmod 600 it")
    return public, secret


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc}") from None
    except ValueError as exc:
        raise KeyFileError(f"{path} is not a ZeroMQ key file: {exc}") from None
    if public is None or len(public) != Z85_KEY_LEN:
        raise KeyFileError(f"{path} holds no public key")
    return public, secret


def client_curve(key_file: Path, server_key: bytes) -> Curve:
    """A client's CURVE settings: its own key pair and the manager's public key."""
    public, secret = load_key_pair(key_file)
    return Curve(public_key=public, secret_key=secret, server_key=server_key)


def server_curve(key_file: Path, clients: Mapping[bytes, str]) -> Curve:
    """The manager's CURVE settings: its key pair and the allow-list (z85 public key -> client name)."""
    public, secret = load_key_pair(key_file)
    return Curve(public_key=public, secret_key=secret, clients=dict(clients))


class _AllowList:
    """ZAP credentials provider: a key is in the list or it is not (called on the authenticator's thread)."""

    def __init__(self, clients: Mapping[bytes, str], guard: Guard) -> None:
        self.clients = dict(clients)
        self.guard = guard

    def callback(self, domain: str, key: bytes) -> bool:
        name = self.clients.get(key)
        if name is None:
            self.guard.refused("unknown_key", "unknown CURVE key", key.decode("ascii", "replace"))
            return False
        log.debug("ZAP: key %s accepted as %r", key.decode("ascii", "replace"), name)
        return True


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread, naming each accepted connection after its key's client name."""

    names: Mapping[bytes, str] = {}

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.names.get(z85.encode(client_public_key), "?")


class Guard:
    """The manager's ZAP handler and handshake watch, for the lifetime of its sockets.

    `start()` before the sockets bind (without a ZAP handler a CURVE server
    would take any client key), `close()` after they are closed and before
    the context terminates.  `refusals` counts refused connections by reason.
    """

    def __init__(self, ctx: zmq.Context[Any], curve: Curve, refusals: dict[str, int] | None = None) -> None:
        self.ctx = ctx
        self.curve = curve
        self.refusals: dict[str, int] = refusals if refusals is not None else {}
        """Refused connections by reason: bad_handshake (no CURVE, wrong server key), unknown_key (ZAP)."""
        self._lock = threading.Lock()
        self._auth: _Authenticator | None = None
        self._watch: threading.Thread | None = None
        self._monitors: list[tuple[zmq.Socket[Any], zmq.Socket[Any]]] = []
        self._stop = threading.Event()

    def start(self) -> None:
        auth = _Authenticator(self.ctx, log=logging.getLogger(f"{__name__}.zap"))
        auth.names = dict(self.curve.clients or {})
        auth.start()
        auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=_AllowList(auth.names, self))
        self._auth = auth
        log.info("CURVE on tcp: %d client key(s) allowed: %s", len(auth.names),
                 ", ".join(sorted(auth.names.values())) or "none")

    def watch(self, sockets: Sequence[zmq.Socket[Any]]) -> None:
        """Log and count failed handshakes on `sockets` (clients without CURVE, or with a wrong server key)."""
        for sock in sockets:
            self._monitors.append((sock, sock.get_monitor_socket(_HANDSHAKE_FAILURES)))
        self._watch = threading.Thread(target=self._run_watch, name="mgm-curve-watch", daemon=True)
        self._watch.start()

    def refused(self, reason: str, why: str, who: str) -> None:
        with self._lock:
            self.refusals[reason] = self.refusals.get(reason, 0) + 1
        log.warning("refused a tcp connection (%s): %s", why, who, extra={"reason": reason, "peer": who})

    def _run_watch(self) -> None:
        poller = zmq.Poller()
        for _, mon in self._monitors:
            poller.register(mon, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                for mon, _ in poller.poll(WATCH_POLL_MS):
                    self._on_monitor_event(recv_monitor_message(mon))
        except zmq.ZMQError as exc:
            log.error("handshake watch stopped: %s", exc)
        finally:
            for _, mon in self._monitors:
                mon.close(linger=0)

    def _on_monitor_event(self, msg: dict[str, Any]) -> None:
        event, endpoint, value = msg["event"], msg["endpoint"].decode("utf-8", "replace"), msg["value"]
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            log.debug("handshake on %s refused by ZAP (status %s)", endpoint, value)  # counted by the allow-list
            return
        # No CURVE at all (mechanism mismatch), a hello that does not decrypt (a wrong server key), or a peer
        # that hung up during the handshake: which of these libzmq reports depends on who notices first.
        detail = f"ZMTP protocol error {value:#x}" if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL else f"errno {value}"
        self.refused("bad_handshake", "CURVE handshake failed", f"a client on {endpoint} ({detail})")

    def close(self) -> None:
        """Stop watching and stop the ZAP thread (before the sockets and the context close)."""
        self._stop.set()
        if self._watch is not None:
            self._watch.join()
            self._watch = None
        for sock, _ in self._monitors:
            if not sock.closed:
                sock.disable_monitor()
        self._monitors.clear()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def generate(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret (0600) into `directory` (0700 if created); refuse to overwrite."""
    public = directory / f"{name}{PUBLIC_SUFFIX}"
    secret = directory / f"{name}{SECRET_SUFFIX}"
    for path in (public, secret):
        if os.path.lexists(path):
            raise FileExistsError(f"{path} exists; refusing to overwrite a key (remove it first if you mean it)")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = os.umask(0o077)  # the secret is never readable by others, not even for an instant
    try:
        pub_file, sec_file = zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    os.chmod(sec_file, 0o600)
    os.chmod(pub_file, 0o644)
    return Path(pub_file), Path(sec_file)


def list_keys(directory: Path) -> list[tuple[str, bytes, bool]]:
    """(name, z85 public key, has a secret file) of every NAME.key in `directory`, by name."""
    out = []
    for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        name = path.name[: -len(PUBLIC_SUFFIX)]
        out.append((name, load_public_key(path), (directory / f"{name}{SECRET_SUFFIX}").exists()))
    return out
