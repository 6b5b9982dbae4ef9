"""Does a stalled monitor slow the manager?  add_group_membership throughput with and without one.

A real `mgm manager` subprocess; a pipelining DEALER (a window of requests in
flight) adds N new memberships per run, each one a `state` event.  Runs
alternate: without a monitor, then with one that connected and stopped
reading -- `mgm monitor` SIGSTOPped after its subscription is live
(``--stall monitor``, the default) or a raw SUB process that never calls
recv (``--stall sub``).  The report gives the median rate of each kind, the
ratio stalled/free (goal >= 0.9), and for the stalled runs the manager's RSS
growth and CPU seconds, which show where a poor ratio would come from (the
manager's XPUB queues up to --events-hwm messages for a stalled subscriber).

    .venv/bin/python bench/stalled_monitor.py [--requests 20000] [--window 1000] [--rounds 3] [--stall monitor]

Bounded: every process is killed at the end, also on error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from mgm.bus.codec import decode_reply, encode_request

MGM = [sys.executable, "-m", "mgm.core.cli"]
TIMEOUT = 60.0


def group_of(i: int) -> str:
    return f"225.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


class Dealer:
    def __init__(self, api: str) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(api)
        self.next_id = 0

    def send(self, op: str, args: dict[str, Any]) -> None:
        self.next_id += 1
        self.sock.send_multipart([b"", encode_request(self.next_id, op, args)])

    def recv(self) -> dict[str, Any]:
        if not self.sock.poll(int(TIMEOUT * 1000)):
            raise TimeoutError("the manager did not answer")
        reply: dict[str, Any] = decode_reply(self.sock.recv_multipart()[-1])
        return reply

    def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        self.send(op, args)
        reply = self.recv()
        if reply["status"] != 0:
            raise RuntimeError(f"{op}: {reply['message']}")
        result: dict[str, Any] = reply["result"]
        return result

    def close(self) -> None:
        self.sock.close(0)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    stalled: bool
    rate: float
    rss_growth_kib: int
    cpu: float


def one_run(api: str, manager_pid: int, protocol_id: int, n: int, window: int, stalled: bool) -> Run:
    """N memberships through the manager, `window` in flight; the rate, the manager's RSS growth and CPU time."""
    dealer = Dealer(api)
    try:
        handle = dealer.call("register_protocol", {"protocol_id": protocol_id, "component_id": 1})["handle"]
        dealer.call("take_interface_ownership", {"handle": handle, "if_index": 1, "next_hop": "0.0.0.0"})
        rss0, cpu0 = rss_kib(manager_pid), cpu_seconds(manager_pid)
        start = time.perf_counter()
        sent = done = 0
        while done < n:
            while sent < n and sent - done < window:
                dealer.send("add_group_membership", {"handle": handle, "source": "0.0.0.0",
                                                     "source_mask": "0.0.0.0", "group": group_of(sent),
                                                     "group_mask": "255.255.255.255", "if_index": 1,
                                                     "next_hop": "0.0.0.0", "flags": 1})  # fmt: skip
                sent += 1
            reply = dealer.recv()
            if reply["status"] != 0:
                raise RuntimeError(f"add_group_membership: {reply['message']}")
            done += 1
        elapsed = time.perf_counter() - start
        run = Run(stalled, n / elapsed, rss_kib(manager_pid) - rss0, cpu_seconds(manager_pid) - cpu0)
        # untimed: leave nothing behind for the next run
        dealer.call("release_interface_ownership", {"handle": handle, "if_index": 1, "next_hop": "0.0.0.0"})
        dealer.call("deregister_protocol", {"handle": handle})
        return run
    finally:
        dealer.close()


def raw_sub(events: str) -> None:
    """A subscriber that connects, subscribes to everything, and never reads."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(events)
    print("connected", flush=True)
    time.sleep(3600)


def start_stalled(kind: str, api: str, events: str, workdir: str) -> subprocess.Popen[bytes]:
    """A subscriber that connected and stopped reading; returned once its subscription reached the manager."""
    # to see the manager's heartbeat for a new subscription
    probe: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    probe.setsockopt(zmq.SUBSCRIBE, b"hb")
    probe.connect(events)
    time.sleep(0.3)  # let the probe's own subscription settle, so its hb does not count
    while probe.poll(0):
        probe.recv_multipart()
    if kind == "monitor":
        argv = [*MGM, "monitor", "--api", api, "--events", events, "--json"]
    else:
        argv = [sys.executable, os.path.abspath(__file__), "--child-sub", events]
    out = open(os.path.join(workdir, f"{kind}.log"), "ab")  # noqa: SIM115 -- the child holds it
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    try:
        # The manager publishes a heartbeat at once when its XPUB sees a new subscription.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not probe.poll(100):
            if proc.poll() is not None:
                raise RuntimeError(f"the {kind} subscriber exited with {proc.returncode}")
        time.sleep(0.2)  # the monitor's own snapshot sync
        os.killpg(proc.pid, signal.SIGSTOP)
    finally:
        probe.close(0)
    return proc


def kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stall", choices=["monitor", "sub"], default="monitor")
    parser.add_argument("--child-sub", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_sub:
        raw_sub(args.child_sub)
        return 0
    workdir = tempfile.mkdtemp(prefix="mgm-stall-")
    api, events = f"ipc://{workdir}/api", f"ipc://{workdir}/events"
    log = open(os.path.join(workdir, "manager.log"), "ab")  # noqa: SIM115
    manager = subprocess.Popen([*MGM, "manager", "--api", api, "--events", events, "--liveness", "3600",
                                "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)  # fmt: skip
    stalled_procs: list[subprocess.Popen[bytes]] = []
    runs: list[Run] = []
    try:
        probe = Dealer(api)
        deadline = time.monotonic() + 20
        while True:
            probe.send("ping", {})
            if probe.sock.poll(500):
                probe.recv()
                break
            if time.monotonic() > deadline or manager.poll() is not None:
                raise RuntimeError("the manager did not start")
        probe.close()
        one_run(api, manager.pid, 999, min(args.requests, 2000), args.window, False)  # warm-up, not counted
        for r in range(args.rounds):
            for stalled in (False, True) if r % 2 == 0 else (True, False):
                proc = start_stalled(args.stall, api, events, workdir) if stalled else None
                if proc is not None:
                    stalled_procs.append(proc)
                try:
                    run = one_run(api, manager.pid, 1000 + len(runs), args.requests, args.window, stalled)
                finally:
                    if proc is not None:
                        kill(proc)
                runs.append(run)
                print(f"round {r + 1} {'stalled' if stalled else 'free   '}: {run.rate:9.0f} req/s, manager RSS "
                      f"{run.rss_growth_kib / 1024:+7.1f} MiB, CPU {run.cpu:5.2f} s", flush=True)  # fmt: skip
    finally:
        for proc in stalled_procs:
            kill(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(manager.pid, signal.SIGKILL)
        manager.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    free = statistics.median(r.rate for r in runs if not r.stalled)
    stalled_rate = statistics.median(r.rate for r in runs if r.stalled)
    cpu_free = statistics.median(r.cpu for r in runs if not r.stalled)
    cpu_stalled = statistics.median(r.cpu for r in runs if r.stalled)
    print(f"\n{args.requests} add_group_membership per run, window {args.window}, {args.rounds} rounds, "
          f"stalled subscriber: {args.stall}")  # fmt: skip
    print(f"median free    {free:9.0f} req/s  (manager CPU {cpu_free:.2f} s per run)")
    print(f"median stalled {stalled_rate:9.0f} req/s  (manager CPU {cpu_stalled:.2f} s per run)")
    print(f"ratio stalled/free {stalled_rate / free:.2f}  (goal >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
