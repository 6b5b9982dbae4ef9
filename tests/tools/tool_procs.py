"""The processes, the relay and the interfaces of the tool tests (conftest.py has the fixtures that make them)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import zmq
from mgm_testplugins.control import wait_for
from mgm_testplugins.processes import Proc

from mgm.bus.codec import decode_reply, encode_request, unpack
from mgm.bus.topics import STATE

T = TypeVar("T")

ANY = "0.0.0.0"
LO = socket.if_nametoindex("lo")
FAR = 2001  # an index that is no interface on this machine: printed without a name
A = {"protocol_id": 100, "component_id": 1}


@dataclass
class MonitorProc(Proc):
    """`mgm monitor` with stdout (the lines to check) and stderr (logs) in separate files."""

    err_path: Path | None = None

    def start(self) -> None:
        assert self.err_path is not None
        with open(self.log_path, "ab") as out, open(self.err_path, "ab") as err:
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=err, start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log(self) -> str:
        err = self.err_path.read_text(errors="replace") if self.err_path and self.err_path.exists() else ""
        return f"{self.output()}\n--- stderr ---\n{err}"

    def lines(self) -> list[str]:
        """Complete lines only (the last one may still be on its way)."""
        return self.output().split("\n")[:-1]

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def events(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if "monitor" not in r]

    def wait_record(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                    timeout: float = 15.0) -> dict[str, Any]:  # fmt: skip
        return self._wait(self.records, predicate, what, timeout)

    def wait_line(self, predicate: Callable[[str], bool], what: str, timeout: float = 15.0) -> str:
        return self._wait(self.lines, predicate, what, timeout)

    def _wait(self, printed: Callable[[], list[T]], predicate: Callable[[T], bool], what: str, timeout: float) -> T:
        """The first of `printed()` that satisfies `predicate`, waited for while the monitor lives."""

        def found() -> T | None:
            if not self.alive():
                raise AssertionError(f"the monitor exited while waiting for {what}:\n{self.log()}")
            return next((item for item in printed() if predicate(item)), None)

        try:
            return wait_for(found, timeout, what)
        except TimeoutError:
            raise AssertionError(f"the monitor never printed {what}:\n{self.log()}") from None

    def wait_synced(self, stream: str = STATE) -> dict[str, Any]:
        """The first snapshot of `stream` (--json): from then on the monitor shows that stream's events."""
        return self.wait_record(
            lambda r: r.get("monitor") == "snapshot" and r["stream"] == stream and r["reason"] == "first",
            f"the first snapshot of {stream}",
        )


@dataclass
class DroppingRelay:
    """Forwards the manager's events to `endpoint`, except `state` events whose seq is in `drop`."""

    upstream: str
    endpoint: str
    drop: set[int] = field(default_factory=set)
    dropped: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def start(self) -> None:
        ctx = zmq.Context.instance()
        self._xsub = ctx.socket(zmq.XSUB)
        self._xpub = ctx.socket(zmq.XPUB)
        for sock in (self._xsub, self._xpub):
            sock.setsockopt(zmq.LINGER, 0)
        self._xpub.bind(self.endpoint)
        self._xsub.connect(self.upstream)
        self._thread = threading.Thread(target=self._run, name="dropping-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._xsub, zmq.POLLIN)
        poller.register(self._xpub, zmq.POLLIN)
        state = STATE.encode()
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(50):
                    if sock is self._xpub:  # a (un)subscription from the monitor: pass it up
                        self._xsub.send_multipart(self._xpub.recv_multipart())
                        continue
                    frames = self._xsub.recv_multipart()
                    if frames[0] == state and len(frames) == 2:
                        seq = unpack(frames[1])["seq"]
                        if seq in self.drop:
                            self.dropped.append(seq)
                            continue
                    self._xpub.send_multipart(frames)
        except BaseException as exc:  # surfaced by close(), so a broken relay fails the test
            self._error = exc

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for sock in (self._xsub, self._xpub):
            with contextlib.suppress(Exception):
                sock.close(0)
        if self._error is not None:
            raise AssertionError(f"the relay failed: {self._error!r}")


class RawClient:
    """Requests pipelined on one plain DEALER: thousands of them in one go.

    It sends no heartbeat, so the manager must run with a long ``--liveness``
    for anything it registers to stay.
    """

    def __init__(self, api: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, f"tools-test-{os.getpid()}".encode())
        self.sock.connect(api)
        self._next = 0

    def requests(self, batch: list[tuple[str, dict[str, Any]]], timeout: float = 30.0) -> list[dict[str, Any]]:
        """Send every (op, args) at once; the results in the same order, AssertionError on any refusal."""
        first = self._next + 1
        for op, args in batch:
            self._next += 1
            self.sock.send_multipart([b"", encode_request(self._next, op, args)])
        replies: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        while len(replies) < len(batch):
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000)):
                raise TimeoutError(f"{len(batch) - len(replies)} of {len(batch)} requests got no reply")
            reply = decode_reply(self.sock.recv_multipart()[-1])
            assert reply["status"] == 0, f"refused: {reply}"
            replies[reply["id"]] = reply["result"]
        return [replies[i] for i in range(first, first + len(batch))]

    def close(self) -> None:
        self.sock.close(0)
