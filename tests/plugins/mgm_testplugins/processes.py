"""Processes for the multi-process tests: the manager and plugins as children in their own process groups.

tests/conftest.py builds its fixtures from these; other test suites may too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from mgm.bus.codec import decode_reply, encode_request
from mgm.bus.status import MgmError
from mgm_testplugins.control import Control

MGM = [sys.executable, "-m", "mgm.core.cli"]
STOP_GRACE = 5.0


# --- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process in its own process group, with its output in a file."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.log_path, "ab")  # noqa: SIM115 -- the child holds it; closed below
        try:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            out.close()

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def send_signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM the group, wait, SIGKILL what is left; the exit status of the leader."""
        if self.popen is None:
            return None
        self.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # stragglers of the group, too
        return self.popen.wait()

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)


@dataclass
class ManagerProc(Proc):
    api: str = ""
    events: str = ""
    _sock: zmq.Socket[bytes] | None = field(default=None, repr=False)
    _next: int = 0

    def request(self, op: str, args: Mapping[str, Any] | None = None, timeout: float = 5.0) -> dict[str, Any]:
        """One request, as a client without a handle; MgmError on refusal, TimeoutError if silent."""
        reply = self.raw([b"", encode_request(self._id(), op, dict(args or {}))], timeout)
        if reply.get("status") != 0:
            raise MgmError(reply["status"], reply.get("message", ""))
        result: dict[str, Any] = reply.get("result") or {}
        return result

    def raw(self, frames: list[bytes], timeout: float = 5.0) -> dict[str, Any]:
        """Send frames as they are on a fresh DEALER; the decoded reply."""
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.api)
            sock.send_multipart(frames)
            if not sock.poll(int(timeout * 1000)):
                raise TimeoutError(f"no reply from the manager on {self.api} within {timeout} s")
            return decode_reply(sock.recv_multipart()[-1])
        finally:
            sock.close(0)

    def _id(self) -> int:
        self._next += 1
        return self._next

    def ping(self) -> bool:
        try:
            self.request("ping", timeout=0.5)
            return True
        except TimeoutError:
            return False


@dataclass
class PluginProc(Proc):
    control: Control | None = None
    config_path: Path | None = None


# --- TOML for the test configs ----------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f'"{k}" = {toml_value(v)}' for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_config(plugins: Mapping[str, Mapping[str, Any]], manager: Mapping[str, Any] | None = None) -> str:
    """A config file's text: [manager] and one [plugins."NAME"] table per plugin."""
    lines = []
    if manager:
        lines.append("[manager]")
        lines += [f"{k} = {toml_value(v)}" for k, v in manager.items()]
    for name, table in plugins.items():
        lines.append(f'[plugins."{name}"]')
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"



def pids_gone(pids: list[int]) -> bool:
    """True when none of `pids` is a live process (zombies of others' children count as gone)."""
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state != "Z":
            return False
    return True
