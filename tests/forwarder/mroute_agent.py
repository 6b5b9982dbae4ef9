"""A process inside a router namespace that holds an `MrouteSocket` and obeys JSON lines on stdin.

The test side (`Agent`) sends ``{"op": NAME, ...}`` and reads one JSON line
back: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": TEXT,
"errno": N}``.  The socket stays open between commands, so a test can add
VIFs and MFC entries, send traffic from another namespace, and then look
at upcalls and counters.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import select
import struct
import subprocess
import sys
import time
from typing import Any

from netns import Namespace, NsProcess

from mgm.plugins.forwarder import mroute
from mgm.plugins.testing import scaled

SIOCGETVIFCNT = mroute.SIOCPROTOPRIVATE
# struct sioc_vif_req { vifi_t vifi; unsigned long icount, ocount, ibytes, obytes; }
SIOC_VIF_REQ = struct.Struct("@HLLLL")


class AgentError(Exception):
    def __init__(self, reply: dict[str, Any]) -> None:
        self.errno = reply.get("errno")
        super().__init__(reply.get("error"))


class Agent:
    """The test's handle on an agent process (started with `start`)."""

    def __init__(self, ns: Namespace, proc: NsProcess, stdin: Any, stdout: Any) -> None:
        self.ns = ns
        self.proc = proc
        self.stdin = stdin
        self.stdout = stdout

    @classmethod
    def start(cls, ns: Namespace, **options: Any) -> Agent:
        here = __file__.rsplit("/", 1)[0]
        tests = here.rsplit("/", 1)[0]
        code = f"import sys; sys.path[:0] = [{tests!r}, {here!r}]; import mroute_agent; mroute_agent.serve()"
        log_path = ns.topology.workdir / f"{ns.role}-agent-{len(ns.topology.processes)}.log"
        with open(log_path, "wb") as err:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", ns.name, sys.executable, "-c", code, json.dumps(options)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, start_new_session=True, text=True,
            )  # fmt: skip
        proc = NsProcess("mroute-agent", popen, log_path)  # type: ignore[arg-type]  # text-mode pipes
        ns.topology.processes.append(proc)
        agent = cls(ns, proc, popen.stdin, popen.stdout)
        agent.call("ping")
        return agent

    def call(self, op: str, **args: Any) -> Any:
        self.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.stdin.flush()
        line = self.stdout.readline()
        if not line:
            raise AgentError({"error": f"the agent exited:\n{self.proc.log()}"})
        reply = json.loads(line)
        if not reply["ok"]:
            raise AgentError(reply)
        return reply["result"]


def serve() -> None:
    """In the namespace: open the socket (errors are replies too), then obey commands until EOF."""
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    sock: mroute.MrouteSocket | None = None
    init_error: dict[str, Any] | None = None
    try:
        sock = mroute.MrouteSocket(**options)
    except OSError as exc:
        init_error = {"ok": False, "error": str(exc), "errno": exc.errno}
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        if op == "ping":
            reply: dict[str, Any] = {"ok": True, "result": "pong"}
        elif sock is None:
            reply = init_error or {"ok": False, "error": "no socket"}
        else:
            try:
                reply = {"ok": True, "result": _do(sock, op, req)}
            except OSError as exc:
                reply = {"ok": False, "error": str(exc), "errno": exc.errno}
        print(json.dumps(reply), flush=True)
    if sock is not None:
        sock.close()


def _upcall(upcall: mroute.Upcall) -> dict[str, Any]:
    """An upcall as JSON: kind, vif, source, group (its `packet`, which only nftables hands over, left out)."""
    return {key: value for key, value in dataclasses.asdict(upcall).items() if key != "packet"}


def _do(sock: mroute.MrouteSocket, op: str, req: dict[str, Any]) -> Any:
    if op == "add_vif":
        sock.add_vif(req["vif"], req["if_index"])
        return None
    if op == "del_vif":
        sock.del_vif(req["vif"])
        return None
    if op == "add_mfc":
        sock.add_mfc(req["source"], req["group"], req["parent"], {int(k): v for k, v in req["oifs"].items()})
        return None
    if op == "del_mfc":
        sock.del_mfc(req["source"], req["group"])
        return None
    if op == "sg_count":
        count = sock.sg_count(req["source"], req["group"])
        return None if count is None else dataclasses.asdict(count)
    if op == "vif_count":
        return vif_count(sock, req["vif"])
    if op == "upcalls":
        # Wait up to `timeout` (scaled: MGM_TEST_TIME_SCALE) for at least `n` upcalls, draining everything queued.
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + scaled(req.get("timeout", 10.0))
        while len(got) < req.get("n", 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if select.select([sock.fileno()], [], [], left)[0]:
                got += [_upcall(u) for u in sock.read_upcalls()]
        return got
    if op == "proc":
        return proc_tables()
    raise ValueError(f"unknown op {op}")


def vif_count(sock: mroute.MrouteSocket, vifi: int) -> dict[str, int] | None:
    """SIOCGETVIFCNT: packets and bytes in and out of one VIF; None when the VIF does not exist."""
    buf = bytearray(SIOC_VIF_REQ.pack(vifi, 0, 0, 0, 0))
    try:
        fcntl.ioctl(sock.fileno(), SIOCGETVIFCNT, buf, True)
    except OSError as exc:
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL):
            return None
        raise
    return dict(zip(("in_packets", "out_packets", "in_bytes", "out_bytes"), SIOC_VIF_REQ.unpack(buf)[1:], strict=True))


def proc_tables() -> dict[str, Any]:
    """/proc/net/ip_mr_vif and ip_mr_cache of the namespace it runs in (for `Namespace.call`)."""
    return {"vif": [dataclasses.asdict(v) for v in mroute.read_ip_mr_vif()],
            "mfc": [dataclasses.asdict(m) for m in mroute.read_ip_mr_cache()]}  # fmt: skip
