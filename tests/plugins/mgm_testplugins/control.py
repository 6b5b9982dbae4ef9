"""The test's side of a recorder plugin's control socket (blocking; for pytest)."""

from __future__ import annotations

from typing import Any

import zmq

from mgm.bus.codec import pack, unpack
from mgm.plugins.testing import POLL, PluginProc, wait_for

__all__ = ["POLL", "Control", "ControlError", "ctl", "wait_for"]


class ControlError(Exception):
    """A command the plugin could not carry out (e.g. the manager refused it)."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.status = reply.get("status")
        self.message = reply.get("message")
        super().__init__(f"status {self.status}: {self.message}")


class Control:
    """Commands to one recorder plugin, and what it recorded."""

    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._ctx = zmq.Context.instance()
        self._sock: zmq.Socket[bytes] | None = None

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            sock = self._ctx.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, int(self.timeout * 1000))
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command; raise ControlError when it was refused, TimeoutError when nobody answers."""
        sock = self._socket()
        sock.send(pack({"cmd": cmd, **args}))
        try:
            reply: dict[str, Any] = unpack(sock.recv())
        except zmq.Again:
            self.close()  # a REQ socket that missed its reply cannot send again
            raise TimeoutError(f"no reply to {cmd!r} from {self.endpoint} within {self.timeout} s") from None
        if not reply.get("ok"):
            raise ControlError(reply)
        return reply

    def join(self, group: str, if_index: int, source: str = "0.0.0.0") -> None:
        """A membership added through the plugin's context (the reply waits for the manager's)."""
        self.call("add_membership", source=source, group=group, if_index=if_index)

    def leave(self, group: str, if_index: int, source: str = "0.0.0.0") -> None:
        self.call("delete_membership", source=source, group=group, if_index=if_index)

    def calls(self, hook: str | None = None) -> list[dict[str, Any]]:
        """What the plugin recorded, optionally only calls of one hook."""
        recorded: list[dict[str, Any]] = self.call("calls")["calls"]
        return [c for c in recorded if hook is None or c["hook"] == hook]

    def wait_for_call(self, hook: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The first recorded call of `hook` whose arguments include `match`."""

        def found() -> dict[str, Any] | None:
            return next((c for c in self.calls(hook) if all(c.get(k) == v for k, v in match.items())), None)

        return wait_for(found, timeout, f"{hook} with {match} on {self.endpoint}")


def ctl(plugin: PluginProc) -> Control:
    """The control of a recorder plugin started by `start_plugin`."""
    assert isinstance(plugin.control, Control)
    return plugin.control
