"""Where the manager's two endpoints are when nobody says.

Every command that binds or connects takes ``--api``/``--events``; without
them it uses ``ipc://RUNDIR/api`` and ``ipc://RUNDIR/events``.
"""

from __future__ import annotations

import os
from pathlib import Path

IPC_PATH_MAX = 107
"""sun_path is 108 bytes with its NUL: a longer ipc path cannot be bound."""


def rundir() -> Path:
    """$MGM_RUNDIR, else /run/mgm for root, else $XDG_RUNTIME_DIR/mgm, else /tmp/mgm-UID."""
    if env := os.environ.get("MGM_RUNDIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/mgm")
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "mgm"
    return Path(f"/tmp/mgm-{os.getuid()}")


def default_api() -> str:
    return f"ipc://{rundir() / 'api'}"


def default_events() -> str:
    return f"ipc://{rundir() / 'events'}"


def ensure_rundir(path: Path | None = None) -> Path:
    """Create RUNDIR with mode 0700 and refuse one that others may enter."""
    path = path or rundir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def check_ipc_endpoint(endpoint: str) -> None:
    """Refuse an ipc path too long to bind, with the reason (ZeroMQ's own error is EINVAL)."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if len(path.encode()) > IPC_PATH_MAX:
            raise ValueError(
                f"ipc path is {len(path.encode())} bytes, the limit is {IPC_PATH_MAX}: {path}"
            )
