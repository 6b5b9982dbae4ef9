"""Crash and restart scenarios on the e2e stack (`mgm up` with igmp and the Linux forwarder in a router).

    snd (S1) --- r1 [rtr: mgm up = manager, igmp, forwarder] r2 --- h1 (receiver)
                                                             r3 --- h2 (receiver)

A sender streams to G every 5 ms; both hosts joined G with ordinary sockets
(real IGMP reports), so the memberships belong to the igmp plugin.  Each
scenario SIGKILLs one child of `mgm up`, lets the supervisor start it again,
and returns what it measured; the tests assert the behaviour, the bench
(bench/restart_gaps.py) prints the numbers.  Nothing here asserts a timing.
The forwarder runs the backend `setup` is given ("mrt" or "nft"; the tests
take each the kernel offers, `forwarder_backend`), and the kernel's side is
read through the stack's `KernelView`.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from e2e_stack import IGMP_PROTOCOL_ID, S1, Stack, build
from mgm_testplugins.processes import ManagerProc
from netns import NsProcess, Receiver, Topology, send_udp, wait_until

from mgm.bus.codec import unpack
from mgm.bus.status import MgmError
from mgm.plugins.testing import scaled

G, PORT = "239.77.1.1", 7701
INTERVAL = 0.005
"""Seconds between two packets of the steady stream."""
WAIT = 20.0
STREAM_COUNT = 1_000_000
"""Longer than any scenario: the stream is killed with the topology (or by the scenario)."""

Table = dict[tuple[str, str], tuple[int, frozenset[int]]]
"""(source, group) -> (incoming if_index, outgoing if_indexes): an MFE table, the manager's or the kernel's."""


@dataclass
class Flow:
    """The stack, its two receivers of G and the stream from S1."""

    stack: Stack
    probe: ManagerProc
    receivers: list[Receiver]
    sender: NsProcess | None = None
    if_index: dict[str, int] = field(default_factory=dict)

    def expected_oil(self) -> frozenset[int]:
        return frozenset({self.if_index["r2"], self.if_index["r3"]})

    def start_stream(self) -> None:
        self.sender = self.stack.sender.spawn(send_udp, G, PORT, STREAM_COUNT, interval=INTERVAL, source=S1,
                                              name="stream")  # fmt: skip

    def stop_stream(self) -> None:
        if self.sender is not None:
            self.sender.stop()

    def seqs(self, rx: Receiver) -> list[int]:
        return [p["seq"] for p in rx.packets() if p["src"] == S1]

    def newest(self) -> list[int]:
        """Each receiver's highest sequence number so far (-1 before the first)."""
        return [max(self.seqs(rx), default=-1) for rx in self.receivers]

    def wait_flowing(self, past: list[int], more: int = 20) -> None:
        """Wait until every receiver got `more` packets beyond the sequence numbers `past`."""
        for rx, seen in zip(self.receivers, past, strict=True):

            def past_it(rx: Receiver = rx, seen: int = seen) -> bool:
                return max(self.seqs(rx), default=-1) >= seen + more

            wait_until(past_it, WAIT, f"{more} packets past seq {seen} at {rx.name}")

    def lost(self, since: list[int]) -> list[list[int]]:
        """Per receiver: sequence numbers missing between `since` and the newest it received."""
        out = []
        for rx, first in zip(self.receivers, since, strict=True):
            got = set(self.seqs(rx))
            out.append([s for s in range(first, max(got, default=first) + 1) if s not in got])
        return out

    # --- the manager's and the kernel's tables ----------------------------------------------

    def state(self) -> dict[str, Any] | None:
        """The manager's `state` snapshot, or None while no manager answers."""
        try:
            result = self.probe.request("sync", {"stream": "state"}, timeout=1.0)
        except (TimeoutError, MgmError):
            return None
        assert not result.get("more"), "the state of these tests fits one page"
        state: dict[str, Any] = result["state"]
        return state

    def manager_table(self) -> Table | None:
        state = self.state()
        if state is None:
            return None
        return {(m["source"], m["group"]): (m["in_if_index"], frozenset(o["if_index"] for o in m["oil"]))
                for m in state["mfes"]}  # fmt: skip

    def kernel_table(self) -> Table:
        index = self.if_index
        return {key: (index.get(e.parent, -1), frozenset(index.get(name, -1) for name in e.oifs))
                for key, e in self.stack.kernel.entries().items()}  # fmt: skip

    def agree(self) -> Table | None:
        """The MFE table when the manager's and the kernel's are the same, else None."""
        manager = self.manager_table()
        return manager if manager is not None and manager == self.kernel_table() else None

    def converged(self) -> bool:
        """The manager knows (S1,G) out of r2 and r3, and the kernel forwards exactly that."""
        table = self.agree()
        return table is not None and table.get((S1, G), (0, frozenset()))[1] == self.expected_oil()

    def igmp_memberships(self) -> set[tuple[str, str, int]]:
        state = self.state() or {"memberships": []}
        return {(m["source"], m["group"], m["if_index"]) for m in state["memberships"]
                if m["protocol_id"] == IGMP_PROTOCOL_ID}  # fmt: skip

    # --- mgm up's children ----------------------------------------------------------------------

    def pid(self, child: str) -> int | None:
        """The pid `mgm up` last started `child` with (its log's status lines)."""
        found = re.findall(rf"^.*\b{re.escape(child)} started \(pid (\d+)\)", self.stack.up.log(), re.M)
        return int(found[-1]) if found else None

    def kill(self, child: str) -> tuple[int, float]:
        """SIGKILL `child`'s process group; (its pid, the monotonic time of the kill)."""
        pid = self.pid(child)
        assert pid is not None, f"mgm up has not started {child}:\n{self.stack.up.log()}"
        at = time.monotonic()
        os.killpg(pid, signal.SIGKILL)
        return pid, at

    def wait_restarted(self, child: str, old_pid: int) -> int:
        pid: int = wait_until(lambda: (p := self.pid(child)) not in (None, old_pid) and p, WAIT,
                              f"mgm up to start {child} again")  # fmt: skip
        return pid


def setup(topology: Topology, *, backend: str, **forwarder: Any) -> Flow:
    """The stack with the forwarder on `backend` and the settings `forwarder`, both hosts joined to G, the stream
    flowing to both and the tables in agreement."""
    stack = build(topology, receivers=2, backend=backend, forwarder=forwarder or None)
    probe = ManagerProc("probe", [], Path(topology.workdir) / "probe.log", api=stack.api)
    receivers = [stack.receiver(0, G, PORT), stack.receiver(1, G, PORT)]
    flow = Flow(stack, probe, receivers, if_index={name: stack.router.if_index(name) for name in stack.router_ifs})
    flow.start_stream()
    flow.wait_flowing([-1, -1])
    wait_until(flow.converged, WAIT, "the manager and the kernel to agree on (S1,G) out of r2 and r3")
    return flow


# --- watching the state stream ---------------------------------------------------------------


class StateWatch:
    """Every `state` event (with the monotonic time it arrived), read by a thread from a SUB socket."""

    def __init__(self, events_endpoint: str) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._endpoint = events_endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-watch", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"state")
        sock.setsockopt(zmq.SUBSCRIBE, b"hb")
        sock.connect(self._endpoint)
        try:
            while not self._stop.is_set():
                if not sock.poll(50):
                    continue
                topic, payload = sock.recv_multipart()[:2]
                if topic == b"hb":
                    self._ready.set()  # the subscription is live
                    continue
                self.events.append((time.monotonic(), unpack(payload)))
        finally:
            sock.close(0)

    def first(self, after: float, kind: str, **match: Any) -> tuple[float, dict[str, Any]] | None:
        return next(((t, e) for t, e in list(self.events)
                     if t >= after and e.get("type") == kind and all(e.get(k) == v for k, v in match.items())),
                    None)  # fmt: skip

    @contextmanager
    def running(self) -> Iterator[StateWatch]:
        self._thread.start()
        try:
            if not self._ready.wait(scaled(WAIT)):
                raise TimeoutError("no heartbeat on the events endpoint: the state watch is not live")
            yield self
        finally:
            self._stop.set()
            self._thread.join(5)


# --- the three scenarios -----------------------------------------------------------------------


@dataclass
class PluginDeath:
    detection: float
    """Seconds from the SIGKILL to the manager's protocol_deregistered."""
    memberships_before: set[tuple[str, str, int]]
    deleted_before_deregistration: set[tuple[str, str, int]]
    order: list[str]
    """Types of the igmp client's events from the kill to its deregistration."""
    oil_after_cleanup: list[int] | None
    """The (S1,G) MFE's OIL in the last mfe_updated of the cleanup (None: no update seen)."""
    recovered: float
    """Seconds from the SIGKILL until the restarted igmp's memberships are back and the tables agree."""


def plugin_death(flow: Flow) -> PluginDeath:
    """SIGKILL the igmp plugin: the manager cleans up after it; mgm up restarts it, the hosts' reports return."""
    before = flow.igmp_memberships()
    with StateWatch(flow.stack.api.replace("/api", "/events")).running() as watch:
        old, killed = flow.kill("igmp")
        gone = wait_until(lambda: watch.first(killed, "protocol_deregistered", protocol_id=IGMP_PROTOCOL_ID), WAIT,
                          "the manager to deregister the killed igmp")  # fmt: skip
        window = [(t, e) for t, e in list(watch.events) if killed <= t <= gone[0]]
        ours = [(t, e) for t, e in window if e.get("protocol_id") == IGMP_PROTOCOL_ID]
        deleted = {(e["source"], e["group"], e["if_index"]) for _, e in ours if e["type"] == "membership_deleted"}
        updates = [e["mfe"] for _, e in window if e.get("type") == "mfe_updated"
                   and (e["mfe"]["source"], e["mfe"]["group"]) == (S1, G)]  # fmt: skip
        oil = [o["if_index"] for o in updates[-1]["oil"]] if updates else None
        flow.wait_restarted("igmp", old)
        wait_until(lambda: flow.igmp_memberships() == before and flow.converged(), WAIT,
                   "the restarted igmp's memberships back (hosts answer its query), the tables agreeing")  # fmt: skip
        recovered = time.monotonic() - killed
    return PluginDeath(gone[0] - killed, before, deleted, [e["type"] for _, e in ours], oil, recovered)


@dataclass
class ManagerRestart:
    convergence: float
    """Seconds from the SIGKILL until the new manager's MFE table is complete and matches the kernel."""
    answered: float
    """Seconds from the SIGKILL until the new manager answers."""
    lost: list[list[int]]
    """Per receiver, sequence numbers lost on the established flow from the kill until after convergence."""
    epochs: tuple[int, int]


def manager_restart(flow: Flow) -> ManagerRestart:
    """SIGKILL the manager under a steady stream; mgm up starts a new one; the plugins replay."""
    epoch_before = flow.probe.request("ping")["epoch"]
    since = [s + 1 for s in flow.newest()]
    old, killed = flow.kill("manager")
    flow.wait_restarted("manager", old)
    wait_until(flow.probe.ping, WAIT, "the new manager to answer")
    answered = time.monotonic() - killed
    wait_until(flow.converged, WAIT, "the new manager's MFE (S1,G) out of r2 and r3, as in the kernel")
    convergence = time.monotonic() - killed
    flow.wait_flowing(flow.newest(), more=40)  # packets after the convergence, too
    epoch_after = flow.probe.request("ping")["epoch"]
    return ManagerRestart(convergence, answered, flow.lost(since), (epoch_before, epoch_after))


@dataclass
class ForwarderRestart:
    lost: list[int]
    """Per receiver, packets lost around the restart: MRT forwards nothing while no process holds the routing
    socket; the nftables table forwards on, so there none should be."""
    gap: float
    """Seconds from the SIGKILL until both receivers get packets again (past the restarted forwarder's start)."""
    interfaces_before: set[str]
    """The interfaces installed in the kernel before the kill (MRT: its VIFs; nft: the table's `ifs`)."""
    interfaces_after: set[str]
    """The same once the restarted forwarder has had its first resync."""
    log: str
    """What `mgm up` logged from the restarted forwarder's start to its first resync (and a little beyond)."""
    killed_wall: float
    """time.time() of the SIGKILL, to place the log's timestamps (bench/restart_gaps.py)."""


def forwarder_restart(flow: Flow) -> ForwarderRestart:
    """SIGKILL the forwarder: what it installed stays in the kernel and is adopted by the restarted forwarder,
    then reconciled at its first resync.  MRT's static VIFs and entries forward again once the new forwarder has
    done MRT_INIT (the first thing it does); the nftables table forwards on all along."""
    interfaces_before = flow.stack.kernel.interfaces()
    since = [s + 1 for s in flow.newest()]
    killed_wall = time.time()
    old, killed = flow.kill("forwarder")
    new = flow.wait_restarted("forwarder", old)
    base, out = flow.newest(), flow.stack.kernel.out_packets()
    flow.wait_flowing(base, more=1)
    gap = time.monotonic() - killed

    def moving() -> bool:
        now = flow.stack.kernel.out_packets()
        return all(now.get(name, 0) >= out.get(name, 0) + 20 for name in ("r2", "r3"))

    wait_until(moving, WAIT, "the kernel counting packets out of r2 and r3 again")
    marker = f"forwarder started (pid {new})"

    def restarted_log() -> str:
        log = flow.stack.up.log()
        return log[log.rfind("\n", 0, log.index(marker)) + 1 :]  # from the start of the marker's line

    wait_until(lambda: "[forwarder] mgm.plugins.forwarder.linux: resync:" in restarted_log(), WAIT,
               "the restarted forwarder to register and have its first resync")  # fmt: skip
    wait_until(flow.converged, WAIT, "the kernel's entries as the manager has them")
    flow.wait_flowing(flow.newest(), more=20)
    return ForwarderRestart([len(x) for x in flow.lost(since)], gap, interfaces_before,
                            flow.stack.kernel.interfaces(), restarted_log(), killed_wall)  # fmt: skip
